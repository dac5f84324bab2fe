"""Notifications: one SNS message per phase of a rollout, readable by a person and parseable by a machine.

Every message goes through ``publish``: its body is AWS Chatbot's custom notification schema (a
title, a description, and the phase's numbers as ``metadata.additionalContext``; the rollout's
messages share a ``threadId``), and its message attributes ``layer``, ``phase`` and ``severity`` are
what subscription filter policies choose by. The phases: ``accepted``, ``built``, ``traffic_step``,
``approval_needed``, and the endings ``promoted``, ``rolled_back``, ``rejected`` and
``rollback_incomplete`` (severity ``critical``: it pages).

An ending also carries its full record (targets, skipped functions, usage; the aliases to fix first
when it pages): that is the message every subscriber but a chat one receives (``MessageStructure``
``json``: ``default`` is the record, ``https``, the protocol chat integrations subscribe with, the
chat schema).

A rollback that could not finish pages: its message names every alias that is not back on its old
version (the first few; the rest are in S3), what it points at now, and the exact commands that put
it back. Every message says what the rollout spent (``usage``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from .aws import client
from .fanout import flush_usage
from .history import close_rollout
from .models import NotifyRequest, RolloutPlan, RolloutState, Verdict
from .observability import MetricUnit, emit, logger
from .planner import load_plan
from .registry import Registry
from .settings import Settings
from .traffic import reject
from .usage import (
    CHILD_EXECUTIONS,
    GET_METRIC_DATA,
    PACING_SECONDS,
    THROTTLES,
    TRANSITIONS_CHILDREN,
    TRANSITIONS_PARENT,
    USAGE,
    from_record,
    lambda_calls,
)

SUBJECTS = {
    "promoted": "layershift: {layer} promoted",
    "rolled_back": "layershift: {layer} rolled back",
    "rejected": "layershift: {layer} push rejected",
    "rollback_incomplete": "layershift: ACTION NEEDED, {layer} rollback incomplete",
}
# Each ending's phase attribute is its event; its severity:
SEVERITIES = {"promoted": "info", "rolled_back": "warning", "rejected": "warning", "rollback_incomplete": "critical"}
_CHAT_TITLE_MAX, _CHAT_DESCRIPTION_MAX = 250, 8000


def publish(
    settings: Settings,
    layer: str,
    phase: str,
    severity: str,
    title: str,
    description: str,
    details: dict[str, Any],
    *,
    rollout_id: str | None = None,
    record: str | None = None,
) -> None:
    """Publish one phase of a rollout: ONE SNS message, in the chat schema, with its filter attributes.

    ``details`` are the phase's numbers (flattened to strings, as the schema's ``additionalContext``
    wants); ``record``, when given, is what subscribers other than chat receive instead.
    """
    if not settings.topic_arn:
        return
    context = {"layer": layer, "phase": phase, "severity": severity}
    if rollout_id:
        context["rollout_id"] = rollout_id
    context.update({key: _flat(value) for key, value in details.items() if value is not None})
    chat = {
        "version": "1.0",
        "source": "custom",
        "content": {
            "textType": "client-markdown",
            "title": title[:_CHAT_TITLE_MAX],
            "description": description[:_CHAT_DESCRIPTION_MAX],
        },
        "metadata": {
            "threadId": f"layershift-{layer}-{rollout_id or 'push'}",
            "summary": title[:_CHAT_TITLE_MAX],
            "eventType": phase,
            "additionalContext": context,
        },
    }
    attributes = {
        name: {"DataType": "String", "StringValue": value}
        for name, value in (("layer", layer), ("phase", phase), ("severity", severity))
    }
    kwargs: dict[str, Any] = {"Message": json.dumps(chat)}
    if record is not None:
        kwargs = {"MessageStructure": "json", "Message": json.dumps({"default": record, "https": json.dumps(chat)})}
    client("sns").publish(TopicArn=settings.topic_arn, Subject=title[:100], MessageAttributes=attributes, **kwargs)
    logger.info("notification published", extra={"layer": layer, "phase": phase, "severity": severity})


def _flat(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


# The states each ending still enters after its notification (the lock's release, the end state).
STATES_AFTER_NOTIFY = {"promoted": 2, "rolled_back": 2, "rollback_incomplete": 2, "rejected": 1}
# Skipped functions named in a message; the plan in S3 names every one.
SKIPPED_SHOWN = 50


def skipped_targets(plan: RolloutPlan | None, limit: int = SKIPPED_SHOWN) -> list[dict[str, str | None]]:
    """The functions the plan left out, with why: their owners need to hear it (the first ``limit``)."""
    skipped = [target for target in (plan.targets if plan else []) if target.verdict is Verdict.SKIPPED]
    return [{"function": target.function_name, "reason": target.reason} for target in skipped[:limit]]


def usage_of(record: dict[str, Any]) -> dict[str, Any]:
    """A rollout record's usage, as the notification and `layershift status` show it."""
    counts = from_record(record)
    calls = lambda_calls(counts)
    return {
        "lambda_calls": dict(sorted(calls.items())),
        "lambda_calls_total": sum(calls.values()),
        "get_metric_data_calls": int(counts.get(GET_METRIC_DATA, 0)),
        "throttles_absorbed": int(counts.get(THROTTLES, 0)),
        "child_executions": int(counts.get(CHILD_EXECUTIONS, 0)),
        "state_transitions": {
            "parent": int(counts.get(TRANSITIONS_PARENT, 0)),
            "children": int(counts.get(TRANSITIONS_CHILDREN, 0)),
        },
        "seconds_waiting_for_budget": round(float(counts.get(PACING_SECONDS, 0)), 1),
    }


def usage_line(usage: dict[str, Any]) -> str:
    """One line of what a rollout spent, for `layershift status`."""
    calls = usage["lambda_calls"]
    by_operation = ", ".join(f"{op} {n}" for op, n in sorted(calls.items(), key=lambda item: -item[1]))
    transitions = usage["state_transitions"]
    return (
        f"{usage['lambda_calls_total']} Lambda requests ({by_operation or 'none'}), "
        f"{usage['get_metric_data_calls']} GetMetricData, {usage['child_executions']} child executions, "
        f"{transitions['parent'] + transitions['children']} state transitions ({transitions['parent']} parent, "
        f"{transitions['children']} children), {usage['throttles_absorbed']} throttles absorbed, "
        f"{usage['seconds_waiting_for_budget']} s waiting for the request budget"
    )


# The workflow's states, by the phase of a rollout they belong to (the dashboard's PhaseDuration).
PHASES = {
    "validate": ("ValidateRequest",),
    "lock_wait": ("AcquireLayerLock", "WaitForLayerLock"),
    "build": ("FindReusableBuild", "BuildLayer", "PublishLayerVersion", "ShareLayerVersions"),
    "plan": ("FindCandidates", "AssessCandidates", "PlanRollout"),
    "prepare": ("PrepareFunctionVersions", "RecordPreparedVersions"),
    "traffic": ("SetTrafficWeight", "StartBake", "BakeAndWatch", "ReadCanaryMetrics", "CheckHealth"),
    "approval": ("AwaitApproval",),
    "promote": ("PromoteAliases", "PromoteLayer"),
    "rollback": ("RestoreAliases", "RollBack"),
}
_PHASE_OF = {state: phase for phase, states in PHASES.items() for state in states}


def execution_history(execution_arn: str) -> list[dict[str, Any]]:
    """The execution's history so far, without its data (at most a few pages)."""
    events: list[dict[str, Any]] = []
    paginator = client("stepfunctions").get_paginator("get_execution_history")
    for page in paginator.paginate(executionArn=execution_arn, maxResults=1000, includeExecutionData=False):
        events.extend(page["events"])
    return events


def parent_transitions(execution_arn: str, events: list[dict[str, Any]] | None = None) -> int:
    """The states the execution entered so far, each retry counted again."""
    entered = scheduled = tasks = 0
    for event in execution_history(execution_arn) if events is None else events:
        kind = event["type"]
        entered += kind.endswith("StateEntered")
        tasks += kind == "TaskStateEntered"
        scheduled += kind in {"TaskScheduled", "LambdaFunctionScheduled"}
    return entered + max(0, scheduled - tasks)


def phase_seconds(events: list[dict[str, Any]]) -> dict[str, float]:
    """The seconds the execution spent in each phase (``PHASES``), from its states' entries and exits."""
    entered_at: dict[str, datetime] = {}
    totals: dict[str, float] = {}
    for event in events:
        if "stateEnteredEventDetails" in event:
            entered_at[event["stateEnteredEventDetails"]["name"]] = event["timestamp"]
        elif "stateExitedEventDetails" in event:
            name = event["stateExitedEventDetails"]["name"]
            start = entered_at.pop(name, None)
            if start is not None and name in _PHASE_OF:
                seconds = (event["timestamp"] - start).total_seconds()
                totals[_PHASE_OF[name]] = totals.get(_PHASE_OF[name], 0.0) + seconds
    return totals


def _emit_ending(request: NotifyRequest, state: RolloutState, events: list[dict[str, Any]], usage: dict) -> None:
    """The ending's metrics: its duration, each phase's, what moved and what was absorbed."""
    for phase, seconds in phase_seconds(events).items():
        emit("PhaseDuration", MetricUnit.Seconds, seconds, phase=phase)
    if events:
        seconds = (datetime.now(UTC) - events[0]["timestamp"]).total_seconds()
        emit("RolloutDuration", MetricUnit.Seconds, seconds, outcome=request.event)
    if request.event == "promoted" and state.plan is not None:
        emit("FunctionsMoved", MetricUnit.Count, state.plan.target_count)
        if state.layer_versions:
            emit("PromotedVersion", MetricUnit.NoUnit, state.layer_versions[0].version, layer=state.request.layer)
    emit("ThrottlesAbsorbed", MetricUnit.Count, int(usage.get("throttles_absorbed", 0)))


def publish_ending(settings: Settings, event: str, layer: str, body: dict[str, Any]) -> None:
    """Publish one ending to the topic: a JSON body, with the aliases to fix spelled out first."""
    if settings.topic_arn:
        _publish_ending(settings, event, layer, body)
    # Counted once the ending is announced: an ending the reaper announces for a workflow that
    # could not is counted by the reaper, not twice.
    emit("Rollouts", MetricUnit.Count, 1, outcome=event)
    if event == "rollback_incomplete":
        emit("RollbackIncomplete", MetricUnit.Count, 1)


def _publish_ending(settings: Settings, event: str, layer: str, body: dict[str, Any]) -> None:
    message = json.dumps(body, indent=2)
    if body.get("unrestored"):
        lines = ["ACTION NEEDED: these aliases are not back on their old version. Fix each with:"]
        for entry in body["unrestored"]:
            lines.append(f"- {entry['function']} alias {entry['alias']} (now {entry['now']}):")
            lines.extend(f"    {command}" for command in entry["fix"])
        more = int(body.get("unrestored_count") or 0) - len(body["unrestored"])
        if more > 0:
            lines.append(f"... and {more} more: s3://{settings.bucket}/{body.get('unrestored_key')}")
        message = "\n".join(lines) + "\n\n" + message
    outcome = body.get("outcome") or {}
    description = str(outcome.get("cause") or outcome.get("error") or "") if isinstance(outcome, dict) else ""
    if event == "promoted":
        description = f"every target alias is 100% on {body.get('layer_version')}"
    if body.get("unrestored"):
        description = message.split("\n\n", 1)[0]
    publish(
        settings,
        layer,
        event,
        SEVERITIES[event],
        SUBJECTS[event].format(layer=layer),
        description,
        {
            "layer_version": body.get("layer_version"),
            "targets": body.get("targets"),
            "skipped_count": body.get("skipped_count"),
            "outcome": outcome or None,
            "unrestored_count": body.get("unrestored_count"),
            "sent_by": body.get("sent_by"),
        },
        rollout_id=body.get("rollout_id"),
        record=message,
    )


def variant_lines(state: RolloutState) -> list[dict[str, Any]]:
    """Each layer version of the rollout: its variant, what it serves, and how many targets moved to it."""
    counts = state.plan.variant_counts if state.plan is not None else {}
    return [
        {
            "variant": version.variant,
            "layer_version": version.arn,
            "serves": version.targets,
            "reused": version.reused,
            "targets": counts.get(version.variant, 0),
        }
        for version in state.layer_versions
    ]


def notify(request: NotifyRequest, settings: Settings) -> RolloutState:
    state = request.state
    if request.event in {"rejected", "rollback_incomplete"}:
        state = reject(state, request.event)
    registry = Registry(settings.table)
    rollout = state.rollout
    if request.event == "rejected" and rollout is not None and state.outcome is not None:
        registry.put_rollout(
            rollout.layer, rollout.rollout_id, status="rejected", reason=f"{state.outcome.error}: {state.outcome.cause}"
        )
    layer = state.request.layer
    plan = (
        load_plan(settings.bucket, state.plan.plan_key) if state.plan is not None and state.plan.skipped_count else None
    )
    body: dict[str, Any] = {
        "event": request.event,
        "layer": layer,
        "rollout_id": rollout.rollout_id if rollout else None,
        "layer_version": state.layer_versions[0].arn if state.layer_versions else None,
        "variants": variant_lines(state),
        "outcome": state.outcome.model_dump(mode="json") if state.outcome else None,
        "targets": state.plan.target_count if state.plan else 0,
        "skipped_count": state.plan.skipped_count if state.plan else 0,
        "skipped": skipped_targets(plan),
        "plan": f"s3://{settings.bucket}/{state.plan.plan_key}" if state.plan else None,
        "commit_id": state.request.commit_id,
    }
    if request.event == "rollback_incomplete" and state.restore is not None:
        summary = state.restore.summary
        body["unrestored"] = summary.unrestored
        body["unrestored_count"] = summary.unrestored_count
        body["unrestored_key"] = summary.unrestored_key
    events: list[dict[str, Any]] = []
    if rollout is not None:
        events = execution_history(request.execution_arn) if request.execution_arn else []
        if request.execution_arn:
            transitions = parent_transitions(request.execution_arn, events) + STATES_AFTER_NOTIFY[request.event]
            USAGE.add(TRANSITIONS_PARENT, transitions)
        flush_usage(settings, rollout.layer, rollout.rollout_id)
        body["usage"] = usage_of(registry.rollout(rollout.layer, rollout.rollout_id) or {})
    publish_ending(settings, request.event, layer, body)
    state.notified = True
    if rollout is not None:
        _emit_ending(request, state, events, body["usage"])  # once announced: a retried task counts once
        registry.put_rollout(rollout.layer, rollout.rollout_id, notified_at=datetime.now(UTC).isoformat())
        # Archived again with the notification's time and usage. A rejection holds no lock, so this is
        # its last task and the archive its final record (the other endings' is ReleaseLayerLock).
        flush_usage(settings, rollout.layer, rollout.rollout_id)
        close_rollout(settings, rollout.layer, rollout.rollout_id)
    logger.info("notified", extra={"event": request.event, "layer": layer})
    return state
