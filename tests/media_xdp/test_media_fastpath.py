"""services.media.xdp through the media relay's own FastPath interface (services.media.fastpath).

The relay's `load("xdp", options)` imports this package and calls `create(options)`; a `Flow`
is one stream in both directions, and only the latched sender of each direction is relayed in
the kernel. In a pod the relay has one media interface, so both legs here sit behind r1 (two
UEs in namespace A) and every relayed packet leaves the way it came (XDP_TX). On a veth, as
here and in a pod without SR-IOV, the "auto" mode that the relay uses runs XDP in generic mode.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator

import pytest

from services.media.fastpath import (
    Counters,
    Direction,
    FastPath,
    FastPathOptions,
    Flow,
    FlowCounters,
    Guarded,
    UserspaceOnly,
    load,
)
from services.media.xdp import XdpRelayFastPath, create
from tests.media_xdp.conftest import Topology
from tests.media_xdp.traffic import V4, receive, silent, udp

pytestmark = pytest.mark.interop

RELAY, UE = V4["r1"], V4["a"]
A_PORT, B_PORT = 40090, 40092  # relay ports facing A and facing B
CALLER, CALLEE = (UE, 5090), (UE, 5092)

# Checked by mypy (`make lint`): create() makes something the relay accepts as a FastPath.
_typed: Callable[[FastPathOptions], FastPath] = create


def options(interface: str = "", bind: str = RELAY) -> FastPathOptions:
    return FastPathOptions(interface=interface, bind=bind, port_min=40000, port_max=40999)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for s in made:
        s.close()


def test_a_call_through_the_relay_fast_path(
    topology: Topology, sockets: list[socket.socket]
) -> None:
    caller, callee = udp(topology.a, CALLER), udp(topology.a, CALLEE)
    stranger = udp(topology.a, (UE, 5094))
    relay_a, relay_b = udp(topology.relay, (RELAY, A_PORT)), udp(topology.relay, (RELAY, B_PORT))
    sockets.extend((caller, callee, stranger, relay_a, relay_b))
    flow = Flow(
        id=7,
        a_to_b=Direction((RELAY, A_PORT), CALLER, (RELAY, B_PORT), CALLEE),
        b_to_a=Direction((RELAY, B_PORT), CALLEE, (RELAY, A_PORT), CALLER),
    )
    with topology.relay.enter():
        fast = load("xdp", options())  # interface "": the one holding --bind, r1
        assert isinstance(fast, Guarded) and isinstance(fast.inner, XdpRelayFastPath)
        assert fast.name == "xdp" and fast.inner.fast.modes == {"r1": "generic"}  # a veth
        # Latching happened in userspace: the relay has heard from (and sent to) both UEs.
        caller.sendto(b"latch A", (RELAY, A_PORT))
        callee.sendto(b"latch B", (RELAY, B_PORT))
        assert [d for d, _ in receive(relay_a, 1) + receive(relay_b, 1)] == [b"latch A", b"latch B"]
        assert fast.install(flow)
    try:
        for i in range(20):
            caller.sendto(b"A%02d" % i, (RELAY, A_PORT))
            callee.sendto(b"B-%02d" % i, (RELAY, B_PORT))
        assert receive(callee, 20) == [(b"A%02d" % i, (RELAY, B_PORT)) for i in range(20)]
        assert receive(caller, 20) == [(b"B-%02d" % i, (RELAY, A_PORT)) for i in range(20)]
        assert silent(relay_a) == [] and silent(relay_b) == []
        assert fast.counters() == {7: FlowCounters(Counters(20, 60), Counters(20, 80))}

        # Another sender on the caller's relay port goes up to userspace (it may re-latch).
        stranger.sendto(b"who am I", (RELAY, A_PORT))
        assert receive(relay_a, 1) == [(b"who am I", (UE, 5094))]
        assert silent(callee) == []

        fast.remove(flow)
        caller.sendto(b"userspace again", (RELAY, A_PORT))
        assert receive(relay_a, 1) == [(b"userspace again", CALLER)]
        assert fast.counters() == {}
    finally:
        fast.close()


@pytest.mark.parametrize(
    ("opts", "reason"),
    [
        (options(interface="nosuch0"), "no network interface named 'nosuch0'"),
        (options(bind="0.0.0.0"), "--bind 0.0.0.0 is a wildcard: set --interface"),
        (options(bind="10.200.77.1"), "no interface has the --bind address 10.200.77.1"),
    ],
)
def test_the_relay_falls_back_to_userspace_with_the_reason(
    topology: Topology, caplog: pytest.LogCaptureFixture, opts: FastPathOptions, reason: str
) -> None:
    caplog.set_level(logging.WARNING)
    with topology.relay.enter():
        fast = load("xdp", opts)
    assert isinstance(fast, UserspaceOnly)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and reason in warnings[0], warnings
