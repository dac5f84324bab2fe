"""Endings the workflow does not reach by itself: a stop from the console, and a rollback that fails.

The reaper (ExecutionEndedRule → ReapRolloutFunction) runs after every execution ends. A stopped
execution must leave no alias split and no lock held; a rollback that cannot restore an alias must
page with the exact function, alias and commands, and never report success.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from layershift.controlplane import ControlPlane, abort, history_events, wait_for_end
from layershift.invariants import check_invariants
from layershift_core.artifacts import read_json
from layershift_core.history import history_key
from layershift_core.registry import Registry

from .support import (
    create_consumer,
    publish_bootstrap_layer,
    session_function,
    set_fault,
    spec,
    start_rollout,
    wait_for_state,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.network]


class Inbox:
    """Every message the notification topic publishes while it is subscribed."""

    def __init__(self, cp: ControlPlane, url: str) -> None:
        self.cp, self.url, self.messages = cp, url, []
        self.attributes: dict[str, dict[str, str]] = {}  # a message's body -> its SNS message attributes

    def drain(self) -> list[str]:
        sqs = self.cp.client("sqs")
        found = sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10, MessageAttributeNames=["All"])
        for message in found.get("Messages", []):
            self.messages.append(message["Body"])
            attributes = message.get("MessageAttributes", {})
            self.attributes[message["Body"]] = {name: value["StringValue"] for name, value in attributes.items()}
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
    # the reaper's ending leaves the registry for S3 as the workflow's do: archived, then set to expire
    wait_until(lambda: _archived_and_expiring(cp, "stopped", arn.rsplit(":", 1)[-1]))


def _archived_and_expiring(cp: ControlPlane, layer: str, rollout_id: str) -> bool:
    """Whether the rollout's record, notified, expires after the retention and equals its archive."""
    with cp.domain_clients():
        record = Registry(cp.table).rollout(layer, rollout_id) or {}
        if not record.get("notified_at") or not record.get("expires_at"):
            return False
        assert abs(record["expires_at"] - (time.time() + 90 * 86_400)) < 3600, record
        return bool(read_json(cp.bucket, history_key(layer, rollout_id)) == record)


def test_a_rollback_that_cannot_restore_pages_and_never_succeeds(
    control_plane: ControlPlane, fault_plan: Path, inbox: Inbox
) -> None:
    cp = control_plane
    layer = "pager"
    old = create_consumer(cp, f"{layer}-fn", [publish_bootstrap_layer(cp, layer)])
    restore = session_function(cp, "RestoreTargetsFunction")
    set_fault(
        fault_plan, layer, {"function": restore, "service": "lambda", "operation": "UpdateAlias", "fault": "denied"}
    )
    try:
        # An operator's abort after traffic has moved: the rollout must roll back, and cannot.
        arn = start_rollout(cp, layer, "six==1.16.0\n", spec("[{weight = 50, bake_seconds = 600}]"))
        wait_for_state(cp, arn, "BakeAndWatch")
        assert abort(cp, layer, "pager test")
        described = wait_for_end(cp, arn, poll=0.3, timeout=600)
    finally:
        set_fault(fault_plan, layer, None)

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
    # the page is the one message a pager's filter policy (severity critical) picks
    assert inbox.attributes[page] == {"layer": layer, "phase": "rollback_incomplete", "severity": "critical"}
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


def _task_payload(history: list[dict], function_part: str) -> tuple[str, dict]:
    """The function and payload of the last task the execution scheduled for a function."""
    for event in reversed(history):
        if event["type"] == "TaskScheduled":
            parameters = json.loads(event["taskScheduledEventDetails"]["parameters"])
            if function_part in parameters.get("FunctionName", ""):
                return parameters["FunctionName"], parameters["Payload"]
    raise AssertionError(f"no task of {function_part} was scheduled")


def _entered_input(history: list[dict], state: str) -> dict:
    entered = [e for e in history if (e.get("stateEnteredEventDetails") or {}).get("name") == state]
    return json.loads(entered[-1]["stateEnteredEventDetails"]["input"])


def test_redriving_an_ended_rollout_changes_nothing_of_the_next_one(control_plane: ControlPlane) -> None:
    """Redrive reruns the unsuccessful step with the same input (moto has no RedriveExecution, so the
    steps are invoked here as Step Functions would). The old rollout's lock is gone by then: its
    steps stop with LockLost, and its rollback leaves the next rollout's aliases alone."""
    cp = control_plane
    sfn, lam = cp.client("stepfunctions"), cp.client("lambda")
    old = create_consumer(cp, "redrive-fn", [publish_bootstrap_layer(cp, "redrive")])
    first = start_rollout(cp, "redrive", "six==1.16.0\n", spec("[{weight = 50, bake_seconds = 600}]"))
    wait_for_state(cp, first, "BakeAndWatch")
    sfn.stop_execution(executionArn=first, cause="stopped from the console")
    wait_until(lambda: sfn.describe_execution(executionArn=first)["status"] == "ABORTED")
    assert check_invariants(cp, first) == []
    history = history_events(cp, first)

    second = start_rollout(cp, "redrive", "six==1.16.0\n", spec("[{weight = 50, bake_seconds = 600}]", extra="# 2"))
    wait_for_state(cp, second, "BakeAndWatch")
    wait_until(lambda: bool((_alias(cp, "redrive-fn").get("RoutingConfig") or {}).get("AdditionalVersionWeights")))
    split = _alias(cp, "redrive-fn")

    # The step the first execution was in, and the one before it, run again with their inputs.
    for part in ("WaitForSignal", "StartBake"):
        function, payload = _task_payload(history, part)
        answer = lam.invoke(FunctionName=function, Payload=json.dumps(payload).encode())
        error = json.loads(answer["Payload"].read())
        assert answer.get("FunctionError") and error["errorType"] == "LockLost", error
        assert "no longer holds the lock" in error["errorMessage"]
    # Its rollback, as the redriven execution would reach it: the restore of its targets, then RollBack.
    state = {**_entered_input(history, "StartBake"), "error": {"Error": "LockLost", "Cause": "redriven"}}
    machines = sfn.list_state_machines()["stateMachines"]
    restore_machine = next(m["stateMachineArn"] for m in machines if m["name"].endswith("-restore"))
    request = {
        "layer": "redrive",
        "rollout_id": first.rsplit(":", 1)[-1],
        "targets_key": state["plan"]["targets_key"],
        "fanout": state["rollout"]["fanout"],
    }
    restore = sfn.start_execution(stateMachineArn=restore_machine, input=json.dumps(request))["executionArn"]
    assert wait_for_end(cp, restore, poll=0.3, timeout=120)["status"] == "SUCCEEDED"
    roll_back = session_function(cp, "RollBackFunction")
    answer = lam.invoke(FunctionName=roll_back, Payload=json.dumps(state).encode())
    assert not answer.get("FunctionError"), answer["Payload"].read()
    after = _alias(cp, "redrive-fn")
    assert (after["FunctionVersion"], after.get("RoutingConfig")) == (
        split["FunctionVersion"],
        split.get("RoutingConfig"),
    )

    assert abort(cp, "redrive", "end of the redrive test")
    wait_for_end(cp, second, poll=0.3, timeout=300)
    assert check_invariants(cp, second) == []
    assert _alias(cp, "redrive-fn")["FunctionVersion"] == old
