"""ApproveRollout: an approver's approve or reject of the rollout waiting for approval before 100%.

Invoking this function is the approval: IAM decides who may (the stack's approver role), not
access to the registry where the wait's task token is kept.
"""

from typing import Any

from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from layershift_core.control import ApprovalRequest, decide_approval
from layershift_core.observability import logger, metrics, tracer
from layershift_core.settings import load_settings


@logger.inject_lambda_context(log_event=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=ApprovalRequest)
def handler(event: ApprovalRequest, context: LambdaContext) -> dict[str, Any]:
    return {"rollout_id": decide_approval(event, load_settings())}
