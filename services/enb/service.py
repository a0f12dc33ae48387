"""The enb-agent service shell: S1AP over SCTP into `S1apAgent`, and volte.v1.BearerControl.

Everything S1AP is decided by `services.enb.procedures.S1apAgent` (sans-IO). This module is its
asyncio shell, as services/media/service.py is the relay core's:

- The SCTP server (`services.enb.sctp.open_transport`: kernel SCTP where the kernel has it,
  else userspace SCTP over UDP) reports association up/down and messages; each goes into the
  agent with the event loop's clock, and the actions that come back are carried out at once:
  `Send` on the association's stream with PPID 18, outcomes to the gRPC calls waiting for them,
  events to the WatchEvents streams, the rest to the log. The agent's timers (`next_timer`,
  `handle_timer`) run from one `loop.call_at` handle.
- gRPC `volte.v1.BearerControl` (SetupBearer / ReleaseBearer wait for the eNB's answer),
  grpc.health.v1 (SERVING once the SCTP server listens), Prometheus metrics, SIGTERM drain.

gRPC status codes of SetupBearer / ReleaseBearer (the message always says what happened, with
the S1AP cause where there is one; the cause alone is in the trailing metadata `s1ap-cause`):

- INVALID_ARGUMENT: a malformed IMSI, QoS, packet filter, bearer id or cause.
- NOT_FOUND: no UE context for the IMSI (the UE is not attached at any eNB connected to this
  agent), or no such bearer (released already, or its UE or eNB is gone).
- FAILED_PRECONDITION: the eNB refused the E-RAB (its failed list; e.g.
  "radioNetwork/radio-resources-not-available"), or refused to release it.
- UNAVAILABLE: the UE is still attaching, its eNB was lost or reset while the request was under
  way, the UE re-attached, or this instance is draining.
- RESOURCE_EXHAUSTED: the UE has no free E-RAB id (6..15) left.
- ABORTED: a pending set-up was cancelled by a ReleaseBearer for it.
- DEADLINE_EXCEEDED: the eNB did not answer within --bearer-timeout (the agent then forgets the
  request; an E-RAB that the eNB sets up afterwards is released again).

A caller that gives up on a SetupBearer (its deadline, a cancelled call) has the pending set-up
cancelled: no bearer is left without an owner. Repeating a SetupBearer with the same `dialog`
for the same UE answers with the bearer that call already has. `ue_ip` is not checked: the agent
has no user plane and does not learn UE addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import metrics, propagate, trace
from opentelemetry.metrics import CallbackOptions, Observation

from services.common.config import option, parse_ip, parse_positive_float
from services.common.events import EventHub
from services.common.health import HealthReporter, add_health
from services.common.telemetry import setup_telemetry
from services.enb.procedures import (
    CAUSE_CANCELLED,
    CAUSE_NO_E_RAB_ID,
    CAUSE_NOT_ATTACHED,
    CAUSE_TIMEOUT,
    CAUSE_UNKNOWN_BEARER,
    CAUSE_UNKNOWN_IMSI,
    Action,
    AgentConfig,
    AgentError,
    AttachFailed,
    BearerFailed,
    BearerInfo,
    BearerLost,
    BearerReleased,
    BearerSetUp,
    BearerState,
    Discarded,
    EnbConnected,
    EnbInfo,
    EnbLost,
    EnbRejected,
    PeerError,
    S1apAgent,
    UeAttached,
    UeInfo,
    UeReleased,
)
from services.enb.s1ap import (
    NORMAL_RELEASE,
    BearerQos,
    Cause,
    FilterDirection,
    PacketFilter,
    Plmn,
    Send,
    qos_for_codec,
)
from services.enb.sctp import (
    S1AP_PORT,
    S1AP_PPID,
    Association,
    DownReason,
    SctpConfig,
    SctpError,
    SctpHandler,
    SctpServer,
    SctpTransport,
    open_transport,
)
from volte.v1 import bearer_pb2, bearer_pb2_grpc, common_pb2

log = logging.getLogger("volte.enb")
tracer = trace.get_tracer("volte.enb")
T = TypeVar("T")
SERVICE_NAME = bearer_pb2.DESCRIPTOR.services_by_name["BearerControl"].full_name
DRAIN_GRACE = 5.0  # seconds: bearer requests under way may finish
DEFAULT_CODEC_BPS = 23_850  # AMR-WB 23.85 kbit/s
MAX_FILTERS = 15  # packet filters in one TFT (TS 24.008 10.5.6.12)
GBR_QCIS = frozenset({1, 2, 3, 4, 65, 66, 67, 71, 72, 73, 74, 75, 76})  # TS 23.203 6.1.7
# PPID 0 ("unspecified") is what some eNBs send; anything else is not S1AP.
ACCEPTED_PPIDS = frozenset({S1AP_PPID, 0})

Outcome: TypeAlias = BearerSetUp | BearerFailed | BearerReleased

_STATES = {
    BearerState.PENDING: bearer_pb2.Bearer.STATE_PENDING,
    BearerState.ACTIVE: bearer_pb2.Bearer.STATE_ACTIVE,
    BearerState.RELEASING: bearer_pb2.Bearer.STATE_RELEASING,
}
_Kind = bearer_pb2.BearerEvent


# -- options -----------------------------------------------------------------------------------
def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in logging.getLevelNamesMapping():
        raise argparse.ArgumentTypeError(f"unknown log level {text!r}")
    return level




def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} outside 0-65535")
    return value




def _streams(text: str) -> int:
    value = int(text)
    if not 2 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"{value} streams: need 2..65535 (stream 0 plus at least one for UEs)")
    return value


def _transport(text: str) -> str:
    value = text.strip().lower()
    if value not in ("auto", "kernel", "userspace"):
        raise argparse.ArgumentTypeError(f"expected auto, kernel or userspace: {text!r}")
    return value


def parse_plmns(text: str) -> tuple[Plmn, ...]:
    """ "00101" or "00101,310260": the PLMNs served (MCC + 2- or 3-digit MNC each)."""
    try:
        plmns = tuple(Plmn.parse(p) for p in text.split(",") if p.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not plmns:
        raise argparse.ArgumentTypeError("give at least one PLMN")
    return plmns


def _plmn_list(text: str) -> str:
    return ",".join(str(p) for p in parse_plmns(text))


@dataclass(frozen=True, kw_only=True)
class EnbConfig:
    grpc_listen: str = option("127.0.0.1:50081", "host:port of the BearerControl gRPC API")
    sctp_listen: str = option("127.0.0.1", "address the S1AP SCTP server listens on",
                              parse=parse_ip)
    sctp_port: int = option(
        S1AP_PORT, "S1AP SCTP port (the userspace transport's UDP port too; 0: any)", parse=_port
    )
    sctp_transport: str = option(
        "auto", "SCTP implementation: kernel (pysctp), userspace (libusrsctp over UDP, RFC 6951) "
        "or auto (kernel if this kernel has SCTP)", parse=_transport,
    )
    sctp_streams: int = option(8, "SCTP streams offered each way: stream 0 for non-UE "
                               "signalling, the others for UEs", parse=_streams)
    sctp_heartbeat: float = option(5.0, "seconds between SCTP heartbeats; a silent eNB is "
                                   "declared lost after about 8 of them",
                                   parse=parse_positive_float)
    plmn: str = option("00101", "PLMN(s) served, MCC+MNC, comma-separated; S1 Setup from an eNB "
                       "broadcasting none of them fails with unknown-PLMN", parse=_plmn_list)
    bearer_timeout: float = option(5.0, "seconds an eNB has to answer E-RAB Setup / Release",
                                   parse=parse_positive_float)
    mme_name: str = option("volte-enb-agent", "MME name sent in S1 Setup Response")
    metrics_port: int = option(0, "Prometheus /metrics port (0: off)")
    instance_id: str = option(f"{socket.gethostname()}-{os.getpid()}", "name of this instance")
    log_level: str = option("INFO", "DEBUG, INFO, WARNING or ERROR", parse=_log_level)

    @property
    def plmns(self) -> tuple[Plmn, ...]:
        return parse_plmns(self.plmn)

    def agent_config(self) -> AgentConfig:
        return AgentConfig(served_plmns=self.plmns, mme_name=self.mme_name,
                           bearer_timeout=self.bearer_timeout)

    def sctp_config(self) -> SctpConfig:
        return SctpConfig(streams=self.sctp_streams, heartbeat_interval=self.sctp_heartbeat)


# -- errors ------------------------------------------------------------------------------------
class RpcError(Exception):
    """Ends an RPC with `code`; `cause` (S1AP or local) goes into the trailing metadata."""

    def __init__(self, code: grpc.StatusCode, message: str, cause: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.cause = cause


def failure_code(cause: str) -> grpc.StatusCode:
    """The gRPC status for a failed bearer request with this cause (see the module doc)."""
    if cause in (CAUSE_UNKNOWN_IMSI, CAUSE_UNKNOWN_BEARER):
        return grpc.StatusCode.NOT_FOUND
    if cause == CAUSE_TIMEOUT:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if cause == CAUSE_NO_E_RAB_ID:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if cause == CAUSE_CANCELLED:
        return grpc.StatusCode.ABORTED
    if cause == CAUSE_NOT_ATTACHED or cause.startswith("local/"):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.FAILED_PRECONDITION  # an S1AP cause: the eNB said no


# -- requests -> agent values ------------------------------------------------------------------
def check_imsi(imsi: str) -> str:
    if not (imsi.isdigit() and 6 <= len(imsi) <= 15):
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"imsi must be 6..15 digits: {imsi!r}")
    return imsi


def qos_from_request(request: bearer_pb2.SetupBearerRequest) -> BearerQos:
    """QCI 1 unless given; for a GBR QCI, GBR = MBR from the codec's bandwidth unless bit rates
    are given (a non-GBR QCI without bit rates gets none)."""
    q = request.qos
    qci = q.qci or 1
    arp = q.arp if q.HasField("arp") else None
    priority = arp.priority_level if arp is not None and arp.priority_level else 2
    capability = arp.pre_emption_capability if arp is not None else True
    vulnerability = arp.pre_emption_vulnerability if arp is not None else False
    try:
        no_rates = not (q.gbr_ul_bps or q.gbr_dl_bps or q.mbr_ul_bps or q.mbr_dl_bps)
        if no_rates and qci not in GBR_QCIS:
            return BearerQos(qci=qci, priority_level=priority, pre_emption_capability=capability,
                             pre_emption_vulnerability=vulnerability)
        if no_rates:
            base = qos_for_codec(request.codec_bps or DEFAULT_CODEC_BPS,
                                 ptime_ms=request.ptime_ms or 20, qci=qci,
                                 priority_level=priority)
            return BearerQos(qci=qci, priority_level=priority,
                             pre_emption_capability=capability,
                             pre_emption_vulnerability=vulnerability,
                             gbr_ul=base.gbr_ul, gbr_dl=base.gbr_dl,
                             mbr_ul=base.mbr_ul, mbr_dl=base.mbr_dl)
        return BearerQos(qci=qci, priority_level=priority, pre_emption_capability=capability,
                         pre_emption_vulnerability=vulnerability,
                         gbr_ul=q.gbr_ul_bps, gbr_dl=q.gbr_dl_bps,
                         mbr_ul=q.mbr_ul_bps or q.gbr_ul_bps, mbr_dl=q.mbr_dl_bps or q.gbr_dl_bps)
    except ValueError as exc:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"qos: {exc}") from None


def filters_from_request(request: bearer_pb2.SetupBearerRequest) -> tuple[PacketFilter, ...]:
    if len(request.filters) > MAX_FILTERS:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"{len(request.filters)} packet filters: at most {MAX_FILTERS}")
    out = []
    for n, f in enumerate(request.filters):
        address = None
        if f.remote.ip:
            try:
                address = str(ipaddress.ip_address(f.remote.ip.strip("[]")))
            except ValueError:
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"filters[{n}].remote.ip {f.remote.ip!r} is not an IP "
                               "address") from None
        if f.remote.port > 65535 or f.local_port > 65535 or f.protocol > 255:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"filters[{n}]: ports are 0..65535 and protocol 0..255")
        direction = (FilterDirection(f.direction) if f.direction
                     else FilterDirection.BIDIRECTIONAL)
        out.append(PacketFilter(direction, address, f.remote.port or None, f.local_port or None,
                                f.protocol or 17))
    return tuple(out)


def dialog_key(dialog: common_pb2.DialogId) -> Hashable | None:
    if not dialog.call_id:
        return None
    return (dialog.call_id, dialog.from_tag, dialog.to_tag)


class _RateLimitedLog:
    """At most `burst` lines per `period` seconds, then one line saying how many were left out:
    garbage from a broken eNB at line rate must not flood the log."""

    def __init__(self, burst: int = 20, period: float = 1.0) -> None:
        self.burst = burst
        self.period = period
        self._window = 0.0
        self._count = 0
        self._suppressed = 0

    def __call__(self, level: int, message: str, **extra: object) -> None:
        now = time.monotonic()
        if now - self._window >= self.period:
            if self._suppressed:
                log.warning("%d more like messages left out", self._suppressed)
            self._window, self._count, self._suppressed = now, 0, 0
        self._count += 1
        if self._count > self.burst:
            self._suppressed += 1
            return
        log.log(level, message, extra=extra)


# -- the agent shell ---------------------------------------------------------------------------
class EnbAgentServer(SctpHandler):
    """The S1apAgent driven by an SCTP server and the event loop, plus the gRPC server."""

    def __init__(
        self,
        config: EnbConfig,
        *,
        transport: SctpTransport | None = None,
        meter: metrics.Meter | None = None,
    ) -> None:
        self.config = config
        self.agent = S1apAgent(config.agent_config())
        self.transport = transport or open_transport(
            config.sctp_transport,  # type: ignore[arg-type]  # checked by _transport
            config.sctp_config(),
        )
        self.hub: EventHub[bearer_pb2.BearerEvent] = EventHub()
        self.draining = False
        self.sctp: SctpServer | None = None
        self.grpc_port = 0
        self._waiters: dict[int, list[asyncio.Future[Outcome]]] = {}
        self._dialogs: dict[int, common_pb2.DialogId] = {}  # bearer id -> its call
        self._releases: dict[int, int] = {}  # release request id -> bearer id
        self._started: dict[int, float] = {}  # bearer id -> when its setup was asked
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._server: grpc.aio.Server | None = None
        self._health: HealthReporter | None = None
        self._discard_log = _RateLimitedLog()
        meter = meter or metrics.get_meter("volte.enb")
        self.servicer = BearerServicer(self, meter)
        self._instruments(meter)

    # -- time ----------------------------------------------------------------------------------
    def now(self) -> float:
        loop = self._loop or asyncio.get_running_loop()
        return loop.time()

    def wall(self, t: float) -> Timestamp:
        stamp = Timestamp()
        stamp.FromNanoseconds(int((time.time() - (self.now() - t)) * 1e9))
        return stamp

    # -- SCTP events (SctpHandler) -------------------------------------------------------------
    def on_association_up(self, assoc: Association, inbound_streams: int,
                          outbound_streams: int) -> None:
        self._assoc_events.add(1, {"event": "up"})
        log.info("SCTP association up", extra={
            "peer": f"{assoc.peer[0]}:{assoc.peer[1]}", "streams_in": inbound_streams,
            "streams_out": outbound_streams, "transport": assoc.kind})
        self.apply(self.agent.association_up(assoc, outbound_streams, self.now(),
                                             inbound_streams))

    def on_message(self, assoc: Association, stream: int, ppid: int, data: bytes) -> None:
        if ppid not in ACCEPTED_PPIDS:
            self._discarded.add(1, {"reason": "ppid"})
            self._discard_log(logging.WARNING, "dropped a message that is not S1AP",
                              peer=f"{assoc.peer[0]}:{assoc.peer[1]}", stream=stream, ppid=ppid)
            return
        try:
            actions = self.agent.receive(assoc, stream, data, self.now())
        except AgentError as exc:  # a message racing the association's teardown
            log.debug("S1AP message dropped: %s", exc)
            return
        self.apply(actions)

    def on_association_down(self, assoc: Association, reason: DownReason) -> None:
        self._assoc_events.add(1, {"event": str(reason)})
        log.info("SCTP association down", extra={
            "peer": f"{assoc.peer[0]}:{assoc.peer[1]}", "reason": str(reason)})
        self.apply(self.agent.association_down(assoc, self.now(),
                                               reason=f"association {reason}"))

    # -- actions ---------------------------------------------------------------------------------
    def apply(self, actions: Iterable[Action]) -> None:
        """Carry out the agent's actions in order, then re-arm its timer."""
        for action in actions:
            if isinstance(action, Send):
                self._send(action)
            elif isinstance(action, BearerSetUp | BearerFailed | BearerReleased):
                self._outcome(action)
            else:
                self._event(action)
        self._rearm()

    def _send(self, action: Send) -> None:
        assoc = action.assoc
        assert isinstance(assoc, Association)
        try:
            assoc.send(action.stream, S1AP_PPID, action.data)
        except (SctpError, ValueError) as exc:
            # The association went down under us (its down event follows) or is congested.
            log.warning("cannot send %s: %s", action.message.name, exc,
                        extra={"peer": f"{assoc.peer[0]}:{assoc.peer[1]}"})

    def _outcome(self, action: Outcome) -> None:
        rid = action.request_id
        watched = bool(self.hub.watchers)
        if isinstance(action, BearerSetUp):
            started = self._started.pop(rid, None)
            if started is not None:
                self._setup_seconds.record(self.now() - started)
            self._setups.add(1, {"result": "ok", "cause": ""})
            if watched:
                self._publish(_Kind.KIND_BEARER_ACTIVE, action.bearer.imsi,
                              action.bearer.enb_id, bearer=self.bearer_proto(action.bearer))
        elif isinstance(action, BearerReleased):
            bearer_id = self._releases.pop(rid, action.bearer.bearer_id)
            self._dialogs.pop(bearer_id, None)
            self._releases_count.add(1, {"result": "ok"})
            if watched:
                released = self.bearer_proto(action.bearer, bearer_pb2.Bearer.STATE_RELEASED,
                                             action.cause)
                self._publish(_Kind.KIND_BEARER_RELEASED, action.bearer.imsi,
                              action.bearer.enb_id, bearer=released, cause=action.cause)
        else:
            released_id = self._releases.pop(rid, None)
            if released_id is None:  # a set-up failed
                self._started.pop(rid, None)
                self._setups.add(1, {"result": "failed", "cause": action.cause})
                log.info("bearer set-up failed", extra={
                    "imsi": action.imsi, "bearer_id": rid, "cause": action.cause})
                bearer = self.failed_bearer_proto(action)
                self._dialogs.pop(rid, None)
            else:  # a release failed: the bearer stays (or, on timeout, is forgotten)
                self._releases_count.add(1, {"result": "failed"})
                log.info("bearer release failed", extra={
                    "imsi": action.imsi, "bearer_id": released_id, "cause": action.cause})
                info = self.agent.bearer(released_id)
                bearer = (self.bearer_proto(info, cause=action.cause) if info is not None
                          else self.failed_bearer_proto(action, released_id))
                if info is None:  # timed out: the agent forgot it
                    self._dialogs.pop(released_id, None)
            self._publish(_Kind.KIND_BEARER_FAILED, action.imsi or "", None, bearer=bearer,
                          cause=action.cause)
        for future in self._waiters.pop(rid, ()):
            if not future.done():
                future.set_result(action)

    def _event(self, action: Action) -> None:
        if isinstance(action, EnbConnected):
            enb = action.enb
            log.info("eNB connected (S1 Setup)", extra={
                "enb_id": enb.enb_id, "enb_name": enb.name,
                "peer": _peer(enb.assoc), "tacs": list(enb.tacs)})
            self._publish(_Kind.KIND_ENB_CONNECTED, "", enb.global_enb_id)
        elif isinstance(action, EnbLost):
            imsis = [u.imsi for u in action.ues if u.imsi]
            log.warning("eNB lost with its UEs", extra={
                "enb_id": action.enb.enb_id, "reason": action.reason, "ues": len(imsis)})
            self._publish(_Kind.KIND_ENB_DISCONNECTED, "", action.enb.global_enb_id,
                          imsis=imsis, cause=action.reason)
        elif isinstance(action, UeAttached):
            ue = action.ue
            log.debug("UE attached", extra={"imsi": ue.imsi, "enb_id": str(ue.enb_id),
                                            "stream": ue.stream})
            self._publish(_Kind.KIND_UE_CONTEXT_CREATED, ue.imsi or "", ue.enb_id)
        elif isinstance(action, UeReleased):
            ue = action.ue
            log.info("UE context released", extra={"imsi": ue.imsi, "cause": action.cause})
            self._publish(_Kind.KIND_UE_CONTEXT_RELEASED, ue.imsi or "", ue.enb_id,
                          cause=action.cause)
        elif isinstance(action, BearerLost):
            b = action.bearer
            self._dialogs.pop(b.bearer_id, None)
            self._lost.add(1, {"cause": action.cause})
            log.info("bearer lost", extra={"imsi": b.imsi, "bearer_id": b.bearer_id,
                                           "cause": action.cause})
            self._publish(_Kind.KIND_BEARER_LOST, b.imsi, b.enb_id,
                          bearer=self.bearer_proto(b, bearer_pb2.Bearer.STATE_RELEASED,
                                                   action.cause),
                          cause=action.cause)
        elif isinstance(action, EnbRejected):
            log.warning("S1 Setup refused", extra={
                "enb_id": str(action.global_enb_id) if action.global_enb_id else "",
                "peer": _peer(action.assoc), "cause": str(action.cause)})
        elif isinstance(action, AttachFailed):
            log.info("attach failed", extra={"imsi": action.imsi, "cause": action.cause})
        elif isinstance(action, PeerError):
            m = action.message
            log.warning("eNB sent Error Indication", extra={
                "peer": _peer(action.assoc), "cause": str(m.cause) if m.cause else "",
                "mme_ue_id": m.mme_ue_id, "enb_ue_id": m.enb_ue_id})
        elif isinstance(action, Discarded):
            self._discarded.add(1, {"reason": "s1ap"})
            self._discard_log(logging.WARNING, f"S1AP PDU dropped or refused: {action.reason}",
                              peer=_peer(action.assoc), stream=action.stream,
                              procedure_code=action.procedure_code)

    def _publish(self, kind: bearer_pb2.BearerEvent.Kind, imsi: str, enb_id: object,
                 *, bearer: bearer_pb2.Bearer | None = None, imsis: Iterable[str] = (),
                 cause: str = "") -> None:
        if not self.hub.watchers:
            return
        self.hub.publish(bearer_pb2.BearerEvent(
            kind=kind, at=self.wall(self.now()), enb_id=str(enb_id) if enb_id else "",
            imsi=imsi, bearer=bearer, imsis=imsis, cause=cause))

    # -- timers ----------------------------------------------------------------------------------
    def _rearm(self) -> None:
        due = self.agent.next_timer()
        if due is None or (self._timer_at is not None and self._timer_at <= due):
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = self._loop or asyncio.get_running_loop()
        self._timer_at = due
        self._timer = loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.apply(self.agent.handle_timer(self.now()))

    # -- bearers (what the servicer calls) -------------------------------------------------------
    async def setup_bearer(self, imsi: str, qos: BearerQos, filters: tuple[PacketFilter, ...],
                           dialog: common_pb2.DialogId) -> bearer_pb2.Bearer:
        if self.draining:
            raise RpcError(grpc.StatusCode.UNAVAILABLE,
                           "enb-agent instance is draining: ask another instance")
        ue = self.agent.ue(imsi)
        if ue is None:
            raise RpcError(grpc.StatusCode.NOT_FOUND,
                           f"no UE context for IMSI {imsi}: not attached at any eNB of this "
                           "agent", CAUSE_UNKNOWN_IMSI)
        key = dialog_key(dialog)
        if key is not None:  # the same call asking again: answer with the bearer it has
            for b in self.agent.bearers(imsi):
                if b.key == key and b.state is BearerState.ACTIVE:
                    return self.bearer_proto(b)
        now = self.now()
        rid, actions = self.agent.setup_bearer(imsi, qos, now, filters=filters, key=key)
        future = self._wait(rid)
        if rid not in self._started:
            self._started[rid] = now
            if dialog.call_id:
                self._dialogs[rid] = dialog
        self.apply(actions)
        try:
            outcome = await self._outcome_of(future)
        finally:
            self._unwait(rid, future, cancel_setup=True)
        if isinstance(outcome, BearerSetUp):
            return self.bearer_proto(outcome.bearer)
        cause = outcome.cause
        where = f" at eNB {ue.enb_id}" if ue.enb_id else ""
        raise RpcError(failure_code(cause),
                       f"E-RAB setup for IMSI {imsi}{where} failed: {_explain(cause)}", cause)

    async def release_bearer(self, bearer_id: int, cause: Cause) -> bearer_pb2.Bearer:
        info = self.agent.bearer(bearer_id)
        if info is None:
            raise RpcError(grpc.StatusCode.NOT_FOUND,
                           f"no bearer {bearer_id}: released already, or its UE or eNB is gone",
                           CAUSE_UNKNOWN_BEARER)
        rid, actions = self.agent.release_bearer(bearer_id, self.now(), cause)
        self._releases[rid] = bearer_id
        future = self._wait(rid)
        self.apply(actions)
        try:
            outcome = await self._outcome_of(future)
        finally:
            self._unwait(rid, future, cancel_setup=False)
        if not isinstance(outcome, BearerFailed):
            return self.bearer_proto(outcome.bearer, bearer_pb2.Bearer.STATE_RELEASED,
                                     outcome.cause if isinstance(outcome, BearerReleased) else "")
        why = outcome.cause
        raise RpcError(failure_code(why), f"E-RAB release of bearer {bearer_id} (IMSI "
                       f"{info.imsi}) failed: {_explain(why)}", why)

    def _wait(self, rid: int) -> asyncio.Future[Outcome]:
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._waiters.setdefault(rid, []).append(future)
        return future

    async def _outcome_of(self, future: asyncio.Future[Outcome]) -> Outcome:
        # The agent answers BearerFailed(local/timeout) after bearer_timeout; the extra second
        # only guards against a bug leaving the call hanging.
        async with asyncio.timeout(self.config.bearer_timeout + 1.0):
            return await future

    def _unwait(self, rid: int, future: asyncio.Future[Outcome], *, cancel_setup: bool) -> None:
        """The caller stopped waiting: answered, or its RPC was cancelled or timed out. A set-up
        nobody waits for any more is cancelled, so that no bearer is left without an owner."""
        waiters = self._waiters.get(rid)
        if waiters is not None:
            with contextlib.suppress(ValueError):
                waiters.remove(future)
            if waiters:
                return  # another call for the same dialog still waits
            del self._waiters[rid]
        if future.done() and not future.cancelled():
            return  # answered
        future.cancel()
        info = self.agent.bearer(rid)
        if cancel_setup and info is not None and info.state is BearerState.PENDING:
            log.info("bearer set-up abandoned by its caller: cancelling it",
                     extra={"imsi": info.imsi, "bearer_id": rid})
            release_id, actions = self.agent.release_bearer(rid, self.now())
            self._releases[release_id] = rid
            self.apply(actions)

    # -- protobuf views --------------------------------------------------------------------------
    def bearer_proto(self, b: BearerInfo, state: bearer_pb2.Bearer.State | None = None,
                     cause: str = "") -> bearer_pb2.Bearer:
        dialog = self._dialogs.get(b.bearer_id)
        return bearer_pb2.Bearer(
            bearer_id=str(b.bearer_id), imsi=b.imsi, e_rab_id=b.e_rab_id,
            enb_id=str(b.enb_id) if b.enb_id else "", mme_ue_s1ap_id=b.mme_ue_id,
            enb_ue_s1ap_id=b.enb_ue_id, qos=qos_proto(b.qos),
            state=state if state is not None else _STATES[b.state], cause=cause, dialog=dialog,
        )

    def failed_bearer_proto(self, f: BearerFailed, bearer_id: int | None = None
                            ) -> bearer_pb2.Bearer:
        bid = bearer_id if bearer_id is not None else f.request_id
        ue = self.agent.ue(f.imsi) if f.imsi else None
        return bearer_pb2.Bearer(
            bearer_id=str(bid), imsi=f.imsi or "", e_rab_id=f.e_rab_id or 0,
            enb_id=str(ue.enb_id) if ue is not None and ue.enb_id else "",
            state=bearer_pb2.Bearer.STATE_FAILED, cause=f.cause,
            dialog=self._dialogs.get(bid),
        )

    def enodeb_proto(self, e: EnbInfo) -> bearer_pb2.Enodeb:
        peer = e.assoc.peer if isinstance(e.assoc, Association) else ("", 0)
        return bearer_pb2.Enodeb(
            enb_id=e.enb_id, name=e.name or "",
            sctp_peer=common_pb2.SocketAddress(ip=peer[0], port=peer[1]), tacs=e.tacs,
            connected_since=self.wall(e.connected_at), ue_count=e.ue_count,
            sctp_streams_in=e.streams_in, sctp_streams_out=e.streams_out,
        )

    def ue_proto(self, u: UeInfo, bearers: Iterable[BearerInfo]) -> bearer_pb2.UeContext:
        return bearer_pb2.UeContext(
            imsi=u.imsi or "", enb_id=str(u.enb_id) if u.enb_id else "",
            mme_ue_s1ap_id=u.mme_ue_id, enb_ue_s1ap_id=u.enb_ue_id, sctp_stream=u.stream,
            bearers=[self.bearer_proto(b) for b in bearers], state=str(u.state),
        )

    # -- metrics ---------------------------------------------------------------------------------
    def _instruments(self, meter: metrics.Meter) -> None:
        agent = self.agent

        def enbs(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(len(agent.enbs()))]

        def ues(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(len(agent.ues()))]

        def bearers(_: CallbackOptions) -> Iterable[Observation]:
            counts = dict.fromkeys(BearerState, 0)
            for b in agent.bearers():
                counts[b.state] += 1
            return [Observation(n, {"state": str(s)}) for s, n in counts.items()]

        meter.create_observable_gauge("volte_enb_enodebs", [enbs], unit="{enb}",
                                      description="eNodeBs connected (S1 Setup done)")
        meter.create_observable_gauge("volte_enb_ues", [ues], unit="{ue}",
                                      description="UE contexts (attaching or attached)")
        meter.create_observable_gauge("volte_enb_bearers", [bearers], unit="{bearer}",
                                      description="dedicated bearers by state")
        self._setups = meter.create_counter(
            "volte_enb_bearer_setups", unit="{bearer}",
            description="E-RAB set-ups by result (ok / failed) and cause")
        self._releases_count = meter.create_counter(
            "volte_enb_bearer_releases", unit="{bearer}",
            description="E-RAB releases asked for, by result")
        self._lost = meter.create_counter(
            "volte_enb_bearers_lost", unit="{bearer}",
            description="active bearers gone without a release (eNB lost, reset, UE released)")
        self._setup_seconds = meter.create_histogram(
            "volte_enb_bearer_setup_duration", unit="s",
            description="SetupBearer to E-RAB Setup Response")
        self._discarded = meter.create_counter(
            "volte_enb_s1ap_discarded", unit="{message}",
            description="received messages dropped or answered with Error Indication")
        self._assoc_events = meter.create_counter(
            "volte_enb_sctp_association_events", unit="{event}",
            description="SCTP associations up, and down by reason")

    # -- life cycle ------------------------------------------------------------------------------
    async def start(self) -> int:
        """gRPC first (NOT_SERVING), then the SCTP server; SERVING once it listens. Returns the
        bound gRPC port; `self.sctp.port` is the SCTP port."""
        self._loop = asyncio.get_running_loop()
        server = grpc.aio.server()
        bearer_pb2_grpc.add_BearerControlServicer_to_server(self.servicer, server)
        self._health = await add_health(server, [SERVICE_NAME])
        self.grpc_port = server.add_insecure_port(self.config.grpc_listen)
        await server.start()
        self._server = server
        try:
            self.sctp = await self.transport.create_server(
                self, self.config.sctp_listen, self.config.sctp_port)
        except BaseException:
            await server.stop(0)
            raise
        await self._health.serving()
        return self.grpc_port

    async def stop(self, grace: float = DRAIN_GRACE) -> None:
        """Drain: NOT_SERVING for good, no new bearers; requests under way get up to `grace`
        seconds; then the eNB associations are shut down gracefully and gRPC stops."""
        self.draining = True
        if self._health is not None:
            await self._health.shutdown()
        deadline = self.now() + grace
        while self._waiters and self.now() < deadline:
            await asyncio.sleep(0.05)
        if self.sctp is not None:
            self.sctp.close()  # SHUTDOWN to every eNB; their down events reach the agent
            await asyncio.sleep(0.1)  # let the SHUTDOWN chunks leave
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        self.hub.close()  # ends the WatchEvents streams, so the server need not wait for them
        if self._server is not None:
            await self._server.stop(min(grace, 1.0))


def qos_proto(q: BearerQos) -> bearer_pb2.BearerQos:
    return bearer_pb2.BearerQos(
        qci=q.qci,
        arp=common_pb2.AllocationRetentionPriority(
            priority_level=q.priority_level, pre_emption_capability=q.pre_emption_capability,
            pre_emption_vulnerability=q.pre_emption_vulnerability),
        gbr_ul_bps=q.gbr_ul, gbr_dl_bps=q.gbr_dl, mbr_ul_bps=q.mbr_ul, mbr_dl_bps=q.mbr_dl,
    )


def _peer(assoc: object) -> str:
    if isinstance(assoc, Association):
        return f"{assoc.peer[0]}:{assoc.peer[1]}"
    return str(assoc)


_EXPLAIN = {
    CAUSE_TIMEOUT: "the eNB did not answer in time",
    CAUSE_UNKNOWN_IMSI: "no UE context for this IMSI",
    CAUSE_NOT_ATTACHED: "the UE is still attaching",
    CAUSE_NO_E_RAB_ID: "no free E-RAB id (6..15) left for this UE",
    CAUSE_CANCELLED: "cancelled by a ReleaseBearer",
    CAUSE_UNKNOWN_BEARER: "no such bearer",
}


def _explain(cause: str) -> str:
    text = _EXPLAIN.get(cause)
    if text is not None:
        return f"{text} ({cause})"
    if cause.startswith("local/"):
        return cause
    return f"the eNB refused it with S1AP cause {cause}"


# -- the servicer --------------------------------------------------------------------------------
class BearerServicer(bearer_pb2_grpc.BearerControlServicer):
    """Each RPC: validate, run against the agent shell, map errors to status codes, count it."""

    def __init__(self, server: EnbAgentServer, meter: metrics.Meter) -> None:
        self.server = server
        self._rpcs = meter.create_counter(
            "volte_enb_rpcs", unit="{rpc}", description="BearerControl RPCs by method and result")

    async def _call(self, method: str, context: Any, work: Callable[[], Awaitable[T]]) -> T:
        code, message, cause = grpc.StatusCode.OK, "", ""
        parent = propagate.extract(dict(context.invocation_metadata() or ()))
        with tracer.start_as_current_span(f"BearerControl/{method}", context=parent):
            try:
                result = await work()
            except RpcError as exc:
                code, message, cause = exc.code, str(exc), exc.cause
            except Exception as exc:  # a bug: INTERNAL rather than UNKNOWN, logged once
                code, message = grpc.StatusCode.INTERNAL, f"enb-agent: {type(exc).__name__}"
                log.exception("%s failed", method, extra={"rpc": method})
        self._rpcs.add(1, {"method": method, "code": code.name})
        if code is not grpc.StatusCode.OK:
            log.debug("rpc failed", extra={"rpc": method, "code": code.name, "detail": message})
            if cause:
                context.set_trailing_metadata((("s1ap-cause", cause),))
            await context.abort(code, message)
        return result

    async def SetupBearer(self, request: bearer_pb2.SetupBearerRequest,
                          context: Any) -> bearer_pb2.SetupBearerResponse:
        async def work() -> bearer_pb2.SetupBearerResponse:
            imsi = check_imsi(request.imsi)
            qos = qos_from_request(request)
            filters = filters_from_request(request)
            bearer = await self.server.setup_bearer(imsi, qos, filters, request.dialog)
            return bearer_pb2.SetupBearerResponse(bearer=bearer)

        return await self._call("SetupBearer", context, work)

    async def ReleaseBearer(self, request: bearer_pb2.ReleaseBearerRequest,
                            context: Any) -> bearer_pb2.ReleaseBearerResponse:
        async def work() -> bearer_pb2.ReleaseBearerResponse:
            try:
                bearer_id = int(request.bearer_id)
            except ValueError:
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"bearer_id {request.bearer_id!r} is not one of ours") from None
            try:
                cause = Cause.parse(request.cause) if request.cause else NORMAL_RELEASE
            except ValueError as exc:
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"cause: {exc}") from None
            bearer = await self.server.release_bearer(bearer_id, cause)
            return bearer_pb2.ReleaseBearerResponse(bearer=bearer)

        return await self._call("ReleaseBearer", context, work)

    async def ListEnodebs(self, request: bearer_pb2.ListEnodebsRequest,
                          context: Any) -> bearer_pb2.ListEnodebsResponse:
        async def work() -> bearer_pb2.ListEnodebsResponse:
            server = self.server
            return bearer_pb2.ListEnodebsResponse(
                enodebs=[server.enodeb_proto(e) for e in server.agent.enbs()])

        return await self._call("ListEnodebs", context, work)

    async def ListUes(self, request: bearer_pb2.ListUesRequest,
                      context: Any) -> bearer_pb2.ListUesResponse:
        async def work() -> bearer_pb2.ListUesResponse:
            agent = self.server.agent
            by_imsi: dict[str, list[BearerInfo]] = {}
            for b in agent.bearers():
                by_imsi.setdefault(b.imsi, []).append(b)
            ues = [u for u in agent.ues()
                   if not request.enb_id or str(u.enb_id) == request.enb_id]
            return bearer_pb2.ListUesResponse(ues=[
                self.server.ue_proto(u, by_imsi.get(u.imsi or "", ())) for u in ues])

        return await self._call("ListUes", context, work)

    async def WatchEvents(self, request: bearer_pb2.WatchBearerEventsRequest,
                          context: Any) -> AsyncIterator[bearer_pb2.BearerEvent]:
        self._rpcs.add(1, {"method": "WatchEvents", "code": "OK"})
        imsi = request.imsi
        watcher = self.server.hub.subscribe(
            lambda e: not imsi or e.imsi == imsi or imsi in e.imsis)
        try:
            async for event in watcher.stream(context):
                yield event
        finally:
            self.server.hub.unsubscribe(watcher)


# -- the process -----------------------------------------------------------------------------------
async def serve(config: EnbConfig, *, stop: asyncio.Event | None = None) -> int:
    """Runs the service until SIGTERM/SIGINT (or `stop`), then drains; the exit status."""
    telemetry = setup_telemetry("enb-agent", metrics_port=config.metrics_port)
    meter = telemetry.meter_provider.get_meter("volte.enb")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    context = {"instance": config.instance_id, "plmn": config.plmn}
    try:
        try:
            server = EnbAgentServer(config, meter=meter)
        except (ImportError, RuntimeError, OSError) as exc:  # no usable SCTP implementation
            log.error("no SCTP transport (%s): %s", config.sctp_transport, exc, extra=context)
            return 1
        try:
            port = await server.start()
        except RuntimeError as exc:  # grpc cannot bind
            log.error("cannot listen on %s: %s", config.grpc_listen, exc, extra=context)
            return 1
        except OSError as exc:  # the SCTP (or its UDP) port is taken
            log.error("cannot listen for S1AP on %s:%d: %s", config.sctp_listen,
                      config.sctp_port, exc, extra=context)
            return 1
        assert server.sctp is not None
        log.info("enb-agent listening: BearerControl gRPC port %d, S1AP on %s:%d over %s SCTP",
                 port, server.sctp.host, server.sctp.port, server.transport.kind,
                 extra={**context, "sctp_transport": server.transport.kind,
                        "sctp_port": server.sctp.port, "grpc_port": port})
        await stop.wait()
        log.info("draining", extra=context)
        await server.stop(DRAIN_GRACE)
        log.info("stopped", extra=context)
        return 0
    finally:
        telemetry.shutdown()
