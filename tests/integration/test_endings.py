"""Endings the workflow does not reach by itself: a stop from the console, and a rollback that fails.

The reaper (ExecutionEndedRule → ReapRolloutFunction) runs after every execution ends. A stopped
execution must leave no alias split and no lock held; a rollback that cannot restore an alias must
page with the exact function, alias and commands, and never report success.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from layershift.controlplane import ControlPlane, abort, history_events, wait_for_end
from layershift.invariants import check_invariants

from .support import create_consumer, publish_bootstrap_layer, spec, start_rollout, wait_for_state, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.network]


class Inbox:
    """Every message the notification topic publishes while it is subscribed."""

    def __init__(self, cp: ControlPlane, url: str) -> None:
        self.cp, self.url, self.messages = cp, url, []

    def drain(self) -> list[str]:
        found = self.cp.client("sqs").receive_message(QueueUrl=self.url, MaxNumberOfMessages=10).get("Messages", [])
        self.messages.extend(message["Body"] for message in found)
        return self.messages

    def wait_for(self, text: str, timeout: float = 30) -> str:
        wait_until(lambda: any(text in message for message in self.drain()), timeout=timeout)
        return next(message for message in self.messages if text in message)


@pytest.fixture
def inbox(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[Inbox]:
    cp = control_plane
    sqs = cp.client("sqs")
    url = sqs.create_queue(QueueName=f"inbox-{request.node.name[:60]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    subscription = cp.client("sns").subscribe(
        TopicArn=cp.topic_arn, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"}
    )["SubscriptionArn"]
    yield Inbox(cp, url)
    cp.client("sns").unsubscribe(SubscriptionArn=subscription)
    sqs.delete_queue(QueueUrl=url)


def _alias(cp: ControlPlane, function: str) -> dict:
    return cp.client("lambda").get_alias(FunctionName=function, Name="live")


def _set_fault(plan: Path, layer: str, fault: dict | None) -> None:
    data = json.loads(plan.read_text())
    if fault is None:
        data["faults"].pop(layer, None)
    else:
        data["faults"][layer] = fault
    staging = plan.with_suffix(".staging")
    staging.write_text(json.dumps(data))
    staging.replace(plan)


def test_a_console_stop_mid_bake_leaves_no_split_alias_and_no_lock(control_plane: ControlPlane, inbox: Inbox) -> None:
    cp = control_plane
    old = create_consumer(cp, "stopped-fn", [publish_bootstrap_layer(cp, "stopped")])
    arn = start_rollout(cp, "stopped", "six==1.16.0\n", spec("[{weight = 50, bake_seconds = 600}]"))
    wait_for_state(cp, arn, "BakeAndWatch")
    wait_until(lambda: bool((_alias(cp, "stopped-fn").get("RoutingConfig") or {}).get("AdditionalVersionWeights")))

    cp.client("stepfunctions").stop_execution(executionArn=arn, error="Operator", cause="stopped from the console")

    status = lambda: cp.client("stepfunctions").describe_execution(executionArn=arn)["status"]  # noqa: E731
    wait_until(lambda: status() != "RUNNING")
    assert status() == "ABORTED"
    assert check_invariants(cp, arn) == []
    alias = _alias(cp, "stopped-fn")
    assert alias["FunctionVersion"] == old and not (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights")
    body = json.loads(inbox.wait_for('"sent_by": "reaper"'))
    assert body["event"] == "rolled_back" and "the execution ended ABORTED" in body["outcome"]["cause"]


def test_a_rollback_that_cannot_restore_pages_and_never_succeeds(
    control_plane: ControlPlane, fault_plan: Path, inbox: Inbox
) -> None:
    cp = control_plane
    layer = "pager"
    old = create_consumer(cp, f"{layer}-fn", [publish_bootstrap_layer(cp, layer)])
    functions = {f["FunctionName"] for f in cp.client("lambda").list_functions()["Functions"]}
    roll_back = next(name for name in functions if "RollBack" in name)
    _set_fault(
        fault_plan, layer, {"function": roll_back, "service": "lambda", "operation": "UpdateAlias", "fault": "denied"}
    )
    try:
        # An operator's abort after traffic has moved: the rollout must roll back, and cannot.
        arn = start_rollout(cp, layer, "six==1.16.0\n", spec("[{weight = 50, bake_seconds = 600}]"))
        wait_for_state(cp, arn, "BakeAndWatch")
        assert abort(cp, layer, "pager test")
        described = wait_for_end(cp, arn, poll=0.3, timeout=600)
    finally:
        _set_fault(fault_plan, layer, None)

    assert described["status"] == "FAILED"
    history = history_events(cp, arn)
    failed = next(e["executionFailedEventDetails"] for e in history if e["type"] == "ExecutionFailed")
    assert failed["error"] == "RollbackIncomplete"
    entered = [e["stateEnteredEventDetails"]["name"] for e in history if "stateEnteredEventDetails" in e]
    assert "NotifyRollbackIncomplete" in entered and "RolloutPromoted" not in entered
    alias = _alias(cp, f"{layer}-fn")
    new = next(iter(alias["RoutingConfig"]["AdditionalVersionWeights"]))
    page = inbox.wait_for("ACTION NEEDED")
    assert page.startswith("ACTION NEEDED")
    assert f"- {layer}-fn alias live (now version {old} with routing {{'{new}': 0.5}}):" in page
    assert (
        f"aws lambda update-alias --function-name {layer}-fn --name live --function-version {old} "
        "--routing-config AdditionalVersionWeights={}"
    ) in page
    record = cp.client("dynamodb").get_item(
        TableName=cp.table, Key={"pk": {"S": f"LAYER#{layer}"}, "sk": {"S": f"ROLLOUT#{arn.rsplit(':', 1)[-1]}"}}
    )["Item"]
    assert record["status"]["S"] == "rollback_incomplete"

    # The page's own command puts it right.
    cp.client("lambda").update_alias(
        FunctionName=f"{layer}-fn", Name="live", FunctionVersion=old, RoutingConfig={"AdditionalVersionWeights": {}}
    )
