"""Our SIP core as a UAS against SIPp's own UAS, measured in the same run.

A SIPp UAC sends the same OPTIONS load over UDP to each server in turn: our test UAS
(`python -m services.sip.uas`: parser, transaction layer, transport) and SIPp running a UAS
scenario that answers with 200. For each we print the transactions that succeeded, the rate
achieved and the server's CPU time per 1000 transactions (from /proc), and the ratio.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCENARIOS = Path(__file__).parent / "sipp"
CALLS = 6000
RATE = 1500  # per second offered; both servers keep up at this rate on this machine
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def wait_udp_answer(port: int, timeout: float = 10.0) -> None:
    """Poll with an OPTIONS until the server answers, so start-up is not measured."""
    probe = (
        f"OPTIONS sip:p@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1;rport;"
        "branch=z9hG4bKprobe{n}\r\nFrom: <sip:b@x>;tag=1\r\nTo: <sip:p@x>\r\nCall-ID: probe{n}\r\n"
        "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        n = 0
        while time.monotonic() < deadline:
            n += 1
            s.sendto(probe.replace("{n}", str(n)).encode(), ("127.0.0.1", port))
            try:
                s.recv(4096)
                return
            except OSError:
                continue
    raise RuntimeError(f"no answer on UDP port {port}")


def run_load(port: int, workdir: str) -> tuple[int, float]:
    """SIPp UAC at RATE for CALLS calls; returns (successful calls, wall seconds)."""
    start = time.monotonic()
    out = subprocess.run(
        [
            "sipp", f"127.0.0.1:{port}", "-sf", str(SCENARIOS / "options_uac.xml"), "-t", "u1",
            "-m", str(CALLS), "-r", str(RATE), "-nostdin", "-timeout", "60s", "-l", "2000",
        ],
        capture_output=True, text=True, cwd=workdir, timeout=120,
    )
    elapsed = time.monotonic() - start
    m = re.search(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", out.stdout)
    return (int(m.group(1)) if m else 0), elapsed


Result = tuple[str, int, float, float]  # name, succeeded, per second, CPU ms per 1000


def measure(name: str, command: list[str], port: int, workdir: str) -> Result:
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              cwd=workdir)
    try:
        wait_udp_answer(port)
        before = cpu_seconds(server.pid)
        ok, elapsed = run_load(port, workdir)
        cpu = cpu_seconds(server.pid) - before
    finally:
        server.terminate()
        server.wait(timeout=10)
    return name, ok, ok / elapsed, cpu / max(ok, 1) * 1_000_000  # ms per 1000


def main() -> int:
    with tempfile.TemporaryDirectory() as workdir:
        ours_port, sipp_port = free_port(), free_port()
        ours = measure(
            "volte UAS (python)",
            [sys.executable, "-m", "services.sip.uas", "--listen", f"127.0.0.1:{ours_port}"],
            ours_port, workdir,
        )
        theirs = measure(
            "SIPp UAS (C++)",
            ["sipp", "-sf", str(SCENARIOS / "options_uas.xml"), "-i", "127.0.0.1",
             "-p", str(sipp_port), "-t", "u1", "-nostdin", "-bind_local"],
            sipp_port, workdir,
        )
    print(f"\nOPTIONS over UDP, {CALLS} transactions offered at {RATE}/s by a SIPp UAC")
    print(f"{'server':<22}{'succeeded':>10}{'tx/s':>10}{'CPU ms/1000 tx':>16}")
    for name, ok, per_second, cpu_ms in (ours, theirs):
        print(f"{name:<22}{ok:>10}{per_second:>10,.0f}{cpu_ms:>16,.1f}")
    ratio = ours[3] / theirs[3] if theirs[3] else float("inf")
    print(f"CPU per transaction, volte / SIPp: {ratio:.1f}x")
    return 0 if ours[1] == CALLS else 1


if __name__ == "__main__":
    raise SystemExit(main())
