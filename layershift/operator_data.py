"""What the operator views read: the registry (paged), the executions, the plan in S3, the
archived records of rollouts the registry has let expire (``history/<layer>/``) and the aliases'
live routing (`operator_tree` folds a rollout's history into its tree).

Everything here returns plain data (dicts and lists that `--output json` prints as they are); the
rendering is in `operator_views`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from layershift_core.history import history_prefix
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


def iso(moment: datetime | None) -> str | None:
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
        "started_at": iso(started),
        "stopped_at": iso(stopped),
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


def archived_records(
    cp: ControlPlane, layer: str, known: set[str], limit: int | None = None
) -> dict[str, dict[str, Any]]:
    """The archived records (``history/<layer>/<id>.json``) of the layer's rollouts that are not in
    ``known``: those whose registry record has expired. The newest ``limit`` of them, by when they
    were archived (every one whose record expired ended before every one the registry still has)."""
    s3, prefix = cp.client("s3"), history_prefix(layer)
    found: list[tuple[datetime, str, str]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=cp.bucket, Prefix=prefix):
        for entry in page.get("Contents", []):
            rollout_id = entry["Key"].removeprefix(prefix).removesuffix(".json")
            if entry["Key"].endswith(".json") and "/" not in rollout_id and rollout_id not in known:
                found.append((entry["LastModified"], rollout_id, entry["Key"]))
    found.sort(reverse=True)
    records: dict[str, dict[str, Any]] = {}
    for _, rollout_id, key in found[:limit] if limit else found:
        records[rollout_id] = json.loads(s3.get_object(Bucket=cp.bucket, Key=key)["Body"].read())
    return records


def layer_history(
    cp: ControlPlane,
    layer: str,
    items: list[dict[str, Any]],
    executions: dict[str, dict[str, Any]],
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """The layer's rollouts, newest first: every ROLLOUT# record, every archived record of a rollout
    the registry has let expire, and every execution of the layer that ended before it had a record
    (a push refused at validation)."""
    records = {i["sk"].removeprefix("ROLLOUT#"): i for i in _kind(items, "ROLLOUT#")}
    records |= archived_records(cp, layer, set(records), limit)
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


def load_plan(cp: ControlPlane, layer: str, rollout_id: str) -> dict[str, Any] | None:
    s3 = cp.client("s3")
    try:
        body = s3.get_object(Bucket=cp.bucket, Key=f"rollouts/{layer}/{rollout_id}/plan.json")["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    plan: dict[str, Any] = json.loads(body)
    return plan


def live_alias_weights(cp: ControlPlane, plan: dict[str, Any] | None, limit: int = 20) -> dict[str, dict[str, float]]:
    """The routing of each target's alias, read from Lambda (for the step in progress; the first ``limit``)."""
    lam = cp.client("lambda")
    weights: dict[str, dict[str, float]] = {}
    for target in [t for t in (plan or {}).get("targets", []) if t.get("verdict") == "target"][:limit]:
        alias = lam.get_alias(FunctionName=target["function_name"], Name=target["alias"])
        routing = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
        weights[target["function_name"]] = {alias["FunctionVersion"]: 1 - sum(routing.values()), **routing}
    return weights
