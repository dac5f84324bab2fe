"""`layershift replay`: re-drive the events that wait in the control plane's dead-letter queue.

`TriggerDeadLetterQueue` receives two kinds of message, and each names its target differently:

* EventBridge's, for an event it could not deliver to a rule's target: the body is the event, the
  ``TARGET_ARN`` and ``RULE_ARN`` message attributes say where it was going.
* Lambda's, for an event a function its rules invoke asynchronously still failed on after Lambda's
  retries: the body is the event, the attributes (``RequestID``, ``ErrorCode``, ``ErrorMessage``)
  do not name the function. Its target is found as EventBridge found it: the stack's rules (those
  whose targets dead-letter into this queue) are asked which of them match the event
  (``TestEventPattern``), and their targets are the event's. A scheduled event (ReportUsage's,
  CleanUpVersions') matches no pattern: it names its rule in ``resources``.

Each event is re-driven to its target as the rule would deliver it (the stack's targets take the
event whole): a function is invoked synchronously, so its answer is known, a state machine gets a
``StartExecution``. A message is deleted only once its re-drive succeeded; one that fails stays in
the queue, visible again, with the error reported. Re-driving twice is harmless for the triggers:
StartRollout names the execution from the layer and the pushed bytes, so a second replay of a push
starts nothing; OnAlarm and ReapRollout do nothing twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .controlplane import ControlPlane, ControlPlaneNotFound

_RECEIVE_VISIBILITY = 120  # seconds a message is hidden while this replay handles it


@dataclass
class Replayed:
    message_id: str
    targets: list[str]
    source: str
    error: str  # what put it in the queue
    outcome: str = "listed"  # listed, replayed, failed, no target
    detail: str = ""
    answers: list[str] = field(default_factory=list)


def _attribute(message: dict[str, Any], name: str) -> str:
    return str((message.get("MessageAttributes") or {}).get(name, {}).get("StringValue", ""))


def _queue_arn(cp: ControlPlane, queue_url: str) -> str:
    attributes = cp.client("sqs").get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    return str(attributes["Attributes"]["QueueArn"])


def stack_rules(cp: ControlPlane, queue_arn: str) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(rule ARN, event pattern, targets) of every rule with a target that dead-letters into the queue."""
    events = cp.client("events")
    found = []
    for page in events.get_paginator("list_rules").paginate():
        for rule in page.get("Rules", []):
            targets = events.list_targets_by_rule(Rule=rule["Name"]).get("Targets", [])
            ours = [t for t in targets if (t.get("DeadLetterConfig") or {}).get("Arn") == queue_arn]
            if ours:
                found.append((rule["Arn"], rule.get("EventPattern") or "", ours))
    return found


def _scheduled_by(body: str) -> list[str]:
    """The rule ARNs a scheduled event names (its ``resources``), or none for another event."""
    try:
        event = json.loads(body)
    except ValueError:
        return []
    if not isinstance(event, dict) or event.get("detail-type") != "Scheduled Event":
        return []
    return [str(arn) for arn in event.get("resources") or []]


def targets_for(
    cp: ControlPlane, message: dict[str, Any], rules: list[tuple[str, str, list[dict[str, Any]]]]
) -> list[str]:
    """The target ARNs the message's event was meant for."""
    named = _attribute(message, "TARGET_ARN")
    if named:
        return [named]
    events = cp.client("events")
    scheduled_by = _scheduled_by(message["Body"])
    found: list[str] = []
    for rule_arn, pattern, targets in rules:
        if scheduled_by:  # a schedule's event matches no pattern: it names its rule
            if rule_arn in scheduled_by:
                found.extend(str(t["Arn"]) for t in targets)
        elif pattern and events.test_event_pattern(EventPattern=pattern, Event=message["Body"]).get("Result"):
            found.extend(str(t["Arn"]) for t in targets)
    return found


def redrive(cp: ControlPlane, target_arn: str, body: str) -> str:
    """Deliver the event to one target; raise on failure, else return a one-line answer."""
    service = target_arn.split(":")[2]
    if service == "lambda":
        response = cp.client("lambda").invoke(FunctionName=target_arn, InvocationType="RequestResponse", Payload=body)
        payload = response["Payload"].read().decode("utf-8", "replace")
        if response.get("FunctionError"):
            raise RuntimeError(f"{target_arn} failed again: {payload[:500]}")
        return payload[:500]
    if service == "states":
        started = cp.client("stepfunctions").start_execution(stateMachineArn=target_arn, input=body)
        return str(started["executionArn"])
    raise RuntimeError(f"replay does not deliver to {service} targets ({target_arn})")


def _messages(cp: ControlPlane, queue_url: str) -> Iterator[dict[str, Any]]:
    sqs = cp.client("sqs")
    seen: set[str] = set()
    while True:
        received = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=_RECEIVE_VISIBILITY,
            MessageAttributeNames=["All"],
            WaitTimeSeconds=0,
        ).get("Messages", [])
        fresh = [m for m in received if m["MessageId"] not in seen]
        if not fresh:
            return
        for message in fresh:
            seen.add(message["MessageId"])
            yield message


def _release(sqs: Any, queue_url: str, message: dict[str, Any]) -> None:
    """Make a message visible again at once, for the next replay."""
    sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)


def replay(cp: ControlPlane, dry_run: bool = False) -> list[Replayed]:
    """Re-drive every message of the dead-letter queue (or, with ``dry_run``, list them)."""
    if not cp.dead_letter_queue_url:
        raise ControlPlaneNotFound("the control plane has no TriggerDeadLetterQueueUrl output")
    queue_url = cp.dead_letter_queue_url
    sqs = cp.client("sqs")
    rules = stack_rules(cp, _queue_arn(cp, queue_url))
    report: list[Replayed] = []
    # Messages to make visible again, once the queue has been read to its end (let go at once, the
    # next receive of this same replay would take them again).
    kept: list[dict[str, Any]] = []
    for message in _messages(cp, queue_url):
        try:
            source = str(json.loads(message["Body"]).get("source", "?"))
        except ValueError:
            source = "?"
        error = _attribute(message, "ERROR_CODE") or _attribute(message, "ErrorMessage")[:200]
        item = Replayed(message["MessageId"], targets_for(cp, message, rules), source, error)
        report.append(item)
        if dry_run or not item.targets:
            item.outcome = item.outcome if item.targets else "no target"
            kept.append(message)
            continue
        try:
            item.answers = [redrive(cp, target, message["Body"]) for target in item.targets]
        except Exception as exc:  # reported, and the message stays for the next replay
            item.outcome, item.detail = "failed", str(exc)
            kept.append(message)
            continue
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        item.outcome = "replayed"
    for message in kept:
        _release(sqs, queue_url, message)
    return report


def print_report(report: list[Replayed], dry_run: bool) -> int:
    """Print one line per message; non-zero when a re-drive failed or a message has no target."""
    if not report:
        print("the dead-letter queue is empty")
        return 0
    for item in report:
        targets = ", ".join(target.rsplit(":", 1)[-1] for target in item.targets) or "(no rule matches)"
        print(f"{item.outcome}: {item.message_id} {item.source} event -> {targets}; it failed with: {item.error}")
        for answer in item.answers:
            print(f"    {answer}")
        if item.detail:
            print(f"    {item.detail}")
    done = sum(item.outcome == "replayed" for item in report)
    stuck = [item for item in report if item.outcome in ("failed", "no target")]
    if dry_run:
        print(f"{len(report)} message(s) waiting; nothing re-driven (--dry-run)")
        return 0
    print(f"{done} replayed and deleted, {len(stuck)} left in the queue")
    return 1 if stuck else 0
