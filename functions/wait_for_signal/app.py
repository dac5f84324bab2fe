"""WaitForSignal: record the task token of a bake or an approval, so a signal can end the wait at once."""

from typing import Any

from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from layershift_core.control import WaitRequest, register_wait
from layershift_core.metering import metered
from layershift_core.observability import logger, metrics, tracer
from layershift_core.settings import load_settings


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
@metered
@event_parser(model=WaitRequest)
def handler(event: WaitRequest, context: LambdaContext) -> dict[str, Any]:
    return register_wait(event, load_settings())
