"""The sbc with a real softphone: baresip registers through it and calls a SIPp UE.

baresip (Debian `baresip-core`, 1.0) is a complete SIP UA on libre, a stack we did not write.
It registers with digest auth through the sbc as its outbound proxy, then calls a SIPp UE that
registered from its own port and answers with tests/interop/sipp/call_uas.xml; after a second
baresip hangs up, SIPp must have seen the whole dialog (exit 0), and `quit` must unregister.

baresip runs from a config dir generated into tmp from the templates in tests/interop/baresip/
(no sound card: audio goes through the aubridge module; no video module) and is driven over its
ctrl_tcp module: netstring-framed JSON commands in, responses and events (REGISTER_OK,
CALL_ESTABLISHED, CALL_CLOSED, ...) out.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from string import Template
from typing import Any

import grpc
import pytest

from services.stack import Stack, StackConfig, free_port
from services.subscribers import Provisioner
from tests.interop.test_sbc_calls import Ue, finish
from volte.v1 import common_pb2, state_pb2, state_pb2_grpc

TEMPLATES = Path(__file__).parent / "baresip"
SCENARIOS = Path(__file__).parent / "sipp"
MODULES = Path("/usr/lib/baresip/modules")
DOMAIN = "ims.local"
PASSWORD = "secret"
CALLER, CALLEE = 100010, 100011
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # baresip colours its status texts

pytestmark = pytest.mark.interop


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is missing: `make deps` installs it")  # never skip silently
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = StackConfig(
        sip_port=free_port(),
        redis_port=free_port(),
        state_grpc=f"127.0.0.1:{free_port()}",
        sbc_grpc=f"127.0.0.1:{free_port()}",
        run_dir=str(tmp_path_factory.mktemp("stack")),
        # libre (baresip 1.0) fails the whole 401 when one of its challenges names an algorithm
        # it lacks ("Register: Function not implemented" on SHA-256) instead of skipping it.
        extra_sbc_args=["--digest-algorithms", "MD5"],
    )
    stack = Stack(config)
    stack.start()
    provisioner = Provisioner(config.state_grpc)
    provisioner.provision(2, CALLER, DOMAIN, PASSWORD)
    provisioner.close()
    yield stack
    stack.stop()


def free_udp_tcp_port() -> int:
    """A port free for UDP and TCP both: baresip's sip_listen binds both."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for both UDP and TCP")


class Baresip:
    """One baresip UE: its generated config dir, the process, and a ctrl_tcp connection."""

    def __init__(self, stack: Stack, number: int, tmp: Path) -> None:
        self.number = number
        self.dir = tmp / f"baresip{number}"
        self.dir.mkdir()
        self.port = free_udp_tcp_port()  # baresip sends from the port it listens on
        self.ctrl_port = free_port()
        self.log = self.dir / "baresip.log"
        values = {
            "sip_port": self.port, "ctrl_port": self.ctrl_port, "module_path": MODULES,
            "user": number, "domain": DOMAIN, "password": PASSWORD,
            "sbc_host": stack.config.sip_host, "sbc_port": stack.config.sip_port,
        }
        for name in ("config", "accounts"):
            text = Template((TEMPLATES / name).read_text()).substitute(values)
            (self.dir / name).write_text(text)
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.seen: list[dict[str, Any]] = []  # every event and response, for failure messages

    def start(self, lifetime: int = 25, timeout: float = 5) -> None:
        # -s traces SIP into the log; -t makes it quit by itself should the test lose it.
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [_need("baresip"), "-f", str(self.dir), "-s", "-t", str(lifetime)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while self.sock is None:
            self._check_alive()
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=0.5)
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"baresip's ctrl_tcp never listened\n{self.tail()}"
                    ) from None
                time.sleep(0.05)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"baresip exited ({self.proc.returncode})\n{self.tail()}")

    def _fail(self, what: str) -> AssertionError:
        return AssertionError(f"{what}\nctrl_tcp said: {self.seen}\n{self.tail()}")

    def command(self, command: str, params: str = "") -> None:
        """A command of baresip's menu (dial, hangup, reginfo, quit, ...); its name is the
        token its response comes back with."""
        assert self.sock is not None
        body = json.dumps({"command": command, "params": params, "token": command}).encode()
        self.sock.sendall(b"%d:%s," % (len(body), body))

    def _read(self, deadline: float) -> dict[str, Any] | None:
        """The next netstring from ctrl_tcp, decoded; None once the deadline has passed."""
        assert self.sock is not None
        while True:
            head, colon, rest = self.buffer.partition(b":")
            if colon and len(rest) > int(head):
                size = int(head)
                assert rest[size:size + 1] == b",", self.buffer
                self.buffer = rest[size + 1:]
                message: dict[str, Any] = json.loads(rest[:size])
                self.seen.append(message)
                return message
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(min(left, 0.5))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                self._check_alive()
                continue
            if not data:
                raise self._fail("baresip closed ctrl_tcp")
            self.buffer += data

    def wait_event(self, wanted: str, fatal: tuple[str, ...] = (), timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while (message := self._read(deadline)) is not None:
            if message.get("event") and message.get("type") == wanted:
                return
            if message.get("event") and message.get("type") in fatal:
                raise self._fail(f"baresip: {message.get('type')} {message.get('param')}")
        raise self._fail(f"no {wanted} from baresip within {timeout} s")

    def wait_registered(self, timeout: float = 5) -> None:
        """baresip registers as soon as it has read its accounts, which may be before ctrl_tcp
        has accepted us and so before we could see REGISTER_OK: ask as well. Responses and
        events come in order on the one connection, so one or the other tells."""
        self.command("reginfo")
        deadline = time.monotonic() + timeout
        while (message := self._read(deadline)) is not None:
            if message.get("event"):
                if message.get("type") == "REGISTER_OK":
                    return
                if message.get("type") == "REGISTER_FAIL":
                    raise self._fail(f"baresip: REGISTER_FAIL {message.get('param')}")
            elif message.get("token") == "reginfo":
                status = ANSI.sub("", str(message.get("data", "")))
                if re.search(r"\bOK\b", status):
                    return
                if re.search(r"\bERR\b", status):  # failed before we were listening
                    raise self._fail(f"baresip: registration failed: {status.strip()}")
        raise self._fail(f"baresip did not register within {timeout} s")

    def stop(self, timeout: float = 5) -> int | None:
        """`quit` (which unregisters first), then its exit status; killed if it lingers."""
        if self.proc is None:
            return None
        if self.proc.poll() is None and self.sock is not None:
            with contextlib.suppress(OSError):
                self.command("quit")
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        return self.proc.returncode


@pytest.fixture
def baresip(stack: Stack, tmp_path: Path) -> Iterator[Baresip]:
    ue = Baresip(stack, CALLER, tmp_path)
    try:
        yield ue
    finally:
        ue.stop()


def bindings(stack: Stack, number: int) -> list[state_pb2.Binding]:
    with grpc.insecure_channel(stack.config.state_grpc) as channel:
        reply = state_pb2_grpc.StateStoreStub(channel).LookupBindings(
            state_pb2.LookupBindingsRequest(impu=f"sip:{number}@{DOMAIN}"), timeout=5
        )
    return list(reply.bindings)


def test_baresip_registers_and_calls_a_sipp_ue(
    stack: Stack, baresip: Baresip, tmp_path: Path
) -> None:
    started = time.monotonic()
    callee = Ue(stack, CALLEE, tmp_path)
    callee.register()

    baresip.start()
    baresip.wait_registered()
    found = bindings(stack, CALLER)
    assert [(b.received.ip, b.received.port) for b in found] == [("127.0.0.1", baresip.port)]
    assert found[0].transport == common_pb2.SIP_TRANSPORT_UDP
    assert f"@127.0.0.1:{baresip.port}" in found[0].contact_uri

    answering = callee.sipp(SCENARIOS / "call_uas.xml", timeout=15)
    try:
        time.sleep(0.3)  # SIPp binds its port a moment after it starts
        baresip.command("dial", f"sip:{CALLEE}@{DOMAIN}")
        baresip.wait_event("CALL_ESTABLISHED", fatal=("CALL_CLOSED",))
        time.sleep(1)
        baresip.command("hangup")
        baresip.wait_event("CALL_CLOSED")
        finish(answering, tmp_path, timeout=10)  # SIPp exits 0 once it has answered the BYE
    finally:
        if answering.poll() is None:
            answering.kill()
            answering.wait()

    assert baresip.stop() == 0
    assert bindings(stack, CALLER) == []  # `quit` unregistered, through the sbc again
    assert time.monotonic() - started < 30
