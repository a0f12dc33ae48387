"""The load engine: UEs registered up front, calls offered on a schedule, results measured.

One `Worker` runs in one asyncio loop (uvloop) and owns a share of the subscribers (whole
caller/callee pairs) and of the offered rate. The load is open-loop: calls are offered when the
schedule says, whatever happened to earlier ones; a call offered while the concurrency cap is
reached or no UE pair is idle is counted as `blocked`, never queued (queueing would hide the
system's slowness behind the load generator's). Every run is bounded in count and in time: the
offering ends with the schedule, and calls still in progress get `drain_timeout` seconds
before they are abandoned (cause `aborted`).

`run_load` is the controller: with `workers == 1` the worker shares the controller's loop;
otherwise each worker is a process (multiprocessing, spawn) that prepares (registers its UEs),
reports ready, starts the load at one common start time, streams progress snapshots and sends
its `Results` back to be merged. The controller also fires the scenario's event (the failover
kill) at its time and drives the progress display.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import multiprocessing
import os
import random
import resource
import signal
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

from loadgen.agent import CallRecord, LoadUe, OutgoingCall, call_id
from loadgen.bearers import BearerCheck, bearer_check
from loadgen.config import CallKind, LoadConfig
from loadgen.stats import Results, merge_all

Snapshot = dict[str, float]
REGISTER_CONCURRENCY = 100
PROGRESS_INTERVAL = 0.25
START_DELAY = 0.3  # seconds between "everyone ready" and the common start
MIN_RTP_PACKETS = 1  # a direction with fewer packets than this had no audio
# The collector during the load: (allocations between young collections, young collections per
# middle one, middle per full one). Python's (700, 10, 10) means a full collection every few
# hundred calls at 1000+ cps, each one walking every object of the run: 100-200 ms pauses in
# which answers wait and timers fire late (retransmissions the far end sees). Measured at
# 1500 cps: scheduler lag max 150+ ms -> under 10 ms, CPU per call -15 %.
GC_THRESHOLDS = (20_000, 20, 100)


class LoadError(RuntimeError):
    """The run could not start: nothing to call with, a stack not found, a worker crashed."""


def raise_nofile() -> None:
    """Each UE holds a UDP socket, each call in progress one or two RTP sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


T = TypeVar("T")


@contextlib.contextmanager
def gc_tuned_for_load() -> Iterator[None]:
    """Collect once, freeze what exists (modules, UEs: they live as long as the run), collect
    rarely while the load runs; as before afterwards."""
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a fresh uvloop (asyncio's own loop if uvloop is missing)."""
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(coro)


class Worker:
    def __init__(self, config: LoadConfig, index: int = 0, timeline: str = "") -> None:
        self.config = config
        self.index = index
        self.results = Results()
        self.rng = random.Random(config.seed)
        self.ues: list[LoadUe] = []
        self.pairs: list[tuple[LoadUe, LoadUe]] = []
        self.flip: list[bool] = []
        self.idle: deque[int] = deque()
        self.active = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.calls: dict[str, OutgoingCall] = {}
        self.t0 = 0.0
        self.bearers: BearerCheck = bearer_check(config.bearers, config.seed)
        self._timeline_path = timeline
        self._timeline: IO[str] | None = None
        self._registering: set[LoadUe] = set()
        self._reg_slots = asyncio.Semaphore(REGISTER_CONCURRENCY)

    # -- set-up --------------------------------------------------------------------------------
    async def prepare(self) -> None:
        """Open every UE's socket; for call scenarios, register them all (paced)."""
        raise_nofile()
        c = self.config
        count = c.subscribers if c.solo else 2 * c.pairs
        for i in range(count):
            ue = LoadUe(str(c.start + i), c.password, domain=c.domain, proxies=c.targets,
                        retransmissions=self.results.retransmissions)
            ue.media = c.media
            ue.ring_time = c.ring
            ue.ring_limit = c.setup_timeout
            ue.rtp_limit = c.hold + c.ring + c.setup_timeout + 10.0
            self.ues.append(ue)
        for ue in self.ues:
            await ue.start(c.bind)
        self.results.ues = len(self.ues)
        if c.is_call_scenario:  # on LTE before registering with IMS, as a handset is
            await self.bearers.attach([ue.number for ue in self.ues])
        if self._timeline_path:
            self._timeline = open(self._timeline_path, "w")  # noqa: SIM115 - closed in run()
        if c.far_end:  # nothing to register: the far end takes calls from anyone
            return
        if not c.is_call_scenario:
            self.idle.extend(range(len(self.ues)))
            if c.clear_bindings:
                await self._prepare_ues(register=False)
            return
        await self._prepare_ues(register=True)
        for p in range(c.pairs):
            a, b = self.ues[2 * p], self.ues[2 * p + 1]
            if a.registered_at is not None and b.registered_at is not None:
                self.idle.append(len(self.pairs))
                self.pairs.append((a, b))
                self.flip.append(False)

    async def _prepare_ues(self, *, register: bool) -> None:
        """Clear each UE's old bindings and (call scenarios) register it, paced at
        --register-rate."""
        if not self.ues:
            return
        # The first UE alone: if no P-CSCF answers it, say so now rather than after every
        # UE's timeout.
        if await self._prepare_ue(self.ues[0], register) == "timeout":
            targets = ", ".join(f"{h}:{p}" for h, p in self.config.targets)
            raise LoadError(f"no answer to REGISTER from {targets} within "
                            f"{self.config.register_timeout:g} s: is the sbc up there?")
        started = time.monotonic()
        pending: list[asyncio.Future[str | None]] = []
        for i, ue in enumerate(self.ues[1:], start=1):
            due = started + i / max(self.config.register_rate, 1e-9)
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            pending.append(asyncio.ensure_future(self._prepare_ue(ue, register)))
        await asyncio.gather(*pending)

    async def _prepare_ue(self, ue: LoadUe, register: bool) -> str | None:
        """Clear the UE's bindings, then (call scenarios) register it; the last cause."""
        cause: str | None = None
        if self.config.clear_bindings:
            async with self._reg_slots:
                cause, moves = await ue.clear_bindings(self.config.register_timeout)
            self.results.reg_failovers += moves
            if cause is None:
                self.results.bindings_cleared += 1
            elif cause == "timeout":
                return cause  # no P-CSCF answers: registering would wait as long again
        if register:
            cause = await self._register(ue)
        return cause

    @property
    def usable(self) -> int:
        """What the load can use: UE pairs registered, else (register, far end) UEs."""
        return len(self.ues) if self.config.solo else len(self.pairs)

    async def _unregister_all(self, timeout: float = 10.0) -> None:
        """After the load: remove our bindings (bounded: `timeout` seconds in all)."""
        async def one(ue: LoadUe) -> None:
            async with self._reg_slots:
                if await ue.unregister(self.config.register_timeout):
                    self.results.unregistered += 1

        tasks = [asyncio.ensure_future(one(ue)) for ue in self.ues
                 if ue.registered_at is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _register(self, ue: LoadUe, second: int | None = None) -> str | None:
        """One REGISTER exchange (digest included); counted in the registration figures."""
        r = self.results
        self._registering.add(ue)
        try:
            async with self._reg_slots:
                began = time.monotonic()
                cause, moves = await ue.register_with_failover(self.config.expires,
                                                               self.config.register_timeout)
                ended = time.monotonic()
        finally:
            self._registering.discard(ue)
        r.reg_attempted += 1
        r.reg_failovers += moves
        if second is not None:
            r.second(second).attempted += 1
        done = int(ended - self.t0) if self.t0 else None
        if cause is None:
            r.reg_succeeded += 1
            r.latency["register"].record((ended - began) * 1000)
            ue.registered_at = ended
            if done is not None and second is not None:
                r.second(done).achieved += 1
                r.second(second).started_ok += 1
        else:
            r.reg_failed += 1
            r.reg_failed_by_cause[cause] += 1
            if done is not None and second is not None:
                r.second(done).failed += 1
                r.second(second).started_failed += 1
        return cause

    # -- the load ------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    async def run(self, t0_wall: float, progress: Callable[[Snapshot], None]) -> Results:
        """The load phase, from the common start time `t0_wall` (time.time()), then drain."""
        self.t0 = time.monotonic() + (t0_wall - time.time())
        with gc_tuned_for_load():  # (its one full collection happens before the start time)
            await asyncio.sleep(max(0.0, self.t0 - time.monotonic()))
            return await self._load(progress)

    async def _load(self, progress: Callable[[Snapshot], None]) -> Results:
        c = self.config
        background = [asyncio.ensure_future(self._report(progress))]
        if c.is_call_scenario and not c.far_end:
            background.append(asyncio.ensure_future(self._reregister()))
        cpu = time.process_time()
        try:
            await self._offer()
            self.results.load_seconds = self.elapsed()
            await self._drain(c.drain_timeout)
            self.results.cpu_seconds = time.process_time() - cpu
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            progress(self.snapshot())
            if c.unregister:
                await self._unregister_all()
            await self.close()
        return self.results

    async def _offer(self) -> None:
        """Offer calls (REGISTERs) at the schedule's rate until its duration or count."""
        c = self.config
        duration = c.load_duration
        limit = c.count_limit
        # The first call at t = 0; with several workers, staggered over the first interval.
        credit = (1.0 if c.ramp <= 0 else 0.0) - c.phase
        last = 0.0
        expected = 0.0
        offered = 0
        while True:
            now = self.elapsed()
            if now > expected:
                self.results.lag.record((now - expected) * 1000)
            if duration is not None and now >= duration:
                break
            if limit is not None and offered >= limit:
                break
            credit += (c.rate_at(last) + c.rate_at(now)) / 2 * (now - last)
            last = now
            while credit >= 1.0 and (limit is None or offered < limit):
                credit -= 1.0
                offered += 1
                self._offer_one(int(now))
            rate = c.rate_at(now)
            wait = 0.05 if rate <= 0 else min(0.05, max(0.0005, (1.0 - credit) / rate))
            if duration is not None:
                wait = min(wait, max(0.0, duration - now))
            expected = now + wait
            await asyncio.sleep(wait)

    def _offer_one(self, second: int) -> None:
        r = self.results
        bucket = r.second(second)
        bucket.offered += 1
        r.offered += 1
        if not self.config.is_call_scenario:
            ue = self._idle_ue()
            if ue is None:
                bucket.blocked += 1
                r.blocked += 1
                return
            self._spawn(self._register(ue, second))
            return
        far_end = self.config.far_end
        if self.active >= self.config.max_concurrent or not (far_end or self.idle):
            bucket.blocked += 1
            r.blocked += 1
            return
        kind = self.config.mix.pick(self.rng.random())
        self.active += 1
        bucket.active = max(bucket.active, self.active)
        if far_end:  # each UE in turn, however many calls it has in progress already
            self._spawn(self._call(self.ues[r.offered % len(self.ues)], None, kind, second))
            return
        pair = self.idle.popleft()
        a, b = self.pairs[pair]
        caller, callee = (b, a) if self.flip[pair] else (a, b)
        self.flip[pair] = not self.flip[pair]
        self._spawn(self._call(caller, callee, kind, second, pair))

    def _idle_ue(self) -> LoadUe | None:
        for _ in range(len(self.idle)):
            index = self.idle.popleft()
            self.idle.append(index)
            ue = self.ues[index]
            if ue not in self._registering:
                return ue
        return None

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _drain(self, timeout: float) -> None:
        if not self.tasks:
            return
        _, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _reregister(self) -> None:
        """Re-REGISTER each UE every `reregister_interval` seconds while the load runs."""
        interval = self.config.reregister_interval
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for ue in self.ues:
                if ue.registered_at is not None and ue not in self._registering and \
                        now - ue.registered_at >= interval:
                    ue.registered_at = now  # not again before this one ends
                    self.results.reregistrations += 1
                    self._spawn(self._register(ue))

    # -- one call ------------------------------------------------------------------------------
    async def _call(self, caller: LoadUe, callee: LoadUe | None, kind: CallKind, second: int,
                    pair: int | None = None) -> None:
        """One call from `caller` to `callee` (None: to the far end, --callee); `pair` goes
        back to the idle ones when it is over."""
        c, r = self.config, self.results
        record = CallRecord(kind, caller.number, callee.number if callee else c.callee,
                            call_id())
        if callee is not None:
            callee.plans[record.call_id] = kind
        call = OutgoingCall(caller, record, media=c.media,
                            target=None if callee else c.callee)
        self.calls[record.call_id] = call
        r.attempted += 1
        r.second(second).attempted += 1
        r.kind(kind.value).attempted += 1
        try:
            await call.setup(c.setup_timeout, c.cancel_after if kind == CallKind.CANCEL else None,
                             rtp_seconds=c.hold + 10.0)
            self._setup_measured(record)
            self._follow_pcscf(caller, record)
            if record.established is not None:
                if kind == CallKind.NORMAL:
                    await call.wait(c.hold)
                    if not record.dropped and callee is not None:
                        record.bearer_ok = await self.bearers.check(
                            caller.number, callee.number, record.started)
                await call.hang_up()
        except asyncio.CancelledError:
            record.cause = record.cause or "aborted"
            call.abandon()
            self._finish(record, callee)
            raise
        except Exception as exc:  # a bug of ours must not stop the run: count it, go on
            record.cause = record.cause or f"error_{type(exc).__name__}"
            call.abandon()
        finally:
            self.calls.pop(record.call_id, None)
            if pair is not None:
                self.idle.append(pair)
            self.active -= 1
        self._finish(record, callee)

    def _follow_pcscf(self, ue: LoadUe, rec: CallRecord) -> None:
        """A UE with a secondary P-CSCF moves to it when its INVITE got no answer at all (the
        P-CSCF, or its site, is gone), and registers there only if that one does not know it
        (403): a registration the sites' replicated store kept needs no new REGISTER."""
        if len(self.config.targets) < 2 or ue in self._registering:
            return
        f = self.results.failover
        if rec.cause == "timeout" and not rec.status and rec.trying_ms is None:
            ue.next_pcscf()
            f.pcscf_moves += 1
        elif rec.status == 403 and ue.moved:
            ue.moved = False  # once: a 403 after registering again is a real refusal
            f.reregistered_after_move += 1
            self._spawn(self._register(ue))

    def _setup_measured(self, rec: CallRecord) -> None:
        r = self.results
        now = int(self.elapsed())
        if rec.trying_ms is not None:
            r.latency["invite_to_100"].record(rec.trying_ms)
        if rec.ringing_ms is not None:
            r.latency["invite_to_180"].record(rec.ringing_ms)
        if rec.answered_ms is not None and rec.kind == CallKind.NORMAL:
            r.latency["invite_to_200"].record(rec.answered_ms)
            r.second(now).setup.record(rec.answered_ms)
        if rec.status == 503:
            r.second(now).rejected_503 += 1
        if rec.setup_ok and rec.cause is None:
            r.setups_succeeded += 1
            r.second(now).achieved += 1

    def _finish(self, rec: CallRecord, callee: LoadUe | None) -> None:
        """The call is over: decide its outcome and count it."""
        c, r = self.config, self.results
        term = callee.finish_terminating(rec.call_id) if callee is not None else None
        if term is not None and term.rtp is not None:
            rec.callee_rtp_sent = term.rtp.sent
            rec.callee_rtp_received = term.rtp.received
        if (term is not None and term.bye_at is not None and rec.bye_sent is not None
                and term.bye_at < rec.bye_sent):
            rec.dropped = True  # the callee was hung up on before we sent our BYE
        established = rec.established is not None
        if rec.cause is None and established:
            if rec.dropped:
                rec.cause = "dropped"
            elif rec.bye_status is not None and rec.bye_status != 200:
                rec.cause = f"bye_{rec.bye_status}" if rec.bye_status else "bye_timeout"
        if established and rec.dropped:
            r.dropped += 1
        if c.media and established and rec.kind == CallKind.NORMAL and not rec.dropped \
                and rec.cause in (None, "no_bearer"):
            r.media_checked += 1
            r.rtp_sent += rec.rtp_sent + rec.callee_rtp_sent
            r.rtp_received += rec.rtp_received + rec.callee_rtp_received
            # (a far end's side is not ours to count: what we received from it is its RTP)
            heard = (rec.rtp_received >= MIN_RTP_PACKETS,
                     callee is None or rec.callee_rtp_received >= MIN_RTP_PACKETS)
            if not all(heard):
                r.media_without += 1
                if any(heard):
                    r.media_one_way += 1
                rec.cause = rec.cause or "no_audio"
        if rec.bearer_ok is not None:
            r.bearers_checked += 1
            if not rec.bearer_ok:
                r.bearers_failed += 1
                rec.cause = rec.cause or "no_bearer"
        if rec.bye_ms is not None and rec.bye_status == 200:
            r.latency["bye"].record(rec.bye_ms)
        ok = rec.cause is None
        tally = r.kind(rec.kind.value)
        start_second = int(rec.started - self.t0) if rec.started else 0
        now_second = int(self.elapsed())
        if ok:
            r.succeeded += 1
            tally.succeeded += 1
            r.second(start_second).started_ok += 1
        else:
            r.failed += 1
            tally.failed += 1
            r.failed_by_cause[rec.cause or "unknown"] += 1
            r.second(start_second).started_failed += 1
            r.second(now_second).failed += 1
        if c.scenario == "failover":
            self._failover_tally(rec, ok)
        if self._timeline is not None:
            self._timeline.write(json.dumps({"t": round(rec.started - self.t0, 3),
                                             **rec.as_dict()}) + "\n")

    def _failover_tally(self, rec: CallRecord, ok: bool) -> None:
        f = self.results.failover
        event = self.config.failover_at
        start = rec.started - self.t0
        done = rec.setup_done - self.t0 if rec.setup_done is not None else None
        up = rec.established - self.t0 if rec.established is not None else None
        bye = rec.bye_sent - self.t0 if rec.bye_sent is not None else None
        if up is not None and up < event and (bye is None or bye >= event):
            f.established_at_event += 1
            if not ok:
                f.established_lost += 1
                f.causes[f"established:{rec.cause}"] += 1
        elif start < event and (done is None or done >= event):
            f.in_setup_at_event += 1
            if not ok:
                f.in_setup_failed += 1
                f.causes[rec.cause or "unknown"] += 1
        elif start >= event:
            bucket = f.after.setdefault(int(start - event), [0, 0])
            bucket[0 if ok else 1] += 1
            if not ok:
                f.causes[rec.cause or "unknown"] += 1

    # -- progress and the end ------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        r = self.results
        call = self.config.is_call_scenario
        return {
            "t": self.elapsed(),
            "offered": r.offered,
            "attempted": r.attempted if call else r.reg_attempted,
            "achieved": r.setups_succeeded if call else r.reg_succeeded,
            "succeeded": r.succeeded if call else r.reg_succeeded,
            "failed": r.failed if call else r.reg_failed,
            "blocked": r.blocked,
            "active": self.active if call else len(self._registering),
        }

    async def _report(self, progress: Callable[[Snapshot], None]) -> None:
        while True:
            progress(self.snapshot())
            await asyncio.sleep(PROGRESS_INTERVAL)

    async def close(self) -> None:
        for call in list(self.calls.values()):
            call.abandon()
        for ue in self.ues:
            for cid in list(ue.terminating):
                ue.finish_terminating(cid)
            await ue.close()
        await self.bearers.close()
        self.results.bearers_attached = self.bearers.attached
        self.results.bearers_left = self.bearers.left
        if self._timeline is not None:
            self._timeline.close()
            self._timeline = None


# -- the controller ----------------------------------------------------------------------------


class Display(Protocol):
    def start(self, planned_seconds: float, what: str) -> None: ...
    def update(self, snapshot: Snapshot) -> None: ...
    def note(self, text: str) -> None: ...
    def stop(self) -> None: ...


class ScenarioEvent(Protocol):
    """Something the controller does at a time during the load (the failover kill)."""

    at: float

    def fire(self) -> dict[str, Any]: ...


@dataclass
class Outcome:
    results: Results
    events: list[dict[str, Any]] = field(default_factory=list)
    started_at: float = 0.0  # wall time of the load's start
    registered: int = 0  # UEs registered before the load (call scenarios)
    kube: dict[str, Any] | None = None  # a Kubernetes run: its contexts, Jobs and pods


async def run_load(
    config: LoadConfig,
    display: Display,
    *,
    event: ScenarioEvent | None = None,
    timeline: str = "",
) -> Outcome:
    if config.workers <= 1:
        return await _run_inline(config, display, event, timeline)
    return await _run_processes(config, display, event, timeline)


async def _fire_at(event: ScenarioEvent, t0_wall: float, events: list[dict[str, Any]],
                   display: Display) -> None:
    await asyncio.sleep(max(0.0, t0_wall + event.at - time.time()))
    happened = event.fire()
    happened["t_s"] = round(time.time() - t0_wall, 3)
    events.append(happened)
    display.note(f"t={happened['t_s']:.1f}s {happened.get('what', 'event')}")


async def _run_inline(config: LoadConfig, display: Display, event: ScenarioEvent | None,
                      timeline: str) -> Outcome:
    worker = Worker(config, 0, timeline)
    try:
        await worker.prepare()
    except BaseException:
        await worker.close()
        raise
    registered = sum(ue.registered_at is not None for ue in worker.ues)
    _check_ready(config, [worker.usable])
    t0 = time.time() + START_DELAY
    events: list[dict[str, Any]] = []
    display.start(config.planned_seconds(), config.scenario)
    fired = asyncio.ensure_future(_fire_at(event, t0, events, display)) if event else None
    try:
        results = await worker.run(t0, display.update)
    finally:
        if fired is not None:
            fired.cancel()
            await asyncio.gather(fired, return_exceptions=True)
        display.stop()
    results.workers = 1
    return Outcome(results, events, t0, registered)


def _check_ready(config: LoadConfig, usable: list[int]) -> None:
    if sum(usable) == 0:
        what = "UE pair registered" if config.is_call_scenario else "UE socket opened"
        target = ", ".join(f"{h}:{p}" for h, p in config.targets)
        raise LoadError(
            f"no {what}: is the sbc at {target} up, and are subscribers {config.start}.. "
            f"provisioned in domain {config.domain} with this password (--provision)?"
        )


async def _run_processes(config: LoadConfig, display: Display, event: ScenarioEvent | None,
                         timeline: str) -> Outcome:
    ctx = multiprocessing.get_context("spawn")
    n = config.workers
    links: list[Connection] = []
    procs = []
    for index in range(n):
        parent, child = ctx.Pipe()
        part = f"{timeline}.part{index}" if timeline else ""
        proc = ctx.Process(target=_process_main, args=(config.share(index, n), index, part, child),
                           name=f"loadgen-worker-{index}", daemon=True)
        proc.start()
        child.close()
        links.append(parent)
        procs.append(proc)
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[int, tuple[Any, ...]]] = asyncio.Queue()

    def readable(index: int) -> None:
        try:
            message = links[index].recv()
        except (EOFError, OSError):
            loop.remove_reader(links[index].fileno())
            message = ("gone",)
        inbox.put_nowait((index, message))

    for index, link in enumerate(links):
        loop.add_reader(link.fileno(), readable, index)
        # uvloop (libuv's uv_poll) made the pipe non-blocking: a results message larger than
        # the pipe's buffer would then be read half, raise BlockingIOError and count as a
        # worker gone. Readable means a message is coming: wait for all of it.
        os.set_blocking(link.fileno(), True)
    snapshots: dict[int, Snapshot] = {}
    parts: dict[int, Results] = {}
    events: list[dict[str, Any]] = []
    fired: asyncio.Future[None] | None = None
    try:
        ready: dict[int, dict[str, int]] = {}
        prepare_limit = 60.0 + config.subscribers / max(config.register_rate, 1.0)
        while len(ready) < n:
            index, message = await asyncio.wait_for(inbox.get(), prepare_limit)
            if message[0] == "ready":
                ready[index] = message[1]
            elif message[0] in ("error", "gone"):
                raise LoadError(f"worker {index} failed while preparing:\n"
                                f"{_why_gone(message, procs[index])}")
        _check_ready(config, [r["usable"] for r in ready.values()])
        t0 = time.time() + START_DELAY
        for link in links:
            link.send(("go", t0))
        display.start(config.planned_seconds(), config.scenario)
        if event is not None:
            fired = asyncio.ensure_future(_fire_at(event, t0, events, display))
        run_limit = config.planned_seconds() + config.drain_timeout + 60.0
        deadline = time.monotonic() + run_limit
        while len(parts) < n:
            index, message = await asyncio.wait_for(inbox.get(),
                                                    max(0.1, deadline - time.monotonic()))
            kind = message[0]
            if kind == "progress":
                snapshots[index] = message[1]
                display.update(_sum_snapshots(snapshots))
            elif kind == "result":
                parts[index] = message[1]
            elif kind in ("error", "gone") and index not in parts:
                raise LoadError(f"worker {index} failed:\n{_why_gone(message, procs[index])}")
    finally:
        if fired is not None:
            fired.cancel()
            await asyncio.gather(fired, return_exceptions=True)
        display.stop()
        for link in links:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(link.fileno())
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for link in links:
            link.close()
    if timeline:
        _join_parts(timeline, n)
    merged = merge_all([parts[i] for i in range(n)])
    return Outcome(merged, events, t0, sum(r["registered"] for r in ready.values()))


def _why_gone(message: tuple[Any, ...], proc: multiprocessing.process.BaseProcess) -> str:
    """A worker's traceback, or how its process ended when it could not send one."""
    if len(message) > 1:
        return str(message[1])
    proc.join(timeout=2)
    code = proc.exitcode
    if code is None:
        return "its pipe closed, the process still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"it was killed by signal {name}"
    return f"it exited with status {code} before sending its results"


def _sum_snapshots(snapshots: dict[int, Snapshot]) -> Snapshot:
    total: Snapshot = {}
    for snap in snapshots.values():
        for key, value in snap.items():
            total[key] = max(total.get(key, 0.0), value) if key == "t" else \
                total.get(key, 0.0) + value
    return total


def _join_parts(timeline: str, n: int) -> None:
    with open(timeline, "w") as out:
        for index in range(n):
            part = Path(f"{timeline}.part{index}")
            if part.exists():
                out.write(part.read_text())
                part.unlink()


def _process_main(config: LoadConfig, index: int, timeline: str, link: Connection) -> None:
    """A worker process: prepare, wait for the start time, run, send the results."""
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        try:
            run_async(_process(config, index, timeline, link))
        except LoadError as exc:  # said plainly, as with one worker
            link.send(("error", str(exc)))
        except BaseException:  # CancelledError and SystemExit too: the parent must hear why
            link.send(("error", traceback.format_exc()))
        finally:
            link.close()
            os._exit(0)  # skip interpreter teardown: the parent has what it needs


async def _process(config: LoadConfig, index: int, timeline: str, link: Connection) -> None:
    worker = Worker(config, index, timeline)
    try:
        await worker.prepare()
    except BaseException:
        await worker.close()
        raise
    usable = worker.usable
    registered = sum(ue.registered_at is not None for ue in worker.ues)
    link.send(("ready", {"usable": usable, "registered": registered}))
    loop = asyncio.get_running_loop()
    message = await loop.run_in_executor(None, link.recv)
    if message[0] != "go":
        await worker.close()
        return
    results = await worker.run(message[1], lambda snap: link.send(("progress", snap)))
    link.send(("result", results))
