"""What a loadgen run is asked to do: one typed configuration, and the pure rules derived from it.

`LoadConfig` is built by the CLI (or a test) and handed to every worker process as is; a
worker takes its share of it with `share(index, count)`. The offered-rate schedule (`rate_at`)
and the call mix are pure functions of the configuration, so each worker computes the same
schedule scaled by its share, and the tests check them with plain calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING

from services.sip.transport import Address

if TYPE_CHECKING:
    from loadgen.bearers import BearerConfig

SCENARIOS = ("register", "call-setup", "failover", "scale-out", "soak")
# When neither --calls nor --duration is given: every run is bounded in count and time.
DEFAULT_DURATION = {"call-setup": 10.0, "failover": 30.0, "soak": 600.0}


class CallKind(StrEnum):
    """What a call is meant to do; busy and cancel calls succeed when they end as planned."""

    NORMAL = "normal"  # INVITE/180/200/ACK, hold, BYE
    BUSY = "busy"  # the callee answers 486 Busy Here
    CANCEL = "cancel"  # the callee rings and never answers; the caller CANCELs (487)


@dataclass(frozen=True)
class Mix:
    """Fractions of busy and cancelled calls; the rest are normal calls."""

    busy: float = 0.0
    cancel: float = 0.0

    def __post_init__(self) -> None:
        for name, value in (("busy", self.busy), ("cancel", self.cancel)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value}: a fraction between 0 and 1")
        if self.busy + self.cancel > 1.0:
            raise ValueError("busy + cancel exceed 1")

    @classmethod
    def parse(cls, text: str) -> Mix:
        """`busy=0.05,cancel=0.05` (either may be left out; `""` is no mix)."""
        values: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, value = item.partition("=")
            name = name.strip().lower()
            if not sep or name not in ("busy", "cancel"):
                raise ValueError(f"{item!r}: expected busy=FRACTION or cancel=FRACTION")
            try:
                values[name] = float(value)
            except ValueError:
                raise ValueError(f"{item!r}: {value!r} is not a number") from None
        return cls(**values)

    def pick(self, draw: float) -> CallKind:
        """The kind of a call given a uniform draw in [0, 1)."""
        if draw < self.busy:
            return CallKind.BUSY
        if draw < self.busy + self.cancel:
            return CallKind.CANCEL
        return CallKind.NORMAL

    def as_dict(self) -> dict[str, float]:
        return {"busy": self.busy, "cancel": self.cancel,
                "normal": round(1.0 - self.busy - self.cancel, 6)}


def parse_address(text: str, default_port: int = 5060) -> Address:
    """`host:port` (or `host`, or `[v6]:port`) to an address."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"{text!r}: no host")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ValueError(f"{text!r}: the port is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: port out of range")
    return host, port


@dataclass(frozen=True)
class LoadConfig:
    scenario: str
    targets: tuple[Address, ...] = (("127.0.0.1", 5060),)  # primary, then secondary P-CSCF
    domain: str = "ims.local"
    subscribers: int = 100
    start: int = 100000
    password: str = "secret"
    rate: float = 10.0  # calls (or, for `register`, REGISTERs) offered per second
    ramp: float = 0.0  # seconds to climb from 0 to --rate
    max_concurrent: int = 10_000
    hold: float = 1.0  # seconds from the answer to the BYE
    calls: int | None = None
    duration: float | None = None
    media: bool = True
    mix: Mix = field(default_factory=Mix)
    seed: int = 1
    workers: int = 1
    setup_timeout: float = 32.0  # INVITE to final answer (Timer B: 64 * T1)
    register_timeout: float = 10.0  # a REGISTER exchange (digest included) at one P-CSCF
    cancel_after: float = 0.2  # cancel calls: seconds from the 180 to the CANCEL
    ring: float = 0.0  # normal calls: seconds the callee rings before answering
    expires: int = 600
    reregister: float | None = None  # re-REGISTER interval (default: expires / 2)
    register_rate: float = 200.0  # initial registrations per second (call scenarios)
    bind: str = "127.0.0.1"  # the UEs' own address
    clear_bindings: bool = True  # REGISTER Contact: * Expires 0 before the load
    unregister: bool = True  # remove our bindings after it
    bearers: BearerConfig | None = None  # --bearers: simulated eNBs, bearer checks
    # a far end to call instead of each other (a SIP URI): no registration, every UE a caller
    callee: str = ""
    # failover
    run_dir: str = ""
    event_at: float | None = None
    kill_signal: str = "KILL"
    # scale-out
    steps: tuple[float, ...] = ()
    step_duration: float = 10.0
    # soak
    window: float = 60.0
    # thresholds: the run fails (exit 1) when exceeded
    max_failed_ratio: float | None = None
    max_p99_setup_ms: float | None = None
    # which slice of the subscribers this (worker's) config covers: first pair index, count
    pair_offset: int = 0
    phase: float = 0.0  # this worker's offers come this fraction of an interval late

    # -- derived ------------------------------------------------------------------------------
    @property
    def pairs(self) -> int:
        return self.subscribers // 2

    @property
    def is_call_scenario(self) -> bool:
        return self.scenario != "register"

    @property
    def far_end(self) -> bool:
        """The UEs call `callee` (not each other) and do not register."""
        return bool(self.callee) and self.is_call_scenario

    @property
    def solo(self) -> bool:
        """UEs are shared out one by one (register, far end), not as caller/callee pairs."""
        return self.scenario == "register" or self.far_end

    @property
    def load_duration(self) -> float | None:
        """How long calls are offered (None: until --calls are offered)."""
        if self.scenario == "scale-out":
            return len(self.steps) * self.step_duration
        if self.duration is not None:
            return self.duration
        if self.calls is not None:
            return None
        if self.scenario == "register":
            return None  # one REGISTER per subscriber
        return DEFAULT_DURATION[self.scenario]

    @property
    def count_limit(self) -> int | None:
        """How many calls (REGISTERs for `register`) to offer at most."""
        if self.calls is not None:
            return self.calls
        if self.scenario == "register" and self.duration is None:
            return self.subscribers
        return None

    @property
    def reregister_interval(self) -> float:
        return self.reregister if self.reregister is not None else self.expires / 2

    @property
    def failover_at(self) -> float:
        if self.event_at is not None:
            return self.event_at
        return (self.load_duration or 30.0) / 3

    @property
    def drain_timeout(self) -> float:
        """After the last offer: how long calls in progress may take to finish."""
        return self.hold + self.ring + self.setup_timeout + 5.0

    def planned_seconds(self) -> float:
        """An estimate of how long the load phase lasts (for the progress bar)."""
        duration = self.load_duration
        if duration is not None:
            return duration
        limit = self.count_limit or 0
        rate = max(self.rate, 1e-9)
        return limit / rate + self.ramp / 2

    def rate_at(self, t: float) -> float:
        """The offered rate (per second, for this config's share) at `t` seconds into the
        load: scale-out steps, or --rate after a linear --ramp from 0."""
        if t < 0:
            return 0.0
        if self.scenario == "scale-out" and self.steps:
            index = min(len(self.steps) - 1, int(t // self.step_duration))
            base = self.steps[index]
        else:
            base = self.rate
        if self.ramp > 0 and t < self.ramp:
            return base * t / self.ramp
        return base

    def step_at(self, t: float) -> int:
        return min(len(self.steps) - 1, int(t // self.step_duration)) if self.steps else 0

    # -- shares -------------------------------------------------------------------------------
    def share(self, index: int, count: int) -> LoadConfig:
        """Worker `index` of `count`: its slice of the subscribers (whole pairs; for
        `register` and a far end, whole subscribers) and its part of the rate, calls and
        concurrency."""
        if count == 1:
            return self
        unit = self.subscribers if self.solo else self.pairs
        first, last = _slice(unit, index, count)
        per = 1 if self.solo else 2
        calls = None
        if self.calls is not None:
            c0, c1 = _slice(self.calls, index, count)
            calls = c1 - c0
        return replace(
            self,
            start=self.start + first * per,
            subscribers=(last - first) * per,
            pair_offset=self.pair_offset + first,
            rate=self.rate / count,
            steps=tuple(s / count for s in self.steps),
            register_rate=self.register_rate / count,
            max_concurrent=max(1, math.ceil(self.max_concurrent / count)),
            calls=calls,
            seed=self.seed * 1000 + index,
            phase=index / count,
            workers=1,
            bearers=self.bearers and self.bearers.part(*_slice(self.bearers.enbs, index, count)),
        )


def _slice(total: int, index: int, count: int) -> tuple[int, int]:
    """Split `total` into `count` near-equal contiguous parts; part `index` as [first, last)."""
    base, extra = divmod(total, count)
    first = index * base + min(index, extra)
    return first, first + base + (1 if index < extra else 0)
