"""Expected IAM decisions, checked in one batch: each case that did not get its decision, explained."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .simulator import Decision, IamRequest, evaluate

ALLOWED = "Allowed"
DENIED = "Denied"  # implicitly or explicitly
EXPLICITLY_DENIED = "ExplicitlyDenied"


@dataclass(frozen=True)
class Expect:
    case: str
    request: IamRequest
    outcome: str

    def met_by(self, decision: Decision) -> bool:
        if decision.ignored_context_keys:
            return False  # decided without part of the context it was given
        if self.outcome == ALLOWED:
            return decision.allowed
        if self.outcome == DENIED:
            return decision.denied
        return decision.decision == self.outcome


def unmet(expectations: Sequence[Expect]) -> list[str]:
    """One line per expectation its decision does not meet (an empty list: every one is met)."""
    decisions = evaluate([expectation.request for expectation in expectations])
    return [
        f"- {expectation.case}: expected {expectation.outcome}, got {decision.explain()}\n"
        f"    {expectation.request.describe()}"
        for expectation, decision in zip(expectations, decisions, strict=True)
        if not expectation.met_by(decision)
    ]
