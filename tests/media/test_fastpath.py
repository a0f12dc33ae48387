"""The fast-path interface: loading with fallback, the guard, and the one-way adapter."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from services.media.fastpath import (
    Counters,
    Direction,
    FastPath,
    FastPathOptions,
    Flow,
    FlowCounters,
    OneWayAdapter,
    UserspaceOnly,
    guarded,
    load,
)

FLOW = Flow(
    7,
    a_to_b=Direction(("10.0.0.5", 30000), ("203.0.113.1", 61000), ("10.0.0.5", 30002),
                     ("198.51.100.20", 5000)),
    b_to_a=Direction(("10.0.0.5", 30002), ("198.51.100.20", 5000), ("10.0.0.5", 30000),
                     ("203.0.113.1", 61000)),
)


class OneWay:
    """The shape of services.media.xdp.XdpFastPath: one direction per flow."""

    def __init__(self, refuse: str = "") -> None:
        self.refuse = refuse
        self.flows: dict[Any, Any] = {}

    def install(self, flow: Any) -> bool:
        if flow.id[1] == self.refuse:
            return False
        self.flows[flow.id] = flow
        return True

    def remove(self, flow_id: Any) -> None:
        self.flows.pop(flow_id, None)

    def counters(self) -> dict[Any, tuple[int, int]]:
        return {fid: (10, 1720) if fid[1] == "a_to_b" else (5, 860) for fid in self.flows}

    def close(self) -> None:
        self.flows.clear()


def test_userspace_only_declines_everything():
    fast: FastPath = UserspaceOnly()
    assert isinstance(fast, FastPath)
    assert fast.install(FLOW) is False
    assert fast.counters() == {}


def test_one_way_adapter_installs_both_directions_or_none():
    inner = OneWay()
    fast = OneWayAdapter(inner)
    assert fast.install(FLOW)
    forward = inner.flows[(7, "a_to_b")]
    assert (forward.local_in, forward.source, forward.local_out, forward.destination) == (
        ("10.0.0.5", 30000), ("203.0.113.1", 61000), ("10.0.0.5", 30002),
        ("198.51.100.20", 5000),
    )
    assert inner.flows[(7, "b_to_a")].destination == ("203.0.113.1", 61000)
    assert fast.counters() == {7: FlowCounters(Counters(10, 1720), Counters(5, 860))}
    fast.remove(FLOW)
    assert inner.flows == {}

    half = OneWay(refuse="b_to_a")
    assert OneWayAdapter(half).install(FLOW) is False
    assert half.flows == {}  # the forward half was taken back


def test_guard_turns_failures_into_userspace_and_logs_once(caplog: pytest.LogCaptureFixture):
    class Failing(OneWay):
        def install(self, flow: Any) -> bool:
            raise OSError("map full")

    fast = guarded(OneWayAdapter(Failing()))
    with caplog.at_level(logging.WARNING, logger="volte.media.fastpath"):
        assert [fast.install(FLOW) for _ in range(3)] == [False] * 3
    assert len(caplog.records) == 1 and "map full" in caplog.records[0].getMessage()


def test_load_falls_back_to_userspace_when_xdp_cannot_attach(caplog: pytest.LogCaptureFixture):
    options = FastPathOptions("volte-none0", "127.0.0.1", 30000, 30009)
    with caplog.at_level(logging.WARNING, logger="volte.media.fastpath"):
        fast = load("xdp", options)
    assert isinstance(fast, UserspaceOnly)
    [record] = caplog.records
    assert "XDP fast path unavailable" in record.getMessage()
    assert "relaying in userspace" in record.getMessage()
    assert isinstance(load("userspace", options), UserspaceOnly)
    with pytest.raises(ValueError, match="unknown fast path"):
        load("dpdk", options)
