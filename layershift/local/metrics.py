"""AWS/Lambda metrics for local invocations, written straight into the emulated CloudWatch.

Also makes metric reads honest where the emulator is loose: CloudWatch matches the dimensions
of ``GetMetricStatistics`` exactly (a query by ``{FunctionName}`` must not also add up the
``{FunctionName, Resource}`` datapoints), while the emulator matches any superset.
"""

from __future__ import annotations

import threading
from typing import Any

from moto.cloudwatch import models as cw_models
from moto.core.utils import utcnow

NAMESPACE = "AWS/Lambda"

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


def _dimension_lt(self: Any, other: Any) -> bool:
    # The emulator's ordering compares a value with the other's name, so two equal dimension
    # sets given in different orders may sort differently and fail GetMetricData's equality.
    return (self.name or "", self.value or "") < (other.name or "", other.value or "")


def install() -> None:
    """Switch on exact dimension matching in GetMetricStatistics and a total Dimension order."""
    if _originals:
        return
    _originals["get_metric_statistics"] = cw_models.CloudWatchBackend.get_metric_statistics
    _originals["dimension_lt"] = cw_models.Dimension.__lt__
    cw_models.CloudWatchBackend.get_metric_statistics = _exact_get_metric_statistics  # type: ignore[method-assign]
    cw_models.Dimension.__lt__ = _dimension_lt  # type: ignore[method-assign]


def uninstall() -> None:
    if not _originals:
        return
    cw_models.CloudWatchBackend.get_metric_statistics = _originals.pop("get_metric_statistics")  # type: ignore[method-assign]
    cw_models.Dimension.__lt__ = _originals.pop("dimension_lt")  # type: ignore[method-assign]
