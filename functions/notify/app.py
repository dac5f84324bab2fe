"""Notify: one SNS message for each ending of a rollout."""

from typing import Any

from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from layershift_core.metering import metered
from layershift_core.models import NotifyRequest
from layershift_core.notify import notify
from layershift_core.observability import logger, metrics, tracer
from layershift_core.settings import load_settings


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
@metered
@event_parser(model=NotifyRequest)
def handler(event: NotifyRequest, context: LambdaContext) -> dict[str, Any]:
    return notify(event, load_settings()).model_dump(mode="json", exclude_none=True)
