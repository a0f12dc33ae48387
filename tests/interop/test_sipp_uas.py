"""Interop with a real peer: SIPp drives our UAS over UDP (with loss) and TCP; tshark checks us.

SIPp (Debian `sip-tester`) runs the scenarios in tests/interop/sipp/: OPTIONS (the 200 must
carry a To tag, our rport and an Allow listing OPTIONS) and REGISTER then unregister with
`Contact: *` (the 200 must echo the binding with its expiry, then list none). Over UDP SIPp
drops 10% of messages (`-lost 10`), so both sides' retransmission paths run: every call must
still succeed, and the transaction layer must hand each request to the UAS once however often
it arrived. dumpcap records the exchange and tshark's SIP dissector must find no malformed
packet in it.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.sip.uas import SimpleUas

SCENARIOS = Path(__file__).parent / "sipp"
CALLS = 150

pytestmark = pytest.mark.interop


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is missing: `make deps` installs it")  # never skip silently
    return path


@pytest.fixture
async def uas() -> AsyncIterator[tuple[SimpleUas, int]]:
    server = SimpleUas()
    _, port = await server.endpoint.listen("127.0.0.1", 0)
    yield server, port
    await server.endpoint.close()


async def _start_capture(port: int, path: Path) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        _need("dumpcap"), "-i", "lo", "-f", f"port {port}", "-w", str(path), "-q",
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    # dumpcap says which interface it captures on once the capture is live.
    line = await asyncio.wait_for(proc.stderr.readline(), timeout=10)
    assert b"Capturing on" in line, line
    await asyncio.sleep(0.5)  # the line comes a moment before the first packet is kept
    return proc


async def _stop_capture(proc: asyncio.subprocess.Process) -> None:
    await asyncio.sleep(0.5)  # let the last packets reach the capture
    proc.terminate()
    await asyncio.wait_for(proc.wait(), timeout=10)


async def _run_sipp(scenario: str, port: int, transport: str, tmp: Path, lost: int) -> str:
    args = [
        _need("sipp"), f"127.0.0.1:{port}", "-sf", str(SCENARIOS / f"{scenario}.xml"),
        "-t", transport, "-m", str(CALLS), "-r", "150", "-nostdin", "-timeout", "40s",
        "-timeout_error", "-trace_err", "-max_retrans", "6",
    ]
    if lost:
        args += ["-lost", str(lost)]
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=tmp, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    text = out.decode(errors="replace")
    errors = "".join(p.read_text(errors="replace")[:2000] for p in tmp.glob("*_errors.log"))
    assert proc.returncode == 0, f"SIPp exit {proc.returncode}\n{text[-3000:]}\n{errors}"
    return text


def _tshark(capture: Path, port: int, display_filter: str, field: str) -> list[str]:
    out = subprocess.run(
        [
            _need("tshark"), "-r", str(capture), "-d", f"udp.port=={port},sip",
            "-d", f"tcp.port=={port},sip", "-Y", display_filter, "-T", "fields", "-e", field,
        ],
        capture_output=True, text=True, timeout=60, check=True,
    )
    # One frame can carry several SIP messages over TCP: tshark joins their values with ','.
    return [value for line in out.stdout.splitlines() for value in line.split(",") if value]


@pytest.mark.parametrize(
    ("scenario", "transport", "lost", "requests_per_call"),
    [
        ("options", "u1", 10, 1),
        ("register", "u1", 10, 2),
        ("options", "t1", 0, 1),
        ("register", "t1", 0, 2),
    ],
)
async def test_sipp_scenario_against_uas(
    uas: tuple[SimpleUas, int],
    tmp_path: Path,
    scenario: str,
    transport: str,
    lost: int,
    requests_per_call: int,
) -> None:
    server, port = uas
    capture = tmp_path / "sip.pcapng"
    dumpcap = await _start_capture(port, capture)
    try:
        output = await _run_sipp(scenario, port, transport, tmp_path, lost)
    finally:
        await _stop_capture(dumpcap)

    assert f"Successful call        |        0                  |      {CALLS}" in output
    expected = CALLS * requests_per_call
    # The TU saw each request once; with loss, the transport saw retransmissions besides.
    assert server.requests_seen == expected
    if lost:
        assert server.endpoint.transport.stats.received > expected

    bad = "_ws.malformed || _ws.expert.severity == error"
    malformed = _tshark(capture, port, bad, "frame.number")
    assert malformed == [], f"tshark flags frames {malformed}"
    statuses = _tshark(capture, port, "sip.Status-Code", "sip.Status-Code")
    assert len(statuses) >= expected  # every answer decoded as SIP (retransmitted ones too)
    assert set(statuses) == {"200"}


async def test_malformed_request_gets_400_and_uas_keeps_serving(
    uas: tuple[SimpleUas, int], tmp_path: Path
) -> None:
    server, port = uas
    loop = asyncio.get_running_loop()
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            answers.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
    try:
        bad = (
            b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bKbad\r\n"
            b"From: <sip:a@b>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: bad1\r\nCSeq: 1 INVITE\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        transport.sendto(bad)
        answer = await asyncio.wait_for(answers.get(), timeout=5)
        assert answer.startswith(b"SIP/2.0 400 CSeq method does not match request method\r\n")
        assert b"Call-ID: bad1" in answer
        good = bad.replace(b"CSeq: 1 INVITE", b"CSeq: 1 OPTIONS").replace(b"bad1", b"good1")
        transport.sendto(good.replace(b"z9hG4bKbad", b"z9hG4bKgood"))
        answer = await asyncio.wait_for(answers.get(), timeout=5)
        assert answer.startswith(b"SIP/2.0 200 OK\r\n")
    finally:
        transport.close()
    assert server.endpoint.transport.stats.parse_errors == 1
