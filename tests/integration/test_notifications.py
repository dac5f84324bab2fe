"""A notification for every phase of a rollout: one SNS message each, in AWS Chatbot's custom
notification schema, chosen by subscription filter policies on its `layer`, `phase` and `severity`
message attributes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from layershift import controlplane
from layershift.controlplane import ControlPlane

from .support import create_consumer, finish_rollout, publish_bootstrap_layer, spec, start_rollout, wait_for_state

pytestmark = [pytest.mark.integration, pytest.mark.network]

Subscribe = Callable[[dict[str, Any]], "Inbox"]


class Inbox:
    """An SQS queue subscribed to the topic with a filter policy (raw delivery: the message as sent,
    its SNS message attributes as the SQS message's)."""

    def __init__(self, cp: ControlPlane, url: str) -> None:
        self.cp, self.url = cp, url
        self.messages: list[tuple[dict[str, str], str]] = []

    def drain(self) -> list[tuple[dict[str, str], str]]:
        sqs = self.cp.client("sqs")
        while found := sqs.receive_message(
            QueueUrl=self.url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
        ).get("Messages", []):
            for message in found:
                attributes = {k: v["StringValue"] for k, v in message.get("MessageAttributes", {}).items()}
                self.messages.append((attributes, message["Body"]))
                sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])
        return self.messages

    def phases(self) -> list[str]:
        return [attributes["phase"] for attributes, _ in self.drain()]

    def chat(self, phase: str) -> dict[str, Any]:
        """The chat-schema body of the phase's message (an ending's is sent to chat subscribers)."""
        [body] = [body for attributes, body in self.messages if attributes["phase"] == phase]
        return json.loads(body)


@pytest.fixture
def subscribe(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[Subscribe]:
    cp, made = control_plane, []
    sqs, sns = cp.client("sqs"), cp.client("sns")

    def make(policy: dict[str, Any]) -> Inbox:
        url = sqs.create_queue(QueueName=f"phases-{request.node.name[:40]}-{len(made)}")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        subscription = sns.subscribe(
            TopicArn=cp.topic_arn,
            Protocol="sqs",
            Endpoint=arn,
            Attributes={"RawMessageDelivery": "true", "FilterPolicy": json.dumps(policy)},
        )["SubscriptionArn"]
        made.append((url, subscription))
        return Inbox(cp, url)

    yield make
    for url, subscription in made:
        sns.unsubscribe(SubscriptionArn=subscription)
        sqs.delete_queue(QueueUrl=url)


def test_every_phase_of_a_rollout_is_one_chat_ready_message_chosen_by_its_attributes(
    control_plane: ControlPlane, subscribe: Subscribe
) -> None:
    cp = control_plane
    layer = "phases"
    # what each team would subscribe: everything of its layer, or only what needs someone
    everything = subscribe({"layer": [layer]})
    actionable = subscribe({"layer": [layer], "severity": ["warning", "critical"]})
    approvals = subscribe({"phase": ["approval_needed"]})
    create_consumer(cp, f"{layer}-fn", [publish_bootstrap_layer(cp, layer)])

    arn = start_rollout(cp, layer, "six==1.16.0\n", spec(extra="approval = true"))
    wait_for_state(cp, arn, "AwaitApproval")
    controlplane.approve(cp, layer)
    assert finish_rollout(cp, arn).status == "SUCCEEDED"

    assert everything.phases() == ["accepted", "built", "traffic_step", "approval_needed", "promoted"]
    assert actionable.phases() == ["approval_needed"]
    assert [(a["phase"], a["layer"]) for a, _ in approvals.drain()] == [("approval_needed", layer)]

    rollout_id = arn.rsplit(":", 1)[-1]
    for attributes, _ in everything.messages:
        assert attributes["layer"] == layer and attributes["severity"] in {"info", "warning", "critical"}
    for phase in ("accepted", "built", "traffic_step", "approval_needed"):
        message = everything.chat(phase)
        # AWS Chatbot's custom notification schema
        assert message["version"] == "1.0" and message["source"] == "custom"
        assert message["content"]["title"] and message["content"]["description"]
        assert message["metadata"]["threadId"] == f"layershift-{layer}-{rollout_id}"
        assert message["metadata"]["eventType"] == phase
        context = message["metadata"]["additionalContext"]
        assert all(isinstance(value, str) for value in context.values())
        assert context["layer"] == layer and context["rollout_id"] == rollout_id and context["phase"] == phase
    assert json.loads(everything.chat("accepted")["metadata"]["additionalContext"]["steps"]) == ["50% for 1s"]
    [version] = json.loads(everything.chat("built")["metadata"]["additionalContext"]["layer_versions"])
    assert version["packages"] == ["six==1.16.0"] and version["unzipped_mb"] >= 0
    step = everything.chat("traffic_step")["metadata"]["additionalContext"]
    assert step["verdict"] == "healthy" and step["weight_percent"] == "50" and step["checks"] >= "1"
    assert "layershift approve phases" in everything.chat("approval_needed")["content"]["description"]
    # an ending: subscribers other than chat receive its full record
    promoted = everything.chat("promoted")
    assert promoted["event"] == "promoted" and promoted["layer_version"] == version["layer_version"]
    assert promoted["usage"]["lambda_calls_total"] > 0


def test_a_rollback_is_one_warning_with_why_and_its_numbers(control_plane: ControlPlane, subscribe: Subscribe) -> None:
    cp = control_plane
    layer = "phases-rejected"
    inbox = subscribe({"layer": [layer], "phase": ["traffic_step", "rolled_back"]})
    create_consumer(cp, f"{layer}-fn", [publish_bootstrap_layer(cp, layer)])

    arn = start_rollout(cp, layer, "six==1.16.0\n", spec(extra="approval = true"))
    wait_for_state(cp, arn, "AwaitApproval")
    controlplane.reject(cp, layer, "not tonight")
    assert finish_rollout(cp, arn).status == "FAILED"

    assert inbox.phases() == ["traffic_step", "rolled_back"]
    [(attributes, body)] = [m for m in inbox.messages if m[0]["phase"] == "rolled_back"]
    assert attributes["severity"] == "warning"
    record = json.loads(body)
    assert record["outcome"]["error"] == "ApprovalRejected" and "not tonight" in record["outcome"]["cause"]
