"""AssessTargets: one child batch of AssessCandidates: each candidate a target or skipped with its reason."""

from typing import Any

from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from layershift_core.fanout import BatchEvent
from layershift_core.metering import metered
from layershift_core.observability import logger, metrics, tracer
from layershift_core.planner import assess_targets
from layershift_core.settings import load_settings


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
@metered
@event_parser(model=BatchEvent)
def handler(event: BatchEvent, context: LambdaContext) -> dict[str, Any]:
    seconds_left = context.get_remaining_time_in_millis() / 1000
    return assess_targets(event, load_settings(), seconds_left).model_dump(mode="json")
