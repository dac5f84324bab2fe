"""ReapRollout: an execution of the rollout workflow ended; make sure it left nothing behind."""

from typing import Any

from aws_lambda_powertools.utilities.parser import envelopes, event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from layershift_core.models import ExecutionStatusChange
from layershift_core.observability import logger, metrics, tracer
from layershift_core.reaper import reap
from layershift_core.settings import load_settings


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=ExecutionStatusChange, envelope=envelopes.EventBridgeEnvelope)
def handler(event: ExecutionStatusChange, context: LambdaContext) -> dict[str, Any]:
    return reap(event, load_settings()).model_dump(mode="json")
