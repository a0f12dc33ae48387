"""Simulated eNodeBs (the eNB side of S1AP), sans-IO, plus an in-memory wiring to the agent.

`EnbSimulator` plays N eNBs with M UEs each against an MME-side peer (our `S1apAgent`, through
whatever SCTP transport the caller has): S1 Setup when an eNB's association comes up, then an
attach per UE (Initial UE Message with an EMM Attach Request carrying its IMSI), answers to
Initial Context Setup, E-RAB Setup / Release, UE Context Release and Reset, optionally after a
configurable delay and with E-RAB set-ups failing at a configurable rate (seeded RNG). Like the
agent it is a pure state machine: association events, PDUs and the time go in; `Send` actions and
small events come out; `next_timer()` / `handle_timer(now)` drive the delayed answers. loadgen
drives it over real SCTP.

Streams (TS 36.412): S1 Setup and Reset on stream 0; each UE's signalling on one stream chosen
round robin over 1..n-1 when it attaches. The simulator also checks the peer: it counts MME
messages for a UE that arrive on a different stream than that UE's earlier ones
(`stream_changes`) and UE-associated messages on stream 0 (`ue_messages_on_stream_0`).

`Loopback` wires a simulator to an agent in memory, with a virtual clock and an ordered queue
per direction instead of SCTP, so a whole S1 Setup -> attach -> E-RAB flow runs in a test with no
network; it can record the exchange and write it as a pcap (SCTP DATA chunks, PPID 18) for
tshark. `bench_pairs()` times E-RAB setup+release pairs through it.
"""

from __future__ import annotations

import heapq
import itertools
import random
import statistics
import struct
import time
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

from services.enb.procedures import (
    Action as AgentAction,
)
from services.enb.procedures import (
    AgentConfig,
    BearerFailed,
    BearerReleased,
    BearerSetUp,
    S1apAgent,
)
from services.enb.s1ap import (
    DEFAULT_PLMN,
    NORMAL_RELEASE,
    RADIO_RESOURCES_NOT_AVAILABLE,
    UNKNOWN_E_RAB_ID,
    BearerQos,
    Cause,
    Ecgi,
    ERabCauseItem,
    ERabReleaseCommand,
    ERabReleaseResponse,
    ERabSetupItem,
    ERabSetupRequest,
    ERabSetupResponse,
    ErrorIndication,
    GlobalEnbId,
    InitialContextSetupRequest,
    InitialContextSetupResponse,
    InitialUeMessage,
    Message,
    PacketFilter,
    Plmn,
    Reset,
    ResetAcknowledge,
    S1SetupFailure,
    S1SetupRequest,
    S1SetupResponse,
    Send,
    SupportedTa,
    Tai,
    UeContextReleaseCommand,
    UeContextReleaseComplete,
    UeContextReleaseRequest,
    UeIdPair,
    Undecodable,
    Unhandled,
    attach_request_nas,
    decode,
    encode,
    qos_for_codec,
)

EnbKey: TypeAlias = Hashable

USER_INACTIVITY = Cause("radioNetwork", "user-inactivity")
OM_INTERVENTION = Cause("misc", "om-intervention")


@dataclass(frozen=True)
class SimulatorConfig:
    """N eNBs x M UEs. eNB i has macro eNB id `first_enb_id + i`; UE j of eNB i has IMSI
    PLMN + MSIN `imsi_base + i * ues_per_enb + j` and eNB UE S1AP id j + 1."""

    enbs: int = 1
    ues_per_enb: int = 1
    plmn: Plmn = DEFAULT_PLMN
    tac: int = 1
    first_enb_id: int = 0x100
    imsi_base: int = 1
    name_prefix: str = "sim-enb"
    # Attach every UE as soon as its eNB's S1 Setup succeeds.
    auto_attach: bool = True
    # Delay before answering the MME (Initial Context Setup, E-RAB Setup / Release).
    response_delay: float = 0.0
    # Probability that an E-RAB in an E-RAB Setup Request ends up in the failed list.
    failure_probability: float = 0.0
    seed: int = 0
    # The eNB's S1-U address reported in responses (no user plane behind it).
    enb_address: str = "127.0.0.2"

    def __post_init__(self) -> None:
        if self.enbs < 0 or self.ues_per_enb < 0:
            raise ValueError("counts must not be negative")
        if not 0.0 <= self.failure_probability <= 1.0:
            raise ValueError("failure_probability is a probability")
        if self.response_delay < 0:
            raise ValueError("response_delay must not be negative")
        if self.first_enb_id + self.enbs > 1 << 20:
            raise ValueError("macro eNB ids are 20 bits")


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetupDone:
    enb: int


@dataclass(frozen=True, slots=True)
class SetupFailed:
    enb: int
    cause: Cause
    time_to_wait: str | None


@dataclass(frozen=True, slots=True)
class Attached:
    imsi: str
    enb: int
    mme_ue_id: int


@dataclass(frozen=True, slots=True)
class BearerUp:
    imsi: str
    e_rab_id: int
    qci: int = 1  # from the E-RAB's QoS in the request


@dataclass(frozen=True, slots=True)
class BearerRejected:
    """Failure injection (or a duplicate E-RAB id) put this E-RAB in the failed list."""

    imsi: str
    e_rab_id: int
    cause: Cause


@dataclass(frozen=True, slots=True)
class BearerDown:
    imsi: str
    e_rab_id: int


@dataclass(frozen=True, slots=True)
class UeGone:
    imsi: str
    cause: Cause | None


@dataclass(frozen=True, slots=True)
class ResetDone:
    enb: int


@dataclass(frozen=True, slots=True)
class MmeError:
    enb: int
    message: ErrorIndication


@dataclass(frozen=True, slots=True)
class Ignored:
    enb: int
    stream: int
    reason: str


SimAction: TypeAlias = (
    Send
    | SetupDone
    | SetupFailed
    | Attached
    | BearerUp
    | BearerRejected
    | BearerDown
    | UeGone
    | ResetDone
    | MmeError
    | Ignored
)


# --- state ----------------------------------------------------------------------------------


@dataclass(eq=False)
class SimUe:
    imsi: str
    enb: int
    enb_ue_id: int
    stream: int = 0
    mme_ue_id: int | None = None
    attached: bool = False
    mme_stream: int | None = None  # the stream the MME uses for this UE
    bearers: dict[int, int] = field(default_factory=dict)  # E-RAB id -> our TEID


@dataclass(eq=False)
class SimEnb:
    index: int
    global_enb_id: GlobalEnbId
    name: str
    ues: list[SimUe]
    streams_out: int = 0
    up: bool = False
    ready: bool = False
    next_stream: int = 0


class EnbSimulator:
    """N simulated eNBs with M UEs each; eNBs are numbered 0..N-1 and that number is the
    association key in the `Send` actions (the transport maps it to its association)."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = cfg = config if config is not None else SimulatorConfig()
        self.rng = random.Random(cfg.seed)
        self.enbs: list[SimEnb] = []
        self._by_imsi: dict[str, SimUe] = {}
        msin_digits = 15 - len(str(cfg.plmn))
        for i in range(cfg.enbs):
            ues = []
            for j in range(cfg.ues_per_enb):
                msin = cfg.imsi_base + i * cfg.ues_per_enb + j
                imsi = f"{cfg.plmn}{msin:0{msin_digits}d}"
                ue = SimUe(imsi, i, j + 1)
                ues.append(ue)
                self._by_imsi[imsi] = ue
            gid = GlobalEnbId(cfg.plmn, cfg.first_enb_id + i)
            self.enbs.append(SimEnb(i, gid, f"{cfg.name_prefix}-{i}", ues))
        self._heap: list[tuple[float, int, list[SimAction]]] = []
        self._seq = itertools.count()
        self._teids = itertools.count(1)
        self.stream_changes = 0
        self.ue_messages_on_stream_0 = 0

    @property
    def imsis(self) -> list[str]:
        return list(self._by_imsi)

    def ue(self, imsi: str) -> SimUe:
        return self._by_imsi[imsi]

    # -- association events ----------------------------------------------------------------

    def association_up(self, enb: int, streams_out: int, now: float) -> list[SimAction]:
        """eNB `enb`'s association to the MME is up with `streams_out` outbound streams: send
        S1 Setup Request on stream 0."""
        e = self.enbs[enb]
        e.up, e.ready, e.streams_out, e.next_stream = True, False, max(1, streams_out), 0
        cfg = self.config
        request = S1SetupRequest(
            global_enb_id=e.global_enb_id,
            supported_tas=(SupportedTa(cfg.tac, (cfg.plmn,)),),
            enb_name=e.name,
        )
        return [self._send(e, 0, request)]

    def association_down(self, enb: int, now: float) -> list[SimAction]:
        e = self.enbs[enb]
        e.up = e.ready = False
        return self._clear_ues(e.ues)

    # -- what the simulated UEs and eNBs do on their own -----------------------------------

    def attach(self, imsi: str, now: float) -> list[SimAction]:
        """The UE attaches: Initial UE Message with an Attach Request for its IMSI, on a UE
        stream picked round robin."""
        ue = self._by_imsi[imsi]
        e = self.enbs[ue.enb]
        if not e.ready:
            return []
        if ue.attached or ue.mme_ue_id is not None:
            self._clear_ues([ue])
        n = e.streams_out
        ue.stream = 0 if n <= 1 else 1 + e.next_stream % (n - 1)
        e.next_stream += 1
        ue.mme_stream = None
        cfg = self.config
        cell = (e.global_enb_id.enb_id << 8) | 1
        message = InitialUeMessage(
            enb_ue_id=ue.enb_ue_id,
            nas_pdu=_attach_nas(imsi),
            tai=Tai(cfg.plmn, cfg.tac),
            ecgi=Ecgi(cfg.plmn, cell),
        )
        return [self._send(e, ue.stream, message)]

    def attach_all(self, enb: int, now: float) -> list[SimAction]:
        actions: list[SimAction] = []
        for ue in self.enbs[enb].ues:
            actions += self.attach(ue.imsi, now)
        return actions

    def request_release(
        self, imsi: str, now: float, cause: Cause = USER_INACTIVITY
    ) -> list[SimAction]:
        """The eNB asks the MME to release the UE (UE Context Release Request)."""
        ue = self._by_imsi[imsi]
        if ue.mme_ue_id is None:
            return []
        request = UeContextReleaseRequest(ue.mme_ue_id, ue.enb_ue_id, cause)
        return [self._send(self.enbs[ue.enb], ue.stream, request)]

    def reset(
        self,
        enb: int,
        now: float,
        cause: Cause = OM_INTERVENTION,
        imsis: Sequence[str] | None = None,
    ) -> list[SimAction]:
        """Reset the whole S1 interface of `enb` (or just the given UEs' connections); their
        contexts are dropped here at once, as an eNB does."""
        e = self.enbs[enb]
        if imsis is None:
            ues = e.ues
            ue_ids = None
        else:
            ues = [self._by_imsi[i] for i in imsis]
            ue_ids = tuple(UeIdPair(u.mme_ue_id, u.enb_ue_id) for u in ues)
        actions = self._clear_ues([u for u in ues if u.mme_ue_id is not None or u.attached])
        actions.append(self._send(e, 0, Reset(cause, ue_ids)))
        return actions

    # -- PDUs from the MME -----------------------------------------------------------------

    def receive(self, enb: int, stream: int, data: bytes, now: float) -> list[SimAction]:
        e = self.enbs[enb]
        msg = decode(data)
        if isinstance(msg, Undecodable | Unhandled):
            return [Ignored(enb, stream, f"from MME: {msg}")]
        if isinstance(msg, S1SetupResponse):
            e.ready = True
            actions: list[SimAction] = [SetupDone(enb)]
            if self.config.auto_attach:
                actions += self.attach_all(enb, now)
            return actions
        if isinstance(msg, S1SetupFailure):
            e.ready = False
            return [SetupFailed(enb, msg.cause, msg.time_to_wait)]
        if isinstance(msg, ErrorIndication):
            return [MmeError(enb, msg)]
        if isinstance(msg, Reset):
            return self._on_reset(e, stream, msg)
        if isinstance(msg, ResetAcknowledge):
            return [ResetDone(enb)]
        enb_ue_id = getattr(msg, "enb_ue_id", None)
        ue = next((u for u in e.ues if u.enb_ue_id == enb_ue_id), None)
        if ue is None:
            return [Ignored(enb, stream, f"{msg.name} for unknown eNB UE id {enb_ue_id}")]
        self._check_stream(ue, stream)
        if isinstance(msg, InitialContextSetupRequest):
            return self._on_context_setup(e, ue, msg, now)
        if isinstance(msg, ERabSetupRequest):
            return self._on_e_rab_setup(e, ue, msg, now)
        if isinstance(msg, ERabReleaseCommand):
            return self._on_e_rab_release(e, ue, msg, now)
        if isinstance(msg, UeContextReleaseCommand):
            return self._on_ue_release(e, ue, msg)
        return [Ignored(enb, stream, f"unexpected {msg.name}")]

    def _check_stream(self, ue: SimUe, stream: int) -> None:
        if stream == 0 and self.enbs[ue.enb].streams_out > 1:
            self.ue_messages_on_stream_0 += 1
        if ue.mme_stream is None:
            ue.mme_stream = stream
        elif ue.mme_stream != stream:
            self.stream_changes += 1

    def _on_context_setup(
        self, e: SimEnb, ue: SimUe, msg: InitialContextSetupRequest, now: float
    ) -> list[SimAction]:
        ue.mme_ue_id = msg.mme_ue_id
        ue.attached = True
        ue.bearers = {r.e_rab_id: next(self._teids) for r in msg.e_rabs}
        response = InitialContextSetupResponse(
            mme_ue_id=msg.mme_ue_id,
            enb_ue_id=ue.enb_ue_id,
            setup=tuple(
                ERabSetupItem(r.e_rab_id, self.config.enb_address, ue.bearers[r.e_rab_id])
                for r in msg.e_rabs
            ),
        )
        return self._later(
            now, [self._send(e, ue.stream, response), Attached(ue.imsi, e.index, msg.mme_ue_id)]
        )

    def _on_e_rab_setup(
        self, e: SimEnb, ue: SimUe, msg: ERabSetupRequest, now: float
    ) -> list[SimAction]:
        setup: list[ERabSetupItem] = []
        failed: list[ERabCauseItem] = []
        events: list[SimAction] = []
        p = self.config.failure_probability
        for r in msg.e_rabs:
            if r.e_rab_id in ue.bearers:
                cause = Cause("radioNetwork", "multiple-E-RAB-ID-instances")
            elif p and self.rng.random() < p:
                cause = RADIO_RESOURCES_NOT_AVAILABLE
            else:
                teid = next(self._teids)
                ue.bearers[r.e_rab_id] = teid
                setup.append(ERabSetupItem(r.e_rab_id, self.config.enb_address, teid))
                events.append(BearerUp(ue.imsi, r.e_rab_id, r.qos.qci))
                continue
            failed.append(ERabCauseItem(r.e_rab_id, cause))
            events.append(BearerRejected(ue.imsi, r.e_rab_id, cause))
        response = ERabSetupResponse(
            msg.mme_ue_id, ue.enb_ue_id, setup=tuple(setup), failed=tuple(failed)
        )
        return self._later(now, [self._send(e, ue.stream, response), *events])

    def _on_e_rab_release(
        self, e: SimEnb, ue: SimUe, msg: ERabReleaseCommand, now: float
    ) -> list[SimAction]:
        released: list[int] = []
        failed: list[ERabCauseItem] = []
        events: list[SimAction] = []
        for item in msg.e_rabs:
            if ue.bearers.pop(item.e_rab_id, None) is None:
                failed.append(ERabCauseItem(item.e_rab_id, UNKNOWN_E_RAB_ID))
            else:
                released.append(item.e_rab_id)
                events.append(BearerDown(ue.imsi, item.e_rab_id))
        response = ERabReleaseResponse(
            msg.mme_ue_id, ue.enb_ue_id, released=tuple(released), failed=tuple(failed)
        )
        return self._later(now, [self._send(e, ue.stream, response), *events])

    def _on_ue_release(self, e: SimEnb, ue: SimUe, msg: UeContextReleaseCommand) -> list[SimAction]:
        complete = UeContextReleaseComplete(msg.mme_ue_id, ue.enb_ue_id)
        actions = self._clear_ues([ue], msg.cause)
        return [self._send(e, ue.stream, complete), *actions]

    def _on_reset(self, e: SimEnb, stream: int, msg: Reset) -> list[SimAction]:
        if msg.ue_ids is None:
            ues = e.ues
        else:
            wanted = {p.enb_ue_id for p in msg.ue_ids} | {p.mme_ue_id for p in msg.ue_ids}
            ues = [u for u in e.ues if u.enb_ue_id in wanted or u.mme_ue_id in wanted]
        actions = self._clear_ues(ues, msg.cause)
        actions.append(self._send(e, stream, ResetAcknowledge(ue_ids=msg.ue_ids)))
        return actions

    def _clear_ues(self, ues: Iterable[SimUe], cause: Cause | None = None) -> list[SimAction]:
        actions: list[SimAction] = []
        for ue in ues:
            if ue.attached:
                actions.append(UeGone(ue.imsi, cause))
            ue.attached = False
            ue.mme_ue_id = None
            ue.mme_stream = None
            ue.bearers = {}
        return actions

    # -- timers ----------------------------------------------------------------------------

    def _later(self, now: float, actions: list[SimAction]) -> list[SimAction]:
        delay = self.config.response_delay
        if delay <= 0:
            return actions
        heapq.heappush(self._heap, (now + delay, next(self._seq), actions))
        return []

    def next_timer(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def handle_timer(self, now: float) -> list[SimAction]:
        actions: list[SimAction] = []
        while self._heap and self._heap[0][0] <= now:
            actions += heapq.heappop(self._heap)[2]
        return actions

    def _send(self, e: SimEnb, stream: int, message: Message) -> Send:
        return Send(e.index, stream, encode(message), message)


_ATTACH_NAS: dict[str, bytes] = {}


def _attach_nas(imsi: str) -> bytes:
    nas = _ATTACH_NAS.get(imsi)
    if nas is None:
        nas = _ATTACH_NAS[imsi] = attach_request_nas(imsi)
    return nas


# --- in-memory wiring -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WireRecord:
    """One PDU that crossed the loopback: `uplink` is eNB -> agent."""

    at: float
    uplink: bool
    enb: int
    stream: int
    data: bytes


class Loopback:
    """An EnbSimulator wired to an S1apAgent in memory, with a virtual clock.

    Each simulated eNB i is association i on both sides, with `streams` streams each way. Send
    actions are queued and delivered in order to the other side by `run()`; every other action
    lands in `agent_events` / `sim_events`. `advance(seconds)` moves the clock, firing both
    sides' timers in time order. With `record=True` every PDU is kept in `wire` (see
    `write_pcap`).
    """

    def __init__(
        self, agent: S1apAgent, sim: EnbSimulator, *, streams: int = 8, record: bool = True
    ) -> None:
        self.agent = agent
        self.sim = sim
        self.streams = streams
        self.record = record
        self.now = 0.0
        self.agent_events: list[AgentAction] = []
        self.sim_events: list[SimAction] = []
        self.wire: list[WireRecord] = []
        self._queue: deque[tuple[bool, int, int, bytes]] = deque()

    # -- driving ---------------------------------------------------------------------------

    def connect(self, enbs: Iterable[int] | None = None) -> None:
        """Bring up the associations (all eNBs by default) and run until quiet: S1 Setup and,
        with auto_attach, every UE's attach."""
        for i in range(len(self.sim.enbs)) if enbs is None else enbs:
            self.on_agent(self.agent.association_up(i, self.streams, self.now, self.streams))
            self.on_sim(self.sim.association_up(i, self.streams, self.now))
        self.run()

    def disconnect(self, enb: int) -> None:
        """The association of `enb` is lost (both sides see it go down)."""
        self._queue = deque(q for q in self._queue if q[1] != enb)
        self.on_agent(self.agent.association_down(enb, self.now))
        self.on_sim(self.sim.association_down(enb, self.now))
        self.run()

    def inject(self, enb: int, stream: int, data: bytes) -> None:
        """Deliver raw bytes to the agent as if eNB `enb` had sent them, and run."""
        self._queue.append((True, enb, stream, data))
        self.run()

    def run(self) -> None:
        """Deliver queued PDUs (and whatever they cause) until nothing is in flight."""
        queue = self._queue
        while queue:
            uplink, enb, stream, data = queue.popleft()
            if self.record:
                self.wire.append(WireRecord(self.now, uplink, enb, stream, data))
            if uplink:
                self.on_agent(self.agent.receive(enb, stream, data, self.now))
            else:
                self.on_sim(self.sim.receive(enb, stream, data, self.now))

    def advance(self, seconds: float) -> None:
        """Move the clock forward by `seconds`, firing due timers of both sides in order."""
        end = self.now + seconds
        while True:
            due = [t for t in (self.agent.next_timer(), self.sim.next_timer()) if t is not None]
            if not due or min(due) > end:
                break
            self.now = max(self.now, min(due))
            self.on_agent(self.agent.handle_timer(self.now))
            self.on_sim(self.sim.handle_timer(self.now))
            self.run()
        self.now = end

    def on_agent(self, actions: Iterable[AgentAction]) -> None:
        for a in actions:
            if isinstance(a, Send):
                assert isinstance(a.assoc, int)
                self._queue.append((False, a.assoc, a.stream, a.data))
            else:
                self.agent_events.append(a)

    def on_sim(self, actions: Iterable[SimAction]) -> None:
        for a in actions:
            if isinstance(a, Send):
                assert isinstance(a.assoc, int)
                self._queue.append((True, a.assoc, a.stream, a.data))
            else:
                self.sim_events.append(a)

    # -- conveniences for tests and the bench ----------------------------------------------

    def setup_bearer(
        self,
        imsi: str,
        qos: BearerQos,
        *,
        filters: tuple[PacketFilter, ...] = (),
        key: Hashable | None = None,
    ) -> int:
        request_id, actions = self.agent.setup_bearer(imsi, qos, self.now, filters=filters, key=key)
        self.on_agent(actions)
        self.run()
        return request_id

    def release_bearer(self, bearer_id: int, cause: Cause = NORMAL_RELEASE) -> int:
        request_id, actions = self.agent.release_bearer(bearer_id, self.now, cause)
        self.on_agent(actions)
        self.run()
        return request_id

    def outcome(self, request_id: int) -> BearerSetUp | BearerFailed | BearerReleased | None:
        """The latest agent event answering `request_id`, if any."""
        for event in reversed(self.agent_events):
            if isinstance(event, BearerSetUp | BearerFailed | BearerReleased) and (
                event.request_id == request_id
            ):
                return event
        return None

    def write_pcap(self, path: Path | str) -> None:
        Path(path).write_bytes(pcap_bytes(self.wire))


# --- pcap -----------------------------------------------------------------------------------

_AGENT_IP = bytes([10, 255, 0, 1])
_AGENT_PORT = 36412


def _enb_ip(enb: int) -> bytes:
    return bytes([10, 1 + enb // 250 % 250, enb % 250 + 1, 1])


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the SCTP checksum (RFC 9260 appendix A)."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _ipv4_checksum(header: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pcap_bytes(records: Iterable[WireRecord]) -> bytes:
    """A pcap (Ethernet) of the records as IPv4/SCTP packets with one DATA chunk each (PPID 18),
    the agent at 10.255.0.1:36412 and eNB i at its own address and port 36412 + 1 + i.
    TSNs and stream sequence numbers count per direction and stream as SCTP would."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    tsn: dict[tuple[int, bool], int] = {}
    ssn: dict[tuple[int, bool, int], int] = {}
    for seq, r in enumerate(records):
        enb_port = _AGENT_PORT + 1 + r.enb
        src, dst = (_enb_ip(r.enb), _AGENT_IP) if r.uplink else (_AGENT_IP, _enb_ip(r.enb))
        sport, dport = (enb_port, _AGENT_PORT) if r.uplink else (_AGENT_PORT, enb_port)
        t = tsn.get((r.enb, r.uplink), 1)
        tsn[(r.enb, r.uplink)] = t + 1
        s = ssn.get((r.enb, r.uplink, r.stream), 0)
        ssn[(r.enb, r.uplink, r.stream)] = (s + 1) & 0xFFFF
        chunk = struct.pack("!BBHIHHI", 0, 0x03, 16 + len(r.data), t, r.stream, s, 18) + r.data
        chunk += bytes(-len(chunk) % 4)
        common = struct.pack("!HHII", sport, dport, 0x5C7A0000 + r.enb, 0)
        checksum = crc32c(common + chunk)
        sctp = struct.pack("!HHI", sport, dport, 0x5C7A0000 + r.enb)
        sctp += struct.pack("<I", checksum) + chunk
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(sctp), seq & 0xFFFF, 0, 64, 132, 0, src, dst
        )
        ip = ip[:10] + struct.pack("!H", _ipv4_checksum(ip)) + ip[12:]
        frame = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + ip + sctp
        seconds = int(r.at)
        micros = int((r.at - seconds) * 1_000_000) + seq  # keep frames strictly ordered
        seconds += micros // 1_000_000
        micros %= 1_000_000
        out.append(struct.pack("<IIII", seconds, micros, len(frame), len(frame)) + frame)
    return b"".join(out)


# --- micro-benchmark ------------------------------------------------------------------------


def bench_pairs(
    enbs: int = 30, ues: int = 100, pairs: int = 3000, *, streams: int = 8
) -> tuple[float, float, float]:
    """E-RAB setup + release pairs through the in-memory wiring (encode and decode on both
    sides, no network): returns (pairs per second, p50 ms, p99 ms). Attaching the
    enbs x ues UEs first is not timed. Pairs run one after another, each on the next UE."""
    agent = S1apAgent(AgentConfig())
    sim = EnbSimulator(SimulatorConfig(enbs=enbs, ues_per_enb=ues))
    loop = Loopback(agent, sim, streams=streams, record=False)
    loop.connect()
    imsis = [u.imsi for u in agent.ues() if u.imsi is not None]
    if len(imsis) != enbs * ues:
        raise RuntimeError(f"only {len(imsis)} of {enbs * ues} UEs attached")
    qos = qos_for_codec(23_850)
    latencies: list[float] = []
    clock = time.perf_counter
    started = clock()
    for n in range(pairs):
        t0 = clock()
        bearer_id = loop.setup_bearer(imsis[n % len(imsis)], qos)
        set_up = loop.agent_events[-1]
        if not isinstance(set_up, BearerSetUp):
            raise RuntimeError(f"bearer setup failed: {set_up}")
        loop.release_bearer(bearer_id)
        released = loop.agent_events[-1]
        if not isinstance(released, BearerReleased):
            raise RuntimeError(f"bearer release failed: {released}")
        latencies.append(clock() - t0)
        if len(loop.agent_events) > 10_000:
            loop.agent_events.clear()
            loop.sim_events.clear()
    elapsed = clock() - started
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return pairs / elapsed, cuts[49] * 1000, cuts[98] * 1000


__all__ = [
    "Attached",
    "BearerDown",
    "BearerRejected",
    "BearerUp",
    "EnbSimulator",
    "Ignored",
    "Loopback",
    "MmeError",
    "ResetDone",
    "SetupDone",
    "SetupFailed",
    "SimAction",
    "SimulatorConfig",
    "UeGone",
    "WireRecord",
    "bench_pairs",
    "crc32c",
    "pcap_bytes",
]


if __name__ == "__main__":  # python -m services.enb.simulator [enbs ues pairs]
    import sys

    args = [int(a) for a in sys.argv[1:4]]
    rate, p50, p99 = bench_pairs(*args)
    print(
        f"E-RAB setup+release pairs (in memory): {rate:.0f}/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    )
