"""Bearer checks in a load run: the eNodeB side of a VoLTE call.

With `--bearers`, each worker plays its share of `--enbs` simulated eNodeBs
(`services.enb.shell.SimulatedEnbs`, real SCTP to the stack's enb-agent) and, before the load,
attaches every one of its UEs with the IMSI of its subscriber (`services.subscribers.imsi_of`),
the UEs spread over its eNBs in contiguous blocks. During each answered call, at the end of the
hold and before the BYE, it checks that both UEs hold a QCI-1 dedicated bearer set up since the
call's INVITE; a call without them fails with cause `no_bearer`. After the load it lets the
releases come in, asks the agent once (BearerControl.ListUes) which of its UEs still hold a
QCI-1 bearer, and shuts its associations down (the agent drops their UE contexts).

Why the check reads the simulated eNB's own view (the E-RAB set-ups it answered) rather than
the agent's `ListUes`: the eNB is where a UE's bearer really is, and the sbc relays the 200 only
after the agent has the eNB's E-RAB Setup Response, so by the time the caller holds the call the
eNB's answer is in: the check is a dictionary lookup in the worker's own process. `ListUes`
lists every UE context of the agent (1,000 in `make demo`) and would cost the agent, which
shares the cores with the system under test, an RPC per call, distorting what is measured. The
agent's view is asked once, after the load, for bearers it failed to release.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from services.sip.transport import Address
from services.subscribers import imsi_of

if TYPE_CHECKING:
    from services.enb.shell import SimulatedEnbs
    from services.enb.simulator import SimAction

log = logging.getLogger("loadgen.bearers")
ENB_ID_BASE = 0x100  # macro eNB id of the first simulated eNB; worker shares follow on
CONNECT_TIMEOUT = 10.0  # seconds for the SCTP associations and S1 Setup
RELEASE_GRACE = 3.0  # seconds after the load for the last releases to reach the eNBs
QCI_VOICE = 1
SCTP_TRANSPORTS = ("auto", "kernel", "userspace")


@dataclass(frozen=True)
class BearerConfig:
    """Where the enb-agent is and how many eNBs to play (`--bearers` and its options)."""

    enbs: int = 1
    sctp: Address = ("127.0.0.1", 36412)  # the agent's S1AP (SCTP) address
    grpc: str = "127.0.0.1:50081"  # the agent's BearerControl
    transport: str = "auto"  # SCTP: auto, kernel or userspace (as the agent's)
    failures: float = 0.0  # failure injection: fraction of E-RAB set-ups the eNBs refuse
    first_enb: int = 0  # this worker's first eNB (eNB ids must differ between workers)

    def __post_init__(self) -> None:
        if self.enbs < 1:
            raise ValueError("--enbs: at least one eNodeB")
        if not 0.0 <= self.failures <= 1.0:
            raise ValueError("--enb-failures: a fraction between 0 and 1")
        if self.transport not in SCTP_TRANSPORTS:
            raise ValueError(f"SCTP transport {self.transport!r}: one of "
                             f"{', '.join(SCTP_TRANSPORTS)}")

    def part(self, first: int, last: int) -> BearerConfig:
        """A worker's share: eNBs [first, last) of these."""
        return replace(self, enbs=last - first, first_enb=self.first_enb + first)


class BearerCheck(Protocol):
    """What the engine asks of the eNodeB side."""

    note: str
    attached: int  # UEs attached before the load
    left: int  # QCI-1 bearers still up after it

    async def attach(self, numbers: Sequence[str]) -> None:
        """Before the load: attach these subscribers' UEs (consecutive numbers) through the
        eNodeBs."""

    async def check(self, caller: str, callee: str, since: float) -> bool | None:
        """Mid-call: do both UEs hold a QCI-1 bearer set up after `since` (time.monotonic(),
        the INVITE)? None: not checked."""

    async def close(self) -> None:
        """After the load."""


class NoBearers:
    """No eNodeB side: nothing attached, nothing checked."""

    note = "not requested (--bearers)"
    attached = 0
    left = 0

    async def attach(self, numbers: Sequence[str]) -> None:
        return None

    async def check(self, caller: str, callee: str, since: float) -> bool | None:
        return None

    async def close(self) -> None:
        return None


class SimulatedBearers:
    """Simulated eNBs attached to the enb-agent; bearers checked as the eNBs saw them."""

    def __init__(self, config: BearerConfig, seed: int = 0) -> None:
        self.config = config
        self.seed = seed
        host, port = config.sctp
        self.note = (f"{config.enbs} simulated eNodeB(s) at the enb-agent {host}:{port} "
                     f"(SCTP {config.transport}); each answered call checked for both UEs' "
                     f"QCI-1 bearers before its BYE, as their eNB set them up")
        self.attached = 0
        self.left = 0
        self._sims: SimulatedEnbs | None = None
        self._imsis: list[str] = []
        self._up: dict[str, dict[int, float]] = {}  # IMSI -> QCI-1 E-RAB id -> set up at
        self._attached: set[str] = set()  # IMSIs
        self._set_up: set[int] = set()
        self._refused: dict[int, str] = {}  # eNB -> why its S1 Setup failed

    # -- before the load -----------------------------------------------------------------------
    async def attach(self, numbers: Sequence[str]) -> None:
        from loadgen.engine import LoadError
        from services.enb.shell import SimulatedEnbs
        from services.enb.simulator import SimulatorConfig

        if not numbers:
            return
        c = self.config
        host, port = c.sctp
        self._imsis = [imsi_of(n) for n in numbers]
        try:
            sims = SimulatedEnbs(
                SimulatorConfig(enbs=c.enbs, ues_per_enb=math.ceil(len(numbers) / c.enbs),
                                imsi_base=int(numbers[0]),
                                first_enb_id=ENB_ID_BASE + c.first_enb, name_prefix="loadgen-enb",
                                auto_attach=False, failure_probability=c.failures,
                                seed=self.seed),
                host, port, transport=c.transport,  # type: ignore[arg-type]  # see __post_init__
                on_event=self._on_event,
            )
        except RuntimeError as exc:  # no SCTP: neither the kernel's nor libusrsctp
            raise LoadError(f"--bearers: {exc}") from None
        unknown = set(self._imsis) - set(sims.imsis)
        if unknown:  # the numbers are not consecutive: a bug of ours
            raise ValueError(f"UEs {sorted(unknown)[:3]}... are not on a simulated eNB")
        try:
            await self._attach(sims)
        except BaseException:
            await sims.close()
            raise
        self._sims = sims

    async def _attach(self, sims: SimulatedEnbs) -> None:
        """S1 Setup of every eNB, then every UE's attach."""
        from loadgen.engine import LoadError

        c = self.config
        host, port = c.sctp
        where = f"the enb-agent at {host}:{port} (SCTP {c.transport}, --enb-sctp)"
        try:
            await sims.start(timeout=CONNECT_TIMEOUT)
            await sims.wait_for(lambda: len(self._set_up) + len(self._refused) == c.enbs,
                                CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise LoadError(f"no S1 Setup with {where}: {exc or 'timed out'}; is `volte up` "
                            "running with its enb-agent there?") from None
        if self._refused:
            enb, cause = next(iter(self._refused.items()))
            raise LoadError(f"{where} refused S1 Setup of eNB {enb}: {cause}")
        started = time.monotonic()
        sims.attach(self._imsis)
        limit = 10.0 + 0.02 * len(self._imsis)
        with contextlib.suppress(TimeoutError):
            await sims.wait_for(lambda: len(self._attached) == len(self._imsis), limit)
        self.attached = len(self._attached)
        if not self.attached:
            raise LoadError(f"no UE attached through {where} within {limit:.0f} s")
        if self.attached < len(self._imsis):
            log.warning("%d of %d UEs did not attach within %.0f s: their calls will fail "
                        "(no_bearer)", len(self._imsis) - self.attached, len(self._imsis), limit)
        log.info("%d UEs attached through %d eNBs in %.1f s", self.attached, c.enbs,
                 time.monotonic() - started)

    def _on_event(self, action: SimAction) -> None:
        from services.enb import simulator as sim

        if isinstance(action, sim.BearerUp):
            if action.qci == QCI_VOICE:
                self._up.setdefault(action.imsi, {})[action.e_rab_id] = time.monotonic()
        elif isinstance(action, sim.BearerDown):
            self._up.get(action.imsi, {}).pop(action.e_rab_id, None)
        elif isinstance(action, sim.Attached):
            self._attached.add(action.imsi)
        elif isinstance(action, sim.UeGone):
            self._up.pop(action.imsi, None)
            self._attached.discard(action.imsi)
        elif isinstance(action, sim.SetupDone):
            self._set_up.add(action.enb)
        elif isinstance(action, sim.SetupFailed):
            self._refused[action.enb] = str(action.cause)

    # -- during the load -----------------------------------------------------------------------
    async def check(self, caller: str, callee: str, since: float) -> bool | None:
        return all(
            any(at >= since for at in self._up.get(imsi_of(number), {}).values())
            for number in (caller, callee)
        )

    # -- after it ------------------------------------------------------------------------------
    async def close(self) -> None:
        sims, self._sims = self._sims, None
        if sims is None:
            return
        try:
            with contextlib.suppress(TimeoutError):
                await sims.wait_for(lambda: not any(self._up.values()), RELEASE_GRACE)
            self.left = await self._left_at_agent()
            for enb in range(self.config.enbs):
                sims.disconnect(enb)  # SHUTDOWN: the agent drops the eNB and its UE contexts
            with contextlib.suppress(TimeoutError):
                await sims.wait_for(lambda: all(sims.association(e) is None
                                                for e in range(self.config.enbs)), 2.0)
        finally:
            await sims.close()

    async def _left_at_agent(self) -> int:
        """Our UEs that still hold an active QCI-1 bearer, as the agent sees them (the eNBs'
        own view when the agent does not answer)."""
        import grpc

        from volte.v1 import bearer_pb2, bearer_pb2_grpc

        ours = set(self._imsis)
        try:
            async with grpc.aio.insecure_channel(self.config.grpc) as channel:
                reply = await bearer_pb2_grpc.BearerControlStub(channel).ListUes(
                    bearer_pb2.ListUesRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            log.warning("bearers left after the load: the enb-agent at %s (--enb-grpc) did "
                        "not answer ListUes (%s); counting the eNBs' view", self.config.grpc,
                        exc.code().name)
            return sum(1 for imsi, bearers in self._up.items() if imsi in ours and bearers)
        active = bearer_pb2.Bearer.STATE_ACTIVE
        return sum(1 for ue in reply.ues if ue.imsi in ours and any(
            b.qos.qci == QCI_VOICE and b.state == active for b in ue.bearers))


def bearer_check(config: BearerConfig | None, seed: int = 0) -> BearerCheck:
    """The bearer check for a run: simulated eNBs with `--bearers`, else none."""
    return NoBearers() if config is None else SimulatedBearers(config, seed)
