"""A SIPp UAS as the far end of calls (`loadgen --callee`), with SIPp's own statistics.

SIPp runs SIPp's built-in `uas` scenario (INVITE, 180, 200 with SDP, ACK, BYE, 200, a 4 s
timewait) or a scenario file from tests/interop/sipp/, in a directory of its own, with
`-trace_stat` (the per-call counters: IncomingCall, SuccessfulCall, FailedCall,
Retransmissions) and `-trace_counts` (per scenario message: how many were sent or received,
and the retransmissions among them). Used by tests/interop/test_loadgen_sipp.py and by the
loadgen-vs-SIPp bench.
"""

from __future__ import annotations

import contextlib
import csv
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from services.stack import free_port

SCENARIOS = Path(__file__).parent / "sipp"
SIPP_BUFFER = 1 << 20  # socket buffers: the far end must not be what drops


def sipp_binary() -> str:
    path = shutil.which("sipp")
    if path is None:
        raise RuntimeError("sipp is missing: `make deps` installs it (Debian sip-tester)")
    return path


def udp_bound(port: int, host: str = "127.0.0.1") -> bool:
    """Someone holds UDP `port` (so a SIPp started on it is listening)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def last_row(path: Path) -> dict[str, str]:
    """The last row of a SIPp `;`-separated trace file, by column name ({} if none yet)."""
    try:
        rows = list(csv.reader(path.read_text().splitlines(), delimiter=";"))
    except OSError:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False)) if len(rows) > 1 else {}


class SippUas:
    """`sipp -sn uas` (or `-sf scenario`) on a free UDP port of 127.0.0.1."""

    def __init__(self, workdir: Path, *, scenario: str | None = None, calls: int | None = None,
                 rtp_echo: bool = False) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.scenario = scenario  # a file name in tests/interop/sipp; None: the built-in uas
        self.calls = calls  # -m: SIPp exits once this many calls are over
        self.rtp_echo = rtp_echo  # echo RTP back on the port the 200's SDP names
        self.port = free_port(socket.SOCK_DGRAM)
        self.stat_file = workdir / "stat.csv"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"sip:service@127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        what = ["-sf", str(SCENARIOS / self.scenario)] if self.scenario else ["-sn", "uas"]
        argv = [sipp_binary(), *what, "-t", "u1", "-i", "127.0.0.1", "-p", str(self.port),
                "-mp", str(free_port(socket.SOCK_DGRAM)), "-nostdin", "-bind_local",
                "-buff_size", str(SIPP_BUFFER), "-trace_stat", "-stf", str(self.stat_file),
                "-fd", "1", "-trace_counts", "-trace_err"]
        if self.calls is not None:
            argv += ["-m", str(self.calls)]
        if self.rtp_echo:
            argv.append("-rtp_echo")
        return argv

    def start(self, timeout: float = 10.0) -> None:
        log = (self.workdir / "sipp.out").open("wb")
        with log:
            self.proc = subprocess.Popen(self.argv(), cwd=self.workdir, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not udp_bound(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"SIPp UAS did not start on UDP {self.port}: "
                                   f"{(self.workdir / 'sipp.out').read_text()[-2000:]}")
            time.sleep(0.05)

    def wait(self, timeout: float) -> int:
        """Until SIPp exits by itself (after -m calls); its exit status."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stats(self) -> dict[str, str]:
        """SIPp's final -trace_stat row (cumulative columns end in `(C)`)."""
        return last_row(self.stat_file)

    def counts(self) -> dict[str, int]:
        """SIPp's final -trace_counts row: `<index>_<message>_<Sent|Recv|Retrans|...>`."""
        files = sorted(self.workdir.glob("*_counts.csv"))
        row = last_row(files[-1]) if files else {}
        return {k: int(v) for k, v in row.items() if k[:1].isdigit() and v.isdigit()}

    def count(self, message: str, what: str) -> int:
        """`what` (Sent, Recv, Retrans, ...) of `message` (INVITE, 200, 486, ...) over every
        place it has in the scenario."""
        return sum(v for k, v in self.counts().items() if k.split("_", 1)[1] == f"{message}_{what}")

    def errors(self) -> str:
        return "".join(p.read_text(errors="replace")[-3000:]
                       for p in self.workdir.glob("*_errors.log"))
