"""The reaper: whatever way an execution ends, no alias is left split, no lock held, no ending unannounced."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from layershift_core import aws, reaper
from layershift_core.artifacts import read_json
from layershift_core.fanout import items_key, write_items
from layershift_core.history import history_key
from layershift_core.models import (
    ExecutionStatusChange,
    LayerVersionRef,
    RolloutPlan,
    TargetPlan,
    TrafficStep,
    Verdict,
)
from layershift_core.planner import plan_key, save_plan
from layershift_core.registry import Registry
from layershift_core.settings import Settings
from layershift_core.traffic import RestoreRequest, RestoreState, fix_commands, restore_targets, summarise_restore

from .map_runs import run_map
from .notification_inbox import create_topic_with_inbox
from .registry_table import create_registry_table

LAYER = "shared"
ROLLOUT = "shared-0123abcd"
EXECUTION = f"arn:aws:states:us-east-1:123456789012:execution:rollout:{ROLLOUT}"
RESTORE_MACHINE = "arn:aws:states:us-east-1:123456789012:stateMachine:restore"


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", "def handler(e, c):\n    return 1\n")
    return buffer.getvalue()


@dataclass
class World:
    settings: Settings
    queue_url: str
    target: TargetPlan
    executions: dict[str, dict[str, Any]]
    started: list[dict[str, Any]]

    def messages(self) -> list[str]:
        sqs = boto3.client("sqs")
        found = sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", [])
        return [message["Body"] for message in found]

    def end(self, status: str, output: dict[str, Any] | None = None, error: str | None = None) -> None:
        self.executions[EXECUTION] = {
            "executionArn": EXECUTION,
            "name": ROLLOUT,
            "status": status,
            "input": json.dumps({"request": {"layer": LAYER, "bucket": "artifacts", "requirements_key": "k"}}),
            **({"output": json.dumps(output)} if output is not None else {}),
            **({"error": error, "cause": "cause of " + error} if error else {}),
        }

    def change(self, status: str, output: dict[str, Any] | None = None) -> ExecutionStatusChange:
        return ExecutionStatusChange.model_validate(
            {
                "executionArn": EXECUTION,
                "stateMachineArn": "arn:aws:states:us-east-1:123456789012:stateMachine:rollout",
                "name": ROLLOUT,
                "status": status,
                "output": json.dumps(output) if output is not None else None,
            }
        )

    def run_restore(self, status: str = "SUCCEEDED") -> ExecutionStatusChange:
        """Run the restore execution the reaper started, as the RestoreStateMachine would."""
        (started,) = self.started
        request = RestoreRequest.model_validate_json(started["input"])
        arn = f"{RESTORE_MACHINE.replace(':stateMachine:', ':execution:')}:{started['name']}"
        described: dict[str, Any] = {"executionArn": arn, "name": started["name"], "status": status}
        described["input"] = started["input"]
        if status == "SUCCEEDED":
            state = RestoreState(**request.model_dump())
            state.map_run = run_map(
                self.settings, restore_targets, request.targets_key, {"rollout_id": ROLLOUT, "layer": LAYER}, "r"
            )
            described["output"] = summarise_restore(state, self.settings).model_dump_json()
        self.executions[arn] = described
        return ExecutionStatusChange.model_validate(
            {"executionArn": arn, "stateMachineArn": RESTORE_MACHINE, "name": started["name"], "status": status}
        )

    def alias(self) -> dict[str, Any]:
        return boto3.client("lambda").get_alias(FunctionName="orders", Name="live")

    def latest_layers(self) -> list[str]:
        config = boto3.client("lambda").get_function_configuration(FunctionName="orders")
        return [entry["Arn"] for entry in config.get("Layers", [])]


class _FakeStepFunctions:
    def __init__(self, executions: dict[str, dict[str, Any]], started: list[dict[str, Any]]) -> None:
        self.executions = executions
        self.started = started
        self.exceptions = type(
            "Exceptions", (), {"ExecutionAlreadyExists": type("ExecutionAlreadyExists", (Exception,), {})}
        )

    def describe_execution(self, executionArn: str) -> dict[str, Any]:
        return self.executions[executionArn]

    def start_execution(self, stateMachineArn: str, name: str, input: str) -> dict[str, Any]:
        assert stateMachineArn == RESTORE_MACHINE
        if any(started["name"] == name for started in self.started):
            raise self.exceptions.ExecutionAlreadyExists(name)
        self.started.append({"name": name, "input": input})
        return {"executionArn": name}


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    with mock_aws():
        aws.client.cache_clear()
        settings = Settings(bucket="artifacts", table="registry", restore_state_machine_arn=RESTORE_MACHINE)
        boto3.client("s3").create_bucket(Bucket=settings.bucket)
        create_registry_table(settings.table)
        topic, queue_url = create_topic_with_inbox("notifications")
        settings = settings.model_copy(update={"topic_arn": topic})

        lam = boto3.client("lambda")
        role = boto3.client("iam").create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        old_layer, new_layer = (
            lam.publish_layer_version(LayerName=LAYER, Content={"ZipFile": _zip()})["LayerVersionArn"] for _ in range(2)
        )
        lam.create_function(
            FunctionName="orders",
            Runtime="python3.13",
            Role=role,
            Handler="app.handler",
            Code={"ZipFile": _zip()},
            Layers=[old_layer],
            Tags={"layershift:layer": LAYER},
        )
        old = lam.publish_version(FunctionName="orders")["Version"]
        lam.update_function_configuration(FunctionName="orders", Layers=[new_layer])
        new = lam.publish_version(FunctionName="orders")["Version"]
        lam.create_alias(
            FunctionName="orders",
            Name="live",
            FunctionVersion=old,
            RoutingConfig={"AdditionalVersionWeights": {new: 0.1}},
        )
        target = TargetPlan(
            function_name="orders",
            alias="live",
            verdict=Verdict.TARGET,
            old_version=old,
            new_version=new,
            current_layers=[old_layer],
            new_layers=[new_layer],
        )
        plan = RolloutPlan(
            rollout_id=ROLLOUT,
            layer=LAYER,
            layer_versions=[LayerVersionRef(arn=new_layer, version=2, build_key="k" * 64)],
            alias="live",
            steps=[TrafficStep(weight=10, bake_seconds=60)],
            targets=[target],
        )
        save_plan(settings.bucket, plan_key(LAYER, ROLLOUT), plan)
        write_items(settings.bucket, items_key(LAYER, ROLLOUT, "targets"), [target.model_dump(mode="json")])
        registry = Registry(settings.table)
        registry.put_rollout(LAYER, ROLLOUT, status="shifting", layer_version_arns=new_layer)
        registry.record_version(LAYER, 2, new_layer, ["k" * 64], "m", "sha", ROLLOUT)
        registry.acquire_lock(LAYER, ROLLOUT, 3600)

        executions: dict[str, dict[str, Any]] = {}
        started: list[dict[str, Any]] = []
        real_client = reaper.client
        sfn = _FakeStepFunctions(executions, started)
        monkeypatch.setattr(
            reaper, "client", lambda service: sfn if service == "stepfunctions" else real_client(service)
        )
        yield World(settings, queue_url, target, executions, started)
        aws.client.cache_clear()


@pytest.mark.parametrize("status", ["ABORTED", "TIMED_OUT", "FAILED"])
def test_an_execution_that_stopped_mid_shift_is_rolled_back(world: World, status: str) -> None:
    world.end(status, error="States.Runtime" if status == "FAILED" else None)

    # the reaper starts the restore of every target, and keeps the layer locked meanwhile
    started = reaper.reap(world.change(status), world.settings)
    registry = Registry(world.settings.table)
    assert started.actions == ["started restoring the rollout's targets"]
    assert registry.lock_holder(LAYER)["owner"] == ROLLOUT  # type: ignore[index]
    assert registry.rollout(LAYER, ROLLOUT)["status"] == "rolling_back"  # type: ignore[index]
    assert reaper.reap(world.change(status), world.settings).actions == []  # the same event again: nothing more
    assert len(world.started) == 1 and world.messages() == []

    # the restore's own ending brings the reaper back to finish the rollout
    result = reaper.reap(world.run_restore(), world.settings)

    alias = world.alias()
    assert alias["FunctionVersion"] == world.target.old_version
    assert not (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights")
    assert world.latest_layers() == world.target.current_layers
    assert registry.lock_holder(LAYER) is None
    assert registry.rollout(LAYER, ROLLOUT)["status"] == "rolled_back"  # type: ignore[index]
    [message] = world.messages()
    body = json.loads(message)
    assert body["event"] == "rolled_back" and body["sent_by"] == "reaper"
    assert f"the execution ended {status}" in body["outcome"]["cause"]
    assert body["outcome"]["restored"] == 1
    assert result.actions == [
        "finished the rollout: rolled_back",
        f"released the lock on {LAYER}",
        "published the rolled_back notification",
    ]
    # the record is archived as it ended, then expires; the layer version it published does not
    record = registry.rollout(LAYER, ROLLOUT)
    assert record is not None and record["expires_at"] > time.time() + 89 * 86_400
    assert read_json(world.settings.bucket, history_key(LAYER, ROLLOUT)) == record
    assert "expires_at" not in registry.versions(LAYER)[0]


def test_an_alias_the_reaper_cannot_restore_pages_with_the_fix(world: World) -> None:
    lam = boto3.client("lambda")
    lam.update_function_configuration(FunctionName="orders", Description="a hotfix")
    foreign = lam.publish_version(FunctionName="orders")["Version"]
    lam.update_alias(
        FunctionName="orders", Name="live", FunctionVersion=foreign, RoutingConfig={"AdditionalVersionWeights": {}}
    )
    world.end("ABORTED")

    reaper.reap(world.change("ABORTED"), world.settings)
    reaper.reap(world.run_restore(), world.settings)

    assert world.alias()["FunctionVersion"] == foreign  # someone else's change is left alone
    assert Registry(world.settings.table).rollout(LAYER, ROLLOUT)["status"] == "rollback_incomplete"  # type: ignore[index]
    [message] = world.messages()
    assert message.startswith("ACTION NEEDED")
    assert f"orders alias live (now version {foreign})" in message
    for command in fix_commands(world.target):
        assert command in message
    assert f"--function-version {world.target.old_version} --routing-config AdditionalVersionWeights={{}}" in message


def test_a_clean_success_costs_no_aws_call(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_call(service: str) -> Any:
        raise AssertionError(f"the reaper called {service}")

    monkeypatch.setattr(reaper, "client", no_call)
    monkeypatch.setattr(reaper, "Registry", no_call)
    output = {"notified": True, "lock_released": True}
    assert reaper.reap(world.change("SUCCEEDED", output), world.settings).actions == []


def test_a_promotion_whose_lock_and_notification_were_lost_is_finished(world: World) -> None:
    registry = Registry(world.settings.table)
    registry.put_rollout(LAYER, ROLLOUT, status="promoted")
    boto3.client("lambda").update_alias(
        FunctionName="orders",
        Name="live",
        FunctionVersion=world.target.new_version,  # type: ignore[arg-type]
        RoutingConfig={"AdditionalVersionWeights": {}},
    )
    output = {"notified": False, "lock_released": False}
    world.end("SUCCEEDED", output)

    result = reaper.reap(world.change("SUCCEEDED", output), world.settings)

    assert world.alias()["FunctionVersion"] == world.target.new_version  # a promotion is never undone
    assert registry.lock_holder(LAYER) is None
    [message] = world.messages()
    assert json.loads(message)["event"] == "promoted"
    assert registry.rollout(LAYER, ROLLOUT)["notified_at"]  # type: ignore[index]
    assert result.actions == [f"released the lock on {LAYER}", "published the promoted notification"]
    # the workflow's last tasks could not archive the ending: the reaper did (as notified), then set it to expire
    record = registry.rollout(LAYER, ROLLOUT)
    assert record is not None and record["expires_at"] > time.time() + 89 * 86_400
    archived = read_json(world.settings.bucket, history_key(LAYER, ROLLOUT))
    assert archived["notified_at"] and archived == {k: v for k, v in record.items() if k != "expires_at"}


def test_an_ending_the_workflow_announced_is_not_announced_again(world: World) -> None:
    registry = Registry(world.settings.table)
    registry.put_rollout(LAYER, ROLLOUT, status="rolled_back", notified_at="2026-11-23T00:00:00+00:00")
    registry.release_lock(LAYER, ROLLOUT)
    world.end("FAILED", error="RolloutUnhealthy")

    assert reaper.reap(world.change("FAILED"), world.settings).actions == []
    assert world.messages() == []


def test_a_rejection_announced_before_its_notify_task_failed_is_archived_not_announced_again(world: World) -> None:
    registry = Registry(world.settings.table)
    registry.put_rollout(LAYER, ROLLOUT, status="rejected", notified_at="2026-11-23T00:00:00+00:00")
    registry.release_lock(LAYER, ROLLOUT)
    world.end("FAILED", error=reaper.UNNOTIFIED_REJECTION)

    reaper.reap(world.change("FAILED"), world.settings)

    assert world.messages() == []
    record = registry.rollout(LAYER, ROLLOUT)
    assert record is not None and record["expires_at"] > time.time() + 89 * 86_400
    archived = read_json(world.settings.bucket, history_key(LAYER, ROLLOUT))
    assert archived == {k: v for k, v in record.items() if k != "expires_at"}


def test_a_lock_taken_by_the_next_rollout_is_left_to_it(world: World) -> None:
    registry = Registry(world.settings.table)
    registry.put_rollout(LAYER, ROLLOUT, status="rolled_back", notified_at="2026-11-23T00:00:00+00:00")
    registry.release_lock(LAYER, ROLLOUT)
    registry.acquire_lock(LAYER, "shared-next", 3600)
    world.end("FAILED", error="RolloutUnhealthy")

    reaper.reap(world.change("FAILED"), world.settings)

    assert registry.lock_holder(LAYER)["owner"] == "shared-next"  # type: ignore[index]


def test_a_redriven_execution_is_left_to_the_workflow(world: World) -> None:
    world.end("RUNNING")
    assert reaper.reap(world.change("ABORTED"), world.settings).actions == []
    assert world.alias()["RoutingConfig"]["AdditionalVersionWeights"]  # untouched: the workflow owns it again


def test_a_restore_that_itself_fails_still_pages_and_frees_the_layer(world: World) -> None:
    world.end("ABORTED")
    reaper.reap(world.change("ABORTED"), world.settings)

    reaper.reap(world.run_restore("FAILED"), world.settings)

    registry = Registry(world.settings.table)
    assert registry.rollout(LAYER, ROLLOUT)["status"] == "rollback_incomplete"  # type: ignore[index]
    assert registry.lock_holder(LAYER) is None
    [message] = world.messages()
    assert message.startswith("ACTION NEEDED") and "ended FAILED" in message


def test_the_workflows_own_restore_is_left_to_the_workflow(world: World) -> None:
    request = RestoreRequest(layer=LAYER, rollout_id=ROLLOUT, targets_key="k", started_by="workflow")
    arn = RESTORE_MACHINE.replace(":stateMachine:", ":execution:") + ":x"
    world.executions[arn] = {
        "executionArn": arn,
        "name": "x",
        "status": "SUCCEEDED",
        "input": request.model_dump_json(),
    }
    change = ExecutionStatusChange.model_validate(
        {"executionArn": arn, "stateMachineArn": RESTORE_MACHINE, "name": "x", "status": "SUCCEEDED"}
    )
    assert reaper.reap(change, world.settings).actions == []
    assert Registry(world.settings.table).lock_holder(LAYER)["owner"] == ROLLOUT  # type: ignore[index]
