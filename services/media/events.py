"""Values the relay core hands out: legs, events, forwarding decisions.

Small frozen classes with no behaviour, shared by the core (`relay.py`), the fast-path
interface (`fastpath.py`) and the gRPC shell (`service.py`). `Leg` and `EventKind` mirror
`volte.v1.Leg` and `volte.v1.MediaEvent.Kind` (same numbers); the core never imports protobuf.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# A transport address as the socket layer gives it: (IP literal, port).
Address = tuple[str, int]


class Leg(enum.IntEnum):
    """The two sides of a relayed call; the caller sent the initial INVITE."""

    CALLER = 1
    CALLEE = 2

    @property
    def other(self) -> Leg:
        return Leg.CALLEE if self is Leg.CALLER else Leg.CALLER


class EventKind(enum.IntEnum):
    LATCHED = 1
    MEDIA_TIMEOUT = 2
    FAST_PATH_ON = 3
    FAST_PATH_OFF = 4
    SESSION_DELETED = 5


@dataclass(frozen=True, slots=True)
class Event:
    session_id: str
    kind: EventKind
    at: float  # the core's clock (monotonic seconds), as passed in by the caller
    stream_index: int = 0
    leg: Leg | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Forward:
    """Send `data` out of relay socket `socket` (its local port) to `destination`."""

    socket: int
    destination: Address
    data: bytes
