"""The enb-agent's S1AP procedures (the MME side of TS 36.413), as a pure state machine.

`S1apAgent` holds the eNodeBs connected to one agent (by SCTP association) and the UE contexts
they serve. Like aioquic's connection it never touches a socket or a clock: the transport shell
feeds it association changes and received PDUs with the current time, the gRPC layer asks it for
bearers, and every method returns the actions to carry out, in order: `Send` (bytes for an SCTP
stream) and the events the rest of the service reports (`EnbConnected`, `UeAttached`,
`BearerSetUp`, `BearerFailed`, `EnbLost`, ...). `next_timer()` says when `handle_timer(now)` is
due next.

Rules it follows:

- Streams (TS 36.412 section 7): non-UE-associated signalling goes out on stream 0 and answers
  come back on the stream the request arrived on. Each UE context gets one outbound stream when
  it is created and keeps it: the stream the eNB used for the Initial UE Message when that is a
  valid UE stream (1..n-1 of our outbound streams), otherwise the next one round robin.
- S1 Setup (8.7.3): answered with S1 Setup Response, or S1 Setup Failure (misc/unknown-PLMN plus
  Time To Wait) when none of the eNB's broadcast PLMNs is served, or (abstract syntax error) when
  mandatory IEs are missing. A repeated S1 Setup clears the eNB's UE contexts; the same Global
  eNB ID on a new association replaces the old association.
- Initial UE Message carrying an EMM Attach Request with an IMSI creates the UE context and is
  answered with Initial Context Setup Request (default bearer, E-RAB 5, QCI 9). Any other NAS
  message gets the context released at once (this agent runs no NAS beyond that).
- E-RAB Setup / Release for dedicated bearers (QCI 1) with a timeout; a response arriving after
  the timeout that reports the E-RAB set up gets that E-RAB released again.
- Reset from the eNB clears its UE contexts (all, or the listed ones) and is acknowledged.
- Error handling (section 10): PDUs that do not decode get an Error Indication with the matching
  cause and Criticality Diagnostics when the procedure code's criticality (or the missing/not
  comprehended IE's) says reject or ignore-and-notify, and are dropped (a `Discarded` action,
  for the log) when it says ignore; Error Indications are never answered with one. Messages
  naming UE ids the agent does not know get an Error Indication (unknown MME / pair UE S1AP
  ID). Nothing of this touches other UE contexts or the association.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeAlias

from services.enb.s1ap import (
    ABSTRACT_SYNTAX_NOTIFY,
    ABSTRACT_SYNTAX_REJECT,
    DEFAULT_BEARER_QOS,
    DEFAULT_PLMN,
    MAX_MME_UE_ID,
    NORMAL_RELEASE,
    NOT_COMPATIBLE_WITH_STATE,
    PROCEDURES,
    SEMANTIC_ERROR,
    TIME_TO_WAIT_SECONDS,
    TRANSFER_SYNTAX_ERROR,
    UNKNOWN_E_RAB_ID,
    UNKNOWN_MME_UE_ID,
    UNKNOWN_PAIR_UE_ID,
    UNKNOWN_PLMN,
    BearerQos,
    Cause,
    Criticality,
    CriticalityDiagnostics,
    Ecgi,
    ERabCauseItem,
    ERabReleaseCommand,
    ERabReleaseResponse,
    ERabSetupRequest,
    ERabSetupResponse,
    ERabToSetup,
    ErrorIndication,
    ErrorKind,
    GlobalEnbId,
    InitialContextSetupFailure,
    InitialContextSetupRequest,
    InitialContextSetupResponse,
    InitialUeMessage,
    Message,
    MessageType,
    PacketFilter,
    Plmn,
    Procedure,
    Reset,
    ResetAcknowledge,
    S1SetupFailure,
    S1SetupRequest,
    S1SetupResponse,
    Send,
    ServedGummei,
    SupportedTa,
    Tai,
    UeContextReleaseCommand,
    UeContextReleaseComplete,
    UeContextReleaseRequest,
    Undecodable,
    Unhandled,
    decode,
    dedicated_bearer_nas,
    encode,
    nas_message_type,
)

AssocId: TypeAlias = Hashable

DEFAULT_E_RAB_ID = 5  # the default bearer set up by Initial Context Setup
DEDICATED_E_RAB_IDS = range(6, 16)

# Causes for outcomes the agent decides itself (no S1AP cause applies); same "<group>/<value>"
# form as S1AP causes in the BearerControl API.
CAUSE_TIMEOUT = "local/timeout"
CAUSE_UNKNOWN_IMSI = "local/unknown-imsi"
CAUSE_NOT_ATTACHED = "local/ue-not-attached"
CAUSE_UNKNOWN_BEARER = "local/unknown-bearer"
CAUSE_NO_E_RAB_ID = "local/no-free-e-rab-id"
CAUSE_CANCELLED = "local/cancelled"
CAUSE_ENB_LOST = "local/enb-lost"
CAUSE_REATTACH = "local/re-attach"
CAUSE_ENB_RESET = "local/enb-reset"
CAUSE_S1_SETUP_AGAIN = "local/s1-setup-repeated"


class AgentError(Exception):
    """The caller broke the agent's contract (a bug in the shell, like h11's
    LocalProtocolError): e.g. data for an association it never announced."""


@dataclass(frozen=True)
class AgentConfig:
    """What the agent announces and how long it waits (one typed object, aioquic style)."""

    served_plmns: tuple[Plmn, ...] = (DEFAULT_PLMN,)
    mme_name: str = "volte-enb-agent"
    mme_group_id: int = 1
    mme_code: int = 1
    relative_capacity: int = 255
    # S1 Setup Failure for an unknown PLMN asks the eNB to wait this long before retrying.
    time_to_wait: str = "v10s"
    # How long E-RAB Setup / Release and UE context set-up / release may take at the eNB.
    bearer_timeout: float = 5.0
    context_timeout: float = 5.0
    default_bearer_qos: BearerQos = DEFAULT_BEARER_QOS
    ue_ambr_ul: int = 100_000_000
    ue_ambr_dl: int = 100_000_000
    # S1-U endpoint placeholder sent in E-RAB set-ups: the agent has no S-GW.
    sgw_address: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if not self.served_plmns:
            raise ValueError("serve at least one PLMN")
        if self.time_to_wait not in TIME_TO_WAIT_SECONDS:
            raise ValueError(f"time_to_wait must be one of {sorted(TIME_TO_WAIT_SECONDS)}")
        if self.bearer_timeout <= 0 or self.context_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if not 0 <= self.relative_capacity <= 255:
            raise ValueError("relative MME capacity is 0..255")


# --- snapshots the agent hands out ----------------------------------------------------------


class UeState(StrEnum):
    ATTACHING = "attaching"  # Initial Context Setup Request sent
    ATTACHED = "attached"
    RELEASING = "releasing"  # UE Context Release Command sent


class BearerState(StrEnum):
    PENDING = "pending"  # E-RAB Setup Request sent
    ACTIVE = "active"
    RELEASING = "releasing"  # E-RAB Release Command sent


@dataclass(frozen=True, slots=True)
class EnbInfo:
    assoc: AssocId
    global_enb_id: GlobalEnbId
    name: str | None
    supported_tas: tuple[SupportedTa, ...]
    streams_out: int
    streams_in: int
    connected_at: float
    ue_count: int = 0

    @property
    def enb_id(self) -> str:
        return str(self.global_enb_id)

    @property
    def tacs(self) -> tuple[int, ...]:
        return tuple(ta.tac for ta in self.supported_tas)


@dataclass(frozen=True, slots=True)
class UeInfo:
    imsi: str | None
    assoc: AssocId
    enb_id: GlobalEnbId | None
    mme_ue_id: int
    enb_ue_id: int
    stream: int
    state: UeState
    tai: Tai
    ecgi: Ecgi


@dataclass(frozen=True, slots=True)
class BearerInfo:
    bearer_id: int  # the id of the request that set it up
    imsi: str
    e_rab_id: int
    enb_id: GlobalEnbId | None
    mme_ue_id: int
    enb_ue_id: int
    qos: BearerQos
    state: BearerState
    key: Hashable | None = None
    enb_address: str | None = None  # the eNB's S1-U endpoint from the response
    enb_teid: int | None = None


# --- actions --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnbConnected:
    """S1 Setup succeeded: the eNB is ready for UEs."""

    enb: EnbInfo


@dataclass(frozen=True, slots=True)
class EnbRejected:
    """S1 Setup Failure was sent."""

    assoc: AssocId
    global_enb_id: GlobalEnbId | None
    cause: Cause


@dataclass(frozen=True, slots=True)
class EnbLost:
    """The eNB's association went down (or it was replaced): its UE contexts are gone. The
    BearerLost / BearerFailed actions for their bearers come just before this one."""

    enb: EnbInfo
    ues: tuple[UeInfo, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class UeAttached:
    """Initial Context Setup succeeded: bearers can be requested for this IMSI."""

    ue: UeInfo


@dataclass(frozen=True, slots=True)
class AttachFailed:
    imsi: str
    assoc: AssocId
    cause: str


@dataclass(frozen=True, slots=True)
class UeReleased:
    """An attached UE's context is gone (UE Context Release, Reset, re-attach elsewhere)."""

    ue: UeInfo
    cause: str


@dataclass(frozen=True, slots=True)
class BearerSetUp:
    request_id: int
    bearer: BearerInfo


@dataclass(frozen=True, slots=True)
class BearerFailed:
    """A setup_bearer() or release_bearer() request did not succeed."""

    request_id: int
    imsi: str | None
    cause: str
    e_rab_id: int | None = None


@dataclass(frozen=True, slots=True)
class BearerReleased:
    request_id: int
    bearer: BearerInfo
    cause: str


@dataclass(frozen=True, slots=True)
class BearerLost:
    """An active bearer went away without a release_bearer() (eNB lost, UE released)."""

    bearer: BearerInfo
    cause: str


@dataclass(frozen=True, slots=True)
class PeerError:
    """The eNB sent an Error Indication."""

    assoc: AssocId
    message: ErrorIndication


@dataclass(frozen=True, slots=True)
class Discarded:
    """A received PDU was dropped or only answered with an error: log it."""

    assoc: AssocId
    stream: int
    reason: str
    procedure_code: int | None = None


Action: TypeAlias = (
    Send
    | EnbConnected
    | EnbRejected
    | EnbLost
    | UeAttached
    | AttachFailed
    | UeReleased
    | BearerSetUp
    | BearerFailed
    | BearerReleased
    | BearerLost
    | PeerError
    | Discarded
)


# --- internal state -------------------------------------------------------------------------


@dataclass(eq=False)
class _Bearer:
    bearer_id: int
    e_rab_id: int
    qos: BearerQos
    state: BearerState
    key: Hashable | None = None
    deadline: float | None = None
    release_request: int | None = None
    release_cause: Cause = NORMAL_RELEASE
    enb_address: str | None = None
    enb_teid: int | None = None


@dataclass(eq=False)
class _Ue:
    mme_ue_id: int
    enb_ue_id: int
    imsi: str | None
    enb: _Enb
    stream: int
    tai: Tai
    ecgi: Ecgi
    state: UeState = UeState.ATTACHING
    deadline: float | None = None
    bearers: dict[int, _Bearer] = field(default_factory=dict)  # by E-RAB id


@dataclass(eq=False)
class _Enb:
    assoc: AssocId
    streams_out: int
    streams_in: int
    setup: S1SetupRequest | None = None
    connected_at: float = 0.0
    ues: dict[int, _Ue] = field(default_factory=dict)  # by eNB UE S1AP id
    next_stream: int = 0


_Timed: TypeAlias = _Ue | _Bearer


class S1apAgent:
    """The MME side of S1AP for the eNodeBs connected to one enb-agent instance."""

    def __init__(self, config: AgentConfig | None = None) -> None:
        self.config = config if config is not None else AgentConfig()
        self._enbs: dict[AssocId, _Enb] = {}
        self._ues: dict[int, _Ue] = {}  # by MME UE S1AP id (attaching, attached, releasing)
        self._by_imsi: dict[str, _Ue] = {}  # attaching and attached only
        self._bearers: dict[int, tuple[_Ue, _Bearer]] = {}  # by bearer id
        self._request_ids = itertools.count(1)
        self._next_mme_ue_id = 1
        self._heap: list[tuple[float, int, _Timed]] = []
        self._seq = itertools.count()
        self._served = frozenset(self.config.served_plmns)

    # -- queries -------------------------------------------------------------------------

    def enbs(self) -> list[EnbInfo]:
        """eNBs with a successful S1 Setup."""
        return [self._enb_info(e) for e in self._enbs.values() if e.setup is not None]

    def ues(self, assoc: AssocId | None = None) -> list[UeInfo]:
        """UE contexts being set up or attached, optionally of one association."""
        return [
            self._ue_info(u)
            for u in self._by_imsi.values()
            if assoc is None or u.enb.assoc == assoc
        ]

    def ue(self, imsi: str) -> UeInfo | None:
        u = self._by_imsi.get(imsi)
        return self._ue_info(u) if u is not None else None

    def bearers(self, imsi: str | None = None) -> list[BearerInfo]:
        return [
            self._bearer_info(u, b)
            for u, b in self._bearers.values()
            if imsi is None or u.imsi == imsi
        ]

    def bearer(self, bearer_id: int) -> BearerInfo | None:
        entry = self._bearers.get(bearer_id)
        return self._bearer_info(*entry) if entry is not None else None

    # -- association events ----------------------------------------------------------------

    def association_up(
        self, assoc: AssocId, streams_out: int, now: float, streams_in: int | None = None
    ) -> list[Action]:
        """An SCTP association from an eNB is established with `streams_out` outbound streams
        (ours) and `streams_in` inbound. A known `assoc` means it restarted: whatever was on it
        is lost first. The eNB speaks first (S1 Setup), so nothing is sent here."""
        if streams_out < 1:
            raise AgentError("an association has at least one outbound stream")
        actions: list[Action] = []
        if assoc in self._enbs:
            actions += self.association_down(assoc, now, reason="association restarted")
        self._enbs[assoc] = _Enb(
            assoc, streams_out, streams_in if streams_in is not None else streams_out
        )
        return actions

    def association_down(
        self, assoc: AssocId, now: float, reason: str = "association lost"
    ) -> list[Action]:
        """The association is gone (shutdown, abort, heartbeat failure)."""
        enb = self._enbs.pop(assoc, None)
        if enb is None:
            return []
        return self._lose_enb(enb, reason)

    def _lose_enb(self, enb: _Enb, reason: str) -> list[Action]:
        actions: list[Action] = []
        lost = []
        for ue in list(enb.ues.values()):
            if ue.state is UeState.ATTACHED:
                lost.append(self._ue_info(ue))
            actions += self._drop_ue(ue, CAUSE_ENB_LOST, report=False)
        if enb.setup is not None:
            info = self._enb_info(enb)
            enb.setup = None
            actions.append(EnbLost(info, tuple(lost), reason))
        return actions

    # -- received PDUs ---------------------------------------------------------------------

    def receive(self, assoc: AssocId, stream: int, data: bytes, now: float) -> list[Action]:
        """One S1AP PDU (PPID 18) arrived on `stream` of `assoc`."""
        enb = self._enbs.get(assoc)
        if enb is None:
            raise AgentError(f"data on unknown association {assoc!r}")
        msg = decode(data)
        if isinstance(msg, Undecodable):
            return self._on_undecodable(enb, stream, msg)
        if isinstance(msg, Unhandled):
            return self._on_unhandled(enb, stream, msg)
        actions: list[Action] = []
        if msg.not_understood:
            actions += self._report_not_understood(enb, stream, msg)
        if isinstance(msg, S1SetupRequest):
            return actions + self._on_s1_setup(enb, stream, msg, now)
        if isinstance(msg, ErrorIndication):
            return [*actions, PeerError(enb.assoc, msg)]
        if enb.setup is None:
            reason = f"{msg.name} before S1 Setup"
            return actions + self._error(enb, stream, NOT_COMPATIBLE_WITH_STATE, reason, about=msg)
        if isinstance(msg, InitialUeMessage):
            return actions + self._on_initial_ue(enb, stream, msg, now)
        if isinstance(msg, Reset):
            return actions + self._on_reset(enb, stream, msg)
        if isinstance(msg, InitialContextSetupResponse | InitialContextSetupFailure):
            return actions + self._on_context_setup_outcome(enb, stream, msg, now)
        if isinstance(msg, ERabSetupResponse):
            return actions + self._on_e_rab_setup_response(enb, stream, msg, now)
        if isinstance(msg, ERabReleaseResponse):
            return actions + self._on_e_rab_release_response(enb, stream, msg)
        if isinstance(msg, UeContextReleaseRequest):
            return actions + self._on_ue_release_request(enb, stream, msg, now)
        if isinstance(msg, UeContextReleaseComplete):
            return actions + self._on_ue_release_complete(enb, stream, msg)
        # Messages only an MME sends (S1 Setup Response, E-RAB Setup Request, ...) or a Reset
        # Acknowledge for a Reset we never sent.
        reason = f"unexpected {msg.name}"
        return actions + self._error(enb, stream, NOT_COMPATIBLE_WITH_STATE, reason, about=msg)

    # -- S1 Setup --------------------------------------------------------------------------

    def _on_s1_setup(self, enb: _Enb, stream: int, msg: S1SetupRequest, now: float) -> list[Action]:
        cfg = self.config
        actions: list[Action] = []
        if not any(p in self._served for p in msg.plmns):
            failure = S1SetupFailure(UNKNOWN_PLMN, cfg.time_to_wait)
            actions.append(self._send(enb, self._answer_stream(enb, stream), failure))
            actions.append(EnbRejected(enb.assoc, msg.global_enb_id, UNKNOWN_PLMN))
            return actions
        if enb.setup is not None:
            # A repeated S1 Setup resets the application level: the eNB's UEs are gone.
            for ue in list(enb.ues.values()):
                actions += self._drop_ue(ue, CAUSE_S1_SETUP_AGAIN)
        for other in list(self._enbs.values()):
            if (
                other is not enb
                and other.setup is not None
                and (other.setup.global_enb_id == msg.global_enb_id)
            ):
                actions += self._lose_enb(other, "same Global eNB ID set up on a new association")
        enb.setup = msg
        enb.connected_at = now
        response = S1SetupResponse(
            served_gummeis=(ServedGummei(cfg.served_plmns, (cfg.mme_group_id,), (cfg.mme_code,)),),
            relative_capacity=cfg.relative_capacity,
            mme_name=cfg.mme_name,
        )
        actions.append(self._send(enb, self._answer_stream(enb, stream), response))
        actions.append(EnbConnected(self._enb_info(enb)))
        return actions

    # -- attach ----------------------------------------------------------------------------

    def _on_initial_ue(
        self, enb: _Enb, stream: int, msg: InitialUeMessage, now: float
    ) -> list[Action]:
        actions: list[Action] = []
        old = enb.ues.get(msg.enb_ue_id)
        if old is not None:  # the eNB reused the id: its old connection is gone (10.6)
            actions += self._drop_ue(old, "local/enb-ue-id-reused")
        imsi = msg.imsi
        ue = _Ue(
            self._allocate_mme_ue_id(),
            msg.enb_ue_id,
            imsi,
            enb,
            self._pick_stream(enb, stream),
            msg.tai,
            msg.ecgi,
        )
        self._ues[ue.mme_ue_id] = ue
        enb.ues[ue.enb_ue_id] = ue
        if imsi is None:
            actions.append(
                Discarded(
                    enb.assoc,
                    stream,
                    f"Initial UE Message without an IMSI Attach Request "
                    f"({nas_message_type(msg.nas_pdu)}): context released",
                    int(Procedure.INITIAL_UE_MESSAGE),
                )
            )
            return actions + self._command_release(ue, Cause("nas", "unspecified"), now)
        previous = self._by_imsi.get(imsi)
        if previous is not None:  # re-attach, possibly via another eNB
            actions += self._release_ue(previous, NORMAL_RELEASE, now, CAUSE_REATTACH)
        self._by_imsi[imsi] = ue
        cfg = self.config
        request = InitialContextSetupRequest(
            mme_ue_id=ue.mme_ue_id,
            enb_ue_id=ue.enb_ue_id,
            e_rabs=(
                ERabToSetup(
                    DEFAULT_E_RAB_ID,
                    cfg.default_bearer_qos,
                    cfg.sgw_address,
                    self._teid(ue, DEFAULT_E_RAB_ID),
                ),
            ),
            ue_ambr_ul=cfg.ue_ambr_ul,
            ue_ambr_dl=cfg.ue_ambr_dl,
        )
        self._arm(ue, now + cfg.context_timeout)
        actions.append(self._send(enb, ue.stream, request))
        return actions

    def _on_context_setup_outcome(
        self,
        enb: _Enb,
        stream: int,
        msg: InitialContextSetupResponse | InitialContextSetupFailure,
        now: float,
    ) -> list[Action]:
        ue = self._find_ue(enb, msg.mme_ue_id, msg.enb_ue_id)
        if ue is None:
            return self._unknown_ue(enb, stream, msg)
        if ue.state is not UeState.ATTACHING:
            return [Discarded(enb.assoc, stream, f"late {msg.name}", int(msg.PROCEDURE))]
        assert ue.imsi is not None
        if isinstance(msg, InitialContextSetupResponse) and any(
            i.e_rab_id == DEFAULT_E_RAB_ID for i in msg.setup
        ):
            ue.state = UeState.ATTACHED
            ue.deadline = None
            return [UeAttached(self._ue_info(ue))]
        cause = (
            msg.cause
            if isinstance(msg, InitialContextSetupFailure)
            else (msg.failed[0].cause if msg.failed else Cause("radioNetwork", "unspecified"))
        )
        actions: list[Action] = [AttachFailed(ue.imsi, enb.assoc, str(cause))]
        return actions + self._command_release(ue, cause, now)

    # -- bearers (the BearerControl side) --------------------------------------------------

    def setup_bearer(
        self,
        imsi: str,
        qos: BearerQos,
        now: float,
        *,
        filters: tuple[PacketFilter, ...] = (),
        key: Hashable | None = None,
        nas_pdu: bytes | None = None,
    ) -> tuple[int, list[Action]]:
        """Ask the UE's eNB for a dedicated bearer (E-RAB Setup). Returns the request id, which
        is also the bearer's id; its outcome is a BearerSetUp or BearerFailed with that id.
        Repeating a request with the same `key` (e.g. the call's dialog) for the same UE while
        the bearer is pending or active returns the first request's id and sends nothing."""
        ue = self._by_imsi.get(imsi)
        if ue is not None and key is not None:
            for b in ue.bearers.values():
                if b.key == key and b.state is not BearerState.RELEASING:
                    if b.state is BearerState.ACTIVE:
                        return b.bearer_id, [BearerSetUp(b.bearer_id, self._bearer_info(ue, b))]
                    return b.bearer_id, []
        request_id = next(self._request_ids)
        if ue is None:
            return request_id, [BearerFailed(request_id, imsi, CAUSE_UNKNOWN_IMSI)]
        if ue.state is not UeState.ATTACHED:
            return request_id, [BearerFailed(request_id, imsi, CAUSE_NOT_ATTACHED)]
        e_rab_id = next((e for e in DEDICATED_E_RAB_IDS if e not in ue.bearers), None)
        if e_rab_id is None:
            return request_id, [BearerFailed(request_id, imsi, CAUSE_NO_E_RAB_ID)]
        bearer = _Bearer(request_id, e_rab_id, qos, BearerState.PENDING, key=key)
        ue.bearers[e_rab_id] = bearer
        self._bearers[request_id] = (ue, bearer)
        self._arm(bearer, now + self.config.bearer_timeout)
        nas = nas_pdu if nas_pdu is not None else dedicated_bearer_nas(e_rab_id, qos, filters)
        request = ERabSetupRequest(
            mme_ue_id=ue.mme_ue_id,
            enb_ue_id=ue.enb_ue_id,
            e_rabs=(
                ERabToSetup(
                    e_rab_id,
                    qos,
                    self.config.sgw_address,
                    self._teid(ue, e_rab_id),
                    nas,
                ),
            ),
        )
        return request_id, [self._send(ue.enb, ue.stream, request)]

    def release_bearer(
        self, bearer_id: int, now: float, cause: Cause = NORMAL_RELEASE
    ) -> tuple[int, list[Action]]:
        """Release a bearer set up by setup_bearer() (E-RAB Release). Returns the request id of
        the release, answered by BearerReleased or BearerFailed. A bearer still pending is
        cancelled (its setup request fails with local/cancelled) and released all the same;
        releasing a bearer already being released returns that release's id."""
        entry = self._bearers.get(bearer_id)
        if entry is None:
            request_id = next(self._request_ids)
            return request_id, [BearerFailed(request_id, None, CAUSE_UNKNOWN_BEARER)]
        ue, bearer = entry
        if bearer.state is BearerState.RELEASING and bearer.release_request is not None:
            return bearer.release_request, []
        request_id = next(self._request_ids)
        actions: list[Action] = []
        if bearer.state is BearerState.PENDING:
            actions.append(
                BearerFailed(bearer.bearer_id, ue.imsi, CAUSE_CANCELLED, bearer.e_rab_id)
            )
        bearer.state = BearerState.RELEASING
        bearer.release_request = request_id
        bearer.release_cause = cause
        self._arm(bearer, now + self.config.bearer_timeout)
        command = ERabReleaseCommand(
            mme_ue_id=ue.mme_ue_id,
            enb_ue_id=ue.enb_ue_id,
            e_rabs=(ERabCauseItem(bearer.e_rab_id, cause),),
        )
        actions.append(self._send(ue.enb, ue.stream, command))
        return request_id, actions

    def release_ue(self, imsi: str, now: float, cause: Cause = NORMAL_RELEASE) -> list[Action]:
        """Release a UE's context (UE Context Release Command), e.g. on detach."""
        ue = self._by_imsi.get(imsi)
        if ue is None:
            return []
        return self._release_ue(ue, cause, now, str(cause))

    def _on_e_rab_setup_response(
        self, enb: _Enb, stream: int, msg: ERabSetupResponse, now: float
    ) -> list[Action]:
        ue = self._find_ue(enb, msg.mme_ue_id, msg.enb_ue_id)
        if ue is None:
            return self._unknown_ue(enb, stream, msg)
        actions: list[Action] = []
        late: list[int] = []
        for item in msg.setup:
            bearer = ue.bearers.get(item.e_rab_id)
            if bearer is None:
                late.append(item.e_rab_id)
                continue
            if bearer.state is not BearerState.PENDING:
                continue  # cancelled meanwhile: its release is under way
            bearer.state = BearerState.ACTIVE
            bearer.deadline = None
            bearer.enb_address = item.transport_address
            bearer.enb_teid = item.gtp_teid
            actions.append(BearerSetUp(bearer.bearer_id, self._bearer_info(ue, bearer)))
        for failed in msg.failed:
            bearer = ue.bearers.get(failed.e_rab_id)
            if bearer is None or bearer.state is not BearerState.PENDING:
                continue
            self._forget_bearer(ue, bearer)
            actions.append(
                BearerFailed(bearer.bearer_id, ue.imsi, str(failed.cause), bearer.e_rab_id)
            )
        if late and ue.state is UeState.ATTACHED:
            # Set up after we gave up on it (timeout): take it down again.
            for e_rab_id in late:
                cleanup = _Bearer(0, e_rab_id, DEFAULT_BEARER_QOS, BearerState.RELEASING)
                ue.bearers[e_rab_id] = cleanup
                self._arm(cleanup, now + self.config.bearer_timeout)
            command = ERabReleaseCommand(
                mme_ue_id=ue.mme_ue_id,
                enb_ue_id=ue.enb_ue_id,
                e_rabs=tuple(ERabCauseItem(e, Cause("nas", "unspecified")) for e in late),
            )
            actions.append(self._send(enb, ue.stream, command))
        return actions

    def _on_e_rab_release_response(
        self, enb: _Enb, stream: int, msg: ERabReleaseResponse
    ) -> list[Action]:
        ue = self._find_ue(enb, msg.mme_ue_id, msg.enb_ue_id)
        if ue is None:
            return [Discarded(enb.assoc, stream, "E-RAB Release Response for an unknown UE", 7)]
        actions: list[Action] = []
        gone = [(e, None) for e in msg.released] + [(f.e_rab_id, f.cause) for f in msg.failed]
        for e_rab_id, failure in gone:
            bearer = ue.bearers.get(e_rab_id)
            if bearer is None or bearer.state is not BearerState.RELEASING:
                continue
            if failure is not None and failure != UNKNOWN_E_RAB_ID:
                # The eNB keeps the bearer: it stays active and the release request fails.
                bearer.state = BearerState.ACTIVE
                bearer.deadline = None
                if bearer.release_request is not None:
                    actions.append(
                        BearerFailed(bearer.release_request, ue.imsi, str(failure), e_rab_id)
                    )
                    bearer.release_request = None
                continue
            self._forget_bearer(ue, bearer)
            if bearer.release_request is not None:
                actions.append(
                    BearerReleased(
                        bearer.release_request,
                        self._bearer_info(ue, bearer),
                        str(bearer.release_cause),
                    )
                )
        return actions

    # -- UE context release ----------------------------------------------------------------

    def _on_ue_release_request(
        self, enb: _Enb, stream: int, msg: UeContextReleaseRequest, now: float
    ) -> list[Action]:
        ue = self._find_ue(enb, msg.mme_ue_id, msg.enb_ue_id)
        if ue is None:
            return self._unknown_ue(enb, stream, msg)
        if ue.state is UeState.RELEASING:
            return []
        return self._release_ue(ue, msg.cause, now, str(msg.cause))

    def _on_ue_release_complete(
        self, enb: _Enb, stream: int, msg: UeContextReleaseComplete
    ) -> list[Action]:
        ue = self._find_ue(enb, msg.mme_ue_id, msg.enb_ue_id)
        if ue is None or ue.state is not UeState.RELEASING:
            return [Discarded(enb.assoc, stream, "UE Context Release Complete for no release", 23)]
        self._remove_ue(ue)
        return []

    def _release_ue(self, ue: _Ue, cause: Cause, now: float, reason: str) -> list[Action]:
        """Report the UE gone and command its eNB to release it."""
        actions = self._drop_ue(ue, reason, remove=False)
        return actions + self._command_release(ue, cause, now)

    def _command_release(self, ue: _Ue, cause: Cause, now: float) -> list[Action]:
        if ue.imsi is not None and self._by_imsi.get(ue.imsi) is ue:
            del self._by_imsi[ue.imsi]
        ue.state = UeState.RELEASING
        self._arm(ue, now + self.config.context_timeout)
        command = UeContextReleaseCommand(ue.mme_ue_id, ue.enb_ue_id, cause)
        return [self._send(ue.enb, ue.stream, command)]

    # -- Reset -----------------------------------------------------------------------------

    def _on_reset(self, enb: _Enb, stream: int, msg: Reset) -> list[Action]:
        actions: list[Action] = []
        if msg.ue_ids is None:
            for ue in list(enb.ues.values()):
                actions += self._drop_ue(ue, CAUSE_ENB_RESET)
        else:
            for pair in msg.ue_ids:
                ue = None
                if pair.mme_ue_id is not None:
                    ue = self._ues.get(pair.mme_ue_id)
                elif pair.enb_ue_id is not None:
                    ue = enb.ues.get(pair.enb_ue_id)
                if ue is not None and ue.enb is enb:
                    actions += self._drop_ue(ue, CAUSE_ENB_RESET)
        ack = ResetAcknowledge(ue_ids=msg.ue_ids)
        actions.append(self._send(enb, self._answer_stream(enb, stream), ack))
        return actions

    # -- timers ----------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        """When handle_timer() is due next, or None when nothing is pending."""
        heap = self._heap
        while heap and heap[0][2].deadline != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def handle_timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, obj = heapq.heappop(heap)
            if obj.deadline != deadline:
                continue  # re-armed or disarmed since
            obj.deadline = None
            if isinstance(obj, _Ue):
                actions += self._ue_timeout(obj, now)
            else:
                actions += self._bearer_timeout(obj)
        return actions

    def _ue_timeout(self, ue: _Ue, now: float) -> list[Action]:
        if ue.state is UeState.ATTACHING:
            assert ue.imsi is not None
            actions: list[Action] = [AttachFailed(ue.imsi, ue.enb.assoc, CAUSE_TIMEOUT)]
            return actions + self._command_release(ue, Cause("nas", "unspecified"), now)
        if ue.state is UeState.RELEASING and self._ues.get(ue.mme_ue_id) is ue:
            self._remove_ue(ue)  # no Release Complete: forget it anyway
        return []

    def _bearer_timeout(self, bearer: _Bearer) -> list[Action]:
        entry = self._bearers.get(bearer.bearer_id)
        ue = entry[0] if entry is not None and entry[1] is bearer else self._owner(bearer)
        if ue is None:
            return []
        self._forget_bearer(ue, bearer)
        if bearer.state is BearerState.PENDING:
            return [BearerFailed(bearer.bearer_id, ue.imsi, CAUSE_TIMEOUT, bearer.e_rab_id)]
        if bearer.release_request is not None:
            # No answer to E-RAB Release: the bearer is forgotten here all the same.
            return [BearerFailed(bearer.release_request, ue.imsi, CAUSE_TIMEOUT, bearer.e_rab_id)]
        return []

    def _owner(self, bearer: _Bearer) -> _Ue | None:
        for ue in self._ues.values():
            if ue.bearers.get(bearer.e_rab_id) is bearer:
                return ue
        return None

    def _arm(self, obj: _Timed, deadline: float) -> None:
        obj.deadline = deadline
        heapq.heappush(self._heap, (deadline, next(self._seq), obj))

    # -- error handling (TS 36.413 section 10) ---------------------------------------------

    def _on_undecodable(self, enb: _Enb, stream: int, u: Undecodable) -> list[Action]:
        reason = u.reason
        if u.procedure_code == Procedure.ERROR_INDICATION:
            return [Discarded(enb.assoc, stream, f"bad Error Indication: {reason}", 15)]
        if u.kind in (ErrorKind.TRANSFER_SYNTAX, ErrorKind.SEMANTIC):
            cause = TRANSFER_SYNTAX_ERROR if u.kind is ErrorKind.TRANSFER_SYNTAX else SEMANTIC_ERROR
            diag = u.diagnostics() if u.procedure_code is not None else None
            return self._error(enb, stream, cause, reason, diag=diag, about=u)
        if u.kind is ErrorKind.UNKNOWN_PROCEDURE:
            return self._by_criticality(enb, stream, u.criticality, reason, u.diagnostics(), u)
        # Missing or not comprehended IEs: the worst criticality among them decides.
        crit = _worst(d.criticality for d in u.ies)
        if u.message_type is not MessageType.INITIATING and crit is Criticality.REJECT:
            # A response we cannot use: local error handling, the procedure times out.
            return [Discarded(enb.assoc, stream, reason, u.procedure_code)]
        if (
            u.procedure_code == Procedure.S1_SETUP
            and u.message_type is MessageType.INITIATING
            and crit is Criticality.REJECT
        ):
            failure = S1SetupFailure(
                ABSTRACT_SYNTAX_REJECT,
                criticality_diagnostics=CriticalityDiagnostics(
                    procedure_criticality=u.criticality, ies=u.ies
                ),
            )
            return [
                self._send(enb, self._answer_stream(enb, stream), failure),
                EnbRejected(enb.assoc, None, ABSTRACT_SYNTAX_REJECT),
                Discarded(enb.assoc, stream, reason, u.procedure_code),
            ]
        return self._by_criticality(enb, stream, crit, reason, u.diagnostics(), u)

    def _on_unhandled(self, enb: _Enb, stream: int, u: Unhandled) -> list[Action]:
        # A procedure this agent does not implement is one it does not comprehend (10.3.4.1).
        diag = CriticalityDiagnostics(u.procedure_code, u.message_type, u.criticality)
        reason = f"unsupported procedure {u.name} ({u.procedure_code})"
        return self._by_criticality(enb, stream, u.criticality, reason, diag, u)

    def _report_not_understood(self, enb: _Enb, stream: int, msg: Message) -> list[Action]:
        notify = tuple(d for d in msg.not_understood if d.criticality is Criticality.NOTIFY)
        if not notify or isinstance(msg, ErrorIndication):
            return []
        diag = CriticalityDiagnostics(
            int(msg.PROCEDURE), msg.TYPE, _procedure_criticality(msg), notify
        )
        reason = f"{msg.name}: IEs not comprehended"
        return self._error(enb, stream, ABSTRACT_SYNTAX_NOTIFY, reason, diag=diag, about=msg)

    def _by_criticality(
        self,
        enb: _Enb,
        stream: int,
        crit: Criticality | None,
        reason: str,
        diag: CriticalityDiagnostics,
        about: Undecodable | Unhandled,
    ) -> list[Action]:
        if crit is Criticality.REJECT:
            cause = ABSTRACT_SYNTAX_REJECT
        elif crit is Criticality.NOTIFY:
            cause = ABSTRACT_SYNTAX_NOTIFY
        else:
            return [Discarded(enb.assoc, stream, reason, diag.procedure_code)]
        return self._error(enb, stream, cause, reason, diag=diag, about=about)

    def _error(
        self,
        enb: _Enb,
        stream: int,
        cause: Cause,
        reason: str,
        *,
        diag: CriticalityDiagnostics | None = None,
        about: Message | Undecodable | Unhandled | None = None,
    ) -> list[Action]:
        """Answer with an Error Indication (echoing the UE ids of `about`) and log it."""
        if diag is None and isinstance(about, Message):
            diag = CriticalityDiagnostics(
                int(about.PROCEDURE), about.TYPE, _procedure_criticality(about)
            )
        indication = ErrorIndication(
            cause, getattr(about, "mme_ue_id", None), getattr(about, "enb_ue_id", None), diag
        )
        return [
            self._send(enb, self._answer_stream(enb, stream), indication),
            Discarded(
                enb.assoc,
                stream,
                f"{reason}: Error Indication {cause}",
                diag.procedure_code if diag is not None else None,
            ),
        ]

    def _unknown_ue(self, enb: _Enb, stream: int, msg: Message) -> list[Action]:
        mme = getattr(msg, "mme_ue_id", None)
        cause = UNKNOWN_MME_UE_ID if mme not in self._ues else UNKNOWN_PAIR_UE_ID
        return self._error(enb, stream, cause, f"{msg.name} for an unknown UE", about=msg)

    # -- helpers ---------------------------------------------------------------------------

    def _send(self, enb: _Enb, stream: int, message: Message) -> Send:
        return Send(enb.assoc, stream, encode(message), message)

    @staticmethod
    def _answer_stream(enb: _Enb, stream: int) -> int:
        return stream if 0 <= stream < enb.streams_out else 0

    @staticmethod
    def _pick_stream(enb: _Enb, incoming: int) -> int:
        n = enb.streams_out
        if n <= 1:
            return 0
        if 1 <= incoming < n:
            return incoming
        stream = 1 + enb.next_stream % (n - 1)
        enb.next_stream += 1
        return stream

    def _allocate_mme_ue_id(self) -> int:
        while True:
            candidate = self._next_mme_ue_id
            self._next_mme_ue_id = candidate + 1 if candidate < MAX_MME_UE_ID else 1
            if candidate not in self._ues:
                return candidate

    @staticmethod
    def _teid(ue: _Ue, e_rab_id: int) -> int:
        """A placeholder S-GW TEID, unique per UE and E-RAB."""
        return ((ue.mme_ue_id << 4) | e_rab_id) & 0xFFFFFFFF

    def _find_ue(self, enb: _Enb, mme_ue_id: int | None, enb_ue_id: int | None) -> _Ue | None:
        ue = self._ues.get(mme_ue_id) if mme_ue_id is not None else None
        if ue is None or ue.enb is not enb or ue.enb_ue_id != enb_ue_id:
            return None
        return ue

    def _forget_bearer(self, ue: _Ue, bearer: _Bearer) -> None:
        bearer.deadline = None
        if ue.bearers.get(bearer.e_rab_id) is bearer:
            del ue.bearers[bearer.e_rab_id]
        entry = self._bearers.get(bearer.bearer_id)
        if entry is not None and entry[1] is bearer:
            del self._bearers[bearer.bearer_id]

    def _drop_ue(
        self, ue: _Ue, reason: str, *, report: bool = True, remove: bool = True
    ) -> list[Action]:
        """End everything the UE had: requests in flight fail, active bearers are lost, and
        (if it was attached and `report`) UeReleased. `remove=False` keeps the context for
        the UE Context Release Complete still to come."""
        actions: list[Action] = []
        for bearer in list(ue.bearers.values()):
            info = self._bearer_info(ue, bearer)
            self._forget_bearer(ue, bearer)
            if bearer.bearer_id == 0:
                continue  # clean-up of a late E-RAB: nobody asked for it
            if bearer.state is BearerState.PENDING:
                actions.append(BearerFailed(bearer.bearer_id, ue.imsi, reason, bearer.e_rab_id))
            elif bearer.state is BearerState.ACTIVE:
                actions.append(BearerLost(info, reason))
            elif bearer.release_request is not None:
                actions.append(BearerReleased(bearer.release_request, info, reason))
        if ue.imsi is not None and self._by_imsi.get(ue.imsi) is ue:
            del self._by_imsi[ue.imsi]
            if ue.state is UeState.ATTACHED and report:
                actions.append(UeReleased(self._ue_info(ue), reason))
            elif ue.state is UeState.ATTACHING:
                actions.append(AttachFailed(ue.imsi, ue.enb.assoc, reason))
        if remove:
            self._remove_ue(ue)
        return actions

    def _remove_ue(self, ue: _Ue) -> None:
        ue.deadline = None
        if self._ues.get(ue.mme_ue_id) is ue:
            del self._ues[ue.mme_ue_id]
        if ue.enb.ues.get(ue.enb_ue_id) is ue:
            del ue.enb.ues[ue.enb_ue_id]
        if ue.imsi is not None and self._by_imsi.get(ue.imsi) is ue:
            del self._by_imsi[ue.imsi]

    def _enb_info(self, enb: _Enb) -> EnbInfo:
        assert enb.setup is not None
        return EnbInfo(
            assoc=enb.assoc,
            global_enb_id=enb.setup.global_enb_id,
            name=enb.setup.enb_name,
            supported_tas=enb.setup.supported_tas,
            streams_out=enb.streams_out,
            streams_in=enb.streams_in,
            connected_at=enb.connected_at,
            ue_count=sum(1 for u in enb.ues.values() if u.state is not UeState.RELEASING),
        )

    @staticmethod
    def _ue_info(ue: _Ue) -> UeInfo:
        setup = ue.enb.setup
        return UeInfo(
            imsi=ue.imsi,
            assoc=ue.enb.assoc,
            enb_id=setup.global_enb_id if setup is not None else None,
            mme_ue_id=ue.mme_ue_id,
            enb_ue_id=ue.enb_ue_id,
            stream=ue.stream,
            state=ue.state,
            tai=ue.tai,
            ecgi=ue.ecgi,
        )

    @staticmethod
    def _bearer_info(ue: _Ue, bearer: _Bearer) -> BearerInfo:
        setup = ue.enb.setup
        return BearerInfo(
            bearer_id=bearer.bearer_id,
            imsi=ue.imsi or "",
            e_rab_id=bearer.e_rab_id,
            enb_id=setup.global_enb_id if setup is not None else None,
            mme_ue_id=ue.mme_ue_id,
            enb_ue_id=ue.enb_ue_id,
            qos=bearer.qos,
            state=bearer.state,
            key=bearer.key,
            enb_address=bearer.enb_address,
            enb_teid=bearer.enb_teid,
        )


def _worst(crits: Iterable[Criticality]) -> Criticality:
    order = {Criticality.REJECT: 0, Criticality.NOTIFY: 1, Criticality.IGNORE: 2}
    return min(crits, key=order.__getitem__, default=Criticality.IGNORE)


def _procedure_criticality(msg: Message) -> Criticality:
    return PROCEDURES[int(msg.PROCEDURE)][0]


__all__ = [
    "Action",
    "AgentConfig",
    "AgentError",
    "AttachFailed",
    "BearerFailed",
    "BearerInfo",
    "BearerLost",
    "BearerReleased",
    "BearerSetUp",
    "BearerState",
    "Discarded",
    "EnbConnected",
    "EnbInfo",
    "EnbLost",
    "EnbRejected",
    "PeerError",
    "S1apAgent",
    "Send",
    "UeAttached",
    "UeInfo",
    "UeReleased",
    "UeState",
]
