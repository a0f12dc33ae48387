"""loadgen's pure parts: the schedule, the mix, shares, histograms, merging, the report."""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import random
import time
from collections import Counter

import pytest

from loadgen.agent import CallRecord, LoadUe, OutgoingCall
from loadgen.bearers import BearerConfig, SimulatedBearers
from loadgen.config import CallKind, LoadConfig, Mix, parse_address
from loadgen.engine import Outcome, Worker
from loadgen.report import CSV_COLUMNS, build_report, write_csv, write_json
from loadgen.scenarios import step_saturated
from loadgen.stats import Histogram, Results, merge_all, recovery_seconds
from services.enb.simulator import BearerDown, BearerUp, EnbSimulator, SimulatorConfig, UeGone
from services.subscribers import imsi_of, subscriber

# -- configuration ------------------------------------------------------------------------------


def test_mix_parses_and_picks_kinds_in_proportion() -> None:
    mix = Mix.parse("busy=0.05, cancel=0.10")
    assert (mix.busy, mix.cancel) == (0.05, 0.10)
    assert Mix.parse("") == Mix()
    rng = random.Random(7)
    kinds = Counter(mix.pick(rng.random()) for _ in range(20_000))
    assert kinds[CallKind.BUSY] / 20_000 == pytest.approx(0.05, abs=0.01)
    assert kinds[CallKind.CANCEL] / 20_000 == pytest.approx(0.10, abs=0.01)
    for bad in ("busy", "ring=0.1", "busy=x", "busy=0.7,cancel=0.7", "cancel=-0.1"):
        with pytest.raises(ValueError):
            Mix.parse(bad)


def test_parse_address() -> None:
    assert parse_address("10.0.0.1:5070") == ("10.0.0.1", 5070)
    assert parse_address("sbc.local") == ("sbc.local", 5060)
    assert parse_address("[::1]:5080") == ("::1", 5080)
    for bad in (":5060", "h:x", "h:0", "h:70000"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_rate_ramps_then_holds_and_scale_out_steps() -> None:
    c = LoadConfig("call-setup", rate=100, ramp=10)
    assert [c.rate_at(t) for t in (-1, 0, 5, 10, 50)] == [0, 0, 50, 100, 100]
    s = LoadConfig("scale-out", steps=(10, 20, 40), step_duration=5)
    assert [s.rate_at(t) for t in (0, 4.9, 5, 12, 99)] == [10, 10, 20, 40, 40]
    assert s.load_duration == 15


def test_every_run_is_bounded() -> None:
    assert LoadConfig("call-setup").load_duration == 10
    assert LoadConfig("soak").load_duration == 600
    assert LoadConfig("call-setup", calls=50).load_duration is None
    assert LoadConfig("call-setup", calls=50).count_limit == 50
    assert LoadConfig("register", subscribers=20).count_limit == 20
    assert LoadConfig("register", duration=5).count_limit is None
    assert LoadConfig("call-setup", hold=2, setup_timeout=10).drain_timeout == 17


def test_shares_split_pairs_rate_and_calls_without_overlap() -> None:
    c = LoadConfig("call-setup", subscribers=21, start=1000, rate=9, calls=10,
                   max_concurrent=7, workers=3)
    shares = [c.share(i, 3) for i in range(3)]
    assert [s.subscribers for s in shares] == [8, 6, 6]  # 10 pairs: 4 + 3 + 3
    ranges = [(s.start, s.start + s.subscribers) for s in shares]
    assert ranges[0][0] == 1000 and all(a[1] <= b[0] for a, b in itertools.pairwise(ranges))
    assert sum(s.calls or 0 for s in shares) == 10
    assert sum(s.rate for s in shares) == pytest.approx(9)
    assert len({s.seed for s in shares}) == 3
    assert [s.phase for s in shares] == pytest.approx([0, 1 / 3, 2 / 3])


def test_shares_cover_every_pair() -> None:
    c = LoadConfig("call-setup", subscribers=20, start=100)
    shares = [c.share(i, 3) for i in range(3)]
    numbers = [n for s in shares for n in range(s.start, s.start + s.subscribers)]
    assert numbers == list(range(100, 120))


def test_shares_give_each_worker_enbs_of_its_own() -> None:
    c = LoadConfig("call-setup", subscribers=40, bearers=BearerConfig(enbs=5))
    shares = [c.share(i, 2) for i in range(2)]
    assert [(s.bearers.enbs, s.bearers.first_enb) for s in shares if s.bearers] == [(3, 0), (2, 3)]
    assert LoadConfig("call-setup").share(0, 2).bearers is None
    for bad in ({"enbs": 0}, {"failures": 1.5}, {"transport": "tcp"}):
        with pytest.raises(ValueError):
            BearerConfig(**bad)


def test_simulated_ues_carry_their_subscribers_imsis() -> None:
    # loadgen spreads consecutive numbers over the eNBs; each UE must attach with the IMSI the
    # subscriber record has, or the sbc's bearer request names a UE the agent does not know
    sim = EnbSimulator(SimulatorConfig(enbs=3, ues_per_enb=4, imsi_base=100000))
    assert sim.imsis == [imsi_of(str(n)) for n in range(100000, 100012)]
    assert subscriber("100005", "ims.local", "pw").imsi == imsi_of("100005") == "001010000100005"


async def test_the_bearer_check_wants_both_ues_and_a_bearer_of_this_call() -> None:
    check = SimulatedBearers(BearerConfig())
    before = time.monotonic()
    for number in ("100000", "100001"):
        check._on_event(BearerUp(imsi_of(number), 6, qci=1))
    check._on_event(BearerUp(imsi_of("100002"), 6, qci=9))  # not a voice bearer
    assert await check.check("100000", "100001", before)
    assert not await check.check("100000", "100001", time.monotonic())  # an older call's
    assert not await check.check("100002", "100000", before)
    check._on_event(BearerDown(imsi_of("100001"), 6))
    assert not await check.check("100000", "100001", before)
    check._on_event(UeGone(imsi_of("100000"), None))
    assert not await check.check("100000", "100001", before)


# -- statistics ---------------------------------------------------------------------------------


def test_histogram_percentiles_within_one_percent() -> None:
    rng = random.Random(3)
    values = [rng.lognormvariate(3, 1) for _ in range(5000)]
    h = Histogram()
    for v in values:
        h.record(v)
    ordered = sorted(values)
    for q in (0.5, 0.95, 0.99):
        true = ordered[int(q * len(values)) - 1]
        got = h.percentile(q)
        assert got is not None and true * 0.99 <= got <= true * 1.011
    assert h.percentile(1.0) == max(values)
    summary = h.summary()
    assert summary["count"] == 5000
    assert summary["p50"] <= summary["p95"] <= summary["p99"] <= summary["max"]  # type: ignore[operator]
    assert Histogram().summary()["p99"] is None


def test_histogram_merge_equals_one_histogram() -> None:
    a, b, both = Histogram(), Histogram(), Histogram()
    for i in range(1, 200):
        (a if i % 2 else b).record(i * 1.7)
        both.record(i * 1.7)
    a.merge(b)
    assert a.summary() == both.summary()


def test_results_merge_adds_counts_and_buckets() -> None:
    one, two = Results(), Results()
    for r, n in ((one, 3), (two, 5)):
        r.attempted = r.succeeded = n
        r.failed_by_cause["timeout"] += 1
        r.kind("normal").attempted += n
        r.second(0).offered += n
        r.second(2).setup.record(10.0 * n)
        r.latency["invite_to_200"].record(10.0 * n)
        r.retransmissions["INVITE"] += 1
        r.failover.after.setdefault(0, [0, 0])[1] += 1
    total = merge_all([one, two])
    assert (total.attempted, total.workers) == (8, 2)
    assert total.failed_by_cause["timeout"] == 2
    assert total.kind("normal").attempted == 8
    assert total.second(0).offered == 8 and total.second(2).setup.count == 2
    assert total.latency["invite_to_200"].max == 50.0
    assert total.retransmissions["INVITE"] == 2
    assert total.failover.after[0] == [0, 2]


def test_recovery_is_the_first_second_at_999_per_mille() -> None:
    assert recovery_seconds({0: [10, 0]}) == 0
    assert recovery_seconds({0: [2, 8], 1: [9, 1], 2: [10, 0], 3: [5, 5]}) == 2
    assert recovery_seconds({0: [0, 3], 1: [0, 0]}) is None
    assert recovery_seconds({}) is None


# -- one call's outcome -------------------------------------------------------------------------


def finished(record: CallRecord, *, media: bool = True) -> tuple[Results, CallRecord]:
    worker = Worker(LoadConfig("call-setup", media=media))
    worker.t0 = time.monotonic() - 1.0
    callee = LoadUe("2", "pw", domain="d", proxies=[("127.0.0.1", 9)],
                    retransmissions=Counter())
    worker._finish(record, callee)
    return worker.results, record


def answered(**kw: object) -> CallRecord:
    now = time.monotonic()
    record = CallRecord(CallKind.NORMAL, "1", "2", "x", started=now - 0.5, status=200,
                        setup_done=now - 0.4, established=now - 0.4, bye_sent=now,
                        bye_status=200, bye_ms=2.0, rtp_sent=50, rtp_received=49,
                        callee_rtp_sent=50, callee_rtp_received=50)
    for key, value in kw.items():
        setattr(record, key, value)
    return record


def test_a_call_with_audio_both_ways_succeeds() -> None:
    results, record = finished(answered())
    assert record.cause is None and results.succeeded == 1
    assert results.media_checked == 1 and results.media_without == 0
    assert results.rtp_received == 99


def test_a_call_without_audio_one_way_fails_as_no_audio() -> None:
    results, record = finished(answered(callee_rtp_received=0))
    assert record.cause == "no_audio"
    assert results.failed_by_cause == {"no_audio": 1}
    assert (results.media_without, results.media_one_way) == (1, 1)
    # ... and with media off nothing is checked
    results, record = finished(answered(callee_rtp_received=0, rtp_received=0), media=False)
    assert record.cause is None and results.media_checked == 0


def test_a_failed_bye_or_a_network_hang_up_fails_the_call() -> None:
    _, record = finished(answered(bye_status=0))
    assert record.cause == "bye_timeout"
    _, record = finished(answered(bye_status=481))
    assert record.cause == "bye_481"
    results, record = finished(answered(dropped=True))
    assert record.cause == "dropped" and results.dropped == 1


def test_busy_and_cancel_calls_succeed_when_they_end_as_planned() -> None:
    busy = CallRecord(CallKind.BUSY, "1", "2", "b", started=time.monotonic(), status=486)
    cancel = CallRecord(CallKind.CANCEL, "1", "2", "c", started=time.monotonic(), status=487)
    assert busy.setup_ok and cancel.setup_ok
    assert not CallRecord(CallKind.BUSY, "1", "2", "d", status=200).setup_ok
    assert not CallRecord(CallKind.NORMAL, "1", "2", "e", status=486).setup_ok


# -- the report ---------------------------------------------------------------------------------


def synthetic(scenario: str = "call-setup", **kw: object) -> tuple[LoadConfig, Outcome]:
    config = LoadConfig(scenario, rate=10, duration=3, **kw)  # type: ignore[arg-type]
    r = Results(load_seconds=3.0, attempted=30, succeeded=29, failed=1, offered=30,
                setups_succeeded=29, media_checked=29)
    r.failed_by_cause["status_503"] = 1
    for k in range(3):
        s = r.second(k)
        s.offered = s.attempted = 10
        s.achieved = s.started_ok = 10 - (k == 1)
        s.started_failed = s.failed = s.rejected_503 = int(k == 1)
        for ms in (10, 20, 30):
            s.setup.record(ms)
            r.latency["invite_to_200"].record(ms)
    r.failover.established_at_event = 4
    r.failover.after = {0: [8, 2], 1: [10, 0]}
    return config, Outcome(r, [{"kind": "kill", "t_s": 1.0, "pid": 42, "signal": "SIGKILL"}],
                           time.time(), 20)


def test_report_has_the_documented_keys(tmp_path) -> None:
    config, outcome = synthetic("failover", event_at=1.0, max_failed_ratio=0.01,
                                max_p99_setup_ms=25.0)
    report = build_report(config, outcome)
    for path in ("scenario", "calls.attempted", "calls.succeeded", "calls.failed",
                 "calls.failed_by_cause", "cps.offered", "cps.achieved",
                 "latency_ms.invite_to_180", "latency_ms.invite_to_200", "latency_ms.register",
                 "retransmissions", "media.calls_without_media", "bearers.failed",
                 "failover.recovery_s", "failover.established_calls_lost"):
        node = report
        for part in path.split("."):
            assert part in node, path
            node = node[part]
    for name in ("invite_to_180", "invite_to_200", "register"):
        assert set(report["latency_ms"][name]) >= {"p50", "p95", "p99", "max"}
    assert report["cps"]["offered"] == 10.0
    assert report["failover"]["recovery_s"] == 1.0
    assert report["failover"]["setup_failures_in_window"] == 2
    assert report["thresholds"]["max_failed_ratio"]["exceeded"]  # 1/30 > 0.01
    assert report["thresholds"]["max_p99_setup_ms"]["exceeded"]  # p99 30 > 25
    assert report["passed"] is False
    write_json(report, str(tmp_path / "r.json"))
    assert json.loads((tmp_path / "r.json").read_text())["scenario"] == "failover"
    write_csv(report, str(tmp_path / "r.csv"))
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert len(rows) == 3 and tuple(rows[0]) == CSV_COLUMNS
    assert rows[1]["rejected_503"] == "1" and rows[1]["success_ratio"] == "0.9"


def test_scale_out_report_names_the_saturated_step_and_the_workers_per_step() -> None:
    config = LoadConfig("scale-out", steps=(10, 20, 30), step_duration=1)
    r = Results(load_seconds=3.0)
    for k, (achieved, p99, rejected) in enumerate(((10, 20.0, 0), (20, 25.0, 0),
                                                    (22, 300.0, 4))):
        s = r.second(k)
        s.offered = int(config.steps[k])
        s.achieved = achieved
        s.rejected_503 = rejected
        s.setup.record(p99)
    report = build_report(config, Outcome(r), sbc_workers=2)
    scale = report["scale_out"]
    assert scale["saturated_at_step"] == 2
    assert scale["steps"][2]["why"][0] == "4 x 503"
    assert scale["scaled"] is False and "not scaled" in scale["action"]
    assert scale["cps_by_workers"] == {"2": 22.0}
    # The same run, had the controller added a worker after step 1:
    event = {"kind": "scale", "after_step": 1, "workers_before": 2, "workers_after": 3,
             "why": ["achieved 15 < 95% of 20 offered"],
             "what": "after step 1 saturated (achieved 15 < 95% of 20 offered): sbc scaled from "
                     "2 to 3 workers"}
    scale = build_report(config, Outcome(r, [event]), sbc_workers=2)["scale_out"]
    assert [s["sbc_workers"] for s in scale["steps"]] == [2, 2, 3]
    assert scale["scaled"] is True and scale["sbc_workers_at_end"] == 3
    assert scale["cps_by_workers"] == {"2": 20.0, "3": 22.0}
    assert scale["action"].startswith("after step 1 saturated (achieved 15")


def test_a_step_is_saturated_by_failures_or_a_shortfall() -> None:
    assert step_saturated(offered=100, achieved=99, failed=0, seconds=10) == []
    # The last second's offers may still be in setup when the step ends:
    assert step_saturated(offered=100, achieved=86, failed=0, seconds=10) == []
    assert step_saturated(offered=100, achieved=84, failed=0, seconds=10) == [
        "achieved 84 < 95% of 100 offered"]
    assert step_saturated(offered=100, achieved=99, failed=1, seconds=10) == ["1 failed setups"]


# -- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["call-setup", "--subscribers", "1"],  # no pair
        ["call-setup", "--mix", "ring=0.1"],
        ["call-setup", "--rate", "0"],
        ["call-setup", "--target", "host:notaport"],
        ["scale-out", "--duration", "5"],
        ["scale-out", "--steps", "10,-1"],
        ["failover", "--duration", "5", "--event-at", "9"],
        ["register", "--subscribers", "3", "--workers", "4"],
        ["call-setup", "--callee", "service@127.0.0.1"],  # not a URI
        ["call-setup", "--callee", "tel:+4930123"],  # not a sip: URI
        ["call-setup", "--callee", "sip:far@127.0.0.1", "--mix", "busy=0.1"],
        ["call-setup", "--callee", "sip:far@127.0.0.1", "--bearers"],
        ["register", "--callee", "sip:far@127.0.0.1"],
        ["bogus"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], tmp_path, capsys) -> None:
    from loadgen.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--run-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_defaults_come_from_the_stack_in_the_run_dir(tmp_path) -> None:
    from loadgen.cli import build_parser, config_from_args

    (tmp_path / "stack.json").write_text(json.dumps({
        "config": {"sip_host": "127.0.0.2", "sip_port": 5070, "domain": "lab.example",
                   "state_grpc": "127.0.0.2:50099", "run_dir": str(tmp_path)},
        "procs": [],
    }))
    args = build_parser().parse_args(["call-setup", "--run-dir", str(tmp_path)])
    config, state = config_from_args(args)
    assert config.targets == (("127.0.0.2", 5070),)
    assert (config.domain, state) == ("lab.example", "127.0.0.2:50099")
    args = build_parser().parse_args(["call-setup", "--run-dir", str(tmp_path / "none"),
                                      "--target", "10.0.0.1:5060", "--target", "10.0.0.2"])
    config, state = config_from_args(args)
    assert config.targets == (("10.0.0.1", 5060), ("10.0.0.2", 5060))
    assert (config.domain, state) == ("ims.local", "127.0.0.1:50051")


def test_a_far_end_is_called_at_its_uri_unless_a_target_is_given(tmp_path) -> None:
    from loadgen.cli import build_parser, config_from_args

    (tmp_path / "stack.json").write_text(json.dumps({
        "config": {"sip_host": "127.0.0.2", "sip_port": 5070, "run_dir": str(tmp_path)},
        "procs": [],
    }))
    parse = build_parser().parse_args
    config, _ = config_from_args(parse(["call-setup", "--run-dir", str(tmp_path), "--callee",
                                        "sip:service@10.0.0.9:5080;transport=udp"]))
    assert config.targets == (("10.0.0.9", 5080),)  # not the stack's sbc
    assert config.callee == "sip:service@10.0.0.9:5080;transport=udp" and config.far_end
    config, _ = config_from_args(parse(["call-setup", "--callee", "sip:[::1]", "--run-dir",
                                        str(tmp_path)]))
    assert config.targets == (("::1", 5060),)
    config, _ = config_from_args(parse(["call-setup", "--callee", "sip:svc@far.example",
                                        "--target", "10.0.0.1:5062"]))
    assert config.targets == (("10.0.0.1", 5062),)  # an outbound proxy


def test_far_end_shares_split_single_ues() -> None:
    c = LoadConfig("call-setup", callee="sip:far@127.0.0.1", subscribers=5, start=100,
                   workers=2)
    assert c.far_end and c.solo and not LoadConfig("call-setup").solo
    shares = [c.share(i, 2) for i in range(2)]
    assert [(s.start, s.subscribers) for s in shares] == [(100, 3), (103, 2)]


async def test_a_hang_up_by_the_network_ends_the_talk_at_once() -> None:
    ue = LoadUe("100", "pw", domain="ims.local", proxies=[("127.0.0.1", 9)],
                retransmissions=Counter())
    record = CallRecord(CallKind.NORMAL, "100", "101", "cid-drop")
    call = OutgoingCall(ue, record, media=False)
    record.started = record.established = time.monotonic()
    talk = asyncio.ensure_future(call.wait(30.0))
    await asyncio.sleep(0.05)
    assert not talk.done()
    call.dropped_by_network(time.monotonic())
    await asyncio.wait_for(talk, 1.0)  # not the 30 s hold
    assert record.dropped
    started = time.monotonic()
    await call.wait(30.0)  # dropped already: no wait at all
    assert time.monotonic() - started < 0.5
