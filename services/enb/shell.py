"""Simulated eNodeBs over real SCTP: the asyncio shell around `EnbSimulator` (a library for
tests, benchmarks and loadgen).

`SimulatedEnbs` plays N eNBs x M UEs (`SimulatorConfig`) against an MME-side peer (the
enb-agent) at host:port. Each eNB opens its own SCTP association (`services.enb.sctp`, kernel or
userspace transport), sends S1 Setup on stream 0 and, once it succeeds, attaches its UEs (each
on its own UE stream); from then on it answers Initial Context Setup, E-RAB Setup / Release,
UE Context Release and Reset as `EnbSimulator` decides, after its configured response delay and
with its failure injection.

    sims = SimulatedEnbs(SimulatorConfig(enbs=2, ues_per_enb=5), "127.0.0.1", agent_port,
                         transport="userspace")
    await sims.start()          # associations up, S1 Setup sent
    await sims.ready()          # every eNB set up, every UE attached (or TimeoutError)
    sims.bearers("001010000000001")   # dedicated E-RAB ids up at that UE: [6]
    sims.set_failure_probability(1.0) # the next E-RAB set-ups fail (radio resources)
    sims.kill(0)                # eNB 0's association aborted, as when its host dies
    await sims.close()

Every simulator event (`SetupDone`, `Attached`, `BearerUp`, `MmeError`, ...) is kept in
`events` (the most recent `EVENTS_KEPT`) and passed to `on_event`; `wait_for(predicate)` waits
until a predicate over the simulator holds. With `record=True`, `received` lists every PDU from
the MME as (eNB, stream, procedure code, message type) from its header, so tests can check which
stream each procedure used.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from services.enb.procedures import DEFAULT_E_RAB_ID
from services.enb.s1ap import MessageType, Send, peek_header
from services.enb.sctp import (
    S1AP_PORT,
    S1AP_PPID,
    Association,
    DownReason,
    SctpConfig,
    SctpError,
    SctpHandler,
    SctpTransport,
    open_transport,
)
from services.enb.simulator import (
    Attached,
    EnbSimulator,
    MmeError,
    SetupDone,
    SetupFailed,
    SimAction,
    SimulatorConfig,
    UeGone,
)

log = logging.getLogger("volte.enb.sim")
EVENTS_KEPT = 100_000
# Attaches in flight at once, over all eNBs: thousands of UEs attaching in the same instant
# would only queue up in both peers (and outlast the agent's context set-up timer).
ATTACH_WINDOW = 64
ATTACH_GIVE_UP = 10.0  # seconds after which an unanswered attach leaves the window


@dataclass(frozen=True, slots=True)
class Received:
    """One PDU from the MME, as its header says (no decoding)."""

    enb: int
    stream: int
    procedure_code: int | None
    message_type: MessageType | None


class _EnbLink(SctpHandler):
    """One simulated eNB's association: its events go into the simulator as eNB `index`."""

    def __init__(self, owner: SimulatedEnbs, index: int) -> None:
        self.owner = owner
        self.index = index
        self.assoc: Association | None = None

    def on_association_up(self, assoc: Association, inbound_streams: int,
                          outbound_streams: int) -> None:
        self.assoc = assoc
        owner = self.owner
        owner.apply(owner.sim.association_up(self.index, outbound_streams, owner.now()))

    def on_message(self, assoc: Association, stream: int, ppid: int, data: bytes) -> None:
        owner = self.owner
        if ppid != S1AP_PPID:
            log.debug("eNB %d: message with PPID %d ignored", self.index, ppid)
            return
        if owner.record:
            mtype, code, _ = peek_header(data)
            owner.received.append(Received(self.index, stream, code, mtype))
        owner.apply(owner.sim.receive(self.index, stream, data, owner.now()))

    def on_association_down(self, assoc: Association, reason: DownReason) -> None:
        if self.assoc is assoc:
            self.assoc = None
        self.owner.enb_down(self.index, reason)


class SimulatedEnbs:
    """N simulated eNBs x M UEs, each eNB on its own SCTP association to host:port."""

    def __init__(
        self,
        config: SimulatorConfig,
        host: str,
        port: int = S1AP_PORT,
        *,
        transport: SctpTransport | Literal["auto", "kernel", "userspace"] = "auto",
        sctp_config: SctpConfig | None = None,
        local_host: str = "0.0.0.0",
        on_event: Callable[[SimAction], None] | None = None,
        record: bool = False,
        attach_window: int = ATTACH_WINDOW,
    ) -> None:
        # The shell attaches the UEs itself, `attach_window` at a time (see _pump_attaches).
        self.auto_attach = config.auto_attach
        self.attach_window = max(1, attach_window)
        self.sim = EnbSimulator(dataclasses.replace(config, auto_attach=False))
        self.host = host
        self.port = port
        self.local_host = local_host
        self.transport = (transport if isinstance(transport, SctpTransport)
                          else open_transport(transport, sctp_config))
        self.on_event = on_event
        self.record = record
        self.received: list[Received] = []
        self.events: deque[SimAction] = deque(maxlen=EVENTS_KEPT)
        self.down_reasons: dict[int, DownReason] = {}
        self._links = [_EnbLink(self, i) for i in range(config.enbs)]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._changed: asyncio.Event | None = None
        self._to_attach: deque[str] = deque()
        self._attaching: dict[str, float] = {}  # IMSI -> when its attach was sent
        # Kept up to date from the events, so that ready() costs O(eNBs) per event.
        self._set_up: set[int] = set()
        self._failed: dict[int, SetupFailed] = {}
        self._attached: list[set[str]] = [set() for _ in range(config.enbs)]

    # -- running -------------------------------------------------------------------------------
    def now(self) -> float:
        loop = self._loop or asyncio.get_running_loop()
        return loop.time()

    @property
    def config(self) -> SimulatorConfig:
        return dataclasses.replace(self.sim.config, auto_attach=self.auto_attach)

    async def start(self, enbs: Iterable[int] | None = None, *,
                    timeout: float | None = None) -> None:
        """Open the associations of `enbs` (all by default), concurrently; each sends S1 Setup
        as soon as it is up. Raises ConnectionError if one cannot be established."""
        self._loop = asyncio.get_running_loop()
        indexes = list(range(len(self._links)) if enbs is None else enbs)
        await asyncio.gather(*(self.connect(i, timeout=timeout) for i in indexes))

    async def connect(self, enb: int, *, timeout: float | None = None) -> Association:
        """(Re)open eNB `enb`'s association; S1 Setup and, on success, its UEs' attach follow."""
        self._loop = asyncio.get_running_loop()
        link = self._links[enb]
        if link.assoc is not None and link.assoc.is_up:
            return link.assoc
        self.down_reasons.pop(enb, None)
        assoc = await self.transport.connect(link, self.host, self.port,
                                             local_host=self.local_host, timeout=timeout)
        link.assoc = assoc
        return assoc

    def apply(self, actions: Iterable[SimAction]) -> None:
        """Carry out the simulator's actions: sends on the eNB's association, events recorded."""
        changed = False
        for action in actions:
            if isinstance(action, Send):
                assert isinstance(action.assoc, int)
                assoc = self._links[action.assoc].assoc
                if assoc is None:
                    continue  # its association went down meanwhile
                try:
                    assoc.send(action.stream, S1AP_PPID, action.data)
                except (SctpError, ValueError) as exc:
                    log.debug("eNB %s: cannot send %s: %s", action.assoc, action.message.name,
                              exc)
                continue
            changed = True
            self.events.append(action)
            if isinstance(action, Attached):
                self._attaching.pop(action.imsi, None)
                self._attached[action.enb].add(action.imsi)
            elif isinstance(action, UeGone):
                self._attaching.pop(action.imsi, None)
                self._attached[self.sim.ue(action.imsi).enb].discard(action.imsi)
            elif isinstance(action, SetupDone):
                self._set_up.add(action.enb)
                self._failed.pop(action.enb, None)
                if self.auto_attach:
                    self._to_attach.extend(self.imsis_of(action.enb))
            elif isinstance(action, SetupFailed):
                self._set_up.discard(action.enb)
                self._failed[action.enb] = action
                log.info("eNB %d: S1 Setup failed: %s", action.enb, action.cause)
            elif isinstance(action, MmeError):
                log.info("eNB %d: Error Indication from the MME: %s", action.enb,
                         action.message.cause)
            if self.on_event is not None:
                self.on_event(action)
        if changed and (self._to_attach or self._attaching):
            self._pump_attaches()
        self._rearm()
        if changed and self._changed is not None:
            self._changed.set()

    def enb_down(self, enb: int, reason: DownReason) -> None:
        """eNB `enb`'s association is gone: the simulator forgets its UEs' contexts."""
        self.down_reasons[enb] = reason
        self._set_up.discard(enb)
        gone = set(self.imsis_of(enb))
        self._to_attach = deque(i for i in self._to_attach if i not in gone)
        for imsi in gone:
            self._attaching.pop(imsi, None)
        self.apply(self.sim.association_down(enb, self.now()))

    def attach(self, imsis: Iterable[str]) -> None:
        """Attach these UEs (again), through the attach window."""
        self._to_attach.extend(imsis)
        self._pump_attaches()

    def _pump_attaches(self) -> None:
        now = self.now()
        for imsi, sent in list(self._attaching.items()):
            if now - sent > ATTACH_GIVE_UP:
                del self._attaching[imsi]
        actions: list[SimAction] = []
        while self._to_attach and len(self._attaching) < self.attach_window:
            imsi = self._to_attach.popleft()
            sends = self.sim.attach(imsi, now)
            if sends:  # nothing when its eNB is not (or no longer) set up
                self._attaching[imsi] = now
                actions += sends
        if actions:
            self.apply(actions)

    def _rearm(self) -> None:
        due = self.sim.next_timer()
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
        self.apply(self.sim.handle_timer(self.now()))

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until `predicate()` holds (checked after every simulator event)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def ready(self, timeout: float = 10.0, enbs: Iterable[int] | None = None) -> None:
        """Wait until the eNBs (all connected ones by default) completed S1 Setup and every
        one of their UEs is attached. Raises RuntimeError if an S1 Setup failed, TimeoutError
        if it takes longer than `timeout`."""
        wanted = list(range(len(self._links)) if enbs is None else enbs)

        def done() -> bool:
            for i in wanted:
                if i in self._failed:
                    raise RuntimeError(f"S1 Setup of eNB {i} failed: {self._failed[i].cause}")
                if i not in self._set_up or len(self._attached[i]) < len(self.sim.enbs[i].ues):
                    return False
            return True

        try:
            await self.wait_for(done, timeout)
        except TimeoutError:
            attached = sum(len(self._attached[i]) for i in wanted)
            total = sum(len(self.sim.enbs[i].ues) for i in wanted)
            set_up = len(self._set_up.intersection(wanted))
            raise TimeoutError(f"after {timeout} s: {set_up}/{len(wanted)} eNBs set up, "
                               f"{attached}/{total} UEs attached") from None

    # -- what tests and loadgen look at -----------------------------------------------------
    @property
    def imsis(self) -> list[str]:
        return self.sim.imsis

    def imsis_of(self, enb: int) -> list[str]:
        return [u.imsi for u in self.sim.enbs[enb].ues]

    def association(self, enb: int) -> Association | None:
        return self._links[enb].assoc

    def attached(self, imsi: str) -> bool:
        return self.sim.ue(imsi).attached

    def stream_of(self, imsi: str) -> int:
        """The SCTP stream the UE's signalling uses (chosen when it attached)."""
        return self.sim.ue(imsi).stream

    def bearers(self, imsi: str) -> list[int]:
        """E-RAB ids of the UE's dedicated bearers that are up (the default bearer left out)."""
        return sorted(e for e in self.sim.ue(imsi).bearers if e != DEFAULT_E_RAB_ID)

    def bearer_counts(self) -> dict[str, int]:
        """Dedicated bearers up per IMSI, for the UEs that have any."""
        counts = {imsi: len(self.bearers(imsi)) for imsi in self.sim.imsis}
        return {imsi: n for imsi, n in counts.items() if n}

    def total_bearers(self) -> int:
        return sum(self.bearer_counts().values())

    def attached_count(self) -> int:
        return sum(u.attached for e in self.sim.enbs for u in e.ues)

    def errors(self) -> list[MmeError]:
        """Error Indications the MME sent."""
        return [a for a in self.events if isinstance(a, MmeError)]

    def attaches(self) -> list[Attached]:
        return [a for a in self.events if isinstance(a, Attached)]

    def gone(self) -> list[UeGone]:
        return [a for a in self.events if isinstance(a, UeGone)]

    def setups(self) -> list[SetupDone]:
        return [a for a in self.events if isinstance(a, SetupDone)]

    # -- failure injection and abuse ---------------------------------------------------------
    def set_failure_probability(self, probability: float) -> None:
        """From now on, each E-RAB in an E-RAB Setup Request fails with this probability
        (radioNetwork/radio-resources-not-available)."""
        self.sim.config = dataclasses.replace(self.sim.config, failure_probability=probability)

    def set_response_delay(self, seconds: float) -> None:
        """From now on, answer the MME after `seconds` (Initial Context Setup, E-RAB)."""
        self.sim.config = dataclasses.replace(self.sim.config, response_delay=seconds)

    def send_raw(self, enb: int, stream: int, data: bytes, ppid: int = S1AP_PPID) -> None:
        """Put arbitrary bytes on eNB `enb`'s association (garbage, truncated PDUs, ...)."""
        assoc = self._links[enb].assoc
        if assoc is None:
            raise SctpError(f"eNB {enb} has no association")
        assoc.send(stream, ppid, data)

    def kill(self, enb: int) -> None:
        """Abort eNB `enb`'s association at once (ABORT chunk), as a crashing eNB would; the
        simulator forgets its UEs' contexts."""
        assoc = self._links[enb].assoc
        if assoc is not None:
            assoc.abort()

    def disconnect(self, enb: int) -> None:
        """Shut eNB `enb`'s association down gracefully (SHUTDOWN)."""
        assoc = self._links[enb].assoc
        if assoc is not None:
            assoc.close()

    async def close(self) -> None:
        """Abort every association and stop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        for link in self._links:
            if link.assoc is not None:
                with contextlib.suppress(OSError):
                    link.assoc.abort()
        await asyncio.sleep(0)


__all__ = ["EVENTS_KEPT", "Received", "SimulatedEnbs"]
