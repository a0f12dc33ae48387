"""The relay core (services.media.relay) with plain function calls: no sockets, no clock.

Caller A and callee B; `offer`/`answer` stand for what the sbc sends; packets are fed with
`receive(port, source, data, now)` and the returned Forward says where they go.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.media.events import Address, EventKind, Forward, Leg
from services.media.fastpath import Counters, Flow, FlowCounters
from services.media.relay import (
    InvalidArgument,
    PortsExhausted,
    Relay,
    RelayConfig,
    RelayPorts,
    StreamSdp,
    UnknownSession,
)
from tests.media.packets import rtcp_rr, rtp

A_SDP = ("192.0.2.10", 4000)  # what A's SDP says
A_NAT = ("203.0.113.1", 61000)  # where A's packets really come from
A_NAT2 = ("203.0.113.1", 62000)
B_SDP = ("198.51.100.20", 5000)
CALLER, CALLEE = Leg.CALLER, Leg.CALLEE


class FakePorts:
    """Port numbers from a small range, lowest first; pairs start on even ports."""

    def __init__(self, first: int = 40000, last: int = 40099) -> None:
        self.range = range(first, last + 1)
        self.in_use: set[int] = set()
        self.released: list[int] = []

    def allocate(self, count: int) -> tuple[int, ...]:
        for base in self.range:
            ports = tuple(range(base, base + count))
            if (count == 1 or base % 2 == 0) and ports[-1] in self.range and not (
                set(ports) & self.in_use
            ):
                self.in_use |= set(ports)
                return ports
        raise PortsExhausted("no free relay port")

    def release(self, ports: Sequence[int]) -> None:
        self.in_use -= set(ports)
        self.released.extend(ports)


class FakeFastPath:
    name = "fake"

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.installed: dict[int, Flow] = {}
        self.removed: list[int] = []
        self.forwarded: dict[int, FlowCounters] = {}

    def install(self, flow: Flow) -> bool:
        if self.accept:
            self.installed[flow.id] = flow
        return self.accept

    def remove(self, flow: Flow) -> None:
        self.installed.pop(flow.id)
        self.forwarded.pop(flow.id, None)
        self.removed.append(flow.id)

    def counters(self) -> Mapping[int, FlowCounters]:
        return dict(self.forwarded)

    def close(self) -> None:
        pass


class Broken(FakeFastPath):
    def install(self, flow: Flow) -> bool:
        raise OSError("map full")

    def counters(self) -> Mapping[int, FlowCounters]:
        raise OSError("gone")


def sdp(index: int = 0, at: Address | None = A_SDP, **kw: object) -> StreamSdp:
    rtcp = kw.pop("rtcp", None)
    if rtcp is None and at is not None:
        rtcp = at if kw.get("rtcp_mux") else (at[0], at[1] + 1)
    return StreamSdp(index=index, rtp=at, rtcp=rtcp, **kw)  # type: ignore[arg-type]


class Call:
    """A relay with one session, plus shorthands."""

    def __init__(self, config: RelayConfig | None = None, ports: FakePorts | None = None,
                 fastpath: FakeFastPath | None = None) -> None:
        self.ports = ports or FakePorts()
        self.fast = fastpath
        self.relay = Relay(self.ports, config or RelayConfig(bind_ip="10.0.0.5"), fastpath)
        self.relay.create_session("s1", now=0.0)

    def offer(self, *streams: StreamSdp, leg: Leg = CALLER, now: float = 0.0) -> list[RelayPorts]:
        return self.relay.update("s1", leg, streams or (sdp(at=A_SDP),), now)

    def answer(self, *streams: StreamSdp, leg: Leg = CALLEE, now: float = 0.0
               ) -> list[RelayPorts]:
        return self.relay.update("s1", leg, streams or (sdp(at=B_SDP),), now)

    def send(self, port: int, source: Address, data: bytes | None = None, now: float = 1.0
             ) -> Forward | None:
        return self.relay.receive(port, source, data if data is not None else rtp(1), now)

    def stats(self, leg: Leg, index: int = 0):
        report = self.relay.report("s1")
        return next(d for d in report.streams if d.leg == leg and d.index == index)

    def kinds(self) -> list[EventKind]:
        return [e.kind for e in self.relay.take_events()]


# -- direction convention --------------------------------------------------------------------------
def test_offer_returns_the_callee_facing_ports_and_answer_the_caller_facing_ones():
    call = Call()
    [to_b] = call.offer()  # goes into the offer forwarded to B: where B sends
    [to_a] = call.answer()  # goes into the answer forwarded to A: where A sends
    assert (to_b.rtp % 2, to_b.rtcp, to_a.rtcp) == (0, to_b.rtp + 1, to_a.rtp + 1)
    assert len({to_a.rtp, to_b.rtp}) == 2

    # A sends to the A-facing port; it leaves the B-facing port for B's SDP address.
    assert call.send(to_a.rtp, A_SDP, rtp(1)) == Forward(to_b.rtp, B_SDP, rtp(1))
    # B sends to the B-facing port; it leaves the A-facing port for A.
    assert call.send(to_b.rtp, B_SDP, rtp(7)) == Forward(to_a.rtp, A_SDP, rtp(7))
    assert call.stats(CALLER).rtp_packets == 1
    assert call.stats(CALLEE).rtp_packets == 1


def test_reinvite_from_the_callee_uses_the_same_convention():
    call = Call()
    [to_b] = call.offer()
    [to_a] = call.answer()
    # B re-offers: the answer is the A-facing ports again; A's answer gives the B-facing ones.
    assert call.offer(sdp(at=B_SDP), leg=CALLEE) == [to_a]
    assert call.answer(sdp(at=A_SDP), leg=CALLER) == [to_b]


def test_no_destination_until_the_other_leg_answered():
    call = Call()
    [to_b] = call.offer()
    # Early RTP from B before its answer: the relay has no A-facing port yet.
    assert call.send(to_b.rtp, B_SDP) is None
    assert call.stats(CALLEE).dropped_packets == 1
    assert call.relay.counters.dropped["no_destination"] == 1


def test_unknown_port_is_dropped():
    call = Call()
    assert call.relay.receive(12345, A_SDP, rtp(1), 0.0) is None
    assert call.relay.counters.dropped["unknown_port"] == 1


# -- latching --------------------------------------------------------------------------------------
def test_latching_follows_the_real_source_behind_nat():
    call = Call()
    [to_b] = call.offer()
    [to_a] = call.answer()
    # Before A sends, B's packets go to A's SDP address.
    assert call.send(to_b.rtp, B_SDP).destination == A_SDP  # type: ignore[union-attr]
    call.relay.take_events()
    # A's first packet comes from its NAT binding: latch.
    assert call.send(to_a.rtp, A_NAT).destination == B_SDP  # type: ignore[union-attr]
    [event] = call.relay.take_events()
    assert (event.kind, event.leg, event.stream_index) == (EventKind.LATCHED, CALLER, 0)
    assert event.detail == "203.0.113.1:61000"
    assert call.send(to_b.rtp, B_SDP).destination == A_NAT  # type: ignore[union-attr]
    assert call.stats(CALLER).latched_source == A_NAT


def test_relatch_after_n_packets_from_a_new_source():
    call = Call(RelayConfig(relatch_after=3))
    call.offer()
    [to_a] = call.answer()
    [to_b] = call.relay.update("s1", CALLER, [sdp(at=A_SDP)], 0.0)
    assert call.send(to_a.rtp, A_NAT) is not None
    call.relay.take_events()
    # A moves to a new NAT binding: two packets are dropped, the third moves the latch.
    assert call.send(to_a.rtp, A_NAT2) is None
    assert call.send(to_a.rtp, A_NAT2) is None
    assert call.send(to_a.rtp, A_NAT2) is not None
    [event] = call.relay.take_events()
    assert event.kind == EventKind.LATCHED
    assert event.detail == "203.0.113.1:62000 (was 203.0.113.1:61000)"
    assert call.send(to_b.rtp, B_SDP).destination == A_NAT2  # type: ignore[union-attr]
    assert call.stats(CALLER).dropped_packets == 2
    assert call.stats(CALLER).latched_source == A_NAT2


def test_the_latched_source_interleaving_keeps_the_latch():
    call = Call(RelayConfig(relatch_after=2))
    call.offer()
    [to_a] = call.answer()
    call.send(to_a.rtp, A_NAT)
    for _ in range(5):  # a foreign source never gets 2 in a row
        assert call.send(to_a.rtp, A_NAT2) is None
        assert call.send(to_a.rtp, A_NAT) is not None
    assert call.stats(CALLER).latched_source == A_NAT


def test_relatch_disabled():
    call = Call(RelayConfig(relatch_after=0))
    call.offer()
    [to_a] = call.answer()
    call.send(to_a.rtp, A_NAT)
    assert all(call.send(to_a.rtp, A_NAT2) is None for _ in range(20))


def test_reoffer_keeps_ports_and_a_new_address_forgets_the_latch():
    call = Call()
    [to_b] = call.offer()
    [to_a] = call.answer()
    call.send(to_a.rtp, A_NAT)
    # Same SDP again (a session refresh): same ports, latch kept.
    assert call.offer() == [to_b]
    assert call.send(to_b.rtp, B_SDP).destination == A_NAT  # type: ignore[union-attr]
    # A moved (re-INVITE from a new address): same ports, destination is the new SDP address
    # until A's next packet latches again.
    moved = ("192.0.2.99", 4100)
    assert call.offer(sdp(at=moved)) == [to_b]
    assert call.answer() == [to_a]
    assert call.send(to_b.rtp, B_SDP).destination == moved  # type: ignore[union-attr]
    call.send(to_a.rtp, A_NAT2)
    assert call.send(to_b.rtp, B_SDP).destination == A_NAT2  # type: ignore[union-attr]
    assert len(call.ports.in_use) == 4


def test_hold_address_sends_nowhere_until_latched():
    call = Call()
    [to_b] = call.offer(sdp(at=None))  # c=0.0.0.0
    [to_a] = call.answer()
    assert call.send(to_b.rtp, B_SDP) is None
    call.send(to_a.rtp, A_NAT)
    assert call.send(to_b.rtp, B_SDP).destination == A_NAT  # type: ignore[union-attr]


# -- RTCP ------------------------------------------------------------------------------------------
def test_rtcp_on_its_own_port_pair():
    call = Call()
    [to_b] = call.offer()
    [to_a] = call.answer()
    a_rtcp = (A_SDP[0], 4001)
    assert call.send(to_a.rtcp, a_rtcp, rtcp_rr()) == Forward(to_b.rtcp, (B_SDP[0], 5001),
                                                               rtcp_rr())
    # B's RTCP comes from elsewhere: it latches on the RTCP port (no event for RTCP).
    b_rtcp = ("198.51.100.20", 7777)
    assert call.send(to_b.rtcp, b_rtcp, rtcp_rr()) == Forward(to_a.rtcp, a_rtcp, rtcp_rr())
    assert call.send(to_a.rtcp, a_rtcp, rtcp_rr()).destination == b_rtcp  # type: ignore[union-attr]
    assert call.stats(CALLER).rtcp_packets == 2
    assert call.stats(CALLER).rtp_packets == 0
    assert call.stats(CALLEE).latched_source is None  # the RTP source, not RTCP's
    assert call.relay.counters.relayed_rtcp == 3


def test_rtcp_mux_uses_one_port_and_demultiplexes():
    call = Call()
    [to_b] = call.offer(sdp(at=A_SDP, rtcp_mux=True))
    [to_a] = call.answer(sdp(at=B_SDP, rtcp_mux=True))
    assert (to_b.rtcp, to_a.rtcp) == (to_b.rtp, to_a.rtp)
    assert len(call.ports.in_use) == 2
    assert call.send(to_a.rtp, A_NAT, rtcp_rr()) == Forward(to_b.rtp, B_SDP, rtcp_rr())
    assert call.send(to_a.rtp, A_NAT, rtp(1)) == Forward(to_b.rtp, B_SDP, rtp(1))
    assert (call.stats(CALLER).rtcp_packets, call.stats(CALLER).rtp_packets) == (1, 1)


def test_rtcp_mux_offered_but_refused_by_the_answer():
    call = Call()
    [to_b] = call.offer(sdp(at=A_SDP, rtcp_mux=True))  # one B-facing port
    [to_a] = call.answer(sdp(at=B_SDP))  # B answers without mux: A-facing is a pair
    assert to_b.rtcp == to_b.rtp and to_a.rtcp == to_a.rtp + 1
    # A's RTCP (muxed on its RTP port) goes to B's RTCP address from the only B-facing port.
    assert call.send(to_a.rtp, A_SDP, rtcp_rr()) == Forward(to_b.rtp, (B_SDP[0], 5001),
                                                             rtcp_rr())
    # B sends RTCP to the port its SDP named (the same one): to A's muxed address.
    assert call.send(to_b.rtp, B_SDP, rtcp_rr()) == Forward(to_a.rtp, A_SDP, rtcp_rr())


# -- streams: disable, re-enable, several ----------------------------------------------------------
def test_disabled_stream_frees_its_ports_and_can_come_back():
    call = Call()
    audio, video = sdp(0), sdp(1, at=("192.0.2.10", 4002), media="video")
    to_b = call.offer(audio, video)
    to_a = call.answer(sdp(0, at=B_SDP), sdp(1, at=None, disabled=True))  # B rejects video
    assert to_a[1] == RelayPorts(1, 0, 0)
    assert set(call.ports.released) == {to_b[1].rtp, to_b[1].rtcp}
    assert len(call.ports.in_use) == 4
    assert call.send(to_b[1].rtp, B_SDP) is None  # freed: unknown port
    # A re-offers video: a new B-facing pair.
    again = call.offer(audio, video)
    assert again[0] == to_b[0] and again[1].rtp not in (0, to_b[0].rtp)
    assert len(call.ports.in_use) == 6


def test_exhaustion_is_all_or_nothing():
    call = Call(ports=FakePorts(40000, 40005))  # three pairs
    call.offer(sdp(0), sdp(1))
    with pytest.raises(PortsExhausted):
        call.answer(sdp(0, at=B_SDP), sdp(1, at=B_SDP))  # needs two more pairs, one is left
    assert len(call.ports.in_use) == 4
    report = call.relay.report("s1")
    assert all(d.rtp_packets == 0 for d in report.streams)
    # A single-stream answer still fits.
    assert call.answer(sdp(0, at=B_SDP))[0].rtp == 40004


def test_request_errors():
    relay = Relay(FakePorts())
    with pytest.raises(UnknownSession, match="no media session nope"):
        relay.update("nope", CALLER, [sdp()], 0.0)
    with pytest.raises(InvalidArgument, match="session_id is empty"):
        relay.report("")
    relay.create_session("s", 0.0)
    with pytest.raises(InvalidArgument, match="exists already"):
        relay.create_session("s", 0.0)
    with pytest.raises(InvalidArgument, match="stream index 3 appears more than once"):
        relay.update("s", CALLER, [sdp(3), sdp(3)], 0.0)


def test_delete_frees_ports_and_reports():
    call = Call()
    [_to_b] = call.offer()
    [to_a] = call.answer()
    call.send(to_a.rtp, A_NAT, rtp(1), now=2.0)
    call.relay.take_events()
    report = call.relay.delete("s1", now=3.0)
    assert [e.kind for e in call.relay.take_events()] == [EventKind.SESSION_DELETED]
    assert call.ports.in_use == set()
    assert report.last_packet_at == 2.0
    assert [(d.index, d.leg, d.rtp_packets) for d in report.streams] == [(0, CALLER, 1),
                                                                         (0, CALLEE, 0)]
    assert "s1" not in call.relay
    with pytest.raises(UnknownSession):
        call.relay.report("s1")


# -- bad packets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("junk", [b"", b"\x80", b"\x80" * 11, b"\x40" + rtp(1)[1:],
                                  b"\x00\x01\x00\x00" + b"\x00" * 16])  # the last: STUN-like
def test_malformed_packets_are_counted_and_dropped(junk: bytes):
    call = Call()
    [_to_b] = call.offer()
    [to_a] = call.answer()
    assert call.send(to_a.rtp, A_NAT, junk) is None
    assert call.send(to_a.rtcp, A_NAT, junk) is None
    assert call.stats(CALLER).malformed_packets == 2
    assert call.relay.counters.dropped["malformed"] == 2
    assert call.stats(CALLER).latched_source is None  # junk does not latch
    assert call.send(to_a.rtp, A_NAT) is not None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.sampled_from([0, 1, 2, 3]))
def test_arbitrary_bytes_never_raise(data: bytes, which: int):
    call = Call()
    [to_b] = call.offer()
    [to_a] = call.answer()
    port = (to_a.rtp, to_a.rtcp, to_b.rtp, to_b.rtcp)[which]
    result = call.send(port, A_NAT, data)
    assert result is None or result.data == data


# -- statistics ------------------------------------------------------------------------------------
def test_loss_and_jitter_through_the_relay_with_a_clock_rate_map():
    call = Call()
    call.offer(sdp(at=A_SDP, payload_types=(96,), clock_rates={96: 16000}))
    [to_a] = call.answer(sdp(at=B_SDP, payload_types=(96,), clock_rates={96: 16000}))
    # 20 ms of AMR-WB is 320 timestamp units; packet 3 is lost, packet 4 arrives 5 ms late.
    for seq, at in ((1, 0.0), (2, 0.020), (4, 0.065), (5, 0.080)):
        call.send(to_a.rtp, A_SDP, rtp(seq, seq * 320, pt=96), now=at)
    stats = call.stats(CALLER)
    assert stats.packets_lost == 1
    # D(2,4) = 0.045 s - 640/16000 s = 5 ms: J = 5/16 ms; D(4,5) = -5 ms: J += (5 - J)/16
    first = 0.005 / 16
    assert stats.jitter == pytest.approx(first + (0.005 - first) / 16)


# -- inactivity ------------------------------------------------------------------------------------
def test_media_timeout_once_per_session():
    call = Call(RelayConfig(timeout=30.0))
    [_to_b] = call.offer(now=0.0)
    call.relay.tick(100.0)  # only an offer (ringing): no timeout
    assert call.kinds() == []
    [to_a] = call.answer(now=100.0)
    call.send(to_a.rtp, A_SDP, now=110.0)
    call.relay.take_events()
    call.relay.tick(139.9)
    assert call.kinds() == []
    call.relay.tick(140.0)
    [event] = call.relay.take_events()
    assert (event.kind, event.session_id) == (EventKind.MEDIA_TIMEOUT, "s1")
    assert "30.0 s" in event.detail
    call.relay.tick(500.0)
    assert call.kinds() == []


def test_rtcp_alone_is_not_activity():
    call = Call(RelayConfig(timeout=10.0))
    call.offer()
    [to_a] = call.answer()
    for t in range(1, 12):
        call.send(to_a.rtcp, A_SDP, rtcp_rr(), now=float(t))
    call.relay.tick(10.0)
    assert EventKind.MEDIA_TIMEOUT in call.kinds()


# -- fast path -------------------------------------------------------------------------------------
def test_fast_path_takes_a_stream_once_both_directions_are_latched():
    fast = FakeFastPath()
    call = Call(RelayConfig(bind_ip="10.0.0.5", timeout=30.0, relatch_after=1), fastpath=fast)
    [to_b] = call.offer()
    [to_a] = call.answer()
    call.send(to_a.rtp, A_NAT)
    assert fast.installed == {}  # only one direction latched
    call.send(to_b.rtp, B_SDP)
    [flow] = fast.installed.values()
    assert flow.a_to_b.local_in == ("10.0.0.5", to_a.rtp)
    assert flow.a_to_b.source == A_NAT
    assert flow.a_to_b.local_out == ("10.0.0.5", to_b.rtp)
    assert flow.a_to_b.destination == B_SDP
    assert flow.b_to_a.local_in == ("10.0.0.5", to_b.rtp)
    assert flow.b_to_a.source == B_SDP
    assert flow.b_to_a.local_out == ("10.0.0.5", to_a.rtp)
    assert flow.b_to_a.destination == A_NAT
    assert call.kinds() == [EventKind.LATCHED, EventKind.LATCHED, EventKind.FAST_PATH_ON]

    # The kernel forwards: counters reach the stats and keep the session alive.
    fast.forwarded[flow.id] = FlowCounters(Counters(100, 17200), Counters(90, 15480))
    call.relay.tick(29.0)
    assert (call.stats(CALLER).rtp_packets, call.stats(CALLER).fast_path_packets) == (101, 100)
    assert call.stats(CALLEE).rtp_bytes == 172 + 15480
    call.relay.tick(58.0)  # nothing moved since 29.0, but 29 s < 30 s
    assert EventKind.MEDIA_TIMEOUT not in call.kinds()

    # A re-latches: the old flow goes (its last counters folded in), a new one comes.
    fast.forwarded[flow.id] = FlowCounters(Counters(110, 18920), Counters(90, 15480))
    call.send(to_a.rtp, A_NAT2, now=58.5)
    assert fast.removed == [flow.id]
    [new] = fast.installed.values()
    assert new.id != flow.id and new.a_to_b.source == A_NAT2 and new.b_to_a.destination == A_NAT2
    assert call.kinds() == [EventKind.FAST_PATH_OFF, EventKind.LATCHED, EventKind.FAST_PATH_ON]
    assert call.stats(CALLER).fast_path_packets == 110

    call.relay.delete("s1", now=60.0)
    assert fast.installed == {}
    assert call.kinds() == [EventKind.FAST_PATH_OFF, EventKind.SESSION_DELETED]


def test_a_fast_path_that_declines_or_fails_leaves_userspace_relaying():
    for fast in (FakeFastPath(accept=False), Broken()):
        call = Call(fastpath=fast)
        [to_b] = call.offer()
        [to_a] = call.answer()
        call.send(to_a.rtp, A_NAT)
        assert call.send(to_b.rtp, B_SDP) is not None
        call.relay.tick(5.0)
        assert EventKind.FAST_PATH_ON not in call.kinds()
        assert call.send(to_a.rtp, A_NAT) is not None
