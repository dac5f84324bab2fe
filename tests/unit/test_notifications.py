"""The phase notifications' shape: the chat schema, the filter attributes, an ending's record."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from layershift_core.notify import publish, publish_ending
from layershift_core.publish import package_changes
from layershift_core.settings import Settings


def test_package_changes_name_upgrades_additions_and_removals() -> None:
    before = {"six": "1.16.0", "pyjwt": "1.7.1", "gone": "1.0"}
    after = {"six": "1.16.0", "pyjwt": "2.10.0", "new": "0.1"}
    assert package_changes(before, after) == ["-gone 1.0", "+new 0.1", "pyjwt 1.7.1 -> 2.10.0"]
    assert package_changes(after, after) == []


@pytest.fixture
def inbox(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        from layershift_core import aws

        aws.client.cache_clear()
        topic = boto3.client("sns").create_topic(Name="notes")["TopicArn"]
        sqs = boto3.client("sqs")
        url = sqs.create_queue(QueueName="notes-inbox")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        boto3.client("sns").subscribe(
            TopicArn=topic,
            Protocol="sqs",
            Endpoint=arn,
            Attributes={"RawMessageDelivery": "true", "FilterPolicy": json.dumps({"severity": ["critical"]})},
        )

        def received() -> list[tuple[dict[str, str], str]]:
            found = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"])
            return [
                ({k: v["StringValue"] for k, v in m["MessageAttributes"].items()}, m["Body"])
                for m in found.get("Messages", [])
            ]

        yield Settings(bucket="artifacts", table="registry", topic_arn=topic), received
        aws.client.cache_clear()


def test_a_phase_is_one_message_in_the_chat_schema_and_a_filter_chooses_by_severity(inbox) -> None:
    settings, received = inbox
    publish(settings, "shared", "accepted", "info", "accepted", "fine", {"steps": ["10% for 60s"]}, rollout_id="r1")
    publish(settings, "shared", "traffic_step", "critical", "bad", "very bad", {"weight_percent": 10}, rollout_id="r1")
    [(attributes, body)] = received()  # the filter policy takes only the critical one
    assert attributes == {"layer": "shared", "phase": "traffic_step", "severity": "critical"}
    chat = json.loads(body)
    assert chat == {
        "version": "1.0",
        "source": "custom",
        "content": {"textType": "client-markdown", "title": "bad", "description": "very bad"},
        "metadata": {
            "threadId": "layershift-shared-r1",
            "summary": "bad",
            "eventType": "traffic_step",
            "additionalContext": {
                "layer": "shared",
                "phase": "traffic_step",
                "severity": "critical",
                "rollout_id": "r1",
                "weight_percent": "10",
            },
        },
    }


def test_a_page_keeps_its_record_with_the_fix_first_and_is_critical(inbox) -> None:
    settings, received = inbox
    body = {
        "event": "rollback_incomplete",
        "layer": "shared",
        "rollout_id": "r2",
        "unrestored": [{"function": "f", "alias": "live", "now": "version 2", "fix": ["aws lambda update-alias ..."]}],
        "unrestored_count": 1,
        "outcome": {"error": "RollbackIncomplete", "cause": "1 alias not restored"},
    }
    publish_ending(settings, "rollback_incomplete", "shared", body)
    [(attributes, message)] = received()
    assert attributes["phase"] == "rollback_incomplete" and attributes["severity"] == "critical"
    assert message.startswith("ACTION NEEDED") and '"event": "rollback_incomplete"' in message


def test_phase_seconds_sums_each_phases_states_from_the_history() -> None:
    from datetime import UTC, datetime, timedelta

    from layershift_core.notify import phase_seconds

    start = datetime(2026, 1, 1, tzinfo=UTC)

    def at(seconds: float, kind: str, name: str) -> dict:
        detail = "stateEnteredEventDetails" if kind == "in" else "stateExitedEventDetails"
        return {"timestamp": start + timedelta(seconds=seconds), detail: {"name": name}}

    events = [
        at(0, "in", "ValidateRequest"),
        at(2, "out", "ValidateRequest"),
        at(2, "in", "BuildLayer"),
        at(40, "out", "BuildLayer"),
        at(40, "in", "BakeAndWatch"),
        at(50, "out", "BakeAndWatch"),
        at(50, "in", "CheckHealth"),
        at(51, "out", "CheckHealth"),
        at(51, "in", "BakeAndWatch"),
        at(61, "out", "BakeAndWatch"),
        at(61, "in", "NotifyPromoted"),
    ]
    assert phase_seconds(events) == {"validate": 2.0, "build": 38.0, "traffic": 21.0}


def test_an_ending_sends_chat_subscribers_the_chat_schema_and_the_others_its_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from layershift_core import notify

    sent: list[dict] = []

    class Topic:
        def publish(self, **kwargs: object) -> None:
            sent.append(kwargs)

    monkeypatch.setattr(notify, "client", lambda service: Topic())
    settings = Settings(bucket="artifacts", table="registry", topic_arn="arn:aws:sns:us-east-1:123456789012:t")
    body = {"event": "rolled_back", "layer": "shared", "rollout_id": "r3", "outcome": {"cause": "failing: 2/6"}}
    publish_ending(settings, "rolled_back", "shared", body)

    [kwargs] = sent
    assert kwargs["MessageStructure"] == "json" and kwargs["Subject"] == "layershift: shared rolled back"
    assert {k: v["StringValue"] for k, v in kwargs["MessageAttributes"].items()} == {
        "layer": "shared",
        "phase": "rolled_back",
        "severity": "warning",
    }
    per_protocol = json.loads(kwargs["Message"])
    assert set(per_protocol) == {"default", "https"}
    assert json.loads(per_protocol["default"]) == body
    chat = json.loads(per_protocol["https"])
    assert (chat["version"], chat["source"]) == ("1.0", "custom")
    assert chat["content"]["description"] == "failing: 2/6" and chat["metadata"]["eventType"] == "rolled_back"
