"""Signals that reach a running rollout at once: an alarm that fires, an operator's approve, reject or abort.

While a rollout waits (a bake, or the approval before 100%), it waits in a Step Functions task
with a task token, recorded in the registry. A signal ends that wait with SendTaskSuccess or
SendTaskFailure, and the workflow's catch leads into rollback without waiting for the next poll.
An abort is also recorded, so every forward step refuses to go on (`ensure_not_aborted`) and the
rollback reports it.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .aborts import ensure_not_aborted
from .aws import client, error_code
from .errors import ApprovalRejected, NothingWaiting, RolloutAborted, RolloutUnhealthy
from .health import firing_alarms
from .models import LayerName, StepState
from .notify import publish
from .observability import logger, metrics
from .registry import Registry
from .settings import Settings

BAKE = "bake"
APPROVAL = "approval"
WaitKind = Literal["bake", "approval"]
_STALE_TOKEN_ERRORS = {"TaskTimedOut", "TaskDoesNotExist", "InvalidToken"}


class WaitRequest(BaseModel):
    """The payload of a waitForTaskToken task: the step it belongs to and its token."""

    model_config = ConfigDict(extra="ignore")

    kind: WaitKind
    token: str
    step: StepState


def register_wait(request: WaitRequest, settings: Settings) -> dict[str, Any]:
    """Record the token the rollout waits in; refuse to wait when a signal already came.

    A gating alarm that fired, or an abort requested, between the last check and this wait
    would otherwise be noticed only at the next poll.
    """
    step = request.step
    # The lease must outlast an approval wait, however long layer.toml lets it be.
    approval_timeout = int((step.model_extra or {}).get("approval_timeout_seconds") or 0)
    lease = approval_timeout + settings.lock_lease_seconds if request.kind == APPROVAL else None
    ensure_not_aborted(settings, step.layer, step.rollout_id, lease_seconds=lease)
    Registry(settings.table).put_wait(step.layer, step.rollout_id, request.kind, request.token, step.alarms)
    firing = firing_alarms(step)
    if firing:
        raise RolloutUnhealthy(f"at {step.step.weight}% on the new version, {firing}")
    if request.kind == APPROVAL:
        _announce_approval(settings, step)
    return {"waiting": request.kind}


def _announce_approval(settings: Settings, step: StepState) -> None:
    commands = f"layershift approve {step.layer}\nlayershift reject {step.layer}"
    publish(
        settings,
        step.layer,
        "approval_needed",
        "warning",
        f"layershift: {step.layer} waits for approval before 100%",
        (
            f"Rollout {step.rollout_id} of layer {step.layer} is healthy so far and waits for approval "
            f"before it moves every target to 100% on the new version.\n\nTo go on, or to roll back:\n{commands}\n"
            "(add --stack NAME or --local as for any layershift command)"
        ),
        {"weight_percent": step.step.weight, "commands": commands.splitlines()},
        rollout_id=step.rollout_id,
    )


def signal_wait(
    settings: Settings,
    layer: str,
    *,
    error: str | None = None,
    cause: str = "",
    kinds: tuple[str, ...] = (BAKE, APPROVAL),
    rollout_id: str | None = None,
) -> str | None:
    """End the wait of the layer's running rollout: success without ``error``, else failure.

    Returns the rollout id that was signalled, or None when nothing (or another rollout) waits.
    """
    wait = Registry(settings.table).get_wait(layer)
    if not wait or wait.get("kind") not in kinds or (rollout_id and wait.get("rollout_id") != rollout_id):
        return None
    sfn = client("stepfunctions")
    try:
        if error is None:
            sfn.send_task_success(taskToken=wait["token"], output=json.dumps({"signal": "approved"}))
        else:
            sfn.send_task_failure(taskToken=wait["token"], error=error, cause=cause[:32_000])
    except Exception as exc:
        if error_code(exc) in _STALE_TOKEN_ERRORS:
            return None
        raise
    return str(wait["rollout_id"])


def on_alarm(event: dict[str, Any], settings: Settings) -> list[str]:
    """An alarm state change from EventBridge: end the wait of every rollout that alarm gates."""
    detail = event.get("detail") or {}
    name = str(detail.get("alarmName") or "")
    state = detail.get("state") or {}
    if not name or state.get("value") != "ALARM":
        return []
    signalled: list[str] = []
    for entry in Registry(settings.table).layers_gated_by(name):
        cause = f"alarm {name} went into ALARM at {state.get('timestamp', event.get('time', '?'))}: " + str(
            state.get("reason", "")
        )
        rollout = signal_wait(
            settings, entry["layer"], error="RolloutUnhealthy", cause=cause, rollout_id=entry["rollout_id"]
        )
        if rollout:
            signalled.append(f"{entry['layer']}:{rollout}")
    if signalled:
        metrics.add_metric(name="InstantAborts", unit="Count", value=len(signalled))
        logger.warning("alarm ended bakes", extra={"alarm": name, "rollouts": signalled})
    return signalled


def approve(settings: Settings, layer: str) -> str:
    rollout = signal_wait(settings, layer, kinds=(APPROVAL,))
    if rollout is None:
        raise NothingWaiting(f"no rollout of layer {layer!r} is waiting for approval")
    return rollout


def reject(settings: Settings, layer: str, reason: str) -> str:
    cause = f"rejected by an operator: {reason}"
    rollout = signal_wait(settings, layer, error=ApprovalRejected.__name__, cause=cause, kinds=(APPROVAL,))
    if rollout is None:
        raise NothingWaiting(f"no rollout of layer {layer!r} is waiting for approval")
    return rollout


class ApprovalRequest(BaseModel):
    """What an approver sends ApproveRollout: approve, or reject with a reason, the layer's waiting rollout."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    layer: LayerName
    reason: str = Field(default="", max_length=1000)


def decide_approval(request: ApprovalRequest, settings: Settings) -> str:
    """The approver's decision, sent to the waiting rollout; the rollout id, or NothingWaiting."""
    if request.decision == "approve":
        return approve(settings, request.layer)
    return reject(settings, request.layer, request.reason or "no reason given")


def abort(settings: Settings, layer: str, rollout_id: str, reason: str) -> bool:
    """Record the abort and end the rollout's wait, if it waits. Returns whether a wait was ended."""
    Registry(settings.table).request_abort(layer, rollout_id, reason)
    cause = f"aborted by an operator: {reason}"
    return signal_wait(settings, layer, error=RolloutAborted.__name__, cause=cause, rollout_id=rollout_id) is not None
