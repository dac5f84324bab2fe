"""ReportUsage: on its schedule, who runs which version of each layer, to S3 and CloudWatch."""

from typing import Any

from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from layershift_core.layer_usage import UsageReportRequest, report_usage
from layershift_core.observability import logger, metrics, tracer
from layershift_core.settings import load_settings


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=UsageReportRequest)
def handler(event: UsageReportRequest, context: LambdaContext) -> dict[str, Any]:
    seconds_left = context.get_remaining_time_in_millis() / 1000
    return report_usage(event, load_settings(), seconds_left).model_dump(mode="json")
