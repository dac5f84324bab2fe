"""The rollout state machine's structure: what an operator and the invariants rely on."""

import inspect
import json
from pathlib import Path
from typing import Any

from layershift_core import errors

ASL = json.loads((Path(__file__).parents[2] / "statemachines" / "rollout.asl.json").read_text())


def _all_states(states: dict[str, Any]) -> dict[str, Any]:
    found = dict(states)
    for state in states.values():
        if state["Type"] == "Map":
            found.update(_all_states(state["ItemProcessor"]["States"]))
    return found


STATES = _all_states(ASL["States"])
ERROR_NAMES = {name for name, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, Exception)}


def test_every_state_that_changes_aws_leads_to_rollback_on_any_error() -> None:
    for name in (
        "FindReusableBuild",
        "BuildLayer",
        "PublishLayerVersion",
        "PlanRollout",
        "PrepareFunctionVersions",
        "ShiftTraffic",
        "PromoteLayer",
    ):
        catches = ASL["States"][name]["Catch"]
        assert catches[-1]["ErrorEquals"] == ["States.ALL"], name
        assert all(c["Next"] == "RollBack" for c in catches), name


def test_every_lambda_task_retries_transient_lambda_errors_with_jitter() -> None:
    for name, state in STATES.items():
        if str(state.get("Resource", "")).startswith("arn:aws:states:::lambda:invoke"):
            transient = [r for r in state["Retry"] if "Lambda.TooManyRequestsException" in r["ErrorEquals"]]
            assert transient, name
            assert transient[0]["JitterStrategy"] == "FULL"
            assert transient[0]["BackoffRate"] > 1


def test_every_lambda_task_runs_again_after_a_timeout() -> None:
    """Every task is idempotent, so a Lambda timeout (the change may have been made) is retried once
    instead of ending a rollout that may already hold the lock or have moved an alias."""
    for name, state in STATES.items():
        if str(state.get("Resource", "")).startswith("arn:aws:states:::lambda:invoke"):
            timeouts = [r for r in state["Retry"] if r["ErrorEquals"] == ["Sandbox.Timedout"]]
            assert timeouts and timeouts[0]["MaxAttempts"] >= 1, name


def test_caught_domain_errors_exist() -> None:
    for state in STATES.values():
        for rule in state.get("Catch", []) + state.get("Retry", []):
            for error in rule["ErrorEquals"]:
                assert error.startswith(("States.", "Lambda.", "CodeBuild.", "Sandbox.")) or error in ERROR_NAMES, error


def test_every_path_ends_after_releasing_the_lock_once_taken() -> None:
    """From any state after AcquireLayerLock, every terminal state is preceded by a lock release."""
    top = ASL["States"]

    def successors(name: str) -> set[str]:
        state = top[name]
        nexts = {state["Next"]} if "Next" in state else set()
        nexts |= {c["Next"] for c in state.get("Catch", [])}
        nexts |= {c["Next"] for c in state.get("Choices", [])}
        if "Default" in state:
            nexts.add(state["Default"])
        return nexts

    def paths(name: str, seen: tuple[str, ...]) -> list[tuple[str, ...]]:
        here = (*seen, name)
        if top[name]["Type"] in ("Succeed", "Fail"):
            return [here]
        return [p for nxt in sorted(successors(name)) if nxt not in seen for p in paths(nxt, here)]

    for path in paths("FindReusableBuild", ()):
        releases = [s for s in path if top[s].get("Parameters", {}).get("FunctionName") == "${ReleaseLockFunctionArn}"]
        assert releases, f"path without a lock release: {' -> '.join(path)}"


def test_rejections_before_the_lock_do_not_release_it() -> None:
    for name in ("ValidateRequest", "AcquireLayerLock"):
        assert {c["Next"] for c in ASL["States"][name]["Catch"]} == {"NotifyRejected"}


def test_no_dangling_transitions() -> None:
    for states in (ASL["States"], ASL["States"]["ShiftTraffic"]["ItemProcessor"]["States"]):
        for name, state in states.items():
            targets = [state.get("Next"), state.get("Default")]
            targets += [c["Next"] for c in state.get("Catch", []) + state.get("Choices", [])]
            for target in filter(None, targets):
                assert target in states, f"{name} -> {target}"
