"""loadgen's scenarios against the real stack: redis-server, state, media and an sbc with two
workers as processes (services.stack on free ports), loadgen run as `loadgen ...` would run it
(its `main()` in this process; `--workers 2` spawns worker processes).

Each run is short and bounded: a few seconds of load at 10-20 calls per second. The failover
test comes last in this module: it kills one of the sbc's workers (its supervisor starts a new
one).
"""

from __future__ import annotations

import csv
import json
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest

from loadgen.cli import main
from loadgen.scenarios import sbc_workers
from services.stack import Stack, StackConfig, StackError, free_port, free_port_run, pid_alive
from services.subscribers import Provisioner

pytestmark = [pytest.mark.interop, pytest.mark.slow]
FIRST = 600000
PASSWORD = "lg-secret"


def started_on_free_ports(make_config: Callable[[], StackConfig]) -> Stack:
    """A stack on the free ports `make_config` picks, tried again with new ones (up to 3 times)
    if another process took one of them meanwhile: the second sbc worker's gRPC port, for one,
    is not checked by free_port."""
    for attempt in range(3):
        stack = Stack(make_config())
        try:
            stack.start()
        except StackError:
            if attempt == 2:
                raise
            continue
        return stack
    raise AssertionError("unreachable")


def start_stack(run_dir: str) -> Stack:
    """A stack with two sbc workers on free ports."""
    return started_on_free_ports(lambda: StackConfig(
        sip_port=free_port(),
        redis_port=free_port(),
        state_grpc=f"127.0.0.1:{free_port()}",
        sbc_grpc=f"127.0.0.1:{free_port_run(2)}",
        media_grpc=f"127.0.0.1:{free_port()}",
        media_port_min=44000,
        media_port_max=44999,
        sbc_workers=2,
        run_dir=run_dir,
    ))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(str(tmp_path_factory.mktemp("stack")))
    config = stack.config
    provisioner = Provisioner(config.state_grpc)
    provisioner.provision(200, FIRST, config.domain, PASSWORD)
    provisioner.close()
    yield stack
    stack.stop()


def loadgen(stack: Stack, tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """Run `loadgen` against the stack; its exit status and JSON report."""
    report = tmp_path / "report.json"
    c = stack.config
    code = main([*args, "--target", f"{c.sip_host}:{c.sip_port}", "--run-dir", c.run_dir,
                 "--password", PASSWORD, "--report", str(report), "--progress", "lines"])
    return code, json.loads(report.read_text()) if report.exists() else {}


def ordered(summary: dict[str, Any]) -> bool:
    return bool(0 < summary["p50"] <= summary["p95"] <= summary["p99"] <= summary["max"])


def valid_png(path: Path) -> bool:
    data = path.read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or not data.endswith(b"IEND\xaeB`\x82"):
        return False
    width, height = struct.unpack("!II", data[16:24])  # IHDR
    image = matplotlib.image.imread(path)
    return bool(width > 100 and height > 100 and image.shape[:2] == (height, width))


def test_register_20_ues(stack: Stack, tmp_path: Path) -> None:
    # --provision: the subscribers go through the state service first (they exist already:
    # provisioning is idempotent)
    code, report = loadgen(stack, tmp_path, "register", "--subscribers", "20", "--start",
                           str(FIRST), "--rate", "100", "--provision", "--state",
                           stack.config.state_grpc)
    assert code == 0
    assert report["scenario"] == "register"
    regs = report["registrations"]
    assert (regs["attempted"], regs["succeeded"], regs["failed"]) == (20, 20, 0)
    assert regs["bindings_cleared"] == 20 and regs["unregistered"] == 20
    assert regs["moved_to_secondary"] == 0
    assert report["latency_ms"]["register"]["count"] == 20
    assert ordered(report["latency_ms"]["register"])
    assert report["calls"]["attempted"] == 0


def test_call_setup_10_cps_with_media(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = loadgen(
        stack, tmp_path, "call-setup", "--subscribers", "40", "--start", str(FIRST),
        "--rate", "10", "--duration", "3", "--hold", "1", "--media",
        "--csv", str(tmp_path / "series.csv"), "--plots", str(tmp_path / "plots"),
        "--timeline", str(tmp_path / "calls.jsonl"),
        "--max-failed-ratio", "0", "--max-p99-setup-ms", "2000",
    )
    assert code == 0, report.get("thresholds")
    calls = report["calls"]
    assert 29 <= calls["attempted"] <= 31
    assert calls["succeeded"] == calls["attempted"] and calls["failed"] == 0
    assert calls["failed_by_cause"] == {} and calls["blocked"] == 0
    assert report["cps"]["offered"] == pytest.approx(10, abs=0.5)
    assert report["cps"]["achieved"] == pytest.approx(10, abs=0.5)
    lat = report["latency_ms"]
    for name in ("invite_to_180", "invite_to_200"):
        assert lat[name]["count"] == calls["attempted"]
        assert ordered(lat[name]) and lat[name]["max"] < 2000
    assert lat["invite_to_200"]["p50"] >= lat["invite_to_180"]["p50"]
    assert lat["register"]["count"] == 40
    media = report["media"]
    assert media["calls_checked"] == calls["attempted"] and media["calls_without_media"] == 0
    # 50 packets/s each way for about a second per call
    assert media["rtp_packets_sent"] >= 80 * calls["attempted"]
    assert media["rtp_packets_received"] >= 0.9 * media["rtp_packets_sent"]
    assert report["bearers"] == {"enabled": False, "checked": 0, "failed": 0,
                                 "note": "not requested (--bearers)"}
    assert isinstance(report["retransmissions"], int)
    assert report["passed"] and not any(t["exceeded"] for t in report["thresholds"].values())

    rows = list(csv.DictReader((tmp_path / "series.csv").open()))
    assert len(rows) >= 3
    assert set(rows[0]) >= {"second", "offered", "achieved", "active", "failed",
                            "setup_p50_ms", "setup_p99_ms"}
    assert sum(int(r["offered"]) for r in rows) == calls["offered"]
    assert all(int(r["failed"]) == 0 for r in rows)
    assert all(float(r["setup_p50_ms"]) > 0 for r in rows[:3])
    for name in ("cps.png", "latency.png", "failures.png", "report.png"):
        assert valid_png(tmp_path / "plots" / name), name
    timeline = [json.loads(line) for line in (tmp_path / "calls.jsonl").open()]
    assert len(timeline) == calls["attempted"]
    assert [e[0] for e in timeline[0]["events"]] == ["INVITE", "180", "200", "ACK", "BYE",
                                                     "BYE 200"]
    out = capsys.readouterr().out
    assert "achieved" in out and "cps" in out  # the plain progress lines (not a terminal)
    assert "invite_to_200" in out  # the summary table


def test_thresholds_exceeded_exit_non_zero(stack: Stack, tmp_path: Path) -> None:
    # Half the calls are cancel calls whose CANCEL would come after the setup timeout: they
    # fail ("timeout"); and no setup is that fast.
    code, report = loadgen(
        stack, tmp_path, "call-setup", "--subscribers", "20", "--start", str(FIRST + 40),
        "--rate", "20", "--calls", "8", "--hold", "0.2", "--mix", "cancel=0.5",
        "--cancel-after", "5", "--setup-timeout", "0.5",
        "--max-failed-ratio", "0.1", "--max-p99-setup-ms", "0.001",
    )
    assert code == 1
    assert report["passed"] is False
    failed = report["thresholds"]["max_failed_ratio"]
    assert failed["exceeded"] and failed["value"] > 0.1
    assert report["calls"]["failed_by_cause"]["timeout"] == report["calls"]["failed"]
    assert report["thresholds"]["max_p99_setup_ms"]["exceeded"]


def test_soak_with_busy_and_cancel_mix_and_reregistration(stack: Stack, tmp_path: Path) -> None:
    code, report = loadgen(
        stack, tmp_path, "soak", "--subscribers", "60", "--start", str(FIRST + 60),
        "--rate", "20", "--duration", "3", "--hold", "0.5", "--mix", "busy=0.25,cancel=0.25",
        "--reregister", "1", "--window", "1", "--seed", "5", "--max-failed-ratio", "0",
    )
    assert code == 0, report["calls"]
    kinds = report["calls"]["by_kind"]
    assert set(kinds) == {"normal", "busy", "cancel"}
    for tally in kinds.values():
        assert tally["attempted"] > 0 and tally["succeeded"] == tally["attempted"]
    assert report["latency_ms"]["invite_to_200"]["count"] == kinds["normal"]["attempted"]
    regs = report["registrations"]
    assert regs["reregistrations"] > 0 and regs["failed"] == 0
    assert [w["from_s"] for w in report["soak"]["windows"]] == [0, 1, 2]


def test_two_workers_merge_their_results(stack: Stack, tmp_path: Path) -> None:
    started = time.monotonic()
    code, report = loadgen(
        stack, tmp_path, "call-setup", "--workers", "2", "--subscribers", "40", "--start",
        str(FIRST + 120), "--rate", "10", "--duration", "2", "--hold", "0.5",
        "--timeline", str(tmp_path / "calls.jsonl"), "--max-failed-ratio", "0",
    )
    assert code == 0
    assert time.monotonic() - started < 30
    assert report["engine"]["workers"] == 2 and report["engine"]["ues"] == 40
    calls = report["calls"]
    assert 19 <= calls["attempted"] <= 21 and calls["succeeded"] == calls["attempted"]
    assert report["registrations"]["before_load"] == 40
    assert report["latency_ms"]["invite_to_200"]["count"] == calls["attempted"]
    assert sum(row["offered"] for row in report["timeseries"]) == calls["offered"]
    timeline = [json.loads(line) for line in (tmp_path / "calls.jsonl").open()]
    assert len(timeline) == calls["attempted"]
    callers = {int(t["caller"]) - FIRST - 120 for t in timeline}
    assert min(callers) < 20 <= max(callers)  # both workers' halves of the subscribers called
    assert not list(tmp_path.glob("calls.jsonl.part*"))


def test_ues_move_to_their_secondary_pcscf(stack: Stack, tmp_path: Path) -> None:
    dead = free_port()  # nothing listens there: the primary P-CSCF is down
    c = stack.config
    report_path = tmp_path / "report.json"
    code = main(["register", "--target", f"127.0.0.1:{dead}", "--target",
                 f"{c.sip_host}:{c.sip_port}", "--subscribers", "4", "--start",
                 str(FIRST + 160), "--password", PASSWORD, "--register-timeout", "1",
                 "--run-dir", c.run_dir, "--report", str(report_path), "--progress", "none"])
    report = json.loads(report_path.read_text())
    assert code == 0
    regs = report["registrations"]
    assert regs["succeeded"] == 4 and regs["moved_to_secondary"] == 4


def test_scale_out_reports_cps_per_step_and_scales_only_when_saturated(
    stack: Stack, tmp_path: Path
) -> None:
    code, report = loadgen(
        stack, tmp_path, "scale-out", "--subscribers", "40", "--start", str(FIRST),
        "--steps", "5,10", "--step-duration", "1.5", "--hold", "0.3",
        "--plots", str(tmp_path / "plots"),
    )
    assert code == 0
    scale = report["scale_out"]
    assert scale["sbc_workers"] == 2 and scale["scaled"] is False
    assert scale["action"] == "no step saturated the sbc: nothing to scale"
    assert [s["rate"] for s in scale["steps"]] == [5, 10]
    assert [s["sbc_workers"] for s in scale["steps"]] == [2, 2]
    assert len(sbc_workers(stack.config.run_dir)) == 2
    assert scale["steps"][1]["achieved_cps"] > scale["steps"][0]["achieved_cps"]
    assert valid_png(tmp_path / "plots" / "report.png")


def test_scale_out_adds_an_sbc_worker_when_a_step_saturates(tmp_path: Path) -> None:
    """One sbc worker admitting about 8 new requests/s (its overload control's starting rate):
    the 14 cps step gets 503s, loadgen adds a worker (`volte scale sbc 2`), the next step runs
    on two workers with fewer 503s."""
    one = started_on_free_ports(lambda: StackConfig(
        sip_port=free_port(), redis_port=free_port(), state_grpc=f"127.0.0.1:{free_port()}",
        sbc_grpc=f"127.0.0.1:{free_port_run(2)}", media_grpc=f"127.0.0.1:{free_port()}",
        media_port_min=44000, media_port_max=44999, run_dir=str(tmp_path / "stack"),
        extra_sbc_args=["--overload-initial-rate", "8"],
    ))
    config = one.config
    try:
        provisioner = Provisioner(config.state_grpc)
        provisioner.provision(12, FIRST, config.domain, PASSWORD)
        provisioner.close()
        code, report = loadgen(
            # Registering goes through the same admission (twice per UE, with the challenge):
            # slowly, so that every UE registers before the load.
            one, tmp_path, "scale-out", "--subscribers", "12", "--start", str(FIRST),
            "--register-rate", "3", "--no-clear-bindings", "--steps", "3,14,14",
            "--step-duration", "4", "--hold", "0.3", "--no-media", "--max-sbc-workers", "2",
        )
        assert report, f"loadgen exited {code} without a report"
        scale = report["scale_out"]
        assert scale["sbc_workers"] == 1 and scale["scaled"] is True, scale["action"]
        event = next(e for e in report["events"] if e["kind"] == "scale")
        assert event["after_step"] == 1 and event["workers_after"] == 2
        assert [s["sbc_workers"] for s in scale["steps"]] == [1, 1, 2]
        assert scale["steps"][1]["rejected_503"] > 0
        assert scale["steps"][2]["rejected_503"] < scale["steps"][1]["rejected_503"]
        assert set(scale["cps_by_workers"]) == {"1", "2"}
        assert scale["sbc_workers_at_end"] == 2
        assert len(sbc_workers(config.run_dir)) == 2  # the stack runs two workers now
    finally:
        one.stop()


def test_failover_needs_a_stack_to_kill_in(tmp_path: Path) -> None:
    code = main(["failover", "--run-dir", str(tmp_path), "--target", "127.0.0.1:9",
                 "--progress", "none"])
    assert code == 3


def test_failover_killing_one_of_two_sbc_workers(stack: Stack, tmp_path: Path) -> None:
    run_dir = stack.config.run_dir
    before = sbc_workers(run_dir)
    assert len(before) == 2
    code, report = loadgen(
        stack, tmp_path, "failover", "--subscribers", "100", "--start", str(FIRST),
        "--rate", "10", "--duration", "6", "--event-at", "2", "--hold", "2",
        "--plots", str(tmp_path / "plots"),
    )
    assert code == 0
    kill = next(e for e in report["events"] if e["kind"] == "kill")
    assert kill["pid"] in before and kill["signal"] == "SIGKILL"
    assert kill["t_s"] == pytest.approx(2.0, abs=0.2)
    f = report["failover"]
    assert f["killed_pid"] == kill["pid"]
    # about 20 calls were up when the worker died: in-dialog requests carry their route
    # (flow tokens), so the other worker ends them: none is lost
    assert f["established_at_event"] >= 10
    assert f["established_calls_lost"] == 0
    assert f["recovered"] and f["recovery_s"] is not None and f["recovery_s"] <= 3
    assert f["setup_failures_in_window"] <= 5
    assert report["calls"]["attempted"] >= 55
    assert valid_png(tmp_path / "plots" / "report.png")
    # the supervisor replaced the killed worker
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(sbc_workers(run_dir)) < 2:
        time.sleep(0.1)
    after = sbc_workers(run_dir)
    assert len(after) == 2 and kill["pid"] not in after
    assert not pid_alive(kill["pid"])
