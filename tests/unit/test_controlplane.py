"""Finding a deployed control plane from its stack, the way `--stack` does."""

import json
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from layershift.controlplane import ControlPlaneNotFound, from_stack, stack_name_from_samconfig

ROOT = Path(__file__).resolve().parents[2]


def _stack(name: str, outputs: dict[str, str]) -> None:
    template = {
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {key: {"Value": value} for key, value in outputs.items()},
    }
    boto3.client("cloudformation").create_stack(StackName=name, TemplateBody=json.dumps(template))


@mock_aws
def test_the_stack_outputs_locate_the_control_plane() -> None:
    _stack(
        "layershift",
        {
            "ArtifactBucketName": "bucket",
            "RegistryTableName": "table",
            "RolloutStateMachineArn": "arn:aws:states:us-east-1:123456789012:stateMachine:rollout",
            "NotificationTopicArn": "arn:aws:sns:us-east-1:123456789012:topic",
        },
    )
    cp = from_stack("layershift", "us-east-1")
    assert (cp.bucket, cp.table) == ("bucket", "table")
    assert cp.state_machine_arn.endswith(":stateMachine:rollout")
    assert cp.endpoint_url is None


@mock_aws
def test_a_stack_that_is_not_layershift_is_named_clearly() -> None:
    _stack("other", {"Something": "else"})
    with pytest.raises(ControlPlaneNotFound, match="ArtifactBucketName"):
        from_stack("other", "us-east-1")
    with pytest.raises(ControlPlaneNotFound, match="no stack 'missing'"):
        from_stack("missing", "us-east-1")


def test_template_outputs_are_the_ones_the_cli_reads() -> None:
    text = (ROOT / "template.yaml").read_text()
    outputs = text[text.index("\nOutputs:") :]
    for key in ("ArtifactBucketName", "RegistryTableName", "RolloutStateMachineArn", "NotificationTopicArn"):
        assert f"\n  {key}:" in outputs


def test_samconfig_names_the_default_stack() -> None:
    assert stack_name_from_samconfig(ROOT / "samconfig.toml") == "layershift"


class _GrowingHistory:
    """GetExecutionHistory as Step Functions pages it, newest first, over a history that grows."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.calls: list[int] = []  # the page sizes asked for

    def add(self, count: int) -> None:
        start = len(self.events) + 1
        self.events += [{"id": i, "type": "PassStateEntered"} for i in range(start, start + count)]

    def get_execution_history(self, executionArn: str, reverseOrder: bool, maxResults: int, nextToken: str = "0"):
        assert reverseOrder
        self.calls.append(maxResults)
        newest = self.events[::-1]
        offset = int(nextToken)
        page = {"events": newest[offset : offset + maxResults]}
        if offset + maxResults < len(newest):
            page["nextToken"] = str(offset + maxResults)
        return page


def test_a_history_tail_returns_each_event_once_in_order() -> None:
    from layershift.controlplane import ControlPlane, HistoryTail

    history = _GrowingHistory()
    cp = ControlPlane(bucket="b", table="t", state_machine_arn="arn", topic_arn="topic", region="us-east-1")
    cp._clients["stepfunctions"] = history
    tail = HistoryTail(cp, "arn:execution")
    seen: list[int] = []
    first_polls = 0
    for count in (0, 130, 3, 0, 25, 1):
        history.add(count)
        seen += [event["id"] for event in tail.new_events()]
        first_polls = first_polls or (len(history.calls) if seen else 0)
    assert seen == list(range(1, 160))
    assert set(history.calls[first_polls:]) == {HistoryTail.NEXT_PAGE}, "once caught up, polls ask for small pages"


class _HistoryGrowingBetweenPages(_GrowingHistory):
    """Offset page tokens counted from the newest event, with events arriving between two pages."""

    grow_between_pages = False

    def get_execution_history(self, executionArn: str, reverseOrder: bool, maxResults: int, nextToken: str = "0"):
        page = super().get_execution_history(executionArn, reverseOrder, maxResults, nextToken)
        if page.get("nextToken") and self.grow_between_pages:
            self.grow_between_pages = False
            self.add(3)  # the next page's offset now starts 3 events newer: 3 events come twice
        return page


def test_a_history_tail_keeps_each_event_once_when_the_history_grows_between_pages() -> None:
    from layershift.controlplane import ControlPlane, HistoryTail

    history = _HistoryGrowingBetweenPages()
    cp = ControlPlane(bucket="b", table="t", state_machine_arn="arn", topic_arn="topic", region="us-east-1")
    cp._clients["stepfunctions"] = history
    tail = HistoryTail(cp, "arn:execution")
    history.add(5)
    seen = [event["id"] for event in tail.new_events()]
    history.add(25)  # more than a small page: the next call pages, and the history grows meanwhile
    history.grow_between_pages = True
    seen += [event["id"] for event in tail.new_events()]
    seen += [event["id"] for event in tail.new_events()]
    assert seen == list(range(1, len(history.events) + 1))


def test_a_check_that_fails_is_told_once_and_not_again_as_its_caught_exit() -> None:
    from layershift.controlplane import describe_event

    bake = {"checks": 1, "verdict": "inconclusive", "verdict_detail": "too little traffic"}
    passed = {
        "type": "TaskStateExited",
        "stateExitedEventDetails": {"name": "CheckHealth", "output": json.dumps({"bake": bake})},
    }
    failed = {"type": "TaskFailed", "taskFailedEventDetails": {"error": "RolloutUnhealthy", "cause": "failing: orders"}}
    caught = {
        "type": "TaskStateExited",
        "stateExitedEventDetails": {
            "name": "CheckHealth",
            "output": json.dumps({"bake": bake, "error": {"Error": "RolloutUnhealthy", "Cause": "failing: orders"}}),
        },
    }
    lines = [describe_event(event) for event in (passed, failed, caught)]
    assert lines == ["  check 1: inconclusive: too little traffic", "  ! RolloutUnhealthy: failing: orders", None]
