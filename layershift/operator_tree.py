"""One rollout as a tree, phase → traffic step → function, folded from its execution history and
its plan (`rollouts/<layer>/<id>/plan.json`): what `layershift get` shows and `--output json` prints.

The history says where the rollout is and what each step decided; the plan says which functions
move, and from which version to which. The weights are each step's, except for the step in
progress, whose weights are read live from each alias (`operator_data.live_alias_weights`).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from .operator_data import iso

# States entered once a traffic step's bake has ended healthy (rollout.asl.json).
_AFTER_A_STEP = {"StepHealthy", "NextTrafficStep", "AwaitApproval", "PromoteAliases"}
_BUILDING = {"FindReusableBuild", "BuildLayer", "PublishLayerVersion", "ShareLayerVersions"}
_PLANNING = {"FindCandidates", "AssessCandidates", "PlanRollout", "PrepareFunctionVersions"}
_ENDINGS = {
    "ExecutionFailed": "executionFailedEventDetails",
    "ExecutionAborted": "executionAbortedEventDetails",
    "ExecutionTimedOut": "executionTimedOutEventDetails",
}


def _output(event: dict[str, Any]) -> dict[str, Any]:
    details = event.get("stateExitedEventDetails") or {}
    try:
        value = json.loads(details.get("output") or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _phase(name: str) -> dict[str, Any]:
    return {"name": name, "state": "pending", "detail": None}


def _step(index: int, step: dict[str, Any], state: str, approval: str | None = None) -> dict[str, Any]:
    return {
        "index": index,
        "wave": step["wave"],
        "weight": step["weight"],
        "bake_seconds": step["bake_seconds"],
        "state": state,
        "checks": 0,
        "verdict": None,
        "verdict_detail": None,
        "approval": approval,
    }


class _HistoryFold:
    """The phases as the history's events, read in order, leave them."""

    def __init__(self) -> None:
        self.validate, self.build, self.plan = _phase("validate"), _phase("build"), _phase("plan")
        self.traffic, self.ending = _phase("traffic"), _phase("promote")
        self.steps: list[dict[str, Any]] = []
        self.planned_steps: list[dict[str, Any]] = []
        self.layer_versions: list[dict[str, Any]] = []
        self.error: str | None = None
        self.cause: str | None = None
        self.state: str | None = None  # the last state entered
        self.approved = False  # AwaitApproval ended: the next step is the approved one

    @property
    def running_step(self) -> dict[str, Any] | None:
        return self.steps[-1] if self.steps and self.steps[-1]["state"] == "running" else None

    def add(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind.endswith("StateEntered"):
            self.entered(event["stateEnteredEventDetails"]["name"])
        elif kind.endswith("StateExited"):
            self.exited(event["stateExitedEventDetails"]["name"], _output(event))
        elif kind in ("TaskFailed", "LambdaFunctionFailed") and self.running_step is not None:
            self.step_failed(self.running_step, event)
        elif kind in _ENDINGS:
            details = event.get(_ENDINGS[kind]) or {}
            self.error, self.cause = details.get("error"), details.get("cause")

    def entered(self, name: str) -> None:
        self.state = name
        if name in _AFTER_A_STEP and self.running_step is not None:
            self.running_step["state"] = "done"  # its bake ended healthy
        if name == "ValidateRequest":
            self.validate["state"] = "running"
        elif name in _BUILDING:
            self.build["state"] = "running"
        elif name in _PLANNING:
            self.build["state"] = "done" if self.build["state"] == "running" else self.build["state"]
            self.plan["state"] = "running" if self.plan["state"] == "pending" else self.plan["state"]
        elif name in ("PromoteAliases", "PromoteLayer"):
            self.traffic["state"] = "done"
            self.ending["state"] = "running"
        elif name == "RestoreAliases":
            self.ending.update(name="roll back", state="running")

    def exited(self, name: str, output: dict[str, Any]) -> None:
        if name == "RollBack":  # the state it rolls back from carries the error: read it first
            summary = (output.get("restore") or {}).get("summary") or {}
            self.ending.update(name="roll back", state="done")
            self.ending["detail"] = f"{summary.get('restored', 0)} target(s) restored to their old version"
        if output.get("error"):  # left through a Catch: the failure event said what happened
            return
        if name == "ValidateRequest" and output.get("rollout"):
            spec = output["rollout"].get("spec", {})
            steps = [f"{s['weight']}% for {s['bake_seconds']}s" for s in spec.get("steps", [])]
            self.validate.update(state="done", detail="steps " + ", ".join([*steps, "100%"]))
        elif name == "PublishLayerVersion" or (name == "FindReusableBuild" and output.get("layer_versions")):
            self.layer_versions = [
                {"version": v["version"], "variant": v.get("variant"), "arn": v["arn"], "reused": bool(v.get("reused"))}
                for v in output.get("layer_versions", [])
            ]
            if name == "PublishLayerVersion":
                self.build["state"] = "done"
        elif name == "PlanRollout" and output.get("plan"):
            summary = output["plan"]
            counts = summary.get("target_count", 0), summary.get("skipped_count", 0)
            self.plan.update(state="done", detail="{} target(s), {} skipped".format(*counts))
            self.planned_steps = summary.get("shift_steps") or []
        elif name == "StartBake" and output.get("bake"):
            self.bake_started(output["bake"])
        elif name == "CheckHealth" and self.steps:
            bake = output.get("bake") or {}
            self.steps[-1].update(
                checks=bake.get("checks", self.steps[-1]["checks"]),
                verdict=bake.get("verdict") or "healthy",
                verdict_detail=bake.get("verdict_detail") or "no gating alarm fired",
            )
        elif name == "AwaitApproval":
            self.approved = True
        elif name == "PromoteLayer":
            self.ending.update(state="done", detail="every target alias is 100% on the new version")

    def bake_started(self, bake: dict[str, Any]) -> None:
        if self.running_step is not None:
            self.running_step["state"] = "done"
        index = bake.get("step_index", len(self.steps))
        self.steps.append(_step(index, bake["step"], "running", "approved" if self.approved else None))
        self.approved = False
        self.traffic["state"] = "running"

    @staticmethod
    def step_failed(step: dict[str, Any], event: dict[str, Any]) -> None:
        """A task of the step failed: a failing canary verdict (RolloutUnhealthy) or another error."""
        details = event.get("taskFailedEventDetails") or event.get("lambdaFunctionFailedEventDetails") or {}
        cause = details.get("cause", "")
        with contextlib.suppress(ValueError, AttributeError):
            cause = json.loads(cause).get("errorMessage", cause)
        error = details.get("error")
        step["checks"] += 1 if error == "RolloutUnhealthy" else 0  # the check that failed returned no output
        step["verdict"] = "failing" if error == "RolloutUnhealthy" else error
        step["verdict_detail"] = str(cause)

    def finish(self, status: str) -> None:
        """Close what an ended execution left open; list the steps a running one has still to take."""
        if status != "RUNNING":
            for phase in (self.validate, self.build, self.plan, self.traffic):
                if phase["state"] == "running":
                    phase["state"] = "done" if status == "SUCCEEDED" else "failed"
            if self.running_step is not None:
                rolled_back = self.ending["name"] == "roll back" or status != "SUCCEEDED"
                self.running_step["state"] = "failed" if rolled_back else "done"
            if self.ending["state"] == "running":
                self.ending["state"] = "failed"
            return
        reached = {step["index"] for step in self.steps}
        for index, step in enumerate(self.planned_steps):
            if index not in reached:
                approval = None
                if step.get("approval"):
                    approval = "waiting" if self.state == "AwaitApproval" else "required"
                self.steps.append(_step(index, step, "pending", approval))

    def outcome(self, status: str) -> str:
        if status == "RUNNING":
            return "rolling back" if self.ending["name"] == "roll back" else "running"
        if status == "SUCCEEDED":
            return "promoted"
        if self.ending["name"] == "roll back":
            return "rolled back"
        return "rejected" if self.error else status.lower()


def _function_at(
    target: dict[str, Any], step: dict[str, Any], live_weights: dict[str, dict[str, float]] | None
) -> dict[str, Any]:
    weight: float | None = None
    if step["state"] in ("done", "failed"):
        weight = step["weight"]
    elif step["state"] == "running":
        live = (live_weights or {}).get(target["function_name"])
        weight = live.get(str(target.get("new_version")), 0.0) * 100 if live is not None else step["weight"]
    return {
        "function": target["function_name"],
        "alias": target.get("alias"),
        "old_version": target.get("old_version"),
        "new_version": target.get("new_version"),
        "variant": target.get("variant"),
        "weight": weight,
    }


def rollout_tree(
    layer: str,
    rollout_id: str,
    described: dict[str, Any],
    events: list[dict[str, Any]],
    plan: dict[str, Any] | None,
    live_weights: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """The rollout as phases -> traffic steps -> functions, from its history and its plan."""
    fold = _HistoryFold()
    for event in events:
        fold.add(event)
    status = described["status"]
    fold.finish(status)

    planned = (plan or {}).get("targets", [])
    targets = [t for t in planned if t.get("verdict") == "target"]
    for step in fold.steps:
        step["functions"] = [
            _function_at(target, step, live_weights) for target in targets if target.get("wave", "main") == step["wave"]
        ]
    fold.traffic["steps"] = fold.steps
    if fold.ending["state"] == "done":  # every alias on its old version (rolled back) or its new one at 100%
        promoted = fold.ending["name"] == "promote"
        fold.ending["functions"] = [
            {
                "function": t["function_name"],
                "alias": t.get("alias"),
                "version": t.get("new_version" if promoted else "old_version"),
                "weight": 100 if promoted else None,
            }
            for t in targets
        ]
    fold.build["layer_versions"] = fold.layer_versions
    fold.plan["skipped"] = [
        {"function": t["function_name"], "reason": t.get("reason")} for t in planned if t.get("verdict") != "target"
    ]
    started, stopped = described.get("startDate"), described.get("stopDate")
    return {
        "layer": layer,
        "rollout_id": rollout_id,
        "execution_arn": described["executionArn"],
        "status": status,
        "outcome": fold.outcome(status),
        "current_state": fold.state if status == "RUNNING" else None,
        "started_at": iso(started),
        "stopped_at": iso(stopped),
        "duration_seconds": round((stopped - started).total_seconds(), 1) if started and stopped else None,
        "error": fold.error,
        "cause": fold.cause,
        "phases": [fold.validate, fold.build, fold.plan, fold.traffic, fold.ending],
    }
