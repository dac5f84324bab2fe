"""PlanRollout: every function that uses the layer, as a target or skipped with its reason."""

from typing import Any

from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from layershift_core.health import preflight
from layershift_core.metering import metered
from layershift_core.models import RolloutState
from layershift_core.observability import logger, metrics, tracer
from layershift_core.planner import plan_rollout
from layershift_core.settings import load_settings


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
@metered
@event_parser(model=RolloutState)
def handler(event: RolloutState, context: LambdaContext) -> dict[str, Any]:
    state = plan_rollout(event, load_settings())
    return preflight(state).model_dump(mode="json", exclude_none=True)
