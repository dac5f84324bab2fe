"""A rollout's tree folded from its execution history and its plan: the rollback path."""

import json
from datetime import UTC, datetime
from typing import Any

from layershift.operator_tree import rollout_tree


def _entered(name: str) -> dict[str, Any]:
    return {"type": "TaskStateEntered", "stateEnteredEventDetails": {"name": name}}


def _exited(name: str, output: dict[str, Any]) -> dict[str, Any]:
    return {"type": "TaskStateExited", "stateExitedEventDetails": {"name": name, "output": json.dumps(output)}}


PLAN = {
    "targets": [
        {"function_name": "orders", "alias": "live", "verdict": "target", "old_version": "4", "new_version": "5"},
        {"function_name": "legacy", "alias": "live", "verdict": "skip", "reason": "no alias 'live'"},
    ]
}


FAILED_CHECK = json.dumps({"errorMessage": "3/8 errors"})


def test_a_failing_check_rolls_back_and_the_tree_says_where() -> None:
    bake = {"step_index": 0, "step": {"wave": "main", "weight": 10, "bake_seconds": 60}, "checks": 1}
    error = {"Error": "RolloutUnhealthy", "Cause": "failing"}
    events = [
        _entered("ValidateRequest"),
        _exited("ValidateRequest", {"rollout": {"spec": {"steps": [{"weight": 10, "bake_seconds": 60}]}}}),
        _entered("PublishLayerVersion"),
        _exited("PublishLayerVersion", {"layer_versions": [{"version": 7, "arn": "arn:l:7", "variant": "py"}]}),
        _entered("PlanRollout"),
        _exited("PlanRollout", {"plan": {"target_count": 1, "skipped_count": 1, "shift_steps": [bake["step"]]}}),
        _entered("StartBake"),
        _exited("StartBake", {"bake": bake}),
        _exited("CheckHealth", {"bake": bake | {"verdict": "inconclusive", "verdict_detail": "too little traffic"}}),
        {"type": "TaskFailed", "taskFailedEventDetails": {"error": "RolloutUnhealthy", "cause": FAILED_CHECK}},
        _entered("RestoreAliases"),
        _exited("RollBack", {"error": error, "restore": {"summary": {"restored": 1}}}),
        {"type": "ExecutionFailed", "executionFailedEventDetails": {"error": "RolloutUnhealthy", "cause": "3/8"}},
    ]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    described = {"status": "FAILED", "executionArn": "arn:x", "startDate": start, "stopDate": start}
    tree = rollout_tree("deps", "deps-1", described, events, PLAN)
    assert (tree["outcome"], tree["error"]) == ("rolled back", "RolloutUnhealthy")
    states = {phase["name"]: phase["state"] for phase in tree["phases"]}
    assert states == {"validate": "done", "build": "done", "plan": "done", "traffic": "failed", "roll back": "done"}
    build, plan, traffic, rollback = tree["phases"][1:]
    assert build["layer_versions"] == [{"version": 7, "variant": "py", "arn": "arn:l:7", "reused": False}]
    assert plan["skipped"] == [{"function": "legacy", "reason": "no alias 'live'"}]
    (step,) = traffic["steps"]
    assert (step["state"], step["verdict"], step["verdict_detail"], step["checks"]) == (
        "failed",
        "failing",
        "3/8 errors",
        2,
    )
    assert [(f["function"], f["old_version"], f["new_version"], f["weight"]) for f in step["functions"]] == [
        ("orders", "4", "5", 10)
    ]
    assert rollback["functions"] == [{"function": "orders", "alias": "live", "version": "4", "weight": None}]
