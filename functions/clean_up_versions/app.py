"""CleanUpVersions: on its schedule, delete the layer and function versions nothing runs (cleanup.py)."""

from typing import Any

from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from layershift_core.cleanup import CleanupPolicy, scheduled_clean_up
from layershift_core.observability import logger, metrics, tracer
from layershift_core.settings import load_settings


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=CleanupPolicy)
def handler(event: CleanupPolicy, context: LambdaContext) -> dict[str, Any]:
    seconds_left = context.get_remaining_time_in_millis() / 1000
    return scheduled_clean_up(event, load_settings(), seconds_left).model_dump(mode="json")
