"""AWS/Lambda metrics for local invocations, written straight into the emulated CloudWatch.

Also makes metric reads honest where the emulator is loose:

- CloudWatch matches the dimensions of ``GetMetricStatistics`` exactly (a query by
  ``{FunctionName}`` must not also add up the ``{FunctionName, Resource}`` datapoints), while the
  emulator matches any superset.
- ``GetMetricData`` metric queries match namespace, metric name and the exact dimension set (the
  emulator ignores the namespace of a query with dimensions and matches every dimension set for a
  query without), and answer percentile statistics (``p99``, ``p99.9`` ...) by the nearest-rank
  method over the raw values, which the emulator cannot answer at all. The window and periods
  stay the emulator's: StartTime and EndTime cut to the second, periods counted from StartTime,
  each datapoint in ``[start, start + Period)``; CloudWatch would also round StartTime down to the
  minute.
"""

from __future__ import annotations

import math
import re
import threading
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from moto.cloudwatch import models as cw_models
from moto.cloudwatch.exceptions import ValidationError
from moto.cloudwatch.metric_data_expression_parser import parse_expression
from moto.core.utils import utcnow

NAMESPACE = "AWS/Lambda"
STANDARD_STATISTICS = frozenset({"SampleCount", "Sum", "Average", "Minimum", "Maximum"})
PERCENTILE = re.compile(r"p(\d{1,3}(?:\.\d+)?)")

_lock = threading.Lock()
_originals: dict[str, Any] = {}


def _dimensions(function_name: str, resource: str | None, executed_version: str | None) -> list[list[dict]]:
    sets = [[{"Name": "FunctionName", "Value": function_name}]]
    if resource is not None:
        sets.append([*sets[0], {"Name": "Resource", "Value": resource}])
        if executed_version is not None:
            sets.append([*sets[1], {"Name": "ExecutedVersion", "Value": executed_version}])
    return sets


def record_invocation(
    account_id: str,
    region: str,
    *,
    function_name: str,
    resource: str | None,
    executed_version: str | None,
    duration_ms: float,
    errored: bool,
    throttled: bool = False,
) -> None:
    """Emit Invocations, Errors, Duration (or Throttles) as Lambda does for one invoke.

    ``resource`` is ``name`` for unqualified invokes and ``name:qualifier`` otherwise;
    ``executed_version`` is given for alias invokes only.
    """
    backend = cw_models.cloudwatch_backends[account_id][region]
    now = utcnow()
    data: list[dict[str, Any]] = []
    for dims in _dimensions(function_name, resource, executed_version):
        if throttled:
            data.append(
                {
                    "MetricName": "Throttles",
                    "Value": 1.0,
                    "Unit": "Count",
                    "Dimensions": dims,
                    "Timestamp": now,
                }
            )
            continue
        data.extend(
            [
                {
                    "MetricName": "Invocations",
                    "Value": 1.0,
                    "Unit": "Count",
                    "Dimensions": dims,
                    "Timestamp": now,
                },
                {
                    "MetricName": "Errors",
                    "Value": 1.0 if errored else 0.0,
                    "Unit": "Count",
                    "Dimensions": dims,
                    "Timestamp": now,
                },
                {
                    "MetricName": "Duration",
                    "Value": round(duration_ms, 2),
                    "Unit": "Milliseconds",
                    "Dimensions": dims,
                    "Timestamp": now,
                },
            ]
        )
    with _lock:
        backend.put_metric_data(NAMESPACE, data)


def same_dimensions(datum: Any, wanted: list[dict[str, str]]) -> bool:
    """True when a datapoint carries exactly the wanted dimension set (names and values)."""
    have = {(d.name, d.value) for d in datum.dimensions}
    return have == {(d["Name"], d.get("Value")) for d in wanted}


def _exact_get_metric_statistics(
    self: Any,
    namespace: str,
    metric_name: str,
    start_time: Any,
    end_time: Any,
    period: int,
    stats: list[str],
    dimensions: list[dict[str, str]],
    unit: str | None = None,
) -> Any:
    # The emulator groups datapoints whose dimensions are a superset of the query's; CloudWatch
    # only returns the exact dimension combination. Keep the emulator's bucketing, drop the rest.
    result = _originals["get_metric_statistics"](
        self, namespace, metric_name, start_time, end_time, period, stats, dimensions, unit=unit
    )
    kept = []
    for statistics in result:
        statistics.metric_data = [md for md in statistics.metric_data if same_dimensions(md, dimensions or [])]
        if statistics.metric_data:
            kept.append(statistics)
    return kept


def percentile(values: list[float], percent: float) -> float | None:
    """The nearest-rank percentile: the smallest value with at least ``percent``% of values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _statistic(datapoints: list[Any], stat: str) -> float | None:
    """One statistic over a period's datapoints; None when CloudWatch would return no datapoint.

    Percentiles need raw values: statistic sets (``StatisticValues``) do not take part in them.
    """
    match = PERCENTILE.fullmatch(stat)
    if match and float(match.group(1)) <= 100:
        return percentile(
            [md.value for md in datapoints if isinstance(md, cw_models.MetricDatum)], float(match.group(1))
        )
    if stat not in STANDARD_STATISTICS:
        raise ValidationError(f"The statistic {stat} is not supported by the local emulation.")
    statistics = cw_models.Statistics([stat], utcnow())
    statistics.metric_data = datapoints
    value = statistics.get_statistics_for_type(stat)
    return None if value is None else float(value)


def _result(query: dict[str, Any], label: str, values: list, timestamps: list[datetime]) -> dict[str, Any]:
    return {
        "id": query["Id"],
        "label": query.get("Label") or label,
        "values": values,
        "timestamps": timestamps,
        "status_code": "Complete",
    }


def _metric_key(namespace: str, name: str, dimensions: Iterable[tuple[str, str]]) -> tuple:
    """Namespace, metric name and the dimension set: what CloudWatch calls one metric."""
    return namespace, name, frozenset(dimensions)


def _metric_stat_result(
    query: dict[str, Any], by_metric: dict[tuple, list[Any]], start: datetime, end: datetime, scan_by: str
) -> dict[str, Any]:
    """One ``MetricStat`` query's answer: the statistic per period, for exactly the metric asked."""
    metric_stat = query["MetricStat"]
    metric = metric_stat["Metric"]
    stat = metric_stat["Stat"]
    unit = metric_stat.get("Unit")
    dimensions = ((d["Name"], d["Value"]) for d in metric.get("Dimensions", []))
    matching = [
        md
        for md in by_metric.get(_metric_key(metric["Namespace"], metric["MetricName"], dimensions), [])
        if not unit or md.unit == unit
    ]
    period = timedelta(seconds=int(metric_stat["Period"]))
    values: list[float] = []
    timestamps: list[datetime] = []
    bucket = start
    while bucket <= end:
        value = _statistic([md for md in matching if bucket <= md.timestamp < bucket + period], stat)
        if value is not None:
            values.append(value)
            timestamps.append(bucket)
        bucket += period
    if scan_by == "TimestampDescending":
        values.reverse()
        timestamps.reverse()
    return _result(query, f"{metric['MetricName']} {stat}", values, timestamps)


def _is_insights(query: dict[str, Any]) -> bool:
    return query.get("Expression", "").startswith("SELECT")


def _exact_get_metric_data(
    self: Any,
    queries: list[dict[str, Any]],
    start_time: datetime,
    end_time: datetime,
    scan_by: str = "TimestampAscending",
) -> list[dict[str, Any]]:
    """Metric queries, and the math expressions over them, answered exactly; results in the emulator's order.

    The emulator still validates the window and answers the Metrics Insights (SELECT) queries,
    which read no metric query.
    """
    insights = _originals["get_metric_data"](
        self, [q for q in queries if _is_insights(q)], start_time, end_time, scan_by
    )
    start, end = start_time.replace(microsecond=0), end_time.replace(microsecond=0)
    in_window: dict[tuple, list[Any]] = defaultdict(list)
    for md in self.get_all_metrics():
        if start <= md.timestamp < end:
            in_window[_metric_key(md.namespace, md.name, ((d.name, d.value) for d in md.dimensions))].append(md)
    metric_queries = [q for q in queries if "MetricStat" in q]
    stats = [_metric_stat_result(q, in_window, start, end, scan_by) for q in metric_queries]
    returned = [result for query, result in zip(metric_queries, stats, strict=True) if query.get("ReturnData", True)]
    for query in queries:
        if "Expression" in query and not _is_insights(query):
            returned.append(_result(query, query["Id"], *parse_expression(query["Expression"], stats)))
    return returned + insights


def install() -> None:
    """Switch on exact GetMetricStatistics, and exact GetMetricData with percentiles."""
    if _originals:
        return
    _originals["get_metric_statistics"] = cw_models.CloudWatchBackend.get_metric_statistics
    _originals["get_metric_data"] = cw_models.CloudWatchBackend.get_metric_data
    cw_models.CloudWatchBackend.get_metric_statistics = _exact_get_metric_statistics  # type: ignore[method-assign]
    cw_models.CloudWatchBackend.get_metric_data = _exact_get_metric_data  # type: ignore[method-assign]


def uninstall() -> None:
    if not _originals:
        return
    cw_models.CloudWatchBackend.get_metric_statistics = _originals.pop("get_metric_statistics")  # type: ignore[method-assign]
    cw_models.CloudWatchBackend.get_metric_data = _originals.pop("get_metric_data")  # type: ignore[method-assign]
