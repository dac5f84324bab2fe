"""The rollout and restore state machines' structure: what an operator, the fleet and the invariants rely on."""

import inspect
import json
from pathlib import Path
from typing import Any

import pytest

from layershift_core import errors

FOLDER = Path(__file__).parents[2] / "statemachines"
ASL = json.loads((FOLDER / "rollout.asl.json").read_text())
RESTORE = json.loads((FOLDER / "restore.asl.json").read_text())


def _scopes(states: dict[str, Any]) -> list[dict[str, Any]]:
    """Every scope of state names: the machine's, and each Map state's processor."""
    found = [states]
    for state in states.values():
        if state["Type"] == "Map":
            found += _scopes(state["ItemProcessor"]["States"])
    return found


def _all_states(states: dict[str, Any]) -> dict[str, Any]:
    return {name: state for scope in _scopes(states) for name, state in scope.items()}


STATES = _all_states(ASL["States"]) | _all_states(RESTORE["States"])
MAPS = {name: state for name, state in STATES.items() if state["Type"] == "Map"}
ERROR_NAMES = {name for name, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, Exception)}
BOTO_ERRORS = {"TooManyRequestsException", "ThrottlingException", "ResourceConflictException", "ServiceException"}


def test_every_state_that_changes_aws_leads_to_the_rollback_on_any_error() -> None:
    for name in (
        "FindReusableBuild",
        "BuildLayer",
        "PublishLayerVersion",
        "ShareLayerVersions",
        "FindCandidates",
        "AssessCandidates",
        "PlanRollout",
        "PrepareFunctionVersions",
        "RecordPreparedVersions",
        "AwaitApproval",
        "SetTrafficWeight",
        "StartBake",
        "BakeAndWatch",
        "ReadCanaryMetrics",
        "CheckHealth",
        "PromoteAliases",
        "PromoteLayer",
    ):
        catches = ASL["States"][name]["Catch"]
        assert catches[-1]["ErrorEquals"] == ["States.ALL"], name
        assert catches[-1]["Next"] == "AnythingToRestore", name


def test_the_rollback_restores_every_target_in_the_restore_state_machine() -> None:
    top = ASL["States"]
    assert top["AnythingToRestore"]["Choices"][0]["Next"] == "RestoreAliases"
    restore = top["RestoreAliases"]
    assert restore["Resource"] == "arn:aws:states:::states:startExecution.sync:2"
    assert restore["Parameters"]["StateMachineArn"] == "${RestoreStateMachineArn}"
    assert restore["Next"] == "RollBack"
    # the restore tolerates every failed batch: each alias is tried, whatever happens to the others
    assert RESTORE["States"]["RestoreAliases"]["ToleratedFailurePercentage"] == 100


def test_per_function_work_runs_in_map_runs_of_batched_standard_children_with_results_in_s3() -> None:
    """No single invocation loops over the fleet: every phase that touches functions is a Map Run."""
    assert set(MAPS) == {
        "AssessCandidates",
        "PrepareFunctionVersions",
        "SetTrafficWeight",
        "ReadCanaryMetrics",
        "PromoteAliases",
        "RestoreAliases",
    }
    for name, state in MAPS.items():
        processor = state["ItemProcessor"]
        assert processor["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}, name
        assert state["ItemReader"]["Resource"] == "arn:aws:states:::s3:getObject", name
        assert state["ResultWriter"]["Resource"] == "arn:aws:states:::s3:putObject", name
        assert state["ResultPath"] == "$.map_run", name
        batcher = state["ItemBatcher"]
        assert "MaxItemsPerBatch" in batcher or "MaxItemsPerBatchPath" in batcher, name
        assert batcher["MaxInputBytesPerBatch"] <= 65536, name  # a child's input stays far below 256 KB
        assert "MaxConcurrencyPath" in state, name
        assert state["Label"] == name, name
        # each child loops over its batch until done
        child = processor["States"]
        task = child[processor["StartAt"]]
        loop = child[task["Next"]]
        assert loop["Type"] == "Choice" and loop["Default"] == processor["StartAt"], name
        assert task["Parameters"]["Payload"] == {"batch.$": "$", "retry_count.$": "$$.State.RetryCount"}, name


def test_canary_metrics_are_read_at_most_500_queries_per_child() -> None:
    batch = MAPS["ReadCanaryMetrics"]["ItemBatcher"]["MaxItemsPerBatch"]
    assert batch * 8 <= 500  # 4 metrics for each of 2 versions per function


def test_child_batches_retry_throttling_with_backoff_and_jitter() -> None:
    for name, state in MAPS.items():
        processor = state["ItemProcessor"]
        task = processor["States"][processor["StartAt"]]
        throttles = [r for r in task["Retry"] if "TooManyRequestsException" in r["ErrorEquals"]]
        assert throttles and throttles[0]["JitterStrategy"] == "FULL" and throttles[0]["BackoffRate"] > 1, name


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
    prefixes = ("States.", "Lambda.", "CodeBuild.", "Sandbox.", "StepFunctions.")
    for state in STATES.values():
        for rule in state.get("Catch", []) + state.get("Retry", []):
            for error in rule["ErrorEquals"]:
                assert error.startswith(prefixes) or error in ERROR_NAMES | BOTO_ERRORS, error


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


@pytest.mark.parametrize("machine", [ASL, RESTORE], ids=["rollout", "restore"])
def test_no_dangling_transitions(machine: dict[str, Any]) -> None:
    for states in _scopes(machine["States"]):
        for name, state in states.items():
            targets = [state.get("Next"), state.get("Default")]
            targets += [c["Next"] for c in state.get("Catch", []) + state.get("Choices", [])]
            for target in filter(None, targets):
                assert target in states, f"{name} -> {target}"


def test_state_names_are_unique_across_scopes() -> None:
    for machine in (ASL, RESTORE):
        names = [name for scope in _scopes(machine["States"]) for name in scope]
        assert len(names) == len(set(names))


def test_every_rollout_shares_its_layer_versions_before_any_function_moves() -> None:
    """Built or reused, the layer's versions get [share]'s grants on the way to the plan: without
    ShareLayerVersions, no path from the build leads to a function (AnyCandidates onwards)."""
    top = ASL["States"]

    def reachable(start: str, without: str) -> set[str]:
        seen: set[str] = set()
        todo = [start]
        while todo:
            name = todo.pop()
            if name in seen or name == without:
                continue
            seen.add(name)
            state = top[name]
            todo += [state[key] for key in ("Next", "Default") if key in state]
            todo += [rule["Next"] for rule in state.get("Choices", [])]
            todo += [rule["Next"] for rule in state.get("Catch", []) if rule["Next"] != "AnythingToRestore"]
        return seen

    assert "AnyCandidates" in reachable("FindReusableBuild", without="")
    assert "AnyCandidates" not in reachable("FindReusableBuild", without="ShareLayerVersions")
    assert {"ReuseOrBuild", "PublishLayerVersion"} <= {
        name for name, state in top.items() if "ShareLayerVersions" in (state.get("Next"), state.get("Default"))
    }
