"""The health gate of a traffic step: the gating alarms, then the version-scoped canary analysis.

Alarms: one that goes into ALARM after the pre-flight fails the step. One that was already in
ALARM at the pre-flight does not (the old version's errors must never block a rollout, least of
all the rollout of the fix) until it changes state again.

Canary analysis: each touched function's new version against its old one, on Lambda's own
metrics for the alias (`ExecutedVersion`). Failing stops the rollout at once. Inconclusive (too
little traffic) extends the bake up to the spec's limit, then follows its policy.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from .aborts import ensure_not_aborted
from .analysis import CohortAnalysis, analyse_cohort
from .aws import client
from .errors import RolloutInconclusive, RolloutUnhealthy
from .models import CanaryVerdict, Preflight, RolloutState, StepState, TargetPlan, Wave
from .observability import logger, metrics
from .planner import load_plan
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


def touched_targets(targets: list[TargetPlan], wave: Wave) -> list[TargetPlan]:
    """The targets whose alias routes to the new version during a step of ``wave``."""
    return [t for t in targets if t.wave.rank <= wave.rank]


def _analyse(step_state: StepState, settings: Settings, now: float) -> CohortAnalysis:
    plan = load_plan(settings.bucket, step_state.plan_key)
    targets = touched_targets(plan.active, step_state.step.wave)
    since = step_state.preflight.checked_at if step_state.preflight else (step_state.started_at or now)
    old_window = (_utc(since - BASELINE_SECONDS), _utc(now))
    new_window = (_utc(step_state.started_at or now), _utc(now))
    return analyse_cohort(targets, step_state.analysis, old_window, new_window)


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def check_health(step_state: StepState, settings: Settings) -> StepState:
    """One check of a bake; raises RolloutUnhealthy or RolloutInconclusive to stop the rollout."""
    ensure_not_aborted(settings, step_state.layer, step_state.rollout_id)
    step_state.checks += 1
    weight = step_state.step.weight
    firing = firing_alarms(step_state)
    if firing:
        metrics.add_metric(name="RolloutHealthFailing", unit="Count", value=1)
        raise RolloutUnhealthy(f"at {weight}% on the new version, {firing}")
    now = time.time()
    cohort = _analyse(step_state, settings, now)
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
    logger.info(
        "step checked",
        extra={"weight_percent": weight, "elapsed_seconds": round(elapsed, 1), "verdict": cohort.verdict.value},
    )
    return step_state


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
