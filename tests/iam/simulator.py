"""IAM decisions from @cloud-copilot/iam-simulate (``evaluate.mjs``), one Node process per batch.

The evaluator is installed by ``make venv`` (``npm ci --prefix tests/iam``); without Node.js the
tests that need it skip, saying so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

FOLDER = Path(__file__).resolve().parent
EVALUATOR = FOLDER / "evaluate.mjs"
PACKAGE = FOLDER / "node_modules" / "@cloud-copilot" / "iam-simulate"
ACTIONS_DATA = FOLDER / "node_modules" / "@cloud-copilot" / "iam-data" / "data" / "actions"
EVALUATION_TIMEOUT_SECONDS = 300

Context = dict[str, str | list[str]]
Policy = dict[str, Any]


@dataclass(frozen=True)
class IamRequest:
    """One request as IAM sees it: who, which action on which resource, with which context."""

    principal: str
    action: str
    resource: str
    account_id: str
    identity_policies: tuple[tuple[str, str], ...]  # (name, policy JSON): hashable, so requests dedupe
    context: tuple[tuple[str, str | tuple[str, ...]], ...] = ()
    resource_policy: str | None = None  # JSON
    # The context as given, unvalidated: for a key the service sets on every request of a session
    # but the service authorization reference does not list for the action (codebuild:buildArn).
    context_as_given: bool = False

    @classmethod
    def of(
        cls,
        principal: str,
        action: str,
        resource: str,
        account_id: str,
        identity_policies: Sequence[tuple[str, Policy]],
        context: Context | None = None,
        resource_policy: Policy | None = None,
        context_as_given: bool = False,
    ) -> IamRequest:
        frozen = {key: tuple(value) if isinstance(value, list) else value for key, value in (context or {}).items()}
        return cls(
            principal=principal,
            action=action,
            resource=resource,
            account_id=account_id,
            identity_policies=tuple((name, json.dumps(policy, sort_keys=True)) for name, policy in identity_policies),
            context=tuple(sorted(frozen.items())),
            resource_policy=json.dumps(resource_policy, sort_keys=True) if resource_policy is not None else None,
            context_as_given=context_as_given,
        )

    def context_dict(self) -> Context:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in self.context}

    def as_input(self) -> dict[str, Any]:
        request: dict[str, Any] = {
            "principal": self.principal,
            "action": self.action,
            "resource": self.resource,
            "accountId": self.account_id,
            "identityPolicies": [
                {"name": name, "policy": json.loads(policy)} for name, policy in self.identity_policies
            ],
            "context": self.context_dict(),
        }
        if self.resource_policy is not None:
            request["resourcePolicy"] = json.loads(self.resource_policy)
        if self.context_as_given:
            request["contextAsGiven"] = True
        return request

    def describe(self) -> str:
        context = json.dumps(self.context_dict(), sort_keys=True)
        return f"{self.principal} {self.action} on {self.resource} with {context}"


@dataclass
class Decision:
    """The evaluator's answer: Allowed, ImplicitlyDenied, ExplicitlyDenied, or Error (invalid input)."""

    decision: str
    reasons: list[Any] = field(default_factory=list)
    ignored_context_keys: list[str] = field(default_factory=list)
    errors: dict[str, Any] | None = None

    @property
    def allowed(self) -> bool:
        return self.decision == "Allowed"

    @property
    def denied(self) -> bool:
        return self.decision in ("ImplicitlyDenied", "ExplicitlyDenied")

    def explain(self) -> str:
        if self.errors is not None:
            return f"{self.decision}: {json.dumps(self.errors)}"
        ignored = f"; context ignored: {self.ignored_context_keys}" if self.ignored_context_keys else ""
        return f"{self.decision} by {json.dumps(self.reasons)}{ignored}"


def evaluator_missing() -> str | None:
    """Why the evaluator cannot run here, or None."""
    if shutil.which("node") is None:
        return "the IAM policy evaluator needs Node.js 20+ (node was not found on PATH)"
    if not PACKAGE.is_dir():
        return "the IAM policy evaluator is not installed: run `make venv` (npm ci --prefix tests/iam)"
    return None


def require_evaluator() -> None:
    """Skip the calling test, saying why, when the evaluator cannot run."""
    missing = evaluator_missing()
    if missing is not None:
        pytest.skip(missing)


def evaluate(requests: Sequence[IamRequest]) -> list[Decision]:
    """One decision per request, in order, from one Node process."""
    if not requests:
        return []
    node = shutil.which("node")
    assert node is not None, evaluator_missing()
    completed = subprocess.run(
        [node, str(EVALUATOR)],
        input=json.dumps([request.as_input() for request in requests]),
        capture_output=True,
        text=True,
        cwd=FOLDER,
        timeout=EVALUATION_TIMEOUT_SECONDS,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"the IAM evaluator failed ({completed.returncode}): {completed.stderr.strip()}")
    answers = json.loads(completed.stdout)
    assert len(answers) == len(requests), "the evaluator answered a different number of requests"
    return [
        Decision(
            decision=answer["decision"],
            reasons=answer.get("reasons", []),
            ignored_context_keys=answer.get("ignoredContextKeys", []),
            errors=answer.get("errors"),
        )
        for answer in answers
    ]


def actions_of(service_prefix: str) -> dict[str, Any]:
    """The service authorization reference of one IAM service prefix, as iam-data ships it
    (lower-cased action name -> its resource types and condition keys)."""
    path = ACTIONS_DATA / f"{service_prefix}.json"
    if not path.is_file():
        raise KeyError(f"no IAM service {service_prefix!r} in the service authorization reference")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data
