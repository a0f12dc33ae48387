"""What the failover and scale-out scenarios do besides offering load.

failover (local): at `--event-at` seconds one sbc worker of the `volte up` stack in `--run-dir`
is killed (SIGKILL by default), found as `volte status` finds it: a child of the sbc
supervisor named in `<run-dir>/stack.json`. The sbc's supervisor restarts it; the report says
what the kill cost.

scale-out (local): the offered rate climbs in `--steps`. The controller watches the live
counters; when a step ends saturated (failed setups, 503s among them, or achieved below 95% of
offered) it adds an sbc worker to the running stack as `volte scale sbc N+1` does (up to
`--max-sbc-workers`), and the load goes on at the next step. The report gives achieved CPS and
setup latency per step, the worker count each step ran with, and the best CPS per worker count.

On Kubernetes (`--kube`, loadgen.kube) failover deletes an sbc pod and scale-out adds an sbc
replica.
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass, field
from typing import Any, Protocol

from loadgen.engine import Display, LoadError, Snapshot
from services.stack import Stack, StackError, children, proc_alive

SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}
# A step is saturated when more than this share of its offers failed, or it achieved less than
# ACHIEVED_SHARE of what it offered, allowing for the last second's offers still in setup.
FAILED_SHARE = 0.001
ACHIEVED_SHARE = 0.95


def local_stack(run_dir: str) -> Stack:
    """The `volte up` stack in `run_dir`, or a LoadError saying why there is none."""
    try:
        stack = Stack.load(run_dir)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LoadError(f"cannot read {run_dir}/stack.json: {exc}") from None
    if stack is None:
        raise LoadError(f"no stack in {run_dir} (no stack.json): start one with `volte up`, "
                        "or pass --run-dir")
    return stack


def sbc_workers(run_dir: str) -> list[int]:
    """The pids of the sbc worker processes of the stack in `run_dir` (as `volte status`)."""
    stack = local_stack(run_dir)
    sbc = [p for p in stack.procs if p.service == "sbc" and proc_alive(p)]
    if not sbc:
        raise LoadError(f"the stack in {run_dir} runs no sbc")
    return sorted(children(sbc[0].pid))


@dataclass
class KillSbcWorker:
    at: float
    run_dir: str
    signal_name: str = "KILL"

    def check(self) -> int:
        """Before the load: the stack has at least two sbc workers (so one survives)."""
        workers = sbc_workers(self.run_dir)
        if len(workers) < 2:
            raise LoadError(
                f"failover needs an sbc with at least 2 workers (found {len(workers)} in "
                f"{self.run_dir}): `volte up --workers 2`"
            )
        return len(workers)

    def fire(self) -> dict[str, Any]:
        workers = sbc_workers(self.run_dir)
        if not workers:
            return {"kind": "kill", "what": "no sbc worker to kill", "pid": None}
        victim = workers[0]
        try:
            os.kill(victim, SIGNALS[self.signal_name])
        except ProcessLookupError:
            return {"kind": "kill", "what": f"sbc worker {victim} was already gone",
                    "pid": victim}
        return {"kind": "kill", "target": "sbc-worker", "pid": victim,
                "signal": f"SIG{self.signal_name}", "workers_before": len(workers),
                "what": f"SIG{self.signal_name} to sbc worker pid {victim}"}


@dataclass
class KillSite:
    """Site failover: at `at` seconds every process of the stack in `run_dir` (the first
    site: Redis and its sentinel, state, media, enb-agent, sbc and its workers) gets SIGKILL
    at once, as a power or network failure of the whole site would."""

    at: float
    run_dir: str

    def check(self, targets: int) -> int:
        live = [p for p in local_stack(self.run_dir).procs if proc_alive(p)]
        if not live:
            raise LoadError(f"no running stack in {self.run_dir} to kill: start the first site "
                            "there (`volte up --site a`)")
        if targets < 2:
            raise LoadError("--kill site needs a secondary P-CSCF for the UEs to move to: "
                            "--target FIRST_SITE --target SECOND_SITE")
        return len(live)

    def fire(self) -> dict[str, Any]:
        stack = Stack.load(self.run_dir)
        pids = stack.kill() if stack is not None else []
        site = stack.config.site if stack is not None else ""
        return {"kind": "kill", "target": "site", "site": site, "pids": pids,
                "pid": None, "signal": "SIGKILL",
                "what": f"SIGKILL to the {len(pids)} processes of site {site or self.run_dir}"}


def stack_sbc_workers(run_dir: str) -> int | None:
    """How many sbc workers the local stack runs (None: no stack there)."""
    try:
        return len(sbc_workers(run_dir)) or 1
    except LoadError:
        return None


class Scaler(Protocol):
    """Adds sbc capacity: workers of the local stack (or replicas on Kubernetes)."""

    def current(self) -> int: ...

    def scale(self, count: int) -> dict[str, Any]: ...


@dataclass
class LocalScaler:
    """The sbc workers of the `volte up` stack in `run_dir`, as `volte scale sbc N`."""

    run_dir: str

    def current(self) -> int:
        return len(sbc_workers(self.run_dir))

    def scale(self, count: int) -> dict[str, Any]:
        try:
            before, after = local_stack(self.run_dir).scale_sbc(count)
        except StackError as exc:
            return {"kind": "scale", "target": "sbc-workers", "error": str(exc),
                    "what": f"scaling the sbc to {count} workers failed: {exc}"}
        return {"kind": "scale", "target": "sbc-workers", "workers_before": before,
                "workers_after": after, "what": f"sbc scaled from {before} to {after} workers"}


def step_saturated(offered: float, achieved: float, failed: float,
                   seconds: float) -> list[str]:
    """Why a step of `seconds` counts as saturated (empty: it was not), from its counters."""
    why = []
    if failed > max(0.0, FAILED_SHARE * offered):
        why.append(f"{failed:.0f} failed setups")
    if offered and achieved < ACHIEVED_SHARE * offered - offered / max(seconds, 1.0):
        why.append(f"achieved {achieved:.0f} < {ACHIEVED_SHARE:.0%} of {offered:.0f} offered")
    return why


@dataclass
class ScaleOnSaturation:
    """A Display in front of the real one: at each step's end it checks the step's counters
    and, if the step saturated, scales the sbc out by one (off the event loop: scaling waits
    for the new worker to report SERVING), at most up to `max_workers`."""

    inner: Display
    scaler: Scaler
    step_duration: float
    steps: int
    max_workers: int
    events: list[dict[str, Any]] = field(default_factory=list)
    _step: int = 0
    _at_step_start: Snapshot = field(default_factory=dict)
    _workers: int = 0
    _scaling: asyncio.Future[None] | None = None

    def start(self, planned_seconds: float, what: str) -> None:
        self._workers = self.scaler.current()
        self.inner.start(planned_seconds, what)

    def note(self, text: str) -> None:
        self.inner.note(text)

    def stop(self) -> None:
        self.inner.stop()

    def update(self, snapshot: Snapshot) -> None:
        self.inner.update(snapshot)
        t = snapshot.get("t", 0.0)
        if self._step >= self.steps or t < (self._step + 1) * self.step_duration:
            return
        ended, self._step = self._step, self._step + 1
        start, self._at_step_start = self._at_step_start, dict(snapshot)

        def delta(key: str) -> float:
            return snapshot.get(key, 0.0) - start.get(key, 0.0)

        why = step_saturated(delta("offered"), delta("achieved"), delta("failed"),
                             self.step_duration)
        busy = self._scaling is not None and not self._scaling.done()
        if why and not busy and self._workers < self.max_workers and self._step < self.steps:
            self._scaling = asyncio.ensure_future(self._scale(ended, t, why))

    async def _scale(self, step: int, t: float, why: list[str]) -> None:
        loop = asyncio.get_running_loop()
        target = self._workers + 1
        event = await loop.run_in_executor(None, self.scaler.scale, target)
        event.update({"t_s": round(t, 3), "after_step": step, "why": why})
        event["what"] = f"after step {step} saturated ({'; '.join(why)}): {event['what']}"
        if "error" not in event:
            self._workers = target
        self.events.append(event)
        self.inner.note(f"t={t:.1f}s {event['what']}")

    async def finish(self) -> None:
        if self._scaling is not None:
            await asyncio.gather(self._scaling, return_exceptions=True)
