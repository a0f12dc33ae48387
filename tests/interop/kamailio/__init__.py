"""Kamailio (Debian package `kamailio`) as a real peer: started in the foreground by the tests.

Never the system service: each `Kamailio` runs `kamailio -DD -E` (the creator stays in the
foreground, logs go to a file in the work directory) on 127.0.0.1 and a port of the caller's
choosing, UDP only (`-T` no TCP, `-S` no SCTP: the kernel here has none), with its runtime
directory and pid file in the work directory. The configs are beside this file
(`scscf.cfg`); values that differ per run are passed as preprocessor defines (`-A NAME=value`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

CONFIGS = Path(__file__).parent
INSTALL_HINT = "apt-get install kamailio   (Debian package; `make deps` installs it)"


def binary() -> str | None:
    """The kamailio executable: Debian puts it in /usr/sbin, not on a normal user's PATH."""
    return shutil.which("kamailio") or shutil.which("kamailio", path="/usr/sbin:/sbin")


def available() -> bool:
    return binary() is not None


def descendants(pid: int) -> list[int]:
    """`pid`'s children, grandchildren, ... (from /proc; [] once it is gone)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            with contextlib.suppress(OSError, ValueError):
                kids = [int(x) for x in Path(f"/proc/{current}/task/{task}/children")
                        .read_text().split()]
                out += kids
                todo += kids
    return out


def sip_answers(
    port: int, host: str = "127.0.0.1", timeout: float = 10.0, expect: bytes = b""
) -> bool:
    """Poll with OPTIONS until a response (containing `expect`) comes from UDP host:port."""
    deadline = time.monotonic() + timeout
    n = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.2)
        local = s.getsockname()[1]
        while time.monotonic() < deadline:
            n += 1
            probe = (
                f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{local};rport;branch=z9hG4bKprobe{n}\r\n"
                f"From: <sip:probe@127.0.0.1>;tag=p{n}\r\nTo: <sip:{host}:{port}>\r\n"
                f"Call-ID: probe{n}-{local}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                "Content-Length: 0\r\n\r\n"
            )
            s.sendto(probe.encode(), (host, port))
            try:
                reply = s.recv(4096)
            except OSError:
                continue
            if expect.lower() in reply.lower():
                return True
    return False


class Kamailio:
    """One foreground Kamailio; `start()`, `stop()`, `pids()` (for CPU accounting)."""

    def __init__(
        self,
        config: Path,
        port: int,
        workdir: Path,
        defines: dict[str, str] | None = None,
        children: int = 1,
        shm_mb: int = 64,
    ) -> None:
        self.config = config.resolve()  # kamailio runs in `workdir`
        self.port = port
        self.workdir = workdir
        self.defines = defines or {}
        self.children = children
        self.shm_mb = shm_mb
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"kamailio-{port}.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        rundir = self.workdir / f"kamailio-{self.port}.run"
        rundir.mkdir(parents=True, exist_ok=True)
        argv = [
            binary() or "kamailio", "-DD", "-E", "-f", str(self.config),
            "-l", f"udp:{self.address}", "-n", str(self.children), "-T", "-S",
            "-m", str(self.shm_mb), "-M", "8",
            "-Y", str(rundir), "-P", str(rundir / "kamailio.pid"), "-w", str(self.workdir),
        ]
        for name, value in self.defines.items():
            argv += ["-A", f"{name}={value}"]
        return argv

    def start(self, timeout: float = 15.0) -> None:
        if not available():
            raise RuntimeError(f"kamailio is not installed: {INSTALL_HINT}")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            # Kamailio's replies carry "Server: kamailio (...)": not someone else on that port.
            if sip_answers(self.port, timeout=0.5, expect=b"Server: kamailio"):
                return
        tail = self.log.read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"kamailio did not come up on {self.address}; its log:\n{tail}")

    def pids(self) -> list[int]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid, *descendants(self.proc.pid)]

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the main process stops its children
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its own session: only its processes
                proc.wait(timeout=timeout)
