"""OnAlarm: a gating alarm went into ALARM; end the bake of every rollout it gates, at once."""

from typing import Any

from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext

from layershift_core.control import on_alarm
from layershift_core.observability import logger, metrics, tracer
from layershift_core.settings import load_settings


@logger.inject_lambda_context(log_event=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=EventBridgeModel)
def handler(event: EventBridgeModel, context: LambdaContext) -> dict[str, Any]:
    return {"signalled": on_alarm(event.model_dump(mode="json", by_alias=True), load_settings())}
