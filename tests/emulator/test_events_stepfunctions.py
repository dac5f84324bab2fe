"""EventBridge delivery and Step Functions' Lambda integration on the local emulated AWS."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from botocore.exceptions import ClientError

from .support import handler_zip, versioned_handler, wait_for

RECORDER = """
import json, boto3
def handler(event, context):
    boto3.client("s3").put_object(Bucket="event-records", Key="seen/" + context.aws_request_id,
                                  Body=json.dumps(event).encode())
"""


def _records(aws) -> list[dict]:
    s3 = aws.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="event-records", Prefix="seen/").get("Contents", [])]
    return [json.loads(s3.get_object(Bucket="event-records", Key=k)["Body"].read()) for k in keys]


def test_s3_upload_reaches_a_lambda_target_through_eventbridge(aws, make_function):
    s3, events, lam = aws.client("s3"), aws.client("events"), aws.client("lambda")
    s3.create_bucket(Bucket="event-records")
    s3.create_bucket(Bucket="pushes")
    s3.put_bucket_notification_configuration(
        Bucket="pushes", NotificationConfiguration={"EventBridgeConfiguration": {}}
    )
    recorder = make_function(handler_zip(RECORDER))
    arn = lam.get_function(FunctionName=recorder)["Configuration"]["FunctionArn"]
    events.put_rule(
        Name="on-push",
        EventPattern=json.dumps(
            {
                "source": ["aws.s3"],
                "detail-type": ["Object Created"],
                "detail": {"bucket": {"name": ["pushes"]}, "object": {"key": [{"prefix": "layers/"}]}},
            }
        ),
    )
    events.put_targets(Rule="on-push", Targets=[{"Id": "recorder", "Arn": arn}])

    s3.put_object(Bucket="pushes", Key="elsewhere/requirements.txt", Body=b"x")
    s3.put_object(Bucket="pushes", Key="layers/demo/requirements.txt", Body=b"requests==2.32.3\n")
    records = wait_for(lambda: _records(aws))
    time.sleep(0.3)
    records = _records(aws)
    assert len(records) == 1
    event = records[0]
    assert event["source"] == "aws.s3" and event["detail-type"] == "Object Created"
    assert event["detail"]["object"]["key"] == "layers/demo/requirements.txt"
    assert event["time"].endswith("Z") and "T" in event["time"]
    assert "ingestion-time" not in event


def test_rule_delivers_to_a_state_machine_with_an_input_transformer(aws, role_arn):
    sfn, events = aws.client("stepfunctions"), aws.client("events")
    machine = sfn.create_state_machine(
        name=f"echo-{uuid.uuid4().hex[:6]}",
        roleArn=role_arn,
        definition=json.dumps({"StartAt": "Echo", "States": {"Echo": {"Type": "Pass", "End": True}}}),
    )["stateMachineArn"]
    events.put_rule(Name="to-machine", EventPattern=json.dumps({"source": ["layershift.test"]}))
    events.put_targets(
        Rule="to-machine",
        Targets=[
            {
                "Id": "machine",
                "Arn": machine,
                "RoleArn": role_arn,
                "InputTransformer": {
                    "InputPathsMap": {"layer": "$.detail.layer"},
                    "InputTemplate": '{"layer": "<layer>"}',
                },
            }
        ],
    )
    events.put_events(
        Entries=[{"Source": "layershift.test", "DetailType": "push", "Detail": json.dumps({"layer": "demo"})}]
    )
    executions = wait_for(lambda: sfn.list_executions(stateMachineArn=machine)["executions"])
    execution = wait_for(
        lambda: (d := sfn.describe_execution(executionArn=executions[0]["executionArn"]))["status"] != "RUNNING" and d
    )
    assert execution["status"] == "SUCCEEDED"
    assert json.loads(execution["output"]) == {"layer": "demo"}


def _run(aws, role_arn: str, definition: dict, payload: dict) -> tuple[dict, list[dict]]:
    sfn = aws.client("stepfunctions")
    machine = sfn.create_state_machine(
        name=f"sm-{uuid.uuid4().hex[:6]}", roleArn=role_arn, definition=json.dumps(definition)
    )["stateMachineArn"]
    execution = sfn.start_execution(stateMachineArn=machine, input=json.dumps(payload))["executionArn"]
    described = wait_for(
        lambda: (d := sfn.describe_execution(executionArn=execution))["status"] != "RUNNING" and d, timeout=20
    )
    return described, sfn.get_execution_history(executionArn=execution)["events"]


def test_lambda_invoke_task_catches_a_custom_error_by_name(aws, make_function, role_arn):
    lam = aws.client("lambda")
    name = make_function(versioned_handler("sfn"))
    arn = lam.get_function(FunctionName=name)["Configuration"]["FunctionArn"]
    lam.publish_version(FunctionName=name)
    lam.create_alias(FunctionName=name, Name="live", FunctionVersion="1")
    definition = {
        "StartAt": "CallFunction",
        "States": {
            "CallFunction": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {"FunctionName": f"{arn}:live", "Payload.$": "$"},
                "OutputPath": "$.Payload",
                "Catch": [
                    {"ErrorEquals": ["ValueError"], "Next": "WrongCatch"},
                    {"ErrorEquals": ["LayerBroken"], "ResultPath": "$.error", "Next": "RolledBack"},
                ],
                "Next": "Done",
            },
            "WrongCatch": {"Type": "Fail", "Error": "WrongCatch"},
            "RolledBack": {"Type": "Pass", "End": True},
            "Done": {"Type": "Succeed"},
        },
    }
    described, history = _run(aws, role_arn, definition, {"raise": "LayerBroken"})
    assert described["status"] == "SUCCEEDED"
    assert json.loads(described["output"])["error"]["Error"] == "LayerBroken"
    assert any(e["type"] == "TaskFailed" and e["taskFailedEventDetails"]["error"] == "LayerBroken" for e in history)

    described, _ = _run(aws, role_arn, definition, {"hello": 1})
    assert described["status"] == "SUCCEEDED"
    assert json.loads(described["output"])["version"] == "1"


def test_wait_states_are_scaled(aws, role_arn):
    definition = {"StartAt": "Bake", "States": {"Bake": {"Type": "Wait", "Seconds": 120, "End": True}}}
    started = time.monotonic()
    described, _ = _run(aws, role_arn, definition, {})
    assert described["status"] == "SUCCEEDED"
    assert time.monotonic() - started < 10


def _wait_for_token(aws, role_arn, make_function, timeout_seconds: int):
    """A waitForTaskToken task whose function only records the token (as WaitForSignal does)."""
    lam = aws.client("lambda")
    name = make_function(handler_zip("def handler(event, context):\n    return {}\n"))
    arn = lam.get_function(FunctionName=name)["Configuration"]["FunctionArn"]
    definition = {
        "StartAt": "Bake",
        "States": {
            "Bake": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
                "Parameters": {"FunctionName": arn, "Payload": {"token.$": "$$.Task.Token"}},
                "TimeoutSecondsPath": "$.timeout",
                "Catch": [{"ErrorEquals": ["States.Timeout"], "ResultPath": "$.woke", "Next": "Checked"}],
                "Next": "Checked",
            },
            "Checked": {"Type": "Succeed"},
        },
    }
    sfn = aws.client("stepfunctions")
    machine = sfn.create_state_machine(
        name=f"token-{uuid.uuid4().hex[:8]}", definition=json.dumps(definition), roleArn=role_arn
    )["stateMachineArn"]
    return sfn, sfn.start_execution(stateMachineArn=machine, input=json.dumps({"timeout": timeout_seconds}))


def _token(sfn, execution_arn: str) -> str:
    def scheduled():
        for event in sfn.get_execution_history(executionArn=execution_arn)["events"]:
            if event["type"] == "TaskScheduled":
                return json.loads(event["taskScheduledEventDetails"]["parameters"])["Payload"]["token"]
        return None

    return wait_for(scheduled, timeout=20)


def test_send_task_failure_keeps_its_cause(aws, role_arn, make_function):
    """The rollout reads why a bake ended (which alarm, which operator) from the failure's cause."""
    sfn, started = _wait_for_token(aws, role_arn, make_function, timeout_seconds=3600)
    token = _token(sfn, started["executionArn"])
    sfn.send_task_failure(taskToken=token, error="RolloutUnhealthy", cause="alarm orders-errors went into ALARM")
    described = wait_for(
        lambda: (d := sfn.describe_execution(executionArn=started["executionArn"]))["status"] != "RUNNING" and d,
        timeout=20,
    )
    assert described["status"] == "FAILED"
    assert described["error"] == "RolloutUnhealthy"
    assert described["cause"] == "alarm orders-errors went into ALARM"


def test_task_timeouts_from_a_path_are_scaled_like_waits(aws, role_arn, make_function):
    sfn, started = _wait_for_token(aws, role_arn, make_function, timeout_seconds=300)
    begun = time.monotonic()
    described = wait_for(
        lambda: (d := sfn.describe_execution(executionArn=started["executionArn"]))["status"] != "RUNNING" and d,
        timeout=30,
    )
    assert described["status"] == "SUCCEEDED"
    assert json.loads(described["output"])["woke"]["Error"] == "States.Timeout"
    assert time.monotonic() - begun < 30


def test_execution_history_pages_as_step_functions_does(aws, role_arn):
    from moto.stepfunctions.responses import StepFunctionResponse

    from layershift.local import stepfunctions

    states = {f"Step{i}": {"Type": "Pass", "Result": {"i": i}, "Next": f"Step{i + 1}"} for i in range(30)}
    states["Step30"] = {"Type": "Succeed"}
    described, everything = _run(aws, role_arn, {"StartAt": "Step0", "States": states}, {"big": "x" * 100})
    arn = described["executionArn"]
    sfn = aws.client("stepfunctions")
    assert 60 < len(everything) < 100, "one answer holds the first 100 events"
    assert [e["id"] for e in everything] == list(range(1, len(everything) + 1))

    # the same events the emulator's own serializer gives, in pages
    fast = StepFunctionResponse.get_execution_history
    StepFunctionResponse.get_execution_history = stepfunctions._originals["get_execution_history"]
    try:
        assert sfn.get_execution_history(executionArn=arn)["events"] == everything
    finally:
        StepFunctionResponse.get_execution_history = fast

    pages = list(
        sfn.get_paginator("get_execution_history").paginate(executionArn=arn, PaginationConfig={"PageSize": 25})
    )
    assert [len(p["events"]) for p in pages] == [25, 25, len(everything) - 50]
    assert [e for p in pages for e in p["events"]] == everything
    newest = sfn.get_execution_history(executionArn=arn, reverseOrder=True, maxResults=5)
    assert newest["events"] == everything[::-1][:5]
    with pytest.raises(ClientError) as refused:  # a token is good for its own history and order only
        sfn.get_execution_history(executionArn=arn, maxResults=5, nextToken=newest["nextToken"])
    assert refused.value.response["Error"]["Code"] == "InvalidToken"
    bare = sfn.get_execution_history(executionArn=arn, includeExecutionData=False)["events"]
    assert "input" in everything[0]["executionStartedEventDetails"]
    assert "input" not in bare[0]["executionStartedEventDetails"]
    assert bare[0]["executionStartedEventDetails"]["roleArn"] == role_arn
