"""Overload control on a fake clock: admission follows the bucket, the rate follows latency."""

from __future__ import annotations

from services.sbc.overload import OverloadControl


def test_bucket_admits_a_burst_then_the_rate() -> None:
    oc = OverloadControl(rate=100.0, bucket_seconds=0.5)
    admitted = sum(oc.admit(0.0) for _ in range(200))
    assert admitted == 50  # the burst allowance: half a second of rate
    assert sum(oc.admit(1.0) for _ in range(200)) == 50  # refilled at 100/s, capped at burst
    assert oc.rejected == 300


def test_rate_drops_when_latency_exceeds_target_and_recovers_under_demand() -> None:
    oc = OverloadControl(rate=1000.0, target_latency=0.1, adjust_every=1.0, smoothing=1.0)
    oc.record_latency(0.4, now=0.0)
    oc.record_latency(0.4, now=1.0)  # adjust: four times over target, halved at most
    assert oc.rate == 500.0
    assert oc.retry_after() == 4
    oc.record_latency(0.01, now=2.0)  # under target but nobody was refused: no increase
    assert oc.rate == 500.0
    for _ in range(1000):
        oc.admit(2.5)  # demand above the rate: the bucket runs dry
    oc.record_latency(0.01, now=3.0)
    assert oc.rate == 525.0  # additive increase, 5%


def test_rate_stays_within_bounds() -> None:
    oc = OverloadControl(rate=20.0, min_rate=10.0, target_latency=0.01, smoothing=1.0)
    for t in range(10):
        oc.record_latency(5.0, now=float(t))
    assert oc.rate == 10.0
