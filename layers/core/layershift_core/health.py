"""The bake: watch the gating alarms while a traffic step holds, and stop the rollout when one fires."""

from __future__ import annotations

import time

from .aws import client
from .errors import RolloutUnhealthy
from .models import StepState
from .observability import logger, metrics


def alarm_states(names: list[str]) -> dict[str, tuple[str, str]]:
    """Each named alarm's state and reason. An alarm that has vanished counts as firing."""
    if not names:
        return {}
    found: dict[str, tuple[str, str]] = {}
    paginator = client("cloudwatch").get_paginator("describe_alarms")
    for page in paginator.paginate(AlarmNames=names, AlarmTypes=["MetricAlarm", "CompositeAlarm"]):
        for alarm in page.get("MetricAlarms", []) + page.get("CompositeAlarms", []):
            found[alarm["AlarmName"]] = (alarm["StateValue"], alarm.get("StateReason", ""))
    for name in names:
        found.setdefault(name, ("MISSING", "the alarm no longer exists"))
    return found


def check_health(step_state: StepState) -> StepState:
    states = alarm_states(step_state.alarms)
    firing = {name: value for name, value in states.items() if value[0] in {"ALARM", "MISSING"}}
    step_state.checks += 1
    if firing:
        metrics.add_metric(name="RolloutHealthFailing", unit="Count", value=1)
        details = "; ".join(f"{name} is {state}: {reason}" for name, (state, reason) in sorted(firing.items()))
        raise RolloutUnhealthy(f"at {step_state.step.weight}% on the new version, {details}")
    elapsed = time.time() - (step_state.started_at or time.time())
    remaining = step_state.step.bake_seconds - elapsed
    step_state.bake_complete = remaining <= 0
    step_state.wait_seconds = max(0, min(step_state.poll_seconds, int(remaining + 0.999)))
    logger.info(
        "healthy",
        extra={
            "weight_percent": step_state.step.weight,
            "elapsed_seconds": round(elapsed, 1),
            "alarms": {name: value[0] for name, value in states.items()},
        },
    )
    return step_state
