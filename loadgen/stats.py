"""What a run measures, in forms that merge: counters, latency histograms, per-second buckets.

Each worker process keeps one `Results`; the controller merges them (`Results.merge`), so
percentiles over several processes are exact up to the histogram's resolution, not averages
of averages. Nothing here does I/O or reads a clock. `to_jsonable` / `results_from_json` give
`Results` a JSON form (a Kubernetes run's pods print theirs in their log).

Latency histograms are logarithmic: bucket i holds values in (B * G^(i-1), B * G^i] with
B = 1 microsecond and G = 1.01, so a reported percentile is within 1 % above the true value
(it is the upper edge of its bucket, capped at the exact maximum); memory is bounded (about
1,700 buckets from 1 us to 10 min) however long a soak runs.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TypeVar

BASE_MS = 0.001
GROWTH = 1.01
_LOG_GROWTH = math.log(GROWTH)
PERCENTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
# Latency metrics in the report, in display order.
LATENCIES = ("invite_to_100", "invite_to_180", "invite_to_200", "register", "bye")
_D = TypeVar("_D")


@dataclass
class Histogram:
    buckets: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total: float = 0.0
    max: float = 0.0
    min: float = math.inf

    @staticmethod
    def index(ms: float) -> int:
        if ms <= BASE_MS:
            return 0
        return math.ceil(math.log(ms / BASE_MS) / _LOG_GROWTH - 1e-9)

    def record(self, ms: float) -> None:
        ms = max(0.0, ms)
        i = self.index(ms)
        self.buckets[i] = self.buckets.get(i, 0) + 1
        self.count += 1
        self.total += ms
        self.max = max(self.max, ms)
        self.min = min(self.min, ms)

    def merge(self, other: Histogram) -> None:
        for i, n in other.buckets.items():
            self.buckets[i] = self.buckets.get(i, 0) + n
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)
        self.min = min(self.min, other.min)

    def percentile(self, q: float) -> float | None:
        """Nearest rank: the smallest bucket edge with at least q of the values at or below."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for i in sorted(self.buckets):
            seen += self.buckets[i]
            if seen >= rank:
                edge = BASE_MS * GROWTH**i
                return min(max(edge, self.min), self.max)
        return self.max

    def summary(self) -> dict[str, float | int | None]:
        out: dict[str, float | int | None] = {"count": self.count}
        for name, q in PERCENTILES:
            value = self.percentile(q)
            out[name] = None if value is None else round(value, 3)
        out["max"] = round(self.max, 3) if self.count else None
        out["mean"] = round(self.total / self.count, 3) if self.count else None
        return out


@dataclass
class Second:
    """One second of the load phase (second k covers [k, k+1) after the start)."""

    offered: int = 0  # calls the schedule asked for in this second
    blocked: int = 0  # ... of which not placed: concurrency cap reached or no idle UE pair
    attempted: int = 0  # INVITEs (REGISTERs for `register`) sent
    achieved: int = 0  # setups that succeeded in this second (by completion time)
    failed: int = 0  # calls (REGISTERs) found failed in this second
    started_ok: int = 0  # calls started in this second that ended well
    started_failed: int = 0  # calls started in this second that failed
    active: int = 0  # most calls in progress at once during this second
    rejected_503: int = 0  # 503 answers to INVITEs (overload) seen in this second
    setup: Histogram = field(default_factory=Histogram)  # INVITE -> 200 of normal calls

    def merge(self, other: Second) -> None:
        self.offered += other.offered
        self.blocked += other.blocked
        self.attempted += other.attempted
        self.achieved += other.achieved
        self.failed += other.failed
        self.started_ok += other.started_ok
        self.started_failed += other.started_failed
        self.active += other.active
        self.rejected_503 += other.rejected_503
        self.setup.merge(other.setup)


@dataclass
class KindTally:
    attempted: int = 0
    succeeded: int = 0
    failed: int = 0

    def merge(self, other: KindTally) -> None:
        self.attempted += other.attempted
        self.succeeded += other.succeeded
        self.failed += other.failed


@dataclass
class FailoverTally:
    """Calls around the failover event (at `event_at` seconds into the load)."""

    established_at_event: int = 0  # answered before the event, not yet hung up
    established_lost: int = 0  # ... of which ended badly (BYE failed, dropped, no audio)
    in_setup_at_event: int = 0  # INVITE sent before the event, no final answer yet
    in_setup_failed: int = 0
    # Calls started after the event, by whole seconds after it: [succeeded, failed].
    after: dict[int, list[int]] = field(default_factory=dict)
    causes: Counter[str] = field(default_factory=Counter)  # failures in setup at/after it
    # UEs whose P-CSCF stopped answering (an INVITE with no response at all) and that moved to
    # their next one; and of those, the ones that P-CSCF did not know (403): they registered
    # again. The rest kept their registration across the move (the store replicated it).
    pcscf_moves: int = 0
    reregistered_after_move: int = 0

    def merge(self, other: FailoverTally) -> None:
        self.pcscf_moves += other.pcscf_moves
        self.reregistered_after_move += other.reregistered_after_move
        self.established_at_event += other.established_at_event
        self.established_lost += other.established_lost
        self.in_setup_at_event += other.in_setup_at_event
        self.in_setup_failed += other.in_setup_failed
        for k, (ok, bad) in other.after.items():
            mine = self.after.setdefault(k, [0, 0])
            mine[0] += ok
            mine[1] += bad
        self.causes.update(other.causes)


@dataclass
class Results:
    """Everything one worker measured; `merge` adds another worker's."""

    offered: int = 0
    blocked: int = 0
    attempted: int = 0
    succeeded: int = 0
    failed: int = 0
    setups_succeeded: int = 0
    dropped: int = 0  # established calls ended by the network (BYE we did not send)
    failed_by_cause: Counter[str] = field(default_factory=Counter)
    by_kind: dict[str, KindTally] = field(default_factory=dict)
    latency: dict[str, Histogram] = field(
        default_factory=lambda: {name: Histogram() for name in LATENCIES}
    )
    reg_attempted: int = 0
    reg_succeeded: int = 0
    reg_failed: int = 0
    reg_failed_by_cause: Counter[str] = field(default_factory=Counter)
    reregistrations: int = 0
    reg_failovers: int = 0  # UEs that moved to their secondary P-CSCF
    bindings_cleared: int = 0  # UEs whose old bindings were removed before the load
    unregistered: int = 0  # UEs whose binding was removed after it
    retransmissions: Counter[str] = field(default_factory=Counter)  # by method or status
    media_checked: int = 0
    media_without: int = 0  # no RTP in at least one direction
    media_one_way: int = 0  # ... of which RTP arrived one way only
    rtp_sent: int = 0
    rtp_received: int = 0
    bearers_checked: int = 0
    bearers_failed: int = 0
    bearers_attached: int = 0  # UEs attached through the simulated eNBs before the load
    bearers_left: int = 0  # UEs still holding a QCI-1 bearer after it
    seconds: dict[int, Second] = field(default_factory=dict)
    lag: Histogram = field(default_factory=Histogram)  # how late the scheduler woke, ms
    failover: FailoverTally = field(default_factory=FailoverTally)
    load_seconds: float = 0.0  # how long calls were offered
    cpu_seconds: float = 0.0  # the workers' CPU time (user + system) from the start to the drain
    ues: int = 0
    workers: int = 1

    def second(self, k: int) -> Second:
        bucket = self.seconds.get(k)
        if bucket is None:
            bucket = self.seconds[k] = Second()
        return bucket

    def kind(self, name: str) -> KindTally:
        tally = self.by_kind.get(name)
        if tally is None:
            tally = self.by_kind[name] = KindTally()
        return tally

    def merge(self, other: Results) -> None:
        for name in ("offered", "blocked", "attempted", "succeeded", "failed",
                     "setups_succeeded", "dropped", "reg_attempted", "reg_succeeded",
                     "reg_failed", "reregistrations", "reg_failovers", "bindings_cleared",
                     "unregistered", "media_checked",
                     "media_without", "media_one_way", "rtp_sent", "rtp_received",
                     "bearers_checked", "bearers_failed", "bearers_attached",
                     "bearers_left", "ues"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failed_by_cause.update(other.failed_by_cause)
        self.reg_failed_by_cause.update(other.reg_failed_by_cause)
        self.retransmissions.update(other.retransmissions)
        for name, tally in other.by_kind.items():
            self.kind(name).merge(tally)
        for name, histogram in other.latency.items():
            self.latency.setdefault(name, Histogram()).merge(histogram)
        for k, bucket in other.seconds.items():
            self.second(k).merge(bucket)
        self.failover.merge(other.failover)
        self.lag.merge(other.lag)
        self.load_seconds = max(self.load_seconds, other.load_seconds)
        self.cpu_seconds += other.cpu_seconds


def merge_all(parts: list[Results]) -> Results:
    total = Results(workers=len(parts))
    for part in parts:
        total.merge(part)
    total.workers = len(parts)
    return total


def recovery_seconds(after: dict[int, list[int]], threshold: float = 0.999) -> int | None:
    """The first whole second after the event (0: the second that starts with it) whose
    calls succeeded at `threshold` or better; None if none did."""
    for k in sorted(after):
        ok, bad = after[k]
        if ok + bad and ok / (ok + bad) >= threshold:
            return k
    return None


# -- a text form of Results (the pods of a Kubernetes run print theirs in their log) -----------


def to_jsonable(value: Any) -> Any:
    """Results (and what it holds) as plain JSON values; `from_jsonable` reverses it. Dict
    keys become strings, an empty histogram's minimum (infinity) becomes null."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return None
    return value


def from_jsonable(cls: type[_D], data: dict[str, Any]) -> _D:
    """Rebuild a dataclass of this module from `to_jsonable`'s output (field by field, by
    the field types; unknown keys are ignored, missing ones keep their defaults)."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            kwargs[f.name] = _decode(hints[f.name], data[f.name])
    return cls(**kwargs)


def _decode(hint: Any, value: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_jsonable(hint, value)
    if origin in (dict, Counter):
        key, item = (str, int) if origin is Counter else args
        decoded = {key(k): _decode(item, v) for k, v in value.items()}
        return Counter(decoded) if origin is Counter else decoded
    if origin is list:
        return [_decode(args[0], v) for v in value]
    if hint is float:
        return math.inf if value is None else float(value)
    return value


def results_from_json(data: dict[str, Any]) -> Results:
    return from_jsonable(Results, data)
