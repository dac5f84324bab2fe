"""GetMetricData on the local emulated AWS: percentile statistics and exact metric matching."""

from __future__ import annotations

import math
import random
import uuid
from datetime import UTC, datetime, timedelta

from layershift.local import metrics


def _record(aws, function_name: str, version: str, durations: list[float]) -> None:
    for duration in durations:
        metrics.record_invocation(
            aws.account_id,
            aws.region,
            function_name=function_name,
            resource=f"{function_name}:live",
            executed_version=version,
            duration_ms=duration,
            errored=False,
        )


def _dimensions(function_name: str, version: str | None = None) -> list[dict[str, str]]:
    dimensions = [
        {"Name": "FunctionName", "Value": function_name},
        {"Name": "Resource", "Value": f"{function_name}:live"},
    ]
    if version is not None:
        dimensions.append({"Name": "ExecutedVersion", "Value": version})
    return dimensions


def _query(query_id: str, metric: str, stat: str, dimensions: list[dict[str, str]], **extra) -> dict:
    return {
        "Id": query_id,
        "MetricStat": {
            "Metric": {"Namespace": "AWS/Lambda", "MetricName": metric, "Dimensions": dimensions},
            "Period": 600,
            "Stat": stat,
        },
        **extra,
    }


def _values(aws, queries: list[dict]) -> dict[str, list[float]]:
    now = datetime.now(UTC)
    results = aws.client("cloudwatch").get_metric_data(
        MetricDataQueries=queries, StartTime=now - timedelta(minutes=5), EndTime=now + timedelta(minutes=1)
    )["MetricDataResults"]
    return {result["Id"]: result["Values"] for result in results}


def _nearest_rank(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(percent / 100 * len(ordered))) - 1]


def test_percentiles_are_the_nearest_rank_of_the_recorded_durations(aws):
    name = f"fn-{uuid.uuid4().hex[:8]}"
    rng = random.Random(7)
    durations = [round(rng.uniform(5, 900), 2) for _ in range(150)]
    _record(aws, name, "2", durations)
    dimensions = _dimensions(name, "2")

    values = _values(
        aws,
        [
            _query("p99", "Duration", "p99", dimensions),
            _query("p90", "Duration", "p90", dimensions),
            _query("p50", "Duration", "p50", dimensions),
            _query("p999", "Duration", "p99.9", dimensions),
            _query("count", "Duration", "SampleCount", dimensions),
        ],
    )

    assert values["p99"] == [_nearest_rank(durations, 99)]
    assert values["p90"] == [_nearest_rank(durations, 90)]
    assert values["p50"] == [_nearest_rank(durations, 50)]
    assert values["p999"] == [max(durations)]
    assert values["count"] == [150]


def test_a_query_on_one_executed_version_reads_only_that_version(aws):
    name = f"fn-{uuid.uuid4().hex[:8]}"
    _record(aws, name, "1", [1000.0 + i for i in range(40)])
    _record(aws, name, "2", [10.0 + i for i in range(60)])

    values = _values(
        aws,
        [
            _query("p99v2", "Duration", "p99", _dimensions(name, "2")),
            _query("callsv2", "Invocations", "Sum", _dimensions(name, "2")),
            _query("callsv1", "Invocations", "Sum", _dimensions(name, "1")),
            _query("callsalias", "Invocations", "Sum", _dimensions(name)),
            _query("p99alias", "Duration", "p99", _dimensions(name)),
        ],
    )

    assert values["p99v2"] == [69.0]  # rank ceil(59.4) = 60 of 10..69
    assert values["callsv2"] == [60]
    assert values["callsv1"] == [40]
    assert values["callsalias"] == [100]
    assert values["p99alias"] == [1038.0]  # rank 99 of 100: version 1's second slowest


def test_metric_queries_match_the_namespace_too(aws):
    name = f"fn-{uuid.uuid4().hex[:8]}"
    _record(aws, name, "2", [20.0])
    aws.client("cloudwatch").put_metric_data(
        Namespace="Custom/Lookalike",
        MetricData=[{"MetricName": "Invocations", "Value": 5.0, "Dimensions": _dimensions(name, "2")}],
    )

    assert _values(aws, [_query("calls", "Invocations", "Sum", _dimensions(name, "2"))])["calls"] == [1]


def test_expressions_read_the_exact_percentile(aws):
    name = f"fn-{uuid.uuid4().hex[:8]}"
    _record(aws, name, "2", [30.0, 10.0, 20.0])

    values = _values(
        aws,
        [
            _query("raw", "Duration", "p50", _dimensions(name, "2"), ReturnData=False),
            {"Id": "copy", "Expression": "raw", "Label": "median"},
        ],
    )

    assert values == {"copy": [20.0]}
