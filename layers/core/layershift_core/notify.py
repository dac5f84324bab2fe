"""Notifications: one SNS message per rollout ending, readable by a person and parseable by a machine."""

from __future__ import annotations

import json

from .aws import client
from .models import NotifyRequest, RolloutState, Verdict
from .planner import load_plan
from .registry import Registry
from .settings import Settings
from .traffic import reject

SUBJECTS = {
    "promoted": "layershift: {layer} promoted",
    "rolled_back": "layershift: {layer} rolled back",
    "rejected": "layershift: {layer} push rejected",
    "rollback_incomplete": "layershift: ACTION NEEDED, {layer} rollback incomplete",
}


def _skipped(bucket: str, state: RolloutState) -> list[dict[str, str | None]]:
    """The functions the plan left out, with why: their owners need to hear it."""
    if state.plan is None or not state.plan.skipped_count:
        return []
    plan = load_plan(bucket, state.plan.plan_key)
    return [
        {"function": target.function_name, "reason": target.reason}
        for target in plan.targets
        if target.verdict is Verdict.SKIPPED
    ]


def notify(request: NotifyRequest, settings: Settings) -> RolloutState:
    state = request.state
    if request.event in {"rejected", "rollback_incomplete"}:
        state = reject(state, request.event)
    if request.event == "rejected" and state.rollout is not None and state.outcome is not None:
        Registry(settings.table).put_rollout(
            state.rollout.layer,
            state.rollout.rollout_id,
            status="rejected",
            reason=f"{state.outcome.error}: {state.outcome.cause}",
        )
    layer = state.request.layer
    body = {
        "event": request.event,
        "layer": layer,
        "rollout_id": state.rollout.rollout_id if state.rollout else None,
        "layer_version": state.layer_version.arn if state.layer_version else None,
        "outcome": state.outcome.model_dump(mode="json") if state.outcome else None,
        "skipped": _skipped(settings.bucket, state),
        "commit_id": state.request.commit_id,
    }
    if settings.topic_arn:
        client("sns").publish(
            TopicArn=settings.topic_arn,
            Subject=SUBJECTS[request.event].format(layer=layer)[:100],
            Message=json.dumps(body, indent=2),
        )
    return state
