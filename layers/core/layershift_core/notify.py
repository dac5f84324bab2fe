"""Notifications: one SNS message per rollout ending, readable by a person and parseable by a machine.

A rollback that could not finish pages: its message names every alias that is not back on its old
version, what it points at now, and the exact commands that put it back.
"""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime
from typing import Any

from .aws import client
from .models import NotifyRequest, RolloutPlan, RolloutState, TargetPlan, Verdict
from .observability import logger
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


def _plan(bucket: str, state: RolloutState, event: str) -> RolloutPlan | None:
    """The plan, read only when the message needs it: skipped functions, or aliases to fix."""
    if state.plan is None or not (state.plan.skipped_count or event == "rollback_incomplete"):
        return None
    return load_plan(bucket, state.plan.plan_key)


def skipped_targets(plan: RolloutPlan | None) -> list[dict[str, str | None]]:
    """The functions the plan left out, with why: their owners need to hear it."""
    return [
        {"function": target.function_name, "reason": target.reason}
        for target in (plan.targets if plan else [])
        if target.verdict is Verdict.SKIPPED
    ]


def fix_commands(target: TargetPlan) -> list[str]:
    """The AWS CLI commands that put one target back where the rollout found it."""
    function = shlex.quote(target.function_name)
    commands = [
        f"aws lambda update-alias --function-name {function} --name {shlex.quote(target.alias)} "
        f"--function-version {target.old_version} --routing-config AdditionalVersionWeights={{}}"
    ]
    layers = " ".join(shlex.quote(arn) for arn in target.current_layers)
    commands.append(
        f"aws lambda update-function-configuration --function-name {function} "
        + (f"--layers {layers}" if layers else "--layers '[]'")
    )
    return commands


def unrestored_aliases(plan: RolloutPlan | None) -> list[dict[str, Any]]:
    """Every target not verifiably back on its old version with no routing, read live from Lambda."""
    lam = client("lambda")
    left: list[dict[str, Any]] = []
    for target in plan.active if plan else []:
        try:
            alias = lam.get_alias(FunctionName=target.function_name, Name=target.alias)
        except Exception as exc:  # cannot look: say so, and give the fix anyway
            now = f"unknown ({type(exc).__name__}: {exc})"
        else:
            routing = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
            if alias["FunctionVersion"] == target.old_version and not routing:
                continue
            now = f"version {alias['FunctionVersion']}" + (f" with routing {routing}" if routing else "")
        left.append(
            {
                "function": target.function_name,
                "alias": target.alias,
                "restore_to_version": target.old_version,
                "now": now,
                "fix": fix_commands(target),
            }
        )
    return left


def publish_ending(settings: Settings, event: str, layer: str, body: dict[str, Any]) -> None:
    """Publish one ending to the topic: a JSON body, with the aliases to fix spelled out first."""
    if not settings.topic_arn:
        return
    message = json.dumps(body, indent=2)
    if body.get("unrestored"):
        lines = ["ACTION NEEDED: these aliases are not back on their old version. Fix each with:"]
        for entry in body["unrestored"]:
            lines.append(f"- {entry['function']} alias {entry['alias']} (now {entry['now']}):")
            lines.extend(f"    {command}" for command in entry["fix"])
        message = "\n".join(lines) + "\n\n" + message
    client("sns").publish(
        TopicArn=settings.topic_arn, Subject=SUBJECTS[event].format(layer=layer)[:100], Message=message
    )


def notify(request: NotifyRequest, settings: Settings) -> RolloutState:
    state = request.state
    if request.event in {"rejected", "rollback_incomplete"}:
        state = reject(state, request.event)
    registry = Registry(settings.table)
    if request.event == "rejected" and state.rollout is not None and state.outcome is not None:
        registry.put_rollout(
            state.rollout.layer,
            state.rollout.rollout_id,
            status="rejected",
            reason=f"{state.outcome.error}: {state.outcome.cause}",
        )
    layer = state.request.layer
    plan = _plan(settings.bucket, state, request.event)
    body = {
        "event": request.event,
        "layer": layer,
        "rollout_id": state.rollout.rollout_id if state.rollout else None,
        "layer_version": state.layer_version.arn if state.layer_version else None,
        "outcome": state.outcome.model_dump(mode="json") if state.outcome else None,
        "skipped": skipped_targets(plan),
        "commit_id": state.request.commit_id,
    }
    if request.event == "rollback_incomplete":
        body["unrestored"] = unrestored_aliases(plan)
    publish_ending(settings, request.event, layer, body)
    state.notified = True
    if state.rollout is not None:
        registry.put_rollout(state.rollout.layer, state.rollout.rollout_id, notified_at=datetime.now(UTC).isoformat())
    logger.info("notified", extra={"event": request.event, "layer": layer})
    return state
