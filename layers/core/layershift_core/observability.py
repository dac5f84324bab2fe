"""Powertools logger, tracer and metrics: created once, shared by every handler."""

import os

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric

logger = Logger()
tracer = Tracer()
metrics = Metrics()


def emit(name: str, unit: MetricUnit, value: float, **dimensions: str) -> None:
    """One metric with exactly these dimensions (none: no dimension at all), flushed at once.

    The dashboard and the alarms in template.yaml name each metric with its exact dimension set,
    as CloudWatch matches them; ``metrics`` would add its ``service`` dimension to every one.
    """
    namespace = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Layershift")
    with single_metric(name=name, unit=unit, value=value, namespace=namespace) as metric:
        for key, dimension in dimensions.items():
            metric.add_dimension(name=key, value=dimension)
