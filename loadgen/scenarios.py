"""What the failover and scale-out scenarios do besides offering load.

failover (local): at `--event-at` seconds one sbc worker of the `volte up` stack in `--run-dir`
is killed (SIGKILL by default), found as `volte status` finds it: a child of the sbc
supervisor named in `<run-dir>/stack.json`. The sbc's supervisor restarts it; the report says
what the kill cost.

scale-out (local): the offered rate climbs in `--steps`; the report gives achieved CPS and
setup latency per step and names the first step where the sbc saturated (503s, setup p99
climbing, or achieved well below offered). Adding an sbc worker at that point needs a
`volte scale sbc N` command, which does not exist yet, and restarting the stack with more
workers would measure a restart rather than a scale-out: so this scenario does not scale, and
its report says so (`scale_out.action`).

On Kubernetes (`--kube`, loadgen.kube) failover deletes an sbc pod and scale-out adds an sbc
replica.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Any

from loadgen.engine import LoadError
from services.stack import Stack, children, proc_alive

SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}
SCALE_NOTE = (
    "no worker was added: scale-out needs `volte scale sbc N` (adding an sbc worker to a "
    "running stack), which does not exist yet, and restarting the stack with more workers "
    "would measure a restart, not a scale-out; this run reports achieved CPS per offered-rate "
    "step at a fixed worker count (on Kubernetes, --kube adds an sbc replica)"
)


def sbc_workers(run_dir: str) -> list[int]:
    """The pids of the sbc worker processes of the stack in `run_dir` (as `volte status`)."""
    try:
        stack = Stack.load(run_dir)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LoadError(f"cannot read {run_dir}/stack.json: {exc}") from None
    if stack is None:
        raise LoadError(f"no stack in {run_dir} (no stack.json): start one with `volte up`, "
                        "or pass --run-dir")
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


def stack_sbc_workers(run_dir: str) -> int | None:
    """How many sbc workers the local stack runs (None: no stack there)."""
    try:
        return len(sbc_workers(run_dir)) or 1
    except LoadError:
        return None
