"""After every execution of the rollout workflow ends, nothing it owned is left behind.

Step Functions sends an "Execution Status Change" event to EventBridge when an execution ends, and
this runs then, under its own role, outside the workflow:

- An execution that never reached one of its own endings (stopped from the console, timed out,
  or failed where no Catch applies) is rolled back here: every alias of its plan back on its old
  version with no routing, `$LATEST` layers restored, the registry told, a notification sent (a
  page when an alias could not be restored).
- The layer lock the execution holds is released, so a later push never waits on a dead one.
- An ending whose notification the workflow could not publish is published here.

A succeeded execution whose final state says it sent its notification and released its lock
needs nothing: no AWS call is made for it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from .aws import client
from .models import ExecutionStatusChange, Model, RolloutPlan, RolloutState
from .notify import publish_ending, skipped_targets, unrestored_aliases
from .observability import logger
from .planner import load_plan, plan_key
from .registry import Registry, is_missing
from .settings import Settings
from .traffic import restore_targets

ENDINGS = frozenset({"promoted", "rolled_back", "rejected", "rollback_incomplete"})
# The workflow's own Fail state for a refusal it could not announce.
UNNOTIFIED_REJECTION = "RequestRejectedUnnotified"


class ReapResult(Model):
    execution_arn: str
    actions: list[str]


def _finished_cleanly(output: str | None) -> bool:
    try:
        state = json.loads(output or "")
    except ValueError:
        return False
    return isinstance(state, dict) and state.get("notified") is True and state.get("lock_released") is True


def _load_plan(bucket: str, layer: str, rollout_id: str) -> RolloutPlan | None:
    try:
        return load_plan(bucket, plan_key(layer, rollout_id))
    except Exception as exc:
        if is_missing(exc):
            return None  # the execution ended before it planned: nothing was changed
        raise


def _end_unfinished(
    settings: Settings, registry: Registry, described: dict[str, Any], layer: str, record: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """Roll back an execution that stopped before its own ending; (ending, notification body)."""
    rollout_id = described["name"]
    why = f"the execution ended {described['status']}"
    if described.get("error"):
        why += f" with {described['error']}: {described.get('cause') or ''}".rstrip(": ")
    plan = _load_plan(settings.bucket, layer, rollout_id)
    restored, unrestored = restore_targets(plan)
    ending = "rollback_incomplete" if unrestored else "rolled_back"
    reason = f"{why}; finished by the reaper" + (f"; could not restore: {'; '.join(unrestored)}" if unrestored else "")
    registry.put_rollout(layer, rollout_id, status=ending, reason=reason)
    arn = record.get("layer_version_arn")
    if arn:
        registry.set_version_status(layer, int(arn.rsplit(":", 1)[-1]), ending, reason)
    body: dict[str, Any] = {
        "outcome": {"status": ending, "error": described["status"], "cause": reason, "restored": restored},
        "skipped": skipped_targets(plan),
    }
    if unrestored:
        body["unrestored"] = unrestored_aliases(plan)
    return ending, body


def reap(change: ExecutionStatusChange, settings: Settings) -> ReapResult:
    result = ReapResult(execution_arn=change.execution_arn, actions=[])
    if change.status in {"RUNNING", "PENDING_REDRIVE"}:
        return result
    if change.status == "SUCCEEDED" and _finished_cleanly(change.output):
        return result
    described = client("stepfunctions").describe_execution(executionArn=change.execution_arn)
    if described["status"] == "RUNNING":
        return result  # redriven since the event was sent: the workflow is in charge again
    state = RolloutState.model_validate_json(described["input"])
    layer, rollout_id = state.request.layer, described["name"]
    registry = Registry(settings.table)
    record = registry.rollout(layer, rollout_id) or {}
    ending = record.get("status")
    body: dict[str, Any] | None = None

    if described["status"] != "SUCCEEDED" and record and ending not in ENDINGS:
        ending, body = _end_unfinished(settings, registry, described, layer, record)
        result.actions.append(f"finished the rollout: {ending}")

    if registry.release_lock(layer, rollout_id):
        result.actions.append(f"released the lock on {layer}")

    unannounced = record and ending in ENDINGS and not record.get("notified_at")
    if body is None and (unannounced or described.get("error") == UNNOTIFIED_REJECTION):
        cause = record.get("reason") or described.get("cause")
        body = {"outcome": {"status": ending or "rejected", "error": described.get("error"), "cause": cause}}
    if body is not None:
        event = body["outcome"]["status"]
        body = {"event": event, "layer": layer, "rollout_id": rollout_id, "sent_by": "reaper", **body}
        publish_ending(settings, event, layer, body)
        if record:
            registry.put_rollout(layer, rollout_id, notified_at=datetime.now(UTC).isoformat())
        result.actions.append(f"published the {event} notification")
    if result.actions:
        logger.warning("reaped an execution", extra={"execution": change.execution_arn, "actions": result.actions})
    return result
