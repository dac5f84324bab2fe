"""A stand-in for CloudWatch alarm evaluation on the local emulated AWS.

The emulator stores metric alarms but never evaluates them. This module evaluates every metric
alarm from its own definition (namespace, metric, exact dimensions, statistic or percentile,
period, evaluation periods, datapoints to alarm, threshold, comparison operator and missing
data treatment) over the datapoints in the emulated CloudWatch, in period-aligned buckets that
end with the current, still-open bucket, and sets the state when it changes, with a reason that
names the datapoints. Metric-math and composite alarms are left as they are.

State changes, whoever makes them, also do what CloudWatch does next: publish to the alarm's
SNS actions and put a "CloudWatch Alarm State Change" event on the default event bus.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from datetime import datetime, timedelta
from typing import Any

from moto.cloudwatch import models as cw_models
from moto.core.utils import utcnow

from layershift.local.metrics import same_dimensions

LOG = logging.getLogger(__name__)

OPERATORS = {
    "GreaterThanOrEqualToThreshold": (lambda v, t: v >= t, "greater than or equal to"),
    "GreaterThanThreshold": (lambda v, t: v > t, "greater than"),
    "LessThanThreshold": (lambda v, t: v < t, "less than"),
    "LessThanOrEqualToThreshold": (lambda v, t: v <= t, "less than or equal to"),
}

_originals: dict[str, Any] = {}
_evaluation_lock = threading.Lock()


def _values(datapoints: list[Any]) -> list[float]:
    return [float(md.value) for md in datapoints if hasattr(md, "value")]


def statistic_value(datapoints: list[Any], statistic: str) -> float | None:
    """One statistic (Sum, Average, Maximum, Minimum, SampleCount, pNN) over raw datapoints."""
    if not datapoints:
        return None
    count = sum(float(getattr(md, "sample_count", 1)) for md in datapoints)
    total = sum(float(getattr(md, "sum", getattr(md, "value", 0.0))) for md in datapoints)
    if statistic == "SampleCount":
        return count
    if statistic == "Sum":
        return total
    if statistic == "Average":
        return total / count if count else None
    if statistic == "Maximum":
        return max(float(getattr(md, "max", getattr(md, "value", 0.0))) for md in datapoints)
    if statistic == "Minimum":
        return min(float(getattr(md, "min", getattr(md, "value", 0.0))) for md in datapoints)
    if statistic.startswith("p"):
        values = sorted(_values(datapoints))
        if not values:
            return None
        rank = max(1, math.ceil(float(statistic[1:]) / 100 * len(values)))
        return values[min(rank, len(values)) - 1]
    raise ValueError(f"unsupported statistic {statistic}")


def _bucket_starts(now: datetime, period: int, count: int) -> list[datetime]:
    epoch = datetime(1970, 1, 1)
    seconds = int((now - epoch).total_seconds())
    current = epoch + timedelta(seconds=seconds - seconds % period)
    return [current - timedelta(seconds=period * i) for i in reversed(range(count))]


def evaluate(alarm: Any, metric_data: list[Any], now: datetime | None = None) -> tuple[str, str, dict] | None:
    """The state an alarm should be in now, with CloudWatch-style reason and reason data.

    Returns None for alarms this stand-in does not evaluate (metric math, anomaly bands).
    """
    if alarm.metric_data_queries or not alarm.metric_name or alarm.comparison_operator not in OPERATORS:
        return None
    now = now or utcnow()
    period = int(alarm.period)
    periods = int(alarm.evaluation_periods)
    needed = int(alarm.datapoints_to_alarm or periods)
    statistic = alarm.statistic or alarm.extended_statistic
    threshold = float(alarm.threshold)
    compare, words = OPERATORS[alarm.comparison_operator]
    wanted = [{"Name": d.name, "Value": d.value} for d in alarm.dimensions]

    starts = _bucket_starts(now, period, periods)
    step = timedelta(seconds=period)
    window_start, window_end = starts[0] - step, starts[-1] + step
    matching = [
        md
        for md in metric_data
        if md.namespace == alarm.namespace
        and md.name == alarm.metric_name
        and window_start <= md.timestamp.replace(tzinfo=None) < window_end
        and same_dimensions(md, wanted)
        and (not alarm.unit or md.unit == alarm.unit)
    ]

    def value_of(start: datetime) -> float | None:
        points = [md for md in matching if start <= md.timestamp.replace(tzinfo=None) < start + step]
        return statistic_value(points, statistic)

    # The period still being filled counts only once it breaches: its datapoints are still
    # arriving, and CloudWatch evaluates a period when its metrics are in. Otherwise the last
    # complete periods are evaluated, so an alarm does not flap to OK at every period boundary.
    current = value_of(starts[-1])
    if current is None or not compare(current, threshold):
        starts = [start - step for start in starts]
    buckets = [(start, value_of(start)) for start in starts]

    present = [(start, value) for start, value in buckets if value is not None]
    treat = alarm.treat_missing_data or "missing"
    if not present:
        if treat == "ignore":
            return alarm.state_value, alarm.state_reason, json.loads(alarm.state_reason_data or "{}")
        state = {"breaching": "ALARM", "notBreaching": "OK"}.get(treat, "INSUFFICIENT_DATA")
        reason = (
            f"no datapoints were received for {periods} period{'s' if periods > 1 else ''} and "
            f"{periods} missing datapoint{'s were' if periods > 1 else ' was'} treated as "
            f"[{ {'breaching': 'Breaching', 'notBreaching': 'NonBreaching'}.get(treat, 'Missing') }]."
        )
        return (
            state,
            reason[0].upper() + reason[1:],
            _reason_data(alarm, now, statistic, period, [], threshold),
        )

    if treat in ("missing", "ignore"):
        considered = present
        needed = min(needed, len(present))
    else:
        considered = [
            (start, value if value is not None else (math.inf if treat == "breaching" else None))
            for start, value in buckets
        ]
    breaching = sum(1 for _, value in considered if value is not None and compare(value, threshold))
    state = "ALARM" if breaching >= needed else "OK"

    shown = sorted(present, key=lambda item: item[0], reverse=True)
    listed = ", ".join(f"{value} ({start:%d/%m/%y %H:%M:%S})" for start, value in shown)
    verb = "was" if breaching == 1 else "were"
    head = f"{breaching} out of the last {len(considered)} datapoints {verb} {words} the threshold ({threshold})"
    if state == "OK":
        head += f"; {needed} needed to alarm"
    reason = (
        f"Threshold Crossed: {head}: [{listed}] (minimum {needed} datapoint{'s' if needed > 1 else ''} "
        f"for {'OK -> ALARM' if state == 'ALARM' else 'ALARM -> OK'} transition)."
    )
    return state, reason, _reason_data(alarm, now, statistic, period, shown, threshold)


def _reason_data(
    alarm: Any,
    now: datetime,
    statistic: str,
    period: int,
    shown: list[tuple[datetime, float]],
    threshold: float,
) -> dict:
    return {
        "version": "1.0",
        "queryDate": now.strftime("%Y-%m-%dT%H:%M:%S.000+0000"),
        "startDate": (shown[-1][0] if shown else now).strftime("%Y-%m-%dT%H:%M:%S.000+0000"),
        "statistic": statistic,
        "period": period,
        "recentDatapoints": [value for _, value in shown],
        "threshold": threshold,
        "evaluatedDatapoints": [
            {"timestamp": start.strftime("%Y-%m-%dT%H:%M:%S.000+0000"), "sampleCount": 1.0, "value": value}
            for start, value in shown
        ],
    }


def _recent_by_metric(data: list[Any], alarms: list[Any], now: datetime) -> dict[tuple[str, str], list[Any]]:
    """The datapoints any alarm's window can reach, by (namespace, metric name): the metric data
    holds every datapoint since the start, and each alarm would otherwise scan all of it."""
    spans = [
        int(alarm.period) * (int(alarm.evaluation_periods) + 1)
        for alarm in alarms
        if alarm.period and alarm.evaluation_periods
    ]
    found: dict[tuple[str, str], list[Any]] = {}
    if not spans:
        return found
    cutoff = now - timedelta(seconds=max(spans))
    for md in data:
        if md.timestamp.replace(tzinfo=None) >= cutoff:
            found.setdefault((md.namespace, md.name), []).append(md)
    return found


def evaluate_all_alarms_once(now: datetime | None = None) -> list[tuple[str, str]]:
    """Evaluate every metric alarm in every account and region; return (name, new state) changes."""
    changes: list[tuple[str, str]] = []
    now = now or utcnow()
    with _evaluation_lock:
        for account_backends in list(cw_models.cloudwatch_backends.values()):
            for backend in list(account_backends.values()):
                alarms = list(backend.alarms.values())
                recent = _recent_by_metric(list(backend.metric_data), alarms, now)
                for alarm in alarms:
                    try:
                        outcome = evaluate(alarm, recent.get((alarm.namespace, alarm.metric_name), []), now)
                    except (ValueError, TypeError):
                        LOG.warning("cannot evaluate alarm %s", alarm.name, exc_info=True)
                        continue
                    if outcome is None:
                        continue
                    state, reason, reason_data = outcome
                    if state != alarm.state_value:
                        backend.set_alarm_state(alarm.name, reason, json.dumps(reason_data), state)
                        changes.append((alarm.name, state))
    return changes


class AlarmEvaluator:
    """Evaluates every alarm about once a second on a background thread."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="alarm-evaluator")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                evaluate_all_alarms_once()
            except Exception:
                LOG.exception("alarm evaluation failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


# -- what CloudWatch does after a state change ------------------------------------------------


def _state_change_event(alarm: Any, previous: dict[str, Any]) -> dict[str, Any]:
    account = alarm.alarm_arn.split(":")[4]
    return {
        "version": "0",
        "detail-type": "CloudWatch Alarm State Change",
        "source": "aws.cloudwatch",
        "account": account,
        "region": alarm.region_name,
        "resources": [alarm.alarm_arn],
        "detail": {
            "alarmName": alarm.name,
            "state": {
                "value": alarm.state_value,
                "reason": alarm.state_reason,
                "reasonData": alarm.state_reason_data,
                "timestamp": alarm.state_updated_timestamp.strftime("%Y-%m-%dT%H:%M:%S.000+0000"),
            },
            "previousState": previous,
            "configuration": {
                "description": alarm.description,
                "metrics": [
                    {
                        "id": "m1",
                        "metricStat": {
                            "metric": {
                                "namespace": alarm.namespace,
                                "name": alarm.metric_name,
                                "dimensions": {d.name: d.value for d in alarm.dimensions},
                            },
                            "period": alarm.period,
                            "stat": alarm.statistic or alarm.extended_statistic,
                        },
                        "returnData": True,
                    }
                ],
            },
        },
    }


def _notify(alarm: Any, previous: dict[str, Any]) -> None:
    account = alarm.alarm_arn.split(":")[4]
    event = _state_change_event(alarm, previous)
    try:
        from moto.events.models import events_backends

        events_backends[account][alarm.region_name].put_events(
            [
                {
                    "Source": event["source"],
                    "DetailType": event["detail-type"],
                    "Detail": json.dumps(event["detail"]),
                    "Resources": event["resources"],
                }
            ]
        )
    except Exception:
        LOG.warning("could not put the state change event of alarm %s", alarm.name, exc_info=True)
    if not alarm.actions_enabled:
        return
    actions = {
        "ALARM": alarm.alarm_actions,
        "OK": alarm.ok_actions,
        "INSUFFICIENT_DATA": alarm.insufficient_data_actions,
    }.get(alarm.state_value) or []
    message = json.dumps(
        {
            "AlarmName": alarm.name,
            "AlarmDescription": alarm.description,
            "AWSAccountId": account,
            "NewStateValue": alarm.state_value,
            "NewStateReason": alarm.state_reason,
            "StateChangeTime": event["detail"]["state"]["timestamp"],
            "Region": alarm.region_name,
            "AlarmArn": alarm.alarm_arn,
            "OldStateValue": previous.get("value"),
        }
    )
    for action in actions:
        if ":sns:" not in action:
            continue
        try:
            from moto.sns.models import sns_backends

            sns_backends[account][alarm.region_name].publish(
                message, arn=action, subject=f'{alarm.state_value}: "{alarm.name}" in {alarm.region_name}'
            )
        except Exception:
            LOG.warning("could not publish alarm %s to %s", alarm.name, action, exc_info=True)


def _update_state(self: Any, reason: str, reason_data: str, state_value: str) -> None:
    # The emulator changes state silently; CloudWatch follows a change with the alarm's actions
    # and an EventBridge event, which the rollout can use to stop a bake early.
    previous = {
        "value": self.state_value,
        "reason": self.state_reason,
        "timestamp": self.state_updated_timestamp.strftime("%Y-%m-%dT%H:%M:%S.000+0000"),
    }
    _originals["update_state"](self, reason, reason_data, state_value)
    if previous["value"] != state_value:
        threading.Thread(target=_notify, args=(self, previous), daemon=True, name="alarm-actions").start()


def _put_metric_alarm(self: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    # CloudWatch creates an alarm in INSUFFICIENT_DATA and keeps the state of an alarm it
    # updates; the emulator starts every put in OK.
    previous = self.alarms.get(name)
    alarm = _originals["put_metric_alarm"](self, name, *args, **kwargs)
    if previous is not None:
        alarm.state_value, alarm.state_reason = previous.state_value, previous.state_reason
        alarm.state_reason_data = previous.state_reason_data
        alarm.state_updated_timestamp = previous.state_updated_timestamp
    else:
        alarm.state_value = "INSUFFICIENT_DATA"
    return alarm


def install() -> None:
    if not _originals:
        _originals["update_state"] = cw_models.Alarm.update_state
        _originals["put_metric_alarm"] = cw_models.CloudWatchBackend.put_metric_alarm
        cw_models.Alarm.update_state = _update_state  # type: ignore[method-assign]
        cw_models.CloudWatchBackend.put_metric_alarm = _put_metric_alarm  # type: ignore[method-assign]


def uninstall() -> None:
    if _originals:
        cw_models.Alarm.update_state = _originals.pop("update_state")  # type: ignore[method-assign]
        cw_models.CloudWatchBackend.put_metric_alarm = _originals.pop("put_metric_alarm")  # type: ignore[method-assign]
