"""Notifications: one SNS message per rollout ending, readable by a person and parseable by a machine."""

from __future__ import annotations

import json

from .aws import client
from .models import NotifyRequest, RolloutState
from .settings import Settings
from .traffic import reject

SUBJECTS = {
    "promoted": "layershift: {layer} promoted",
    "rolled_back": "layershift: {layer} rolled back",
    "rejected": "layershift: {layer} push rejected",
    "rollback_incomplete": "layershift: ACTION NEEDED, {layer} rollback incomplete",
}


def notify(request: NotifyRequest, settings: Settings) -> RolloutState:
    state = request.state
    if request.event in {"rejected", "rollback_incomplete"}:
        state = reject(state, request.event)
    layer = state.request.layer
    body = {
        "event": request.event,
        "layer": layer,
        "rollout_id": state.rollout.rollout_id if state.rollout else None,
        "layer_version": state.layer_version.arn if state.layer_version else None,
        "outcome": state.outcome.model_dump(mode="json") if state.outcome else None,
    }
    if settings.topic_arn:
        client("sns").publish(
            TopicArn=settings.topic_arn,
            Subject=SUBJECTS[request.event].format(layer=layer)[:100],
            Message=json.dumps(body, indent=2),
        )
    return state
