"""StartRollout: an S3 push of layers/<layer>/requirements.txt starts one rollout execution; a
CodeCommit push is first copied into the bucket, which then starts it the same way."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from layershift_core.observability import logger, metrics, tracer
from layershift_core.settings import load_settings
from layershift_core.trigger import mirror_codecommit_push, start_rollout


@logger.inject_lambda_context(log_event=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    settings = load_settings()
    if event.get("detail-type") == "CodeCommit Repository State Change":
        return {"mirrored": mirror_codecommit_push(event, settings.bucket, settings.codecommit_branch)}
    if not settings.state_machine_arn:
        raise RuntimeError("LAYERSHIFT_STATE_MACHINE_ARN is not set")
    return start_rollout(event, settings.state_machine_arn).model_dump(mode="json", exclude_none=True)
