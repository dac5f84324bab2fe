"""No push is lost: a push StartRollout fails on waits in the dead-letter queue, and `replay` turns
it into exactly one rollout.

The push's event goes through the real path: S3 → EventBridge (RolloutTriggerRule) → an ``Event``
invoke of StartRollout, which fails on every one of Lambda's attempts (its state machine is not
there), → Lambda's dead letter in TriggerDeadLetterQueue. Replaying after the fix starts the
rollout; replaying the same event again starts nothing more (the execution name is the layer plus
the content hash).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from layershift.cli import main
from layershift.controlplane import ControlPlane, push, wait_for_end
from layershift.local.deploy import DeployedStack
from layershift.replay import replay

from .support import wait_until

pytestmark = [pytest.mark.integration]

LAYER = "replayed"
# Unpinned: the rollout is refused at validation, so it ends in a second, and builds nothing.
REQUIREMENTS = b"six>=1.0\n"


def _waiting(cp: ControlPlane) -> int:
    """Messages in the queue, visible or not."""
    counts = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = cp.client("sqs").get_queue_attributes(QueueUrl=cp.dead_letter_queue_url, AttributeNames=counts)
    return sum(int(attributes["Attributes"][count]) for count in counts)


@pytest.fixture
def broken_start_rollout(control_plane: ControlPlane, deployed_stack: DeployedStack) -> Iterator[str]:
    """StartRollout pointed at a state machine that is not there (as in a half-done deployment). The
    session's own StartRollout: other tests deploy control planes of their own beside it."""
    cp = control_plane
    lam = cp.client("lambda")
    name = deployed_stack.names["StartRolloutFunction"]
    environment = lam.get_function_configuration(FunctionName=name)["Environment"]["Variables"]
    broken = dict(environment, LAYERSHIFT_STATE_MACHINE_ARN=cp.state_machine_arn + "-gone")
    lam.update_function_configuration(FunctionName=name, Environment={"Variables": broken})
    try:
        yield name
    finally:
        lam.update_function_configuration(FunctionName=name, Environment={"Variables": environment})


def _executions(cp: ControlPlane, name: str) -> list[dict]:
    listed = cp.client("stepfunctions").list_executions(stateMachineArn=cp.state_machine_arn, maxResults=1000)
    return [e for e in listed["executions"] if e["name"] == name]


def test_a_push_that_start_rollout_fails_on_is_replayed_into_exactly_one_rollout(
    control_plane: ControlPlane, broken_start_rollout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cp = control_plane
    lam = cp.client("lambda")
    config = lam.get_function_configuration(FunctionName=broken_start_rollout)
    assert config["DeadLetterConfig"]["TargetArn"].endswith(":" + cp.dead_letter_queue_url.rsplit("/", 1)[-1])
    # Dead letters another test of this worker may have left are not this test's to replay.
    cp.client("sqs").purge_queue(QueueUrl=cp.dead_letter_queue_url)
    before = _waiting(cp)
    assert before == 0

    pushed = push(cp, LAYER, REQUIREMENTS)
    name = pushed.execution_arn.rsplit(":", 1)[-1]
    wait_until(lambda: _waiting(cp) > before, timeout=60)
    assert _executions(cp, name) == []

    # --dry-run lists the push (Lambda's dead letter: its rule and target are found by the event)
    listed = [item for item in replay(cp, dry_run=True) if item.source == "aws.s3"]
    assert [item.outcome for item in listed] == ["listed"]
    assert listed[0].targets == [lam.get_function(FunctionName=broken_start_rollout)["Configuration"]["FunctionArn"]]
    assert "StateMachineDoesNotExist" in listed[0].error or "does not exist" in listed[0].error.lower()
    assert _waiting(cp) == before + 1

    # Still broken: the re-drive fails, the message stays.
    failed = [item for item in replay(cp) if item.source == "aws.s3"]
    assert [item.outcome for item in failed] == ["failed"]
    assert _waiting(cp) == before + 1
    assert _executions(cp, name) == []

    # Fixed: one replay from the command line starts exactly one rollout and empties the queue of it.
    lam.update_function_configuration(
        FunctionName=broken_start_rollout,
        Environment={
            "Variables": dict(config["Environment"]["Variables"], LAYERSHIFT_STATE_MACHINE_ARN=cp.state_machine_arn)
        },
    )
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as env:
        env.setattr("layershift.cli._control_plane", lambda args: cp)
        assert main(["replay", "--local"]) == 0
    out = capsys.readouterr().out
    assert "replayed: " in out and '"started": true' in out and name in out
    assert _waiting(cp) == before
    started = _executions(cp, name)
    assert len(started) == 1
    ended = wait_for_end(cp, started[0]["executionArn"])
    assert ended["status"] == "FAILED"  # refused at validation: an unpinned requirement

    # The same event replayed again (a second copy in the queue, EventBridge's) starts nothing more.
    event = {
        "version": "0",
        "id": "replayed-twice",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": started[0]["executionArn"].split(":")[4],
        "time": "2026-01-01T00:00:00Z",
        "region": cp.region,
        "resources": [],
        "detail": {
            "bucket": {"name": cp.bucket},
            "object": {"key": f"layers/{LAYER}/requirements.txt", "version-id": pushed.requirements_version},
        },
    }
    # as EventBridge dead-letters an event it could not deliver: the target named by TARGET_ARN
    target = listed[0].targets[0]
    rule = cp.client("events").list_rule_names_by_target(TargetArn=target)["RuleNames"][0]
    named = {
        "RULE_ARN": cp.client("events").describe_rule(Name=rule)["Arn"],
        "TARGET_ARN": target,
        "ERROR_CODE": "ResourceNotFoundException",
    }
    cp.client("sqs").send_message(
        QueueUrl=cp.dead_letter_queue_url,
        MessageBody=json.dumps(event),
        MessageAttributes={k: {"DataType": "String", "StringValue": v} for k, v in named.items()},
    )
    again = [item for item in replay(cp) if item.source == "aws.s3"]
    assert [(item.outcome, item.error) for item in again] == [("replayed", "ResourceNotFoundException")]
    assert '"started": false' in again[0].answers[0]
    assert len(_executions(cp, name)) == 1
    assert _waiting(cp) == before
