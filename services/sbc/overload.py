"""Latency-driven admission control for new INVITEs and REGISTERs (as Clearwater's load monitor).

A token bucket admits new work; its fill rate follows measured latency: above the target the
rate drops in proportion, below it (with the bucket running dry, so demand is there) the rate
grows a little. Rejected requests get 503 with Retry-After so clients try elsewhere; in-dialog
requests never pass through here. Pure: time comes in as `now`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class OverloadControl:
    target_latency: float = 0.1  # seconds, per transaction we handle
    rate: float = 500.0  # admitted requests per second, adapted
    min_rate: float = 10.0
    max_rate: float = 20_000.0
    adjust_every: float = 1.0  # seconds between rate adjustments
    bucket_seconds: float = 0.5  # burst allowance, in seconds of rate
    smoothing: float = 0.3  # weight of a new latency sample in the moving average

    def __post_init__(self) -> None:
        self._tokens = self.rate * self.bucket_seconds
        self._last_fill: float | None = None
        self._last_adjust: float | None = None
        self._latency = 0.0
        self._ran_dry = False
        self.admitted = 0
        self.rejected = 0

    def admit(self, now: float) -> bool:
        self._fill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.admitted += 1
            return True
        self._ran_dry = True
        self.rejected += 1
        return False

    def record_latency(self, seconds: float, now: float) -> None:
        self._latency += self.smoothing * (seconds - self._latency)
        if self._last_adjust is None:
            self._last_adjust = now
        elif now - self._last_adjust >= self.adjust_every:
            self._adjust()
            self._last_adjust = now

    @property
    def latency(self) -> float:
        return self._latency

    def retry_after(self) -> int:
        """Seconds a rejected client should wait: longer the further we are over target."""
        return max(1, min(30, round(self._latency / self.target_latency)))

    def _fill(self, now: float) -> None:
        if self._last_fill is not None:
            capacity = max(1.0, self.rate * self.bucket_seconds)
            self._tokens = min(capacity, self._tokens + (now - self._last_fill) * self.rate)
        self._last_fill = now

    def _adjust(self) -> None:
        if self._latency > self.target_latency:
            # Multiplicative decrease toward what the latency says we can carry.
            factor = max(0.5, self.target_latency / self._latency)
            self.rate = max(self.min_rate, self.rate * factor)
        elif self._ran_dry:
            # Additive increase, only when demand exceeded the rate.
            self.rate = min(self.max_rate, self.rate + max(1.0, self.rate * 0.05))
        self._ran_dry = False
