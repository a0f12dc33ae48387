"""The sbc with real peers: SIPp UEs register with digest auth and call each other through it.

The whole stack runs as it does for `volte up`: redis-server, the state service and the sbc as
separate processes (services.stack). Each UE is a SIPp instance bound to its own port; it
registers from that port first, so the sbc knows where it is and that it is registered.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from services.stack import Stack, StackConfig, free_port, port_busy
from services.subscribers import Provisioner
from volte.v1 import common_pb2, state_pb2, state_pb2_grpc

SCENARIOS = Path(__file__).parent / "sipp"
PASSWORD = "secret"
FIRST = 100000
USERS = 60
_numbers = iter(range(FIRST, FIRST + USERS - 1))  # the last one is never registered


def fresh() -> int:
    """A subscriber no other test has registered: stale bindings would fork calls to them."""
    return next(_numbers)

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = StackConfig(
        sip_port=free_port(),
        redis_port=free_port(),
        state_grpc=f"127.0.0.1:{free_port()}",
        sbc_grpc=f"127.0.0.1:{free_port()}",
        run_dir=str(tmp_path_factory.mktemp("stack")),
    )
    stack = Stack(config)
    stack.start()
    provisioner = Provisioner(config.state_grpc)
    provisioner.provision(USERS, FIRST, "ims.local", PASSWORD)
    provisioner.close()
    yield stack
    stack.stop()


class Ue:
    """One SIPp UE: a number and the local port it registers and calls from."""

    def __init__(self, stack: Stack, number: int, tmp: Path, transport: str = "u1") -> None:
        self.stack = stack
        self.number = number
        self.port = free_udp_and_tcp_port()
        self.tmp = tmp
        self.transport = transport

    def sipp(self, scenario: Path, *extra: str, timeout: float = 20) -> subprocess.Popen[str]:
        args = [
            "sipp", f"127.0.0.1:{self.stack.config.sip_port}", "-sf", str(scenario),
            "-t", self.transport, "-p", str(self.port), "-m", "1", "-nostdin",
            "-timeout", f"{timeout:.0f}s", "-timeout_error", "-trace_err", *extra,
        ]
        return subprocess.Popen(args, cwd=self.tmp, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def run(self, scenario: Path, *extra: str) -> None:
        proc = self.sipp(scenario, *extra)
        finish(proc, self.tmp)

    def register(self) -> None:
        users = self.tmp / f"user{self.number}.csv"
        users.write_text(
            f"SEQUENTIAL\n{self.number};{PASSWORD};ims.local;"
            f"[authentication username={self.number} password={PASSWORD}]\n"
        )
        self.run(SCENARIOS / "ue_register.xml", "-inf", str(users))

    def call(
        self, callee: int, scenario: str = "call_uac.xml", hold_ms: int = 300
    ) -> subprocess.Popen[str]:
        return self.sipp(SCENARIOS / scenario, "-s", str(callee), "-key", "caller",
                         str(self.number), "-d", str(hold_ms))

    def answer(self, scenario: str = "call_uas.xml") -> subprocess.Popen[str]:
        return self.sipp(SCENARIOS / scenario)


def free_udp_and_tcp_port() -> int:
    """SIPp listens on its -p port over UDP or TCP: it must be free for both."""
    while True:
        port = free_port(socket.SOCK_DGRAM)
        if not port_busy("127.0.0.1", port, socket.SOCK_STREAM):
            return port


def finish(proc: subprocess.Popen[str], tmp: Path, timeout: float = 40) -> None:
    out, _ = proc.communicate(timeout=timeout)
    errors = "".join(p.read_text(errors="replace")[-1500:] for p in tmp.glob("*_errors.log"))
    assert proc.returncode == 0, f"SIPp exit {proc.returncode}\n{out[-2000:]}\n{errors}"


def expecting(status: int, tmp: Path) -> str:
    """The rejected-call scenario with the status it must get filled in."""
    text = (SCENARIOS / "call_uac_rejected.xml").read_text().replace("__STATUS__", str(status))
    path = tmp / f"call_uac_{status}.xml"
    path.write_text(text)
    return str(path)


def state_stub(stack: Stack) -> state_pb2_grpc.StateStoreStub:
    return state_pb2_grpc.StateStoreStub(grpc.insecure_channel(stack.config.state_grpc))


def test_register_with_digest_binds_the_source_address(stack: Stack, tmp_path: Path) -> None:
    ue = Ue(stack, fresh(), tmp_path)
    ue.register()
    bindings = state_stub(stack).LookupBindings(
        state_pb2.LookupBindingsRequest(impu=f"sip:{ue.number}@ims.local"), timeout=5
    ).bindings
    assert [(b.received.ip, b.received.port) for b in bindings] == [("127.0.0.1", ue.port)]
    assert bindings[0].transport == common_pb2.SIP_TRANSPORT_UDP


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_call_between_registered_ues(stack: Stack, tmp_path: Path, transport: str) -> None:
    caller = Ue(stack, fresh(), tmp_path, transport)
    callee = Ue(stack, fresh(), tmp_path, transport)
    caller.register()
    callee.register()
    answering = callee.answer()
    finish(caller.call(callee.number), tmp_path)
    finish(answering, tmp_path)


def test_busy_callee_gives_486(stack: Stack, tmp_path: Path) -> None:
    caller, callee = Ue(stack, fresh(), tmp_path), Ue(stack, fresh(), tmp_path)
    caller.register()
    callee.register()
    answering = callee.answer("call_uas_busy.xml")
    finish(caller.call(callee.number, expecting(486, tmp_path)), tmp_path)
    finish(answering, tmp_path)


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_cancel_while_ringing(stack: Stack, tmp_path: Path, transport: str) -> None:
    caller = Ue(stack, fresh(), tmp_path, transport)
    callee = Ue(stack, fresh(), tmp_path, transport)
    caller.register()
    callee.register()
    answering = callee.answer("cancel_uas.xml")
    finish(caller.call(callee.number, "cancel_uac.xml"), tmp_path)
    finish(answering, tmp_path)


@pytest.mark.parametrize(
    ("status", "callee", "register_caller"),
    [
        (403, FIRST + 1, False),  # the caller never registered
        (404, 999999, True),  # nobody provisioned with that number
        (480, FIRST + USERS - 1, True),  # provisioned, never registered
    ],
)
def test_rejections(
    stack: Stack, tmp_path: Path, status: int, callee: int, register_caller: bool
) -> None:
    caller = Ue(stack, fresh(), tmp_path)
    if register_caller:
        caller.register()
    finish(caller.call(callee, expecting(status, tmp_path)), tmp_path)


def test_concurrent_calls(stack: Stack, tmp_path: Path) -> None:
    pairs = [(Ue(stack, fresh(), tmp_path), Ue(stack, fresh(), tmp_path))
             for i in range(2)]
    for a, b in pairs:
        a.register()
        b.register()
    answering = [b.answer() for _, b in pairs]
    calling = [a.call(b.number) for a, b in pairs]
    threads = [threading.Thread(target=finish, args=(p, tmp_path)) for p in calling]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in answering:
        finish(p, tmp_path)


def test_reinvite_to_hold_within_the_call(stack: Stack, tmp_path: Path) -> None:
    caller, callee = Ue(stack, fresh(), tmp_path), Ue(stack, fresh(), tmp_path)
    caller.register()
    callee.register()
    answering = callee.answer("call_uas_reinvite.xml")
    finish(caller.call(callee.number, "call_uac_reinvite.xml"), tmp_path)
    finish(answering, tmp_path)


def test_parallel_fork_to_every_binding(stack: Stack, tmp_path: Path) -> None:
    """Two devices registered for one user: both get the INVITE; the one that rings first is
    cancelled when the other answers (RFC 3261 sections 16.7 and 16.10)."""
    caller = Ue(stack, fresh(), tmp_path)
    number = fresh()
    phone, tablet = Ue(stack, number, tmp_path), Ue(stack, number, tmp_path)
    for ue in (caller, phone, tablet):
        ue.register()
    ringing = phone.answer("cancel_uas.xml")
    answering = tablet.answer("call_uas_answer_late.xml")
    finish(caller.call(number), tmp_path)
    finish(answering, tmp_path)
    finish(ringing, tmp_path)
