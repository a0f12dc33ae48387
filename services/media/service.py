"""The media service shell: volte.v1.MediaControl over the relay core, relay sockets, health,
metrics, the timer tick and the drain.

Everything about packets and sessions is decided by `services.media.relay.Relay` (sans-IO);
this module turns gRPC requests into calls on it, datagrams from the relay sockets into
`receive()` calls and its `Forward`s into `sendto()`, and its events into WatchEvents
messages. The core's clock is the event loop's (monotonic); protobuf timestamps are converted
to wall-clock time here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import metrics, propagate, trace
from opentelemetry.metrics import CallbackOptions, Observation

from services.common.events import EventHub
from services.common.health import HealthReporter, add_health
from services.common.telemetry import setup_telemetry
from services.media.config import MediaConfig
from services.media.events import Address, Event, EventKind, Leg
from services.media.fastpath import FastPath, FastPathOptions, UserspaceOnly, load
from services.media.ports import PortPool
from services.media.relay import (
    MAX_STREAMS,
    InvalidArgument,
    PortsExhausted,
    Relay,
    RelayConfig,
    SessionReport,
    StreamSdp,
    UnknownSession,
)
from volte.v1 import common_pb2, media_pb2, media_pb2_grpc

log = logging.getLogger("volte.media")
tracer = trace.get_tracer("volte.media")
T = TypeVar("T")
SERVICE_NAME = media_pb2.DESCRIPTOR.services_by_name["MediaControl"].full_name
DRAIN_GRACE = 5.0  # seconds: calls in progress may finish, RPCs complete
HEALTH_INTERVAL = 2.0

_LEGS = {Leg.CALLER: media_pb2.LEG_CALLER, Leg.CALLEE: media_pb2.LEG_CALLEE}
_KINDS = {
    EventKind.LATCHED: media_pb2.MediaEvent.KIND_LATCHED,
    EventKind.MEDIA_TIMEOUT: media_pb2.MediaEvent.KIND_MEDIA_TIMEOUT,
    EventKind.FAST_PATH_ON: media_pb2.MediaEvent.KIND_FAST_PATH_ON,
    EventKind.FAST_PATH_OFF: media_pb2.MediaEvent.KIND_FAST_PATH_OFF,
    EventKind.SESSION_DELETED: media_pb2.MediaEvent.KIND_SESSION_DELETED,
}


class Unavailable(Exception):
    pass


# -- requests -> core values ----------------------------------------------------------------------
def _address(what: str, addr: common_pb2.SocketAddress, family: int) -> Address | None:
    """A validated destination; None for the unspecified address (c=0.0.0.0: on hold)."""
    if not addr.ip:
        raise InvalidArgument(f"{what}.ip is empty")
    try:
        ip = ipaddress.ip_address(addr.ip.strip("[]"))
    except ValueError:
        raise InvalidArgument(f"{what}.ip {addr.ip!r} is not an IP address") from None
    if not 1 <= addr.port <= 65535:
        raise InvalidArgument(f"{what}.port {addr.port} outside 1-65535")
    if ip.version != family:
        raise InvalidArgument(
            f"{what}.ip {ip} is IPv{ip.version} but the relay sockets are IPv{family}"
        )
    if ip.is_unspecified:
        return None
    return (str(ip), addr.port)


def stream_from_proto(ms: media_pb2.MediaStream, family: int) -> StreamSdp:
    """Check one MediaStream and turn it into the core's StreamSdp (InvalidArgument if bad)."""
    where = f"stream {ms.index}"
    for pt in ms.payload_types:
        if pt > 127:
            raise InvalidArgument(f"{where}: payload type {pt} outside 0-127")
    for pt, rate in ms.clock_rates.items():
        if pt > 127 or not 0 < rate <= 10_000_000:
            raise InvalidArgument(f"{where}: clock rate {rate} for payload type {pt}")
    if ms.disabled:
        return StreamSdp(index=ms.index, media=ms.media, disabled=True)
    rtp = _address(f"{where}: rtp", ms.rtp, family)
    if ms.rtcp_mux:
        rtcp = rtp
    elif not ms.rtcp.ip and not ms.rtcp.port:  # not given: RTP port + 1 (RFC 3550)
        if ms.rtp.port >= 65535:
            raise InvalidArgument(f"{where}: rtp.port 65535 leaves no port for RTCP")
        rtcp = None if rtp is None else (rtp[0], rtp[1] + 1)
    else:
        given = common_pb2.SocketAddress(ip=ms.rtcp.ip or ms.rtp.ip, port=ms.rtcp.port)
        rtcp = _address(f"{where}: rtcp", given, family)
    return StreamSdp(
        index=ms.index, media=ms.media or "audio", rtp=rtp, rtcp=rtcp, rtcp_mux=ms.rtcp_mux,
        payload_types=tuple(ms.payload_types), clock_rates=dict(ms.clock_rates),
    )


class _RelayProtocol(asyncio.DatagramProtocol):
    """One relay socket: hands each datagram to the server with the socket's port."""

    def __init__(self, server: MediaServer, port: int) -> None:
        self.server = server
        self.port = port

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.server.on_datagram(self.port, data, addr)

    def error_received(self, exc: Exception) -> None:
        self.server.relay.count_drop("send_error")


# -- the servicer ----------------------------------------------------------------------------------
class MediaServicer(media_pb2_grpc.MediaControlServicer):
    """Each RPC: validate, run against the relay core, map errors to status codes, count it."""

    def __init__(self, server: MediaServer, meter: metrics.Meter) -> None:
        self.server = server
        self.relay = server.relay
        self._rpcs = meter.create_counter(
            "volte_media_rpcs", unit="{rpc}", description="MediaControl RPCs by method and result"
        )

    async def _call(self, method: str, context: Any, work: Callable[[], Awaitable[T]]) -> T:
        code, message = grpc.StatusCode.OK, ""
        parent = propagate.extract(dict(context.invocation_metadata() or ()))
        with tracer.start_as_current_span(f"MediaControl/{method}", context=parent):
            try:
                result = await work()
            except InvalidArgument as exc:
                code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
            except UnknownSession as exc:
                code, message = grpc.StatusCode.NOT_FOUND, str(exc)
            except PortsExhausted as exc:
                code, message = grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
                log.warning("%s", exc, extra={"rpc": method})
            except Unavailable as exc:
                code, message = grpc.StatusCode.UNAVAILABLE, str(exc)
            except OSError as exc:  # the bind address went away (interface down)
                code = grpc.StatusCode.UNAVAILABLE
                message = f"cannot bind relay sockets on {self.server.config.bind}: {exc}"
                log.error("%s", message, extra={"rpc": method})
            except Exception as exc:  # a bug: INTERNAL rather than UNKNOWN, logged once
                code, message = grpc.StatusCode.INTERNAL, f"media: {type(exc).__name__}"
                log.exception("%s failed", method, extra={"rpc": method})
        self._rpcs.add(1, {"method": method, "code": code.name})
        if code is not grpc.StatusCode.OK:
            log.debug("rpc failed", extra={"rpc": method, "code": code.name, "detail": message})
            await context.abort(code, message)
        return result

    async def CreateSession(
        self, request: media_pb2.CreateSessionRequest, context: Any
    ) -> media_pb2.CreateSessionResponse:
        async def work() -> media_pb2.CreateSessionResponse:
            if self.server.draining:
                raise Unavailable("media instance is draining: create the session elsewhere")
            session_id = uuid.uuid4().hex
            labels = dict(request.labels)
            if request.dialog.call_id:
                labels.setdefault("call_id", request.dialog.call_id)
            self.relay.create_session(session_id, self.server.now(), labels)
            log.debug("session created", extra={"session": session_id, **labels})
            return media_pb2.CreateSessionResponse(
                session_id=session_id, media_instance=self.server.config.instance_id
            )

        return await self._call("CreateSession", context, work)

    async def UpdateSession(
        self, request: media_pb2.UpdateSessionRequest, context: Any
    ) -> media_pb2.UpdateSessionResponse:
        async def work() -> media_pb2.UpdateSessionResponse:
            kinds = (media_pb2.UpdateSessionRequest.KIND_OFFER,
                     media_pb2.UpdateSessionRequest.KIND_ANSWER)
            if request.kind not in kinds:
                raise InvalidArgument("kind must be KIND_OFFER or KIND_ANSWER")
            if request.from_leg not in (media_pb2.LEG_CALLER, media_pb2.LEG_CALLEE):
                raise InvalidArgument("from_leg must be LEG_CALLER or LEG_CALLEE")
            if len(request.streams) > MAX_STREAMS:
                raise InvalidArgument(f"{len(request.streams)} streams; at most {MAX_STREAMS}")
            streams = [stream_from_proto(ms, self.server.family) for ms in request.streams]
            ports = self.relay.update(
                request.session_id, Leg(request.from_leg), streams, self.server.now()
            )
            await self.server.activate()
            self.server.publish()
            ip = self.server.config.advertised_ip
            return media_pb2.UpdateSessionResponse(streams=[
                media_pb2.RelayStream(
                    index=p.index,
                    rtp=common_pb2.SocketAddress(ip=ip, port=p.rtp),
                    rtcp=common_pb2.SocketAddress(ip=ip, port=p.rtcp),
                )
                for p in ports
            ])

        return await self._call("UpdateSession", context, work)

    async def DeleteSession(
        self, request: media_pb2.DeleteSessionRequest, context: Any
    ) -> media_pb2.DeleteSessionResponse:
        async def work() -> media_pb2.DeleteSessionResponse:
            report = self.relay.delete(request.session_id, self.server.now())
            self.server.publish()
            log.debug("session deleted", extra={"session": request.session_id})
            return media_pb2.DeleteSessionResponse(final_stats=self.server.stats_proto(report))

        return await self._call("DeleteSession", context, work)

    async def QueryStats(
        self, request: media_pb2.QueryStatsRequest, context: Any
    ) -> media_pb2.SessionStats:
        async def work() -> media_pb2.SessionStats:
            return self.server.stats_proto(self.relay.report(request.session_id))

        return await self._call("QueryStats", context, work)

    async def WatchEvents(
        self, request: media_pb2.WatchMediaEventsRequest, context: Any
    ) -> AsyncIterator[media_pb2.MediaEvent]:
        session_id = request.session_id
        if session_id and session_id not in self.relay:
            self._rpcs.add(1, {"method": "WatchEvents", "code": "NOT_FOUND"})
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no media session {session_id}")
        watcher = self.server.hub.subscribe(
            lambda e: not session_id or e.session_id == session_id)
        deleted = media_pb2.MediaEvent.KIND_SESSION_DELETED
        try:
            async for event in watcher.stream(
                    context, last=lambda e: bool(session_id) and e.kind == deleted):
                yield event
        finally:
            self.server.hub.unsubscribe(watcher)


# -- the server ------------------------------------------------------------------------------------
class MediaServer:
    """The grpc.aio server with the servicer and health, the relay core and its sockets, and
    two background tasks: the timer tick and the health check (can relay ports be bound?)."""

    def __init__(
        self,
        config: MediaConfig,
        *,
        fastpath: FastPath | None = None,
        meter: metrics.Meter | None = None,
    ) -> None:
        self.config = config
        self.family = ipaddress.ip_address(config.bind).version
        self.pool = PortPool(config.bind, config.port_min, config.port_max)
        self.fastpath = fastpath or UserspaceOnly()
        self.relay = Relay(
            self.pool,
            RelayConfig(
                bind_ip=config.bind, timeout=config.timeout,
                relatch_after=config.relatch_packets,
            ),
            self.fastpath,
        )
        self.hub: EventHub[media_pb2.MediaEvent] = EventHub()
        self.draining = False
        self.tick_interval = min(1.0, config.timeout / 4)
        self.health_interval = HEALTH_INTERVAL
        meter = meter or metrics.get_meter("volte.media")
        self.servicer = MediaServicer(self, meter)
        self._instruments(meter)
        self._server: grpc.aio.Server | None = None
        self._health: HealthReporter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._packet_bug_logged = False
        self.port = 0

    # -- time --------------------------------------------------------------------------------------
    def now(self) -> float:
        loop = self._loop or asyncio.get_running_loop()
        return loop.time()

    def wall(self, t: float) -> Timestamp:
        stamp = Timestamp()
        stamp.FromNanoseconds(int((time.time() - (self.now() - t)) * 1e9))
        return stamp

    # -- packets -----------------------------------------------------------------------------------
    def on_datagram(self, port: int, data: bytes, addr: tuple[Any, ...]) -> None:
        relay = self.relay
        try:
            forward = relay.receive(port, (addr[0], addr[1]), data, self.now())
            if forward is not None and not self.pool.send(
                forward.socket, forward.data, forward.destination
            ):
                relay.count_drop("send_error", port)
            if relay.events:
                self.publish()
        except Exception:  # a bug: never let one packet stop the relay; say so once
            relay.count_drop("internal_error", port)
            if not self._packet_bug_logged:
                self._packet_bug_logged = True
                log.exception("relaying a packet failed (logged once)", extra={"port": port})

    def protocol(self, port: int) -> asyncio.DatagramProtocol:
        return _RelayProtocol(self, port)

    async def activate(self) -> None:
        await self.pool.activate(self.protocol)

    # -- events and stats --------------------------------------------------------------------------
    def publish(self) -> None:
        for event in self.relay.take_events():
            self._log_event(event)
            self.hub.publish(media_pb2.MediaEvent(
                session_id=event.session_id,
                kind=_KINDS[event.kind],
                at=self.wall(event.at),
                stream_index=event.stream_index,
                leg=_LEGS[event.leg] if event.leg else media_pb2.LEG_UNSPECIFIED,
                detail=event.detail,
            ))

    @staticmethod
    def _log_event(event: Event) -> None:
        extra = {"session": event.session_id, "stream": event.stream_index,
                 "leg": event.leg.name if event.leg else "", "detail": event.detail}
        if event.kind is EventKind.MEDIA_TIMEOUT:
            log.info("media timeout", extra=extra)
        else:
            log.debug(event.kind.name.lower(), extra=extra)

    def stats_proto(self, report: SessionReport) -> media_pb2.SessionStats:
        stats = media_pb2.SessionStats(
            session_id=report.session_id, created_at=self.wall(report.created_at)
        )
        if report.last_packet_at is not None:
            stats.last_packet_at.CopyFrom(self.wall(report.last_packet_at))
        for d in report.streams:
            entry = stats.streams.add(
                index=d.index, leg=_LEGS[d.leg], rtp_packets=d.rtp_packets, rtp_bytes=d.rtp_bytes,
                rtcp_packets=d.rtcp_packets, packets_lost=d.packets_lost,
                jitter_us=min(round(d.jitter * 1e6), 0xFFFFFFFF),
                fast_path_packets=d.fast_path_packets, malformed_packets=d.malformed_packets,
                dropped_packets=d.dropped_packets,
            )
            if d.latched_source is not None:
                entry.latched_source.ip, entry.latched_source.port = d.latched_source
            if d.last_packet_at is not None:
                entry.last_packet_at.CopyFrom(self.wall(d.last_packet_at))
        return stats

    def _instruments(self, meter: metrics.Meter) -> None:
        counters = self.relay.counters

        def sessions(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(len(self.relay))]

        def ports(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(len(self.pool))]

        def relayed(_: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(counters.relayed_rtp, {"kind": "rtp", "path": "userspace"}),
                Observation(counters.relayed_rtcp, {"kind": "rtcp", "path": "userspace"}),
                Observation(counters.fast_path_packets, {"kind": "rtp", "path": "fastpath"}),
            ]

        def dropped(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(n, {"reason": r}) for r, n in counters.dropped.items()]

        meter.create_observable_gauge(
            "volte_media_sessions_active", [sessions], unit="{session}",
            description="media sessions on this instance",
        )
        meter.create_observable_gauge(
            "volte_media_ports_in_use", [ports], unit="{port}", description="relay ports bound"
        )
        meter.create_observable_counter(
            "volte_media_packets_relayed", [relayed], unit="{packet}",
            description="RTP and RTCP packets relayed, by kind and path",
        )
        meter.create_observable_counter(
            "volte_media_packets_dropped", [dropped], unit="{packet}",
            description="packets not relayed, by reason",
        )

    # -- life cycle --------------------------------------------------------------------------------
    async def start(self) -> int:
        """Listens and starts the background tasks; answers the bound gRPC port."""
        self._loop = asyncio.get_running_loop()
        server = grpc.aio.server()
        media_pb2_grpc.add_MediaControlServicer_to_server(self.servicer, server)
        self._health = await add_health(server, [SERVICE_NAME])
        self.port = server.add_insecure_port(self.config.grpc_listen)
        await server.start()
        self._server = server
        self._tasks = [
            asyncio.create_task(self._tick(), name="media-tick"),
            asyncio.create_task(self._check_health(self._health), name="media-health"),
        ]
        return self.port

    async def stop(self, grace: float = DRAIN_GRACE) -> None:
        """Drain: NOT_SERVING for good, no new sessions, calls in progress may go on for up to
        `grace` seconds; then the sockets close and the server stops."""
        self.draining = True
        if self._health is not None:
            await self._health.shutdown()
        deadline = self.now() + grace
        while len(self.relay) and self.now() < deadline:
            await asyncio.sleep(0.1)
        if len(self.relay):
            log.info("drain: %d sessions still up; closing them", len(self.relay))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.relay.close(self.now())
        self.publish()
        self.hub.close()  # ends the WatchEvents streams, so the server need not wait for them
        if self._server is not None:
            await self._server.stop(min(grace, 1.0))
        self.pool.close()
        self.fastpath.close()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick_interval)
            self.relay.tick(self.now())
            self.publish()

    async def _check_health(self, health: HealthReporter) -> None:
        up: bool | None = None
        while True:
            problem = self.pool.probe()
            if (problem is None) != up:
                up = problem is None
                if up:
                    log.info("relay ports can be bound: SERVING")
                    await health.serving()
                else:
                    log.error("cannot bind relay ports: NOT_SERVING (%s)", problem)
                    await health.not_serving()
            await asyncio.sleep(self.health_interval)


async def serve(config: MediaConfig, *, stop: asyncio.Event | None = None) -> int:
    """Runs the service until SIGTERM/SIGINT (or `stop`), then drains; the exit status."""
    telemetry = setup_telemetry("media", metrics_port=config.metrics_port)
    meter = telemetry.meter_provider.get_meter("volte.media")
    fastpath = load(
        config.fastpath,
        FastPathOptions(config.interface, config.bind, config.port_min, config.port_max),
    )
    server = MediaServer(config, fastpath=fastpath, meter=meter)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    context = {
        "instance": config.instance_id, "bind": config.bind, "advertised": config.advertised_ip,
        "ports": f"{config.port_min}-{config.port_max}", "fastpath": fastpath.name,
    }
    try:
        try:
            port = await server.start()
        except RuntimeError as exc:  # grpc cannot bind
            log.error("cannot listen on %s: %s", config.grpc_listen, exc, extra=context)
            fastpath.close()
            return 1
        log.info("media service listening on port %d", port, extra=context)
        await stop.wait()
        log.info("draining", extra=context)
        await server.stop(DRAIN_GRACE)
        log.info("stopped", extra=context)
        return 0
    finally:
        telemetry.shutdown()
