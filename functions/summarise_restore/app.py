"""SummariseRestore: how many targets RestoreAliases put back, and each one it could not, with its fix."""

from typing import Any

from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from layershift_core.metering import metered
from layershift_core.observability import logger, metrics, tracer
from layershift_core.settings import load_settings
from layershift_core.traffic import RestoreState, summarise_restore


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
@metered
@event_parser(model=RestoreState)
def handler(event: RestoreState, context: LambdaContext) -> dict[str, Any]:
    return summarise_restore(event, load_settings()).model_dump(mode="json")
