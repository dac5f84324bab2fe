"""A dead-lettered event finds its target: a scheduled event by the rule it names, another by pattern."""

import json
from typing import Any

from layershift.replay import targets_for

RULE = "arn:aws:events:us-east-1:123456789012:rule/stack-ReportUsageRule-1"
OTHER = "arn:aws:events:us-east-1:123456789012:rule/stack-CleanupScheduleRule-1"
PUSH = "arn:aws:events:us-east-1:123456789012:rule/stack-RolloutTriggerRule-1"


class _Events:
    def __init__(self) -> None:
        self.tested: list[str] = []

    def test_event_pattern(self, EventPattern: str, Event: str) -> dict[str, Any]:
        self.tested.append(EventPattern)
        return {"Result": json.loads(Event).get("source") in json.loads(EventPattern)["source"]}


class _ControlPlane:
    def __init__(self) -> None:
        self.events = _Events()

    def client(self, service: str) -> Any:
        assert service == "events"
        return self.events


RULES = [
    (RULE, "", [{"Arn": "arn:aws:lambda:us-east-1:123456789012:function:report"}]),
    (OTHER, "", [{"Arn": "arn:aws:lambda:us-east-1:123456789012:function:clean"}]),
    (PUSH, json.dumps({"source": ["aws.s3"]}), [{"Arn": "arn:aws:lambda:us-east-1:123456789012:function:start"}]),
]


def test_a_scheduled_event_goes_to_the_targets_of_the_rule_it_names() -> None:
    cp = _ControlPlane()
    body = json.dumps({"source": "aws.events", "detail-type": "Scheduled Event", "resources": [RULE], "detail": {}})
    assert targets_for(cp, {"Body": body}, RULES) == ["arn:aws:lambda:us-east-1:123456789012:function:report"]  # type: ignore[arg-type]
    assert cp.events.tested == []


def test_another_event_goes_to_the_targets_whose_pattern_matches() -> None:
    cp = _ControlPlane()
    body = json.dumps({"source": "aws.s3", "detail-type": "Object Created", "resources": [], "detail": {}})
    assert targets_for(cp, {"Body": body}, RULES) == ["arn:aws:lambda:us-east-1:123456789012:function:start"]  # type: ignore[arg-type]
    assert cp.events.tested == [RULES[2][1]]
