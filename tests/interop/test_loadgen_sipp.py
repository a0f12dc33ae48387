"""loadgen against a real far end: a SIPp UAS takes loadgen's calls (`loadgen call-setup
--callee`), and both sides' counts of the same calls must agree exactly.

SIPp (Debian `sip-tester`) answers over UDP on loopback, writes its own statistics
(-trace_stat: IncomingCall, SuccessfulCall, FailedCall, Retransmissions; -trace_counts: every
scenario message sent, received and retransmitted) and exits by itself once it has seen the
run's calls through (`-m`). loadgen runs as the `loadgen` command would (its `main()`), its
JSON report read back.

- 200 calls at 20 cps with media, SIPp's built-in uas scenario echoing the RTP (-rtp_echo):
  attempted = SIPp's IncomingCall, succeeded = SuccessfulCall, failed = FailedCall = 0, the
  retransmissions each side made agree with what the other saw, every call had audio, and the
  INVITE-to-200 time is that of a loopback exchange (well under 100 ms at p99).
- a far end that answers about a fifth of the calls 486 (tests/interop/sipp/
  call_uas_some_busy.xml): loadgen's failed_by_cause is exactly {status_486: the 486s SIPp sent}
  and its successes are the 200s SIPp sent to INVITEs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from loadgen.cli import main
from tests.interop.sipp_far_end import SippUas

pytestmark = [pytest.mark.interop, pytest.mark.slow]
SIPP_TIMEWAIT = 4.0  # SIPp keeps each call 4 s after its last message (scenario timewait)


@pytest.fixture(autouse=True)
def _sipp_installed() -> None:
    if shutil.which("sipp") is None:
        pytest.fail("sipp is missing: `make deps` installs it")  # never skip silently


def run_against(uas: SippUas, tmp_path: Path, calls: int, *args: str) -> dict[str, Any]:
    """loadgen's calls to `uas` (started here, stopped after); loadgen's JSON report."""
    report = tmp_path / "report.json"
    uas.start()
    try:
        code = main(["call-setup", "--callee", uas.uri, "--calls", str(calls), "--subscribers",
                     "20", "--run-dir", str(tmp_path / "no-stack"), "--report", str(report),
                     "--progress", "none", *args])
        # SIPp exits once its -m calls are over, timewait included
        assert uas.wait(timeout=SIPP_TIMEWAIT + 30) in (0, 1), uas.errors()
    finally:
        uas.stop()
    result: dict[str, Any] = json.loads(report.read_text())
    assert code == 0 or result["calls"]["failed"], "loadgen failed with no failed call"
    return result


def cumulative(stats: dict[str, str], name: str) -> int:
    return int(stats[f"{name}(C)"])


def test_loadgen_calls_sipp_uas_and_counts_agree(tmp_path: Path) -> None:
    calls = 200
    uas = SippUas(tmp_path / "sipp", calls=calls, rtp_echo=True)
    report = run_against(uas, tmp_path, calls, "--rate", "20", "--hold", "0.5", "--media")

    stats = uas.stats()
    c = report["calls"]
    assert c["attempted"] == cumulative(stats, "IncomingCall") == calls
    assert c["succeeded"] == cumulative(stats, "SuccessfulCall") == calls, c["failed_by_cause"]
    assert c["failed"] == cumulative(stats, "FailedCall") == 0
    assert uas.count("BYE", "Recv") == calls
    # What one side re-sent, the other saw again (none on a quiet loopback, and both say so).
    sent = report["retransmissions_by_message"]
    assert sent.get("INVITE", 0) == uas.count("INVITE", "Retrans")
    assert sent.get("BYE", 0) == uas.count("BYE", "Retrans")
    assert report["retransmissions"] == 0
    assert cumulative(stats, "Retransmissions") == 0
    # Media: SIPp echoed our RTP on every call.
    assert report["media"]["calls_checked"] == calls
    assert report["media"]["calls_without_media"] == 0
    assert report["media"]["rtp_packets_received"] > 0.8 * report["media"]["rtp_packets_sent"]
    setup = report["latency_ms"]["invite_to_200"]
    assert setup["count"] == calls
    assert 0 < setup["p50"] <= setup["p99"] < 100
    assert report["cps"]["achieved"] == pytest.approx(20, rel=0.1)


def test_far_end_refusals_match_sipps_486_count(tmp_path: Path) -> None:
    calls = 150
    uas = SippUas(tmp_path / "sipp", scenario="call_uas_some_busy.xml", calls=calls)
    report = run_against(uas, tmp_path, calls, "--rate", "50", "--hold", "0.1", "--no-media")

    stats = uas.stats()
    busy = uas.count("486", "Sent")
    answered = uas.count("200", "Sent") - uas.count("BYE", "Recv")  # the INVITEs' 200s
    assert 0 < busy < calls
    c = report["calls"]
    assert c["attempted"] == cumulative(stats, "IncomingCall") == calls
    assert c["failed_by_cause"] == {"status_486": busy}
    assert c["failed"] == busy
    assert c["succeeded"] == answered == calls - busy
    # SIPp ran its scenario to the end for every call, the 486 ones included.
    assert cumulative(stats, "SuccessfulCall") == calls
    assert cumulative(stats, "FailedCall") == 0
