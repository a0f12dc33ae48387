"""The media relay core: sessions, relay ports, latching, forwarding decisions, statistics.

Sans-IO: no sockets, no clock, no asyncio. The shell feeds it datagrams with
`receive(socket, source, data, now)` and sends what it returns; ports come from an injected
`PortSource` (the shell's binds real sockets, tests hand out numbers); a fast path, if any,
is an injected `FastPath`. Time is always an argument (monotonic seconds).

Direction convention
--------------------
A session is one call between leg A (LEG_CALLER, sent the initial INVITE) and leg B
(LEG_CALLEE). For each stream (m= line, by index) the relay holds two port sets:

    A-facing ports: A sends here, and hears the relay from here.
    B-facing ports: B sends here, and hears the relay from here.

       A  ---- RTP ---->  [A-facing port]  relay  [B-facing port]  ---- RTP ---->  B
       A  <--- RTP -----  [A-facing port]  relay  [B-facing port]  <--- RTP -----  B

A packet arriving at an A-facing port is sent out of the B-facing port to B's address, and
vice versa; each leg therefore sends to and receives from the same relay port (symmetric RTP).

Which ports go into which SDP: the A-facing ports are where A must send, so they belong in
the SDP that A *receives* -- B's SDP, rewritten by the sbc. Hence `UpdateSession` with the SDP
of leg X returns the ports facing the OTHER leg:

    offer  from CALLER  -> returns the B-facing ports (go into the offer forwarded to B)
    answer from CALLEE  -> returns the A-facing ports (go into the answer forwarded to A)
    (a re-INVITE from B: offer from CALLEE -> A-facing, answer from CALLER -> B-facing)

and records X's own addresses (c=/m=, a=rtcp) as where the relay sends X's media. Ports facing
a leg are allocated once per session, stream and leg, the first time the other leg's SDP names
the stream; re-offers keep them. A stream disabled (port 0) in either leg's SDP frees both of
its port sets; enabling it again later allocates new ones.

Latching (symmetric RTP, NAT traversal): each relay port latches onto the source of the first
packet it receives, and the relay sends to that source instead of the SDP address from then
on. A different source takes over after `relatch_after` consecutive packets from it (packets
from it are dropped until then; 0 turns re-latching off). A new SDP address from a leg in a
re-offer forgets that leg's latch.

RTCP: a stream without rtcp-mux gets an even/odd port pair per side (RTCP on RTP + 1); with
rtcp-mux one port, RTCP told apart by its packet type (RFC 5761; see rtp.py). RTCP received on
any port of a side is relayed as RTCP: from the other side's RTCP port to that leg's RTCP
address, or from its RTP port when that leg multiplexes (or has no RTCP port).

Inactivity: once a session has SDP from both legs for some stream, no RTP in either direction
for `timeout` seconds raises MEDIA_TIMEOUT, once per session. Fast-path counters count as RTP.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.media.events import Address, Event, EventKind, Forward, Leg
from services.media.fastpath import Direction, FastPath, Flow, FlowCounters, UserspaceOnly, guarded
from services.media.rtp import Malformed, check_rtcp, looks_like_rtcp, parse_rtp
from services.media.stats import STATIC_CLOCK_RATES, DirectionStats

MAX_STREAMS = 64
DROP_REASONS = ("malformed", "unknown_port", "no_destination", "foreign_source", "send_error")


class RelayError(Exception):
    """Base of the errors the core raises for a bad request; str() is the message to return."""


class InvalidArgument(RelayError):
    pass


class UnknownSession(RelayError, LookupError):
    pass


class PortsExhausted(RelayError):
    pass


class PortSource(Protocol):
    """Hands out relay ports: count 1 is a single port, count 2 an even/odd pair (RTP, RTCP)."""

    def allocate(self, count: int) -> tuple[int, ...]:
        """The ports, lowest first; raises PortsExhausted."""
        ...

    def release(self, ports: Sequence[int]) -> None: ...


@dataclass(frozen=True)
class RelayConfig:
    bind_ip: str = "127.0.0.1"  # local address of the relay sockets (fast-path flows name it)
    timeout: float = 30.0  # seconds without RTP before MEDIA_TIMEOUT
    relatch_after: int = 5  # consecutive packets from a new source that move a latch; 0: never
    default_clock_rate: int = 8000


@dataclass(frozen=True)
class StreamSdp:
    """What one leg's SDP says about one m= line (already validated by the shell)."""

    index: int
    media: str = "audio"
    rtp: Address | None = None  # None: nowhere to send until latched (c=0.0.0.0 hold)
    rtcp: Address | None = None
    rtcp_mux: bool = False
    disabled: bool = False
    payload_types: tuple[int, ...] = ()
    clock_rates: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RelayPorts:
    """The relay ports for one stream of an UpdateSession answer (0, 0 when disabled)."""

    index: int
    rtp: int
    rtcp: int


@dataclass(frozen=True)
class DirectionReport:
    index: int
    leg: Leg  # the leg that sent these packets
    rtp_packets: int
    rtp_bytes: int
    rtcp_packets: int
    packets_lost: int
    jitter: float  # seconds
    latched_source: Address | None
    fast_path_packets: int
    malformed_packets: int
    dropped_packets: int
    last_packet_at: float | None


@dataclass(frozen=True)
class SessionReport:
    session_id: str
    created_at: float
    last_packet_at: float | None
    streams: tuple[DirectionReport, ...]


@dataclass
class RelayCounters:
    """Totals over all sessions since start, for metrics."""

    relayed_rtp: int = 0
    relayed_rtcp: int = 0
    fast_path_packets: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))


class _Port:
    """One relay socket: its port number, who sends to it, and the source it latched onto."""

    __slots__ = ("candidate", "candidate_count", "latched", "leg", "number", "rtcp", "session",
                 "stream", "to")

    def __init__(self, number: int, session: _Session, stream: _Stream, leg: Leg, rtcp: bool):
        self.number = number
        self.session = session
        self.stream = stream
        self.leg = leg  # the leg this port faces: packets arriving here come from it
        self.to = leg.other  # ... and go to this one
        self.rtcp = rtcp  # an RTCP-only port (RTP port + 1)
        self.latched: Address | None = None
        self.candidate: Address | None = None
        self.candidate_count = 0

    def forget(self) -> None:
        self.latched = self.candidate = None
        self.candidate_count = 0


@dataclass
class _Side:
    """The ports facing one leg of one stream."""

    rtp: _Port
    rtcp: _Port | None  # None: allocated for rtcp-mux, RTCP shares the RTP port

    @property
    def numbers(self) -> tuple[int, ...]:
        return (self.rtp.number,) if self.rtcp is None else (self.rtp.number, self.rtcp.number)


@dataclass
class _Stream:
    index: int
    media: str = "audio"
    disabled: bool = False
    sides: dict[Leg, _Side] = field(default_factory=dict)
    sdp: dict[Leg, StreamSdp] = field(default_factory=dict)
    stats: dict[Leg, DirectionStats] = field(
        default_factory=lambda: {leg: DirectionStats() for leg in Leg}
    )
    flow: Flow | None = None
    flow_seen: FlowCounters = field(default_factory=FlowCounters)  # counters already added
    rates: dict[tuple[Leg, int], int] = field(default_factory=dict)  # clock_rate() cache

    def clock_rate(self, sender: Leg, payload_type: int, default: int) -> int:
        rate = self.rates.get((sender, payload_type))
        if rate is None:
            rate = self.rates[sender, payload_type] = self._clock_rate(
                sender, payload_type, default
            )
        return rate

    def _clock_rate(self, sender: Leg, payload_type: int, default: int) -> int:
        # The sender uses the payload type numbers of the SDP it received (the other leg's),
        # which normally agree with its own (RFC 3264 section 6.1).
        for leg in (sender.other, sender):
            sdp = self.sdp.get(leg)
            if sdp is not None and payload_type in sdp.clock_rates:
                return sdp.clock_rates[payload_type]
        return STATIC_CLOCK_RATES.get(payload_type, default)


@dataclass
class _Session:
    id: str
    created_at: float
    labels: Mapping[str, str] = field(default_factory=dict)
    streams: dict[int, _Stream] = field(default_factory=dict)
    armed_at: float | None = None  # when both legs had given SDP: the inactivity clock starts
    last_rtp_at: float | None = None
    timed_out: bool = False


class Relay:
    """The session table of one media instance."""

    def __init__(
        self,
        ports: PortSource,
        config: RelayConfig | None = None,
        fastpath: FastPath | None = None,
    ) -> None:
        self.config = config or RelayConfig()
        self.ports = ports
        self.fastpath = guarded(fastpath or UserspaceOnly())
        self.counters = RelayCounters()
        self.events: list[Event] = []  # drained by take_events()
        self._sessions: dict[str, _Session] = {}
        self._by_port: dict[int, _Port] = {}
        self._flows: dict[int, tuple[_Session, _Stream]] = {}
        self._flow_ids = itertools.count(1)

    # -- queries ---------------------------------------------------------------------------------
    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def ports_in_use(self) -> int:
        return len(self._by_port)

    @property
    def fast_path_flows(self) -> int:
        return len(self._flows)

    def take_events(self) -> list[Event]:
        events, self.events = self.events, []
        return events

    def report(self, session_id: str) -> SessionReport:
        session = self._get(session_id)
        directions: list[DirectionReport] = []
        for index in sorted(session.streams):
            stream = session.streams[index]
            for leg in Leg:
                st = stream.stats[leg]
                directions.append(DirectionReport(
                    index=index, leg=leg, rtp_packets=st.rtp_packets, rtp_bytes=st.rtp_bytes,
                    rtcp_packets=st.rtcp_packets, packets_lost=st.lost, jitter=st.jitter,
                    latched_source=st.latched, fast_path_packets=st.fast_path_packets,
                    malformed_packets=st.malformed, dropped_packets=st.dropped,
                    last_packet_at=st.last_packet_at,
                ))
        times = [d.last_packet_at for d in directions if d.last_packet_at is not None]
        return SessionReport(session.id, session.created_at, max(times, default=None),
                             tuple(directions))

    # -- control: create, update, delete ---------------------------------------------------------
    def create_session(
        self, session_id: str, now: float, labels: Mapping[str, str] | None = None
    ) -> None:
        if not session_id:
            raise InvalidArgument("session_id is empty")
        if session_id in self._sessions:
            raise InvalidArgument(f"session {session_id} exists already")
        self._sessions[session_id] = _Session(session_id, now, dict(labels or {}))

    def update(
        self, session_id: str, leg: Leg, streams: Sequence[StreamSdp], now: float
    ) -> list[RelayPorts]:
        """Take the streams of leg `leg`'s SDP (offer or answer); answer the ports facing the
        other leg, one RelayPorts per stream, in the order given (see the module docstring)."""
        session = self._get(session_id)
        if len(streams) > MAX_STREAMS:
            raise InvalidArgument(f"{len(streams)} streams; at most {MAX_STREAMS}")
        indexes = [s.index for s in streams]
        duplicate = next((i for i in indexes if indexes.count(i) > 1), None)
        if duplicate is not None:
            raise InvalidArgument(f"stream index {duplicate} appears more than once")
        other = leg.other

        # Allocate first, all or nothing: a failure leaves the session as it was.
        wanted = [
            s for s in streams
            if not s.disabled and other not in self._stream_sides(session, s.index)
        ]
        allocated: dict[int, tuple[int, ...]] = {}
        try:
            for s in wanted:
                allocated[s.index] = self.ports.allocate(1 if s.rtcp_mux else 2)
        except BaseException:  # exhausted, or the bind address went away
            for numbers in allocated.values():
                self.ports.release(numbers)
            raise

        result: list[RelayPorts] = []
        for s in streams:
            stream = session.streams.get(s.index)
            if stream is None:
                stream = session.streams[s.index] = _Stream(s.index, s.media)
            previous = stream.sdp.get(leg)
            stream.sdp[leg] = s
            stream.rates.clear()
            if s.disabled:
                self._disable(session, stream, now)
                result.append(RelayPorts(s.index, 0, 0))
                continue
            stream.disabled = False
            stream.media = s.media
            own = stream.sides.get(leg)
            if own is not None and previous is not None and (
                previous.rtp != s.rtp or previous.rtcp != s.rtcp
            ):
                # The leg moved (a re-INVITE from a new address): learn its source again.
                self._remove_flow(session, stream, now)
                for port in (own.rtp, own.rtcp):
                    if port is not None:
                        port.forget()
            if s.index in allocated:
                stream.sides[other] = self._side(session, stream, other, allocated[s.index])
            side = stream.sides[other]
            rtcp = side.rtcp.number if side.rtcp is not None and not s.rtcp_mux else side.rtp.number
            result.append(RelayPorts(s.index, side.rtp.number, rtcp))

        if session.armed_at is None and any(
            not st.disabled and all(leg in st.sdp and not st.sdp[leg].disabled for leg in Leg)
            for st in session.streams.values()
        ):
            session.armed_at = now
        return result

    def delete(self, session_id: str, now: float) -> SessionReport:
        """Free the session's ports; answer its final statistics."""
        session = self._get(session_id)
        for stream in session.streams.values():
            self._disable(session, stream, now)
        report = self.report(session_id)
        del self._sessions[session_id]
        self.events.append(Event(session_id, EventKind.SESSION_DELETED, now))
        return report

    def close(self, now: float) -> None:
        """Delete every session (shutdown)."""
        for session_id in list(self._sessions):
            self.delete(session_id, now)

    # -- packets -----------------------------------------------------------------------------------
    def receive(self, socket: int, source: Address, data: bytes, now: float) -> Forward | None:
        """A datagram arrived at relay port `socket` from `source`: where it goes, or None."""
        port = self._by_port.get(socket)
        if port is None:  # a socket freed a moment ago
            self.counters.dropped["unknown_port"] += 1
            return None
        stream = port.stream
        leg = port.leg
        stats = stream.stats[leg]
        rtcp = port.rtcp or looks_like_rtcp(data)
        try:
            if rtcp:
                check_rtcp(data)
                header = None
            else:
                header = parse_rtp(data)
        except Malformed:
            stats.malformed += 1
            self.counters.dropped["malformed"] += 1
            return None
        if not self._latch(port, source, now):
            stats.dropped += 1
            self.counters.dropped["foreign_source"] += 1
            return None

        stats.last_packet_at = now
        if header is None:
            stats.rtcp_packets += 1
        else:
            rate = stream.clock_rate(leg, header.payload_type, self.config.default_clock_rate)
            stats.on_rtp(header, len(data), now, rate)
            port.session.last_rtp_at = now

        # Out of the ports facing the other leg, to its latched or SDP address.
        to = port.to
        side = stream.sides.get(to)
        sdp = stream.sdp.get(to)
        destination: Address | None = None
        out: _Port | None = None
        if side is not None:
            if header is not None:
                out = side.rtp
                destination = out.latched or (sdp.rtp if sdp else None)
            elif side.rtcp is not None and not (sdp is not None and sdp.rtcp_mux):
                out = side.rtcp
                destination = out.latched or (sdp.rtcp if sdp else None)
            else:
                out = side.rtp
                destination = out.latched or (sdp.rtcp or sdp.rtp if sdp else None)
        if out is None or destination is None:
            stats.dropped += 1
            self.counters.dropped["no_destination"] += 1
            return None
        if header is None:
            self.counters.relayed_rtcp += 1
        else:
            self.counters.relayed_rtp += 1
        return Forward(out.number, destination, data)

    def count_drop(self, reason: str, socket: int | None = None) -> None:
        """The shell dropped a packet (could not send it); `socket`: the port it came in on."""
        self.counters.dropped[reason] = self.counters.dropped.get(reason, 0) + 1
        port = self._by_port.get(socket) if socket is not None else None
        if port is not None:
            port.stream.stats[port.leg].dropped += 1

    # -- timers ------------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Poll the fast path's counters and raise MEDIA_TIMEOUT for sessions gone quiet."""
        self.poll_fast_path(now)
        timeout = self.config.timeout
        for session in self._sessions.values():
            if session.timed_out or session.armed_at is None:
                continue
            last = max(session.armed_at, session.last_rtp_at or session.armed_at)
            if now - last >= timeout:
                session.timed_out = True
                self.events.append(Event(
                    session.id, EventKind.MEDIA_TIMEOUT, now,
                    detail=f"no RTP in either direction for {now - last:.1f} s",
                ))

    def poll_fast_path(self, now: float) -> None:
        if not self._flows:
            return
        counters = self.fastpath.counters()
        for flow_id, (session, stream) in self._flows.items():
            current = counters.get(flow_id)
            if current is not None:
                self._add_fast_path(session, stream, current, now)

    # -- internals ---------------------------------------------------------------------------------
    def _get(self, session_id: str) -> _Session:
        if not session_id:
            raise InvalidArgument("session_id is empty")
        session = self._sessions.get(session_id)
        if session is None:
            raise UnknownSession(f"no media session {session_id}")
        return session

    @staticmethod
    def _stream_sides(session: _Session, index: int) -> dict[Leg, _Side]:
        stream = session.streams.get(index)
        return stream.sides if stream is not None else {}

    def _side(
        self, session: _Session, stream: _Stream, leg: Leg, numbers: tuple[int, ...]
    ) -> _Side:
        rtp = _Port(numbers[0], session, stream, leg, rtcp=False)
        rtcp = _Port(numbers[1], session, stream, leg, rtcp=True) if len(numbers) > 1 else None
        for port in (rtp, rtcp):
            if port is not None:
                self._by_port[port.number] = port
        return _Side(rtp, rtcp)

    def _disable(self, session: _Session, stream: _Stream, now: float) -> None:
        self._remove_flow(session, stream, now)
        for side in stream.sides.values():
            for number in side.numbers:
                self._by_port.pop(number, None)
            self.ports.release(side.numbers)
        stream.sides.clear()
        stream.disabled = True

    def _latch(self, port: _Port, source: Address, now: float) -> bool:
        """Latch or re-latch `port` onto `source`; False: the packet is from a foreign source."""
        if port.latched == source:
            port.candidate, port.candidate_count = None, 0
            return True
        previous = port.latched
        if previous is not None:
            if self.config.relatch_after <= 0:
                return False
            if port.candidate == source:
                port.candidate_count += 1
            else:
                port.candidate, port.candidate_count = source, 1
            if port.candidate_count < self.config.relatch_after:
                return False
        port.latched = source
        port.candidate, port.candidate_count = None, 0
        if port.rtcp:
            return True
        stream, session = port.stream, port.session
        stream.stats[port.leg].latched = source
        detail = f"{source[0]}:{source[1]}"
        if previous is not None:
            detail += f" (was {previous[0]}:{previous[1]})"
            self._remove_flow(session, stream, now)
        self.events.append(Event(
            session.id, EventKind.LATCHED, now, stream.index, port.leg, detail,
        ))
        self._install_flow(session, stream, now)
        return True

    def _install_flow(self, session: _Session, stream: _Stream, now: float) -> None:
        a, b = stream.sides.get(Leg.CALLER), stream.sides.get(Leg.CALLEE)
        if stream.flow is not None or a is None or b is None:
            return
        if a.rtp.latched is None or b.rtp.latched is None:
            return
        bind = self.config.bind_ip
        flow = Flow(
            id=next(self._flow_ids),
            a_to_b=Direction((bind, a.rtp.number), a.rtp.latched, (bind, b.rtp.number),
                             b.rtp.latched),
            b_to_a=Direction((bind, b.rtp.number), b.rtp.latched, (bind, a.rtp.number),
                             a.rtp.latched),
        )
        if not self.fastpath.install(flow):
            return
        stream.flow, stream.flow_seen = flow, FlowCounters()
        self._flows[flow.id] = (session, stream)
        self.events.append(Event(session.id, EventKind.FAST_PATH_ON, now, stream.index,
                                 detail=f"{self.fastpath.name} flow {flow.id}"))

    def _remove_flow(self, session: _Session, stream: _Stream, now: float) -> None:
        flow = stream.flow
        if flow is None:
            return
        # Fold in what it forwarded since the last poll, before the counters go away.
        current = self.fastpath.counters().get(flow.id)
        if current is not None:
            self._add_fast_path(session, stream, current, now)
        self.fastpath.remove(flow)
        del self._flows[flow.id]
        stream.flow = None
        self.events.append(Event(session.id, EventKind.FAST_PATH_OFF, now, stream.index,
                                 detail=f"{self.fastpath.name} flow {flow.id}"))

    def _add_fast_path(
        self, session: _Session, stream: _Stream, current: FlowCounters, now: float
    ) -> None:
        seen = stream.flow_seen
        moved = False
        for leg, now_c, seen_c in (
            (Leg.CALLER, current.a_to_b, seen.a_to_b),
            (Leg.CALLEE, current.b_to_a, seen.b_to_a),
        ):
            packets = now_c.packets - seen_c.packets
            if packets > 0:
                stream.stats[leg].on_fast_path(packets, now_c.bytes - seen_c.bytes, now)
                self.counters.fast_path_packets += packets
                moved = True
        stream.flow_seen = current
        if moved:
            session.last_rtp_at = now

    def sessions(self) -> Iterator[str]:
        return iter(list(self._sessions))
