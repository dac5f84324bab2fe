"""ValidateRequest: police the pushed requirements file and layer.toml before anything is built."""

from typing import Any

from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from layershift_core.metering import metered
from layershift_core.models import RolloutState
from layershift_core.observability import logger, metrics, tracer
from layershift_core.settings import load_settings
from layershift_core.validation import validate_request


class ValidateEvent(BaseModel):
    state: RolloutState
    rollout_id: str


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
@metered
@event_parser(model=ValidateEvent)
def handler(event: ValidateEvent, context: LambdaContext) -> dict[str, Any]:
    state = validate_request(event.state, event.rollout_id, load_settings())
    return state.model_dump(mode="json", exclude_none=True)
