"""What the operator views read: the registry (paged), the executions, the plan in S3, and a
rollout's execution history folded into phases, steps and functions.

Everything here returns plain data (dicts and lists that `--output json` prints as they are); the
rendering is in `operator_views`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from layershift_core.trigger import execution_name

from .controlplane import ControlPlane, execution_arn

# Registry statuses a rollout ends in (the rest say where a running rollout is).
ENDED = {"promoted", "rolled_back", "rejected", "rollback_incomplete"}


# -- the registry -------------------------------------------------------------------------------
def _plain(item: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, typed in item.items():
        ((kind, value),) = typed.items()
        out[name] = float(value) if kind == "N" else sorted(value) if kind == "SS" else value
    return out


def registry_items(cp: ControlPlane, layer: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every registry item of every layer (or of ``layer``), page by page: layer -> items."""
    ddb = cp.client("dynamodb")
    if layer is not None:
        pages: Iterable[dict[str, Any]] = ddb.get_paginator("query").paginate(
            TableName=cp.table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": f"LAYER#{layer}"}},
        )
    else:
        pages = ddb.get_paginator("scan").paginate(
            TableName=cp.table,
            FilterExpression="begins_with(pk, :layer)",
            ExpressionAttributeValues={":layer": {"S": "LAYER#"}},
        )
    found: dict[str, list[dict[str, Any]]] = {}
    for page in pages:
        for item in page["Items"]:
            plain = _plain(item)
            found.setdefault(plain["pk"].removeprefix("LAYER#"), []).append(plain)
    return dict(sorted(found.items()))


def _kind(items: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return sorted((i for i in items if i["sk"].startswith(prefix)), key=lambda i: i["sk"])


def _one(items: list[dict[str, Any]], sk: str) -> dict[str, Any] | None:
    return next((i for i in items if i["sk"] == sk), None)


# -- executions ---------------------------------------------------------------------------------
def executions_by_name(cp: ControlPlane) -> dict[str, dict[str, Any]]:
    """Every execution of the rollout state machine, paged (ListExecutions, newest first): name -> it."""
    sfn = cp.client("stepfunctions")
    found: dict[str, dict[str, Any]] = {}
    for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=cp.state_machine_arn):
        for execution in page["executions"]:
            found.setdefault(execution["name"], execution)
    return found


def _is_layers_execution(name: str, layer: str) -> bool:
    """Whether an execution name is one a push of ``layer`` gets (the layer, made safe, plus a hash)."""
    prefix = execution_name(layer, b"", None).rsplit("-", 1)[0] + "-"
    return name.startswith(prefix) and "-" not in name[len(prefix) :]


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment else None


def _ending(cp: ControlPlane, name: str) -> tuple[str | None, str | None]:
    """The error and cause an execution failed with (its last history event)."""
    events = cp.client("stepfunctions").get_execution_history(
        executionArn=execution_arn(cp, name), reverseOrder=True, maxResults=1
    )["events"]
    for event in events:
        details = event.get("executionFailedEventDetails") or event.get("executionAbortedEventDetails") or {}
        return details.get("error"), details.get("cause")
    return None, None


def rollout_row(
    layer: str, rollout_id: str, record: dict[str, Any] | None, execution: dict[str, Any] | None
) -> dict[str, Any]:
    """One rollout as `history` and `ls` show it: registry record and execution joined."""
    record = record or {}
    started = execution.get("startDate") if execution else None
    stopped = execution.get("stopDate") if execution else None
    execution_status = execution["status"] if execution else None
    status = record.get("status")
    if execution_status == "RUNNING":
        outcome = f"running ({status})" if status else "running"
    elif status in ENDED:
        outcome = status
    elif execution_status is not None:
        outcome = {"SUCCEEDED": "ended", "FAILED": "failed", "ABORTED": "stopped"}.get(
            execution_status, execution_status.lower()
        )
    else:
        outcome = status or "unknown"
    return {
        "layer": layer,
        "rollout_id": rollout_id,
        "outcome": outcome,
        "registry_status": status,
        "execution_status": execution_status,
        "started_at": _iso(started),
        "stopped_at": _iso(stopped),
        "duration_seconds": round((stopped - started).total_seconds(), 1) if started and stopped else None,
        "pushed_by": record.get("pushed_by") or None,
        "source": record.get("source"),
        "commit_id": record.get("commit_id") or None,
        "requirements_version": record.get("requirements_version") or None,
        "attempt": int(record.get("attempt") or 0),
        "reason": record.get("reason") or None,
        "verdict": record.get("verdict"),
        "verdict_detail": record.get("verdict_detail"),
        "updated_at": record.get("updated_at"),
    }


def _newest_first(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: r["started_at"] or r["updated_at"] or "", reverse=True)


def layer_history(
    cp: ControlPlane,
    layer: str,
    items: list[dict[str, Any]],
    executions: dict[str, dict[str, Any]],
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """The layer's rollouts, newest first: every ROLLOUT# record, and every execution of the layer
    that ended before it had one (a push refused at validation)."""
    records = {i["sk"].removeprefix("ROLLOUT#"): i for i in _kind(items, "ROLLOUT#")}
    names = set(records) | {name for name in executions if _is_layers_execution(name, layer)}
    rows = _newest_first([rollout_row(layer, n, records.get(n), executions.get(n)) for n in names])
    rows = rows[:limit] if limit else rows
    for row in rows:
        if row["rollout_id"] not in records and row["execution_status"] not in (None, "RUNNING"):
            error, cause = _ending(cp, row["rollout_id"])
            row["outcome"] = "rejected" if row["execution_status"] == "FAILED" else row["outcome"]
            row["reason"] = f"{error}: {cause}" if error else None
    return rows


# -- a layer at a glance -------------------------------------------------------------------------
def promoted_versions(items: list[dict[str, Any]]) -> dict[str, int]:
    """The versions of the last promoted rollout, one per variant: variant -> version. (An older
    promoted version of a variant that the last promotion no longer builds is not promoted any more.)"""
    promoted = [i for i in _kind(items, "VERSION#") if i.get("status") == "promoted"]
    if not promoted:
        return {}
    last = promoted[-1].get("rollout_id")
    return {i.get("variant") or "": int(i["version"]) for i in promoted if i.get("rollout_id") == last}


def layer_summary(
    cp: ControlPlane, layer: str, items: list[dict[str, Any]], executions: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    lock = _one(items, "LOCK")
    wait = _one(items, "WAIT")
    records = {i["sk"].removeprefix("ROLLOUT#"): i for i in _kind(items, "ROLLOUT#")}
    rows = _newest_first([rollout_row(layer, n, r, executions.get(n)) for n, r in records.items()])
    last = rows[0] if rows else None
    return {
        "layer": layer,
        "promoted": promoted_versions(items),
        "lock": {"owner": lock["owner"], "since": lock.get("acquired_at")} if lock else None,
        "waiting_for_approval": wait["rollout_id"] if wait and wait.get("kind") == "approval" else None,
        "last_rollout": last and {k: last[k] for k in ("rollout_id", "outcome", "started_at", "duration_seconds")},
    }


def layer_status(cp: ControlPlane, layer: str, items: list[dict[str, Any]], recent: int) -> dict[str, Any]:
    """`status`: the lock, the promoted ARNs, the last versions, and the last rollouts, apart."""
    from layershift_core.notify import usage_of

    from .controlplane import promoted_parameters

    lock = _one(items, "LOCK")
    wait = _one(items, "WAIT")
    versions = _kind(items, "VERSION#")[-recent:]
    rollouts = sorted(_kind(items, "ROLLOUT#"), key=lambda i: i.get("updated_at", ""))[-recent:]
    parameters = promoted_parameters(cp, layer)
    return {
        "layer": layer,
        "lock": {"owner": lock["owner"], "since": lock.get("acquired_at")} if lock else None,
        "waiting_for_approval": wait["rollout_id"] if wait and wait.get("kind") == "approval" else None,
        "promoted_arn": parameters.pop(f"/layershift/{layer}/arn", None),
        "promoted_variants": {
            name.removeprefix(f"/layershift/{layer}/").removesuffix("/arn"): arn for name, arn in parameters.items()
        },
        "versions": [
            {
                "version": int(v["version"]),
                "status": v.get("status"),
                "variant": v.get("variant") or None,
                "build_key": v.get("build_key"),
                "rollout_id": v.get("rollout_id"),
            }
            for v in reversed(versions)
        ],
        "rollouts": [
            {
                "rollout_id": r["sk"].removeprefix("ROLLOUT#"),
                "status": r.get("status"),
                "reason": r.get("reason") or None,
                "waiting_for": r.get("waiting_for"),
                "weight": r.get("weight"),
                "verdict": r.get("verdict"),
                "verdict_detail": r.get("verdict_detail"),
                "usage": usage_of(r) if any(k.startswith("usage:") for k in r) else None,
                "updated_at": r.get("updated_at"),
            }
            for r in reversed(rollouts)
        ],
    }


# -- one rollout as a tree -----------------------------------------------------------------------
def current_rollout(cp: ControlPlane, layer: str) -> str | None:
    """The rollout that holds the layer, else the newest one."""
    items = registry_items(cp, layer).get(layer, [])
    lock = _one(items, "LOCK")
    if lock:
        return str(lock["owner"])
    rows = layer_history(cp, layer, items, executions_by_name(cp), limit=1)
    return rows[0]["rollout_id"] if rows else None


def _output(event: dict[str, Any]) -> dict[str, Any]:
    details = event.get("stateExitedEventDetails") or {}
    try:
        value = json.loads(details.get("output") or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def load_plan(cp: ControlPlane, layer: str, rollout_id: str) -> dict[str, Any] | None:
    s3 = cp.client("s3")
    try:
        body = s3.get_object(Bucket=cp.bucket, Key=f"rollouts/{layer}/{rollout_id}/plan.json")["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    plan: dict[str, Any] = json.loads(body)
    return plan


# States entered once a traffic step's bake has ended healthy (rollout.asl.json).
_AFTER_A_STEP = {"StepHealthy", "NextTrafficStep", "AwaitApproval", "PromoteAliases"}


def _phase(name: str) -> dict[str, Any]:
    return {"name": name, "state": "pending", "detail": None}


def rollout_tree(
    cp: ControlPlane,
    layer: str,
    rollout_id: str,
    described: dict[str, Any],
    events: list[dict[str, Any]],
    plan: dict[str, Any] | None,
    live_weights: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """The rollout as phases -> traffic steps -> functions, from its history and its plan."""
    validate, build, plan_phase, traffic, ending = (
        _phase("validate"),
        _phase("build"),
        _phase("plan"),
        _phase("traffic"),
        _phase("promote"),
    )
    steps: list[dict[str, Any]] = []
    planned_steps: list[dict[str, Any]] = []
    layer_versions: list[dict[str, Any]] = []
    error = cause = None
    running_state = None
    approved = False  # AwaitApproval ended: the next step is the approved one
    for event in events:
        kind = event["type"]
        if kind.endswith("StateEntered"):
            running_state = event["stateEnteredEventDetails"]["name"]
            if running_state in _AFTER_A_STEP and steps and steps[-1]["state"] == "running":
                steps[-1]["state"] = "done"  # its bake ended healthy
            if running_state == "ValidateRequest":
                validate["state"] = "running"
            elif running_state in ("FindReusableBuild", "BuildLayer", "PublishLayerVersion"):
                build["state"] = "running"
            elif running_state in ("FindCandidates", "AssessCandidates", "PlanRollout", "PrepareFunctionVersions"):
                build["state"] = "done" if build["state"] == "running" else build["state"]
                plan_phase["state"] = "running" if plan_phase["state"] == "pending" else plan_phase["state"]
            elif running_state in ("PromoteAliases", "PromoteLayer"):
                traffic["state"] = "done"
                ending["state"] = "running"
            elif running_state == "RestoreAliases":
                ending = {**ending, "name": "roll back", "state": "running"}
        if kind in ("TaskFailed", "LambdaFunctionFailed") and steps and steps[-1]["state"] == "running":
            _step_failed(steps[-1], event)
        if not kind.endswith("StateExited"):
            if kind in ("ExecutionFailed", "ExecutionAborted", "ExecutionTimedOut"):
                details = (
                    event.get("executionFailedEventDetails")
                    or event.get("executionAbortedEventDetails")
                    or event.get("executionTimedOutEventDetails")
                    or {}
                )
                error, cause = details.get("error"), details.get("cause")
            continue
        name = event["stateExitedEventDetails"]["name"]
        output = _output(event)
        if name == "RollBack":  # the state it rolls back from carries the error
            summary = (output.get("restore") or {}).get("summary") or {}
            ending = {**ending, "name": "roll back", "state": "done"}
            ending["detail"] = f"{summary.get('restored', 0)} target(s) restored to their old version"
        if output.get("error"):  # left through a Catch: the failure event said what happened
            continue
        if name == "ValidateRequest" and output.get("rollout"):
            spec = output["rollout"].get("spec", {})
            validate["state"] = "done"
            validate["detail"] = "steps " + ", ".join(
                [*(f"{s['weight']}% for {s['bake_seconds']}s" for s in spec.get("steps", [])), "100%"]
            )
        elif name == "PublishLayerVersion" or (name == "FindReusableBuild" and output.get("layer_versions")):
            layer_versions = [
                {
                    "version": v["version"],
                    "variant": v.get("variant"),
                    "arn": v["arn"],
                    "reused": bool(v.get("reused")),
                }
                for v in output.get("layer_versions", [])
            ]
            if name == "PublishLayerVersion":
                build["state"] = "done"
        elif name == "PlanRollout" and output.get("plan"):
            summary = output["plan"]
            plan_phase["state"] = "done"
            counts = summary.get("target_count", 0), summary.get("skipped_count", 0)
            plan_phase["detail"] = "{} target(s), {} skipped".format(*counts)
            planned_steps = summary.get("shift_steps") or []
        elif name == "StartBake" and output.get("bake"):
            bake = output["bake"]
            if steps and steps[-1]["state"] == "running":
                steps[-1]["state"] = "done"
            steps.append(
                {
                    "index": bake.get("step_index", len(steps)),
                    "wave": bake["step"]["wave"],
                    "weight": bake["step"]["weight"],
                    "bake_seconds": bake["step"]["bake_seconds"],
                    "state": "running",
                    "checks": 0,
                    "verdict": None,
                    "verdict_detail": None,
                    "approval": "approved" if approved else None,
                }
            )
            approved = False
            traffic["state"] = "running"
        elif name == "CheckHealth" and steps:
            bake = output.get("bake") or {}
            steps[-1].update(
                checks=bake.get("checks", steps[-1]["checks"]),
                verdict=bake.get("verdict") or "healthy",
                verdict_detail=bake.get("verdict_detail") or "no gating alarm fired",
            )
        elif name == "AwaitApproval":
            approved = True
        elif name == "PromoteLayer":
            ending["state"] = "done"
            ending["detail"] = "every target alias is 100% on the new version"

    status = described["status"]
    failed_at = None
    if status != "RUNNING":
        for phase in (validate, build, plan_phase, traffic):
            if phase["state"] == "running":
                phase["state"] = "failed" if status != "SUCCEEDED" else "done"
                failed_at = failed_at or phase["name"]
        if steps and steps[-1]["state"] == "running":
            steps[-1]["state"] = "failed" if ending["name"] == "roll back" or status != "SUCCEEDED" else "done"
        if ending["state"] == "running":
            ending["state"] = "failed"
    reached = {s["index"] for s in steps}
    for index, step in enumerate(planned_steps):
        if index not in reached and status == "RUNNING":
            steps.append(
                {
                    "index": index,
                    "wave": step["wave"],
                    "weight": step["weight"],
                    "bake_seconds": step["bake_seconds"],
                    "state": "pending",
                    "checks": 0,
                    "verdict": None,
                    "verdict_detail": None,
                    "approval": None,
                }
            )
            if step.get("approval"):
                steps[-1]["approval"] = "waiting" if running_state == "AwaitApproval" else "required"
    targets = [t for t in (plan or {}).get("targets", []) if t.get("verdict") == "target"]
    for step in steps:
        step["functions"] = [
            _function_at(target, step, live_weights) for target in targets if target.get("wave", "main") == step["wave"]
        ]
    traffic["steps"] = steps
    if ending["name"] == "roll back" and ending["state"] == "done":
        ending["functions"] = [
            {"function": t["function_name"], "alias": t.get("alias"), "version": t.get("old_version")} for t in targets
        ]
    build["layer_versions"] = layer_versions
    plan_phase["skipped"] = [
        {"function": t["function_name"], "reason": t.get("reason")}
        for t in (plan or {}).get("targets", [])
        if t.get("verdict") != "target"
    ]
    started, stopped = described.get("startDate"), described.get("stopDate")
    outcome = _outcome(status, ending, error)
    return {
        "layer": layer,
        "rollout_id": rollout_id,
        "execution_arn": described["executionArn"],
        "status": status,
        "outcome": outcome,
        "current_state": running_state if status == "RUNNING" else None,
        "started_at": _iso(started),
        "stopped_at": _iso(stopped),
        "duration_seconds": round((stopped - started).total_seconds(), 1) if started and stopped else None,
        "error": error,
        "cause": cause,
        "phases": [validate, build, plan_phase, traffic, ending],
    }


def _step_failed(step: dict[str, Any], event: dict[str, Any]) -> None:
    """A task of the step failed: a failing canary verdict (RolloutUnhealthy) or another error."""
    details = event.get("taskFailedEventDetails") or event.get("lambdaFunctionFailedEventDetails") or {}
    cause = details.get("cause", "")
    with contextlib.suppress(ValueError, AttributeError):
        cause = json.loads(cause).get("errorMessage", cause)
    error = details.get("error")
    step["checks"] += 1 if error == "RolloutUnhealthy" else 0  # the check that failed returned no output
    step["verdict"] = "failing" if error == "RolloutUnhealthy" else error
    step["verdict_detail"] = str(cause)


def _outcome(status: str, ending: dict[str, Any], error: str | None) -> str:
    if status == "RUNNING":
        return "rolling back" if ending["name"] == "roll back" else "running"
    if status == "SUCCEEDED":
        return "promoted"
    if ending["name"] == "roll back":
        return "rolled back"
    return "rejected" if error else status.lower()


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


def live_alias_weights(cp: ControlPlane, plan: dict[str, Any] | None, limit: int = 50) -> dict[str, dict[str, float]]:
    """The routing of each target's alias, read from Lambda (for the step in progress; the first ``limit``)."""
    lam = cp.client("lambda")
    weights: dict[str, dict[str, float]] = {}
    for target in [t for t in (plan or {}).get("targets", []) if t.get("verdict") == "target"][:limit]:
        alias = lam.get_alias(FunctionName=target["function_name"], Name=target["alias"])
        routing = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
        weights[target["function_name"]] = {alias["FunctionVersion"]: 1 - sum(routing.values()), **routing}
    return weights
