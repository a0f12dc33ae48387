"""Where bearer checks plug into a load run (the eNodeB side of a VoLTE call).

A real run attaches each UE through a simulated eNodeB (services.enb) and checks, during each
answered call, that both UEs have their QCI-1 dedicated bearer. The engine calls a
`BearerCheck` at these points; until the eNodeB simulator shell is wired in, `--bearers` gets
`NoBearers`, which checks nothing and says so in the report (`bearers.checked` stays 0), so
no run claims bearers it did not see.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class BearerCheck(Protocol):
    """What the engine asks of the eNodeB side."""

    note: str

    async def attach(self, imsis: Sequence[str]) -> None:
        """Before the load: attach these UEs through their eNodeBs."""

    async def check(self, caller_imsi: str, callee_imsi: str) -> bool | None:
        """Mid-call: do both UEs have their dedicated bearer? None: not checked."""

    async def close(self) -> None:
        """After the load."""


class NoBearers:
    """No eNodeB side: nothing attached, nothing checked."""

    def __init__(self, requested: bool = False) -> None:
        self.note = (
            "requested, but not available yet: the eNodeB simulator (services/enb) is not wired "
            "into loadgen; no bearer was checked" if requested else "not requested (--bearers)"
        )

    async def attach(self, imsis: Sequence[str]) -> None:
        return None

    async def check(self, caller_imsi: str, callee_imsi: str) -> bool | None:
        return None

    async def close(self) -> None:
        return None


def bearer_check(requested: bool) -> BearerCheck:
    """The bearer check for a run (`--bearers`)."""
    return NoBearers(requested)
