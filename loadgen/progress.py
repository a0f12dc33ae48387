"""Live progress: a rich progress bar on a terminal, plain periodic lines otherwise.

Both show the same figures, from the workers' summed snapshots: offered and achieved calls per
second over the last second, calls in progress, failures and blocked offers.
"""

from __future__ import annotations

import sys
from collections import deque
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from loadgen.engine import Snapshot

WINDOW = 1.0  # seconds the rates are averaged over


class Rates:
    """Offered and achieved per second over the last WINDOW seconds of snapshots."""

    def __init__(self) -> None:
        self._history: deque[tuple[float, float, float]] = deque()

    def add(self, snap: Snapshot) -> tuple[float, float]:
        t, offered, achieved = snap.get("t", 0.0), snap.get("offered", 0.0), \
            snap.get("achieved", 0.0)
        self._history.append((t, offered, achieved))
        while len(self._history) > 2 and t - self._history[1][0] >= WINDOW:
            self._history.popleft()
        t0, o0, a0 = self._history[0]
        span = t - t0
        if span <= 0:
            return 0.0, 0.0
        return (offered - o0) / span, (achieved - a0) / span


def describe(snap: Snapshot, offered_rate: float, achieved_rate: float, unit: str) -> str:
    return (f"offered {offered_rate:6.1f}{unit}  achieved {achieved_rate:6.1f}{unit}  "
            f"active {int(snap.get('active', 0)):5d}  ok {int(snap.get('succeeded', 0)):6d}  "
            f"failed {int(snap.get('failed', 0)):5d}  blocked {int(snap.get('blocked', 0)):4d}")


class RichDisplay:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None
        self.task = TaskID(0)
        self.planned = 1.0
        self.rates = Rates()
        self.unit = "/s"

    def start(self, planned_seconds: float, what: str) -> None:
        self.planned = max(planned_seconds, 0.001)
        self.unit = " reg/s" if what == "register" else " cps"
        # Narrow enough for an 80-column terminal: the scenario's name is on the line above.
        self.progress = Progress(
            BarColumn(bar_width=12), TimeElapsedColumn(), TextColumn("{task.fields[stats]}"),
            console=self.console, refresh_per_second=4,
        )
        self.task = self.progress.add_task(what, total=self.planned, stats="starting")
        self.progress.start()

    def update(self, snapshot: Snapshot) -> None:
        if self.progress is None:
            return
        offered, achieved = self.rates.add(snapshot)
        blocked = int(snapshot.get("blocked", 0))
        stats = (f"offered {offered:.1f} achieved {achieved:.1f}{self.unit}  "
                 f"active {int(snapshot.get('active', 0))}  "
                 f"failed {int(snapshot.get('failed', 0))}"
                 + (f"  blocked {blocked}" if blocked else ""))
        self.progress.update(self.task, completed=min(snapshot.get("t", 0.0), self.planned),
                             stats=stats)

    def note(self, text: str) -> None:
        self.console.print(text)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=self.planned)
            self.progress.stop()
            self.progress = None


class PlainDisplay:
    """One line every `interval` seconds of load (for logs and CI)."""

    def __init__(self, out: TextIO | None = None, interval: float | None = None) -> None:
        self.out = out or sys.stdout
        self.interval = interval
        self.next_at = 0.0
        self.rates = Rates()
        self.unit = "/s"
        self.last: Snapshot = {}

    def start(self, planned_seconds: float, what: str) -> None:
        if self.interval is None:
            self.interval = 1.0 if planned_seconds <= 60 else 5.0 if planned_seconds <= 600 \
                else 30.0
        self.unit = " reg/s" if what == "register" else " cps"
        self.next_at = self.interval
        print(f"{what}: load for about {planned_seconds:.1f} s", file=self.out, flush=True)

    def update(self, snapshot: Snapshot) -> None:
        offered, achieved = self.rates.add(snapshot)
        self.last = snapshot
        t = snapshot.get("t", 0.0)
        if self.interval is not None and t >= self.next_at:
            self.next_at = t + self.interval
            print(f"[{t:7.1f}s] {describe(snapshot, offered, achieved, self.unit)}",
                  file=self.out, flush=True)

    def note(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def stop(self) -> None:
        pass


class QuietDisplay:
    def start(self, planned_seconds: float, what: str) -> None:
        pass

    def update(self, snapshot: Snapshot) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def stop(self) -> None:
        pass
