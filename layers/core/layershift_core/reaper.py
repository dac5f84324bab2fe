"""After every execution of the rollout workflow ends, nothing it owned is left behind.

Step Functions sends an "Execution Status Change" event to EventBridge when an execution ends, and
this runs then, under its own role, outside the workflow:

- An execution that never reached one of its own endings (stopped from the console, timed out,
  or failed where no Catch applies) is rolled back: the reaper starts the RestoreStateMachine on the
  rollout's targets (a Map Run, like the workflow's own rollback, so a fleet of any size is put
  back) and keeps the layer's lock meanwhile, so no other rollout moves those aliases under it.
  When that restore ends, its own event brings the reaper back to finish the rollout: the registry
  told, a notification sent (a page when an alias could not be restored), the lock released.
- The layer lock the execution holds is released, so a later push never waits on a dead one.
- An ending whose notification the workflow could not publish is published here.
- An ended rollout's record is archived and set to expire (history.py) when the reaper wrote to it,
  or when the workflow's last tasks could not.

A succeeded execution whose final state says it sent its notification and released its lock
needs nothing: no AWS call is made for it. The workflow's own restores (``started_by`` workflow)
need nothing either: the workflow finishes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from .aws import client
from .fanout import items_key
from .history import ENDINGS, close_rollout
from .models import ExecutionStatusChange, Model, RestoreSummary, RolloutState
from .notify import publish_ending, usage_of
from .observability import MetricUnit, emit, logger
from .planner import load_plan, plan_key
from .registry import Registry, is_missing
from .settings import Settings
from .traffic import RestoreRequest, unrestored_lines

# The workflow's own Fail state for a refusal it could not announce.
UNNOTIFIED_REJECTION = "RequestRejectedUnnotified"
ROLLING_BACK = "rolling_back"


class ReapResult(Model):
    execution_arn: str
    actions: list[str]


def _finished_cleanly(output: str | None) -> bool:
    try:
        state = json.loads(output or "")
    except ValueError:
        return False
    return isinstance(state, dict) and state.get("notified") is True and state.get("lock_released") is True


def _planned(bucket: str, layer: str, rollout_id: str) -> bool:
    try:
        load_plan(bucket, plan_key(layer, rollout_id))
    except Exception as exc:
        if is_missing(exc):
            return False  # the execution ended before it planned: nothing was changed
        raise
    return True


def restore_execution_name(rollout_id: str) -> str:
    """The reaper's restore of a rollout: one per rollout, however often the event is delivered."""
    digest = hashlib.sha256(rollout_id.encode()).hexdigest()[:12]
    return f"reaped-{rollout_id[:60]}-{digest}"


def _why(described: dict[str, Any]) -> str:
    why = f"the execution ended {described['status']}"
    if described.get("error"):
        why += f" with {described['error']}: {described.get('cause') or ''}".rstrip(": ")
    return why


def _start_restore(settings: Settings, layer: str, rollout_id: str, reason: str) -> None:
    if not settings.restore_state_machine_arn:
        raise RuntimeError("LAYERSHIFT_RESTORE_STATE_MACHINE_ARN is not set: the reaper cannot restore")
    request = RestoreRequest(
        layer=layer,
        rollout_id=rollout_id,
        targets_key=items_key(layer, rollout_id, "targets"),
        started_by="reaper",
        reason=reason,
        fanout=settings.fanout,
    )
    sfn = client("stepfunctions")
    with contextlib.suppress(sfn.exceptions.ExecutionAlreadyExists):  # the same event twice: it runs already
        sfn.start_execution(
            stateMachineArn=settings.restore_state_machine_arn,
            name=restore_execution_name(rollout_id),
            input=request.model_dump_json(),
        )


def _finish(
    settings: Settings, registry: Registry, layer: str, rollout_id: str, summary: RestoreSummary | None, why: str
) -> tuple[str, dict[str, Any]]:
    """The rolled-back ending of a rollout the reaper restored (or had nothing to restore)."""
    restored_ok = summary is not None and not summary.unrestored_count
    ending = "rolled_back" if restored_ok or summary is None else "rollback_incomplete"
    reason = f"{why}; finished by the reaper"
    if summary is not None and summary.unrestored_count:
        reason += f"; could not restore {summary.unrestored_count}: {'; '.join(unrestored_lines(summary))}"
    registry.put_rollout(layer, rollout_id, status=ending, reason=reason)
    record = registry.rollout(layer, rollout_id) or {}
    for arn in (record.get("layer_version_arns") or record.get("layer_version_arn") or "").split(","):
        if arn:
            registry.set_version_status(layer, int(arn.rsplit(":", 1)[-1]), ending, reason)
    body: dict[str, Any] = {
        "outcome": {
            "status": ending,
            "error": "RolledBackByReaper",
            "cause": reason,
            "restored": summary.restored if summary else 0,
        },
        "usage": usage_of(record),
    }
    if summary is not None and summary.unrestored_count:
        body["unrestored"] = summary.unrestored
        body["unrestored_count"] = summary.unrestored_count
        body["unrestored_key"] = summary.unrestored_key
    close_rollout(settings, layer, rollout_id)
    return ending, body


def _announce(
    settings: Settings, registry: Registry, layer: str, rollout_id: str, body: dict[str, Any], result: ReapResult
) -> None:
    event = body["outcome"]["status"]
    body = {"event": event, "layer": layer, "rollout_id": rollout_id, "sent_by": "reaper", **body}
    publish_ending(settings, event, layer, body)
    registry.put_rollout(layer, rollout_id, notified_at=datetime.now(UTC).isoformat())
    result.actions.append(f"published the {event} notification")


def _reap_restore(change: ExecutionStatusChange, settings: Settings, result: ReapResult) -> None:
    """A RestoreStateMachine execution ended: finish the rollout the reaper was restoring."""
    described = client("stepfunctions").describe_execution(executionArn=change.execution_arn)
    request = RestoreRequest.model_validate_json(described["input"])
    if request.started_by != "reaper":
        return  # the workflow's own rollback: the workflow records and announces it
    registry = Registry(settings.table)
    record = registry.rollout(request.layer, request.rollout_id) or {}
    if record.get("status") in ENDINGS:
        return  # finished already (the same event delivered twice)
    if described["status"] == "SUCCEEDED":
        summary = RestoreSummary.model_validate_json(described.get("output") or "{}")
    else:
        summary = RestoreSummary(
            unrestored_count=1,
            unrestored=[
                {
                    "function": "?",
                    "alias": "?",
                    "restore_to_version": None,
                    "now": "unknown",
                    "why": f"the restore execution {change.execution_arn} ended {described['status']}",
                    "fix": [f"see the plan: s3://{settings.bucket}/{plan_key(request.layer, request.rollout_id)}"],
                }
            ],
        )
    ending, body = _finish(settings, registry, request.layer, request.rollout_id, summary, request.reason or "")
    result.actions.append(f"finished the rollout: {ending}")
    if registry.release_lock(request.layer, request.rollout_id):
        result.actions.append(f"released the lock on {request.layer}")
    _announce(settings, registry, request.layer, request.rollout_id, body, result)
    close_rollout(settings, request.layer, request.rollout_id)  # archived again, as notified


def reap(change: ExecutionStatusChange, settings: Settings) -> ReapResult:
    result = ReapResult(execution_arn=change.execution_arn, actions=[])
    if change.status in {"RUNNING", "PENDING_REDRIVE"}:
        return result
    if settings.restore_state_machine_arn and change.state_machine_arn == settings.restore_state_machine_arn:
        _reap_restore(change, settings, result)
        _log(result)
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
        if ending == ROLLING_BACK:
            return result  # the reaper's restore runs: its own ending finishes the rollout
        # An execution that ended without reaching one of its own endings: UnfinishedExecutionAlarm.
        emit("ExecutionsUnfinished", MetricUnit.Count, 1)
        if _planned(settings.bucket, layer, rollout_id):
            why = _why(described)
            _start_restore(settings, layer, rollout_id, why)
            registry.put_rollout(layer, rollout_id, status=ROLLING_BACK, reason=f"{why}; the reaper is restoring")
            result.actions.append("started restoring the rollout's targets")
            _log(result)
            return result  # the lock stays held until the restore has ended
        ending, body = _finish(settings, registry, layer, rollout_id, None, _why(described))
        result.actions.append(f"finished the rollout: {ending}")

    if registry.release_lock(layer, rollout_id):
        result.actions.append(f"released the lock on {layer}")

    unannounced = record and ending in ENDINGS and not record.get("notified_at")
    # A refusal whose Notify failed after it announced it (its record says so) is not announced twice.
    unannounced_rejection = described.get("error") == UNNOTIFIED_REJECTION and not record.get("notified_at")
    if body is None and (unannounced or unannounced_rejection):
        cause = record.get("reason") or described.get("cause")
        body = {"outcome": {"status": ending or "rejected", "error": described.get("error"), "cause": cause}}
    if body is not None:
        if record:
            _announce(settings, registry, layer, rollout_id, body, result)
        else:
            event = body["outcome"]["status"]
            publish_ending(
                settings,
                event,
                layer,
                {"event": event, "layer": layer, "rollout_id": rollout_id, "sent_by": "reaper", **body},
            )
            result.actions.append(f"published the {event} notification")
    if record and ending in ENDINGS and (body is not None or "expires_at" not in record):
        # Archived again after what the reaper wrote, or for the first time when the workflow's last
        # tasks could not (closing is idempotent).
        close_rollout(settings, layer, rollout_id)
    _log(result)
    return result


def _log(result: ReapResult) -> None:
    if result.actions:
        logger.warning("reaped an execution", extra={"execution": result.execution_arn, "actions": result.actions})
