"""The bearer policy: the decision (which calls fail with 580, which bearers are kept or
released) and the sbc refusing to start with a policy it cannot apply."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from services.sbc.bearer_policy import (
    BEST_EFFORT,
    REQUIRED,
    BearerOutcome,
    decide,
    parse_policy,
)

CALLER_UP = BearerOutcome("caller", "001010000000001", "b-1")
CALLEE_UP = BearerOutcome("callee", "001010000000002", "b-2")
CALLEE_DOWN = BearerOutcome("callee", "001010000000002", error="FAILED_PRECONDITION: radio")
CALLER_DOWN = BearerOutcome("caller", "001010000000001", error="NOT_FOUND: no UE context")


@pytest.mark.parametrize("policy", [BEST_EFFORT, REQUIRED])
def test_both_bearers_up_the_call_goes_on_with_both(policy: str) -> None:
    decision = decide(policy, [CALLER_UP, CALLEE_UP])
    assert not decision.refuse and not decision.failed
    assert decision.kept == ("b-1", "b-2") and decision.to_release == ()
    assert decision.text == ""


def test_best_effort_keeps_what_was_set_up_and_goes_on() -> None:
    decision = decide(BEST_EFFORT, [CALLER_UP, CALLEE_DOWN])
    assert not decision.refuse
    assert decision.kept == ("b-1",) and decision.to_release == ()
    assert decision.failed == (CALLEE_DOWN,)
    assert decision.text == "QCI-1 bearer setup failed for the callee"


def test_required_refuses_and_releases_the_bearer_that_was_set_up() -> None:
    decision = decide(REQUIRED, [CALLER_UP, CALLEE_DOWN])
    assert decision.refuse
    assert decision.kept == () and decision.to_release == ("b-1",)
    assert decision.reason == 'SIP;cause=580;text="QCI-1 bearer setup failed for the callee"'


def test_required_with_both_missing_names_both_and_releases_nothing() -> None:
    decision = decide(REQUIRED, [CALLER_DOWN, CALLEE_DOWN])
    assert decision.refuse and decision.to_release == ()
    assert decision.text == "QCI-1 bearer setup failed for the caller and the callee"


def test_no_ue_asked_no_failure_whatever_the_policy() -> None:
    """UEs without an IMSI (not on our radio side) are not asked: nothing to refuse."""
    assert not decide(REQUIRED, []).refuse
    assert decide(REQUIRED, []).kept == ()


def test_policy_names_and_bad_ones() -> None:
    assert parse_policy(" Required ") == REQUIRED
    assert parse_policy("best-effort") == BEST_EFFORT
    with pytest.raises(argparse.ArgumentTypeError, match="best-effort, required"):
        parse_policy("strict")
    with pytest.raises(ValueError, match="unknown bearer policy"):
        decide("strict", [])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bearer-policy", "required"], "--bearer-policy required needs --enb"),
        (["--bearer-policy", "strict"], "expected one of best-effort, required: 'strict'"),
    ],
)
def test_the_sbc_refuses_to_start_with_a_policy_it_cannot_apply(
    argv: list[str], message: str
) -> None:
    proc = subprocess.run([sys.executable, "-m", "services.sbc", *argv], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and message in proc.stderr
