"""Dead-letter queues on the local emulated AWS: where an event goes once its retries are spent.

Two services write to a dead-letter queue, each in its own shape, and both are emulated here:

* EventBridge, for an event it could not deliver to a rule's target (the invoke call itself
  failed: the function is gone, throttled, or the rule may not invoke it) once the target's
  ``RetryPolicy`` is spent. The body is the event; the message attributes are ``ERROR_CODE``,
  ``ERROR_MESSAGE``, ``EXHAUSTED_RETRY_CONDITION``, ``RETRY_ATTEMPTS``, ``RULE_ARN`` and
  ``TARGET_ARN``.
* Lambda, for an asynchronous invocation whose function still errored after Lambda's retries
  (two by default). The body is the invocation's payload; the message attributes are
  ``RequestID``, ``ErrorCode`` (the invoke's HTTP status) and ``ErrorMessage`` (its first KB).

Only SQS queues (the template's only kind) are supported: an SNS dead-letter target raises.
"""

from __future__ import annotations

from typing import Any

from moto.sqs.models import sqs_backends


def _string(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


def _number(value: int) -> dict[str, str]:
    return {"DataType": "Number", "StringValue": str(value)}


def send(queue_arn: str, body: str, attributes: dict[str, dict[str, str]]) -> None:
    parts = queue_arn.split(":")
    if len(parts) != 6 or parts[2] != "sqs":
        raise ValueError(f"dead-letter target {queue_arn!r} is not an SQS queue ARN")
    _, _, _, region, account, name = parts
    sqs_backends[account][region].send_message(name, body, message_attributes=attributes)


def eventbridge_attributes(
    *, error_code: str, error_message: str, exhausted: str, attempts: int, rule_arn: str, target_arn: str
) -> dict[str, dict[str, str]]:
    return {
        "ERROR_CODE": _string(error_code),
        "ERROR_MESSAGE": _string(error_message[:1024] or error_code),
        "EXHAUSTED_RETRY_CONDITION": _string(exhausted),
        "RETRY_ATTEMPTS": _number(attempts),
        "RULE_ARN": _string(rule_arn),
        "TARGET_ARN": _string(target_arn),
    }


def lambda_attributes(*, request_id: str, error_code: int, error_message: str) -> dict[str, Any]:
    return {
        "RequestID": _string(request_id),
        "ErrorCode": _number(error_code),
        "ErrorMessage": _string(error_message[:1024] or "Unhandled"),
    }
