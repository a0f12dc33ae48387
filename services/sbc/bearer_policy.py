"""The sbc's bearer policy: what an answered call becomes when a QCI-1 bearer is missing. Pure.

On the callee's 2xx to the initial INVITE the sbc asks the eNB agent for a QCI-1 bearer for
each UE whose IMSI it knows (a UE without one is not on our radio side and is not asked).
`decide` turns what the agent answered into what the sbc does, by `--bearer-policy`:

- `best-effort` (the default): the call goes on with the bearers that were set up; the
  failure is logged (one line per call) and counted.
- `required`: a failure for either UE fails the call: the sbc keeps the 2xx from the caller,
  ACKs it and sends the callee a BYE with `Reason: SIP;cause=580;text="..."`, releases the
  bearer that did get set up and the media session, and answers the caller
  `580 Precondition Failure` (RFC 3312) with a Warning naming the UE whose bearer failed.

Only the initial INVITE's 2xx asks for bearers. Re-INVITEs and UPDATEs inside the dialog
(hold, resume, codec change) neither set up nor release one: the bearer of the answer lasts
until the BYE, and a call that went on best-effort stays so.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from services.common.config import one_of

BEST_EFFORT = "best-effort"
REQUIRED = "required"
POLICIES = (BEST_EFFORT, REQUIRED)
PRECONDITION_FAILURE = 580  # RFC 3312 section 8
FAILED = "QCI-1 bearer setup failed"

Side = Literal["caller", "callee"]


parse_policy = one_of(*POLICIES)  # a --bearer-policy / VOLTE_BEARER_POLICY value


@dataclass(frozen=True, slots=True)
class BearerOutcome:
    """What the eNB agent answered for one UE: a bearer id, or why there is none."""

    ue: Side
    imsi: str
    bearer_id: str = ""
    error: str = ""
    attached: bool = True  # False: the UE is at no eNB (not an error of the RAN or the agent)

    @property
    def up(self) -> bool:
        return bool(self.bearer_id)


@dataclass(frozen=True, slots=True)
class BearerDecision:
    policy: str
    outcomes: tuple[BearerOutcome, ...]

    @property
    def failed(self) -> tuple[BearerOutcome, ...]:
        return tuple(o for o in self.outcomes if not o.up)

    @property
    def refuse(self) -> bool:
        """The call fails with 580 (`required` and a bearer is missing)."""
        return self.policy == REQUIRED and bool(self.failed)

    @property
    def kept(self) -> tuple[str, ...]:
        """Bearer ids the dialog holds until its BYE."""
        return () if self.refuse else tuple(o.bearer_id for o in self.outcomes if o.up)

    @property
    def to_release(self) -> tuple[str, ...]:
        """Bearer ids to release at once: those set up for a call that is refused."""
        return tuple(o.bearer_id for o in self.outcomes if o.up) if self.refuse else ()

    @property
    def text(self) -> str:
        """Why, naming the UEs: 'QCI-1 bearer setup failed for the callee'."""
        who = " and the ".join(o.ue for o in self.failed)
        return f"{FAILED} for the {who}" if who else ""

    @property
    def reason(self) -> str:
        """The Reason header (RFC 3326) of the BYE that ends the callee's leg of a refused
        call."""
        return f'SIP;cause={PRECONDITION_FAILURE};text="{self.text}"'


def decide(policy: str, outcomes: Iterable[BearerOutcome]) -> BearerDecision:
    if policy not in POLICIES:
        raise ValueError(f"unknown bearer policy {policy!r}")
    return BearerDecision(policy, tuple(outcomes))
