"""ShareLayerVersions: every version of the layer carries exactly the grants of layer.toml's [share]."""

from typing import Any

from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from layershift_core.metering import metered
from layershift_core.models import RolloutState
from layershift_core.observability import logger, metrics, tracer
from layershift_core.settings import load_settings
from layershift_core.sharing import share_layer_versions


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
@metered
@event_parser(model=RolloutState)
def handler(event: RolloutState, context: LambdaContext) -> dict[str, Any]:
    return share_layer_versions(event, load_settings()).model_dump(mode="json", exclude_none=True)
