"""The health gate of a traffic step: the gating alarms, then the version-scoped canary analysis.

Alarms: one that goes into ALARM after the pre-flight fails the step. One that was already in
ALARM at the pre-flight does not (the old version's errors must never block a rollout, least of
all the rollout of the fix) until it changes state again.

Canary analysis: each touched function's new version against its old one, on Lambda's own
metrics for the alias (`ExecutedVersion`), read batch by batch in the child executions of the
ReadCanaryMetrics Map Run (AnalyseCanary), then combined here. One failing function stops the
rollout at once; functions with too little traffic for a verdict of their own are judged as one
pool, and only a pool that has too little traffic itself is inconclusive: the bake is extended up
to the spec's limit, then the spec's policy applies.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from .aborts import ensure_not_aborted
from .analysis import BatchAnalysis, CohortAnalysis, analyse_batch, combine, turned_off
from .aws import client
from .errors import RolloutInconclusive, RolloutUnhealthy
from .fanout import BatchEvent, raise_first_failure, read_map_run, record_map_run, run_pass
from .models import CanaryAnalysis, CanaryVerdict, Preflight, RolloutState, StepState, TargetPlan
from .notify import publish
from .observability import logger, metrics
from .registry import Registry
from .settings import Settings

# How far back before the pre-flight the old version's metrics count as its baseline.
BASELINE_SECONDS = 3600


def alarm_states(names: list[str]) -> dict[str, tuple[str, str, float]]:
    """Each named alarm's state, reason and the time of its last state change (epoch seconds).

    An alarm that has vanished counts as firing."""
    if not names:
        return {}
    found: dict[str, tuple[str, str, float]] = {}
    paginator = client("cloudwatch").get_paginator("describe_alarms")
    for page in paginator.paginate(AlarmNames=names, AlarmTypes=["MetricAlarm", "CompositeAlarm"]):
        for alarm in page.get("MetricAlarms", []) + page.get("CompositeAlarms", []):
            updated = alarm.get("StateUpdatedTimestamp")
            when = updated.timestamp() if isinstance(updated, datetime) else 0.0
            found[alarm["AlarmName"]] = (alarm["StateValue"], alarm.get("StateReason", ""), when)
    for name in names:
        found.setdefault(name, ("MISSING", "the alarm no longer exists", time.time()))
    return found


def preflight(state: RolloutState) -> RolloutState:
    """Before the first shift: every gating alarm exists, and which are already in ALARM."""
    if state.rollout is None:
        raise ValueError("the pre-flight needs a validated rollout")
    names = state.rollout.spec.alarms
    states = alarm_states(names)
    missing = sorted(name for name, value in states.items() if value[0] == "MISSING")
    if missing:
        raise RolloutUnhealthy(f"pre-flight: gating alarm(s) {', '.join(missing)} do not exist; nothing was shifted")
    already = sorted(name for name, value in states.items() if value[0] == "ALARM")
    if already:
        logger.warning(
            "gating alarms already in ALARM before the first shift; they gate again only after a state change",
            extra={"alarms": already},
        )
    state.preflight = Preflight(checked_at=time.time(), alarms_in_alarm=already)
    return state


def firing_alarms(step_state: StepState) -> str:
    """The gating alarms that fail the step, described; empty when none does."""
    baseline = step_state.preflight
    firing = []
    for name, (value, reason, updated) in sorted(alarm_states(step_state.alarms).items()):
        if value not in {"ALARM", "MISSING"}:
            continue
        if baseline and name in baseline.alarms_in_alarm and updated <= baseline.checked_at:
            continue
        firing.append(f"{name} is {value}: {reason}")
    return "; ".join(firing)


class CanaryInput(BaseModel):
    """ReadCanaryMetrics' BatchInput: the thresholds and where each version's window starts."""

    rollout_id: str
    layer: str
    analysis: CanaryAnalysis
    old_since: float = Field(description="the pre-flight: the old version's window starts an hour before it")
    new_since: float = Field(description="the step's start: the new version's window starts then")


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def analyse_canary(event: BatchEvent, settings: Settings, seconds_left: float) -> Any:
    """AnalyseCanary: one batch of the touched targets, read and judged at this check."""

    def process(items: list[dict[str, Any]], head: dict[str, Any], _deadline: float) -> Any:
        given = CanaryInput.model_validate(head)
        now = time.time()
        targets = [TargetPlan.model_validate(item) for item in items]
        old_window = (_utc(given.old_since - BASELINE_SECONDS), _utc(now))
        new_window = (_utc(min(given.new_since, now)), _utc(now))
        batch = analyse_batch(targets, given.analysis, old_window, new_window)
        return [batch.model_dump(mode="json")], []

    return run_pass(event, seconds_left, process)


def _cohort(state: RolloutState, settings: Settings) -> CohortAnalysis:
    """The check's verdict from the ReadCanaryMetrics Map Run (none ran when the analysis is off)."""
    bake = state.bake
    if bake is None or not bake.analysis.enabled:
        return turned_off()
    if state.map_run is None:
        raise ValueError("the canary analysis is on, but no ReadCanaryMetrics Map Run came before the check")
    run = read_map_run(settings.bucket, state.map_run)
    state.map_run = None
    record_map_run(run)
    raise_first_failure(run, "canary metrics")
    return combine([BatchAnalysis.model_validate(result) for result in run.results], bake.analysis)


def check_health(state: RolloutState, settings: Settings) -> RolloutState:
    """CheckHealth: one check of a bake; raises RolloutUnhealthy or RolloutInconclusive to stop the rollout."""
    step_state = state.bake
    if step_state is None:
        raise ValueError("a health check needs the step it checks")
    ensure_not_aborted(settings, step_state.layer, step_state.rollout_id)
    step_state.checks += 1
    weight = step_state.step.weight
    firing = firing_alarms(step_state)
    if firing:
        metrics.add_metric(name="RolloutHealthFailing", unit="Count", value=1)
        _announce_step(settings, step_state, "failing", f"gating alarm(s) in ALARM: {firing}")
        raise RolloutUnhealthy(f"at {weight}% on the new version, {firing}")
    now = time.time()
    cohort = _cohort(state, settings)
    step_state.verdict = cohort.verdict
    step_state.verdict_detail = cohort.summary()
    Registry(settings.table).put_rollout(
        step_state.layer,
        step_state.rollout_id,
        verdict=cohort.verdict.value,
        verdict_detail=step_state.verdict_detail,
        weight=str(weight),
    )
    if cohort.verdict is CanaryVerdict.FAILING:
        metrics.add_metric(name="CanaryFailing", unit="Count", value=1)
        _announce_step(settings, step_state, "failing", step_state.verdict_detail or "")
        raise RolloutUnhealthy(f"canary analysis at {weight}% on the new version: {step_state.verdict_detail}")

    elapsed = now - (step_state.started_at or now)
    remaining = step_state.step.bake_seconds + step_state.extended_seconds - elapsed
    if remaining > 0:
        step_state.bake_complete = False
        step_state.wait_seconds = max(1, min(step_state.poll_seconds, int(remaining + 0.999)))
    elif cohort.verdict is CanaryVerdict.INCONCLUSIVE:
        _extend_or_decide(step_state)
    else:
        step_state.bake_complete = True
        step_state.wait_seconds = 0
    if step_state.bake_complete:
        _announce_step(settings, step_state, cohort.verdict.value, step_state.verdict_detail or "")
    logger.info(
        "step checked",
        extra={"weight_percent": weight, "elapsed_seconds": round(elapsed, 1), "verdict": cohort.verdict.value},
    )
    return state


def _announce_step(settings: Settings, step_state: StepState, verdict: str, detail: str) -> None:
    """The ``traffic_step`` notification: a step's final verdict, with its numbers."""
    weight = step_state.step.weight
    elapsed = time.time() - (step_state.started_at or time.time())
    publish(
        settings,
        step_state.layer,
        "traffic_step",
        "warning" if verdict == "failing" else "info",
        f"layershift: {step_state.layer} at {weight}% on the new version: {verdict}",
        f"Step {step_state.step_index + 1} ({weight}% for {step_state.step.bake_seconds}s): {detail}",
        {
            "step": step_state.step_index + 1,
            "weight_percent": weight,
            "verdict": verdict,
            "detail": detail,
            "checks": step_state.checks,
            "baked_seconds": round(elapsed, 1),
            "extended_seconds": step_state.extended_seconds,
        },
        rollout_id=step_state.rollout_id,
    )


def _extend_or_decide(step_state: StepState) -> None:
    """An inconclusive verdict at the end of the bake: extend it, or follow the spec's policy."""
    limit = step_state.analysis.max_extension_seconds
    if step_state.extended_seconds < limit:
        extra = min(step_state.poll_seconds, limit - step_state.extended_seconds)
        step_state.extended_seconds += extra
        step_state.bake_complete = False
        step_state.wait_seconds = max(1, extra)
        return
    if step_state.analysis.inconclusive == "rollback":
        raise RolloutInconclusive(
            f"at {step_state.step.weight}% after extending the bake by {limit} s: {step_state.verdict_detail}; "
            'the spec says roll back (analysis.inconclusive = "rollback")'
        )
    logger.warning(
        "inconclusive after the extension; the spec says promote", extra={"detail": step_state.verdict_detail}
    )
    step_state.bake_complete = True
    step_state.wait_seconds = 0
