"""Dead letters on the local emulated AWS: EventBridge's for an undeliverable target, after its
RetryPolicy, and Lambda's for an asynchronous invocation that still errors after its retries."""

from __future__ import annotations

import json
import time

from .support import handler_zip, wait_for

FAILING = """
def handler(event, context):
    raise ValueError("no good: " + event.get("detail", {}).get("why", "?"))
"""


def _queue(aws, name: str) -> tuple[str, str]:
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    return url, sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def _receive(aws, url: str) -> list[dict]:
    return (
        aws.client("sqs")
        .receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"])
        .get("Messages", [])
    )


def test_an_undeliverable_target_is_retried_as_its_policy_says_then_dead_lettered(aws, make_function):
    events, lam = aws.client("events"), aws.client("lambda")
    url, queue_arn = _queue(aws, "undelivered")
    gone = lam.get_function(FunctionName=make_function(handler_zip(FAILING)))["Configuration"]["FunctionArn"]
    lam.delete_function(FunctionName=gone)  # the invoke itself fails: ResourceNotFoundException
    rule_arn = events.put_rule(Name="to-gone", EventPattern=json.dumps({"source": ["layershift.dlq"]}))["RuleArn"]
    events.put_targets(
        Rule="to-gone",
        Targets=[
            {
                "Id": "gone",
                "Arn": gone,
                "RetryPolicy": {"MaximumRetryAttempts": 2, "MaximumEventAgeInSeconds": 60},
                "DeadLetterConfig": {"Arn": queue_arn},
            }
        ],
    )
    started = time.monotonic()
    events.put_events(Entries=[{"Source": "layershift.dlq", "DetailType": "t", "Detail": json.dumps({"why": "x"})}])
    [message] = wait_for(lambda: _receive(aws, url))
    assert time.monotonic() - started < 10
    attributes = {k: v["StringValue"] for k, v in message["MessageAttributes"].items()}
    assert attributes["RULE_ARN"] == rule_arn and attributes["TARGET_ARN"] == gone
    assert attributes["ERROR_CODE"] == "ResourceNotFoundException"
    # a function that does not exist is not retriable: straight to the queue, no exhausted condition
    assert attributes["RETRY_ATTEMPTS"] == "0" and "EXHAUSTED_RETRY_CONDITION" not in attributes
    assert json.loads(message["Body"])["detail"] == {"why": "x"}


def test_a_retriable_delivery_failure_is_retried_up_to_maximum_retry_attempts(aws, monkeypatch):
    from botocore.exceptions import ClientError

    from layershift.local import eventbridge

    url, queue_arn = _queue(aws, "throttled")
    calls: list[str] = []

    def throttled(target, event):
        calls.append(target["Arn"])
        raise ClientError({"Error": {"Code": "TooManyRequestsException", "Message": "Rate Exceeded."}}, "Invoke")

    monkeypatch.setattr(eventbridge, "deliver", throttled)
    target = {
        "Id": "t",
        "Arn": "arn:aws:lambda:us-east-1:123456789012:function:busy",
        "RetryPolicy": {"MaximumRetryAttempts": 3},
        "DeadLetterConfig": {"Arn": queue_arn},
    }
    eventbridge.deliver_with_retries("arn:aws:events:us-east-1:123456789012:rule/r", target, {"source": "s"})
    assert len(calls) == 4  # the first attempt and three retries
    [message] = _receive(aws, url)
    attributes = {k: v["StringValue"] for k, v in message["MessageAttributes"].items()}
    assert attributes["EXHAUSTED_RETRY_CONDITION"] == "MaximumRetryAttempts"
    assert attributes["RETRY_ATTEMPTS"] == "3" and attributes["ERROR_CODE"] == "TooManyRequestsException"


def test_a_function_that_errors_on_every_async_attempt_goes_to_its_dead_letter_config(aws, make_function):
    lam = aws.client("lambda")
    url, queue_arn = _queue(aws, "function-dlq")
    name = make_function(handler_zip(FAILING), DeadLetterConfig={"TargetArn": queue_arn})
    assert lam.get_function_configuration(FunctionName=name)["DeadLetterConfig"] == {"TargetArn": queue_arn}
    payload = json.dumps({"detail": {"why": "async"}})
    lam.invoke(FunctionName=name, InvocationType="Event", Payload=payload.encode())
    [message] = wait_for(lambda: _receive(aws, url))
    assert message["Body"] == payload
    attributes = {k: v["StringValue"] for k, v in message["MessageAttributes"].items()}
    assert set(attributes) == {"RequestID", "ErrorCode", "ErrorMessage"}
    assert attributes["ErrorCode"] == "200" and "no good: async" in attributes["ErrorMessage"]
    invocations = aws.client("cloudwatch").get_metric_statistics(
        Namespace="AWS/Lambda",
        MetricName="Errors",
        Dimensions=[{"Name": "FunctionName", "Value": name}],
        StartTime=time.time() - 600,
        EndTime=time.time() + 60,
        Period=60,
        Statistics=["Sum"],
    )["Datapoints"]
    assert sum(point["Sum"] for point in invocations) == 3  # the attempt and Lambda's two retries
