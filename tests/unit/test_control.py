"""Signals to a running rollout: an alarm ends the bakes it gates, approvals and aborts find their rollout."""

from collections.abc import Iterator

import boto3
import pytest
from botocore.stub import ANY, Stubber
from moto import mock_aws

from layershift_core import aws, control
from layershift_core.errors import NothingWaiting, RolloutAborted, RolloutUnhealthy
from layershift_core.models import Preflight, ShiftStep, StepState, Wave
from layershift_core.registry import Registry
from layershift_core.settings import Settings

from .registry_table import create_registry_table


@pytest.fixture
def settings() -> Iterator[Settings]:
    with mock_aws():
        aws.client.cache_clear()
        create_registry_table("registry")
        Registry("registry").acquire_lock("shared", "r1", 3600)  # a waiting rollout holds its layer's lock
        topic = boto3.client("sns").create_topic(Name="rollouts")["TopicArn"]
        yield Settings(bucket="artifacts", table="registry", topic_arn=topic)
        aws.client.cache_clear()


@pytest.fixture
def step_functions(settings: Settings) -> Iterator[Stubber]:
    """The task-token calls, stubbed: only Step Functions itself can hand out a live token."""
    with Stubber(aws.client("stepfunctions")) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def _alarm(name: str, state: str) -> None:
    cloudwatch = boto3.client("cloudwatch")
    cloudwatch.put_metric_alarm(
        AlarmName=name,
        Namespace="AWS/Lambda",
        MetricName="Errors",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
        # with no datapoints, an alarm evaluator (the local one, if running) keeps this state
        TreatMissingData="breaching" if state == "ALARM" else "notBreaching",
    )
    cloudwatch.set_alarm_state(AlarmName=name, StateValue=state, StateReason="test")


def _step(alarms: list[str], preflight: Preflight | None = None) -> StepState:
    return StepState(
        rollout_id="r1",
        layer="shared",
        plan_key="rollouts/shared/r1/plan.json",
        alarms=alarms,
        poll_seconds=30,
        step=ShiftStep(wave=Wave.MAIN, weight=10, bake_seconds=300),
        step_index=0,
        preflight=preflight,
    )


def _event(alarm: str, state: str = "ALARM") -> dict:
    return {"detail-type": "CloudWatch Alarm State Change", "detail": {"alarmName": alarm, "state": {"value": state}}}


def test_an_alarm_ends_only_the_bakes_it_gates(settings: Settings, step_functions: Stubber) -> None:
    _alarm("orders-errors", "OK")
    control.register_wait(control.WaitRequest(kind="bake", token="t1", step=_step(["orders-errors"])), settings)
    assert control.on_alarm(_event("orders-errors", "OK"), settings) == []
    assert control.on_alarm(_event("someone-elses-alarm"), settings) == []
    step_functions.add_response(
        "send_task_failure",
        {},
        {"taskToken": "t1", "error": "RolloutUnhealthy", "cause": ANY},
    )
    assert control.on_alarm(_event("orders-errors"), settings) == ["shared:r1"]
    # a token of a wait that is already over is no error: the rollout moved on
    step_functions.add_client_error("send_task_failure", service_error_code="TaskTimedOut")
    assert control.on_alarm(_event("orders-errors"), settings) == []


def test_waiting_is_refused_when_a_signal_already_came(settings: Settings) -> None:
    _alarm("orders-errors", "ALARM")
    with pytest.raises(RolloutUnhealthy, match="orders-errors is ALARM"):
        control.register_wait(control.WaitRequest(kind="bake", token="t1", step=_step(["orders-errors"])), settings)
    # the same alarm, already firing at the pre-flight and unchanged since, does not gate
    baseline = Preflight(checked_at=9e9, alarms_in_alarm=["orders-errors"])
    request = control.WaitRequest(kind="bake", token="t2", step=_step(["orders-errors"], baseline))
    assert control.register_wait(request, settings) == {"waiting": "bake"}

    Registry(settings.table).request_abort("shared", "r1", "not today")
    with pytest.raises(RolloutAborted, match="not today"):
        control.register_wait(control.WaitRequest(kind="bake", token="t3", step=_step([])), settings)


def test_an_approval_is_announced_with_the_commands_to_run(settings: Settings, step_functions: Stubber) -> None:
    sqs = boto3.client("sqs")
    queue = sqs.create_queue(QueueName="inbox")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    boto3.client("sns").subscribe(TopicArn=settings.topic_arn, Protocol="sqs", Endpoint=queue_arn)

    with pytest.raises(NothingWaiting, match="no rollout of layer 'shared' is waiting for approval"):
        control.approve(settings, "shared")
    control.register_wait(control.WaitRequest(kind="approval", token="t1", step=_step([])), settings)
    body = sqs.receive_message(QueueUrl=queue)["Messages"][0]["Body"]
    assert "layershift approve shared" in body and "layershift reject shared" in body
    step_functions.add_response("send_task_success", {}, {"taskToken": "t1", "output": ANY})
    assert control.approve(settings, "shared") == "r1"
    with pytest.raises(NothingWaiting):
        control.reject(settings, "other-layer", "no")
