"""The layer lock: a second push waits (bounded), a superseded push stops, every forward step confirms
the lock and renews its lease, and `layershift unlock` frees only a dead holder's lock."""

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from layershift.local.template import load_template
from layershift_core import aws, control
from layershift_core.aborts import ensure_not_aborted
from layershift_core.errors import LayerLocked, LockLost, RolloutAborted, Superseded, UnlockRefused
from layershift_core.fanout import Batch, BatchEvent, items_key, write_items
from layershift_core.lock import acquire_layer_lock, retry_seconds, unlock_layer
from layershift_core.models import (
    ErrorInfo,
    LayerSpec,
    LayerVersionRef,
    PlanSummary,
    RolloutPlan,
    RolloutRequest,
    RolloutState,
    ShiftStep,
    StepState,
    TargetPlan,
    TrafficStep,
    ValidatedRollout,
    Verdict,
    Wave,
)
from layershift_core.planner import save_plan
from layershift_core.registry import Registry
from layershift_core.settings import _ENV, Settings
from layershift_core.traffic import shift_aliases

from .map_runs import promote, rolled_back
from .registry_table import create_registry_table

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "artifacts-bucket"
KEY = "layers/shared/requirements.txt"
CONFIG_KEY = "layers/shared/layer.toml"
SETTINGS = Settings(bucket=BUCKET, table="registry")


@pytest.fixture
def env() -> Iterator[None]:
    with mock_aws():
        aws.client.cache_clear()
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        create_registry_table(SETTINGS.table)
        yield
        aws.client.cache_clear()


def _push(requirements: str = "six==1.16.0\n", config: str | None = None) -> RolloutRequest:
    """What an S3 push starts: the request pinned to the uploaded versions."""
    s3 = boto3.client("s3")
    config_version = None
    if config is not None:
        config_version = s3.put_object(Bucket=BUCKET, Key=CONFIG_KEY, Body=config.encode())["VersionId"]
    version = s3.put_object(Bucket=BUCKET, Key=KEY, Body=requirements.encode())["VersionId"]
    return RolloutRequest(
        layer="shared",
        bucket=BUCKET,
        requirements_key=KEY,
        requirements_version=version,
        config_key=CONFIG_KEY if config is not None else None,
        config_version=config_version,
    )


def _state(rollout_id: str, request: RolloutRequest | None = None) -> RolloutState:
    spec = LayerSpec(
        runtimes=["python3.13"],
        architectures=["x86_64"],
        alias="live",
        strategy="Custom",
        steps=[TrafficStep(weight=10, bake_seconds=0)],
        poll_seconds=1,
    )
    rollout = ValidatedRollout(
        rollout_id=rollout_id,
        layer="shared",
        spec=spec,
        requirements_uri="s3://x/y",
    )
    request = request or RolloutRequest(layer="shared", bucket=BUCKET, requirements_key=KEY)
    return RolloutState(request=request, rollout=rollout)


def _lock() -> dict:
    return Registry(SETTINGS.table).lock_holder("shared") or {}


# -- waiting for the lock -----------------------------------------------------------------------------
def test_the_retry_interval_is_about_30_seconds_and_the_attempts_are_bounded() -> None:
    assert retry_seconds(3600) == 30
    assert retry_seconds(60) == 5
    assert retry_seconds(0) == 5
    for budget in (0, 1, 59, 600, 3600, 7200, 86_400):
        assert budget / retry_seconds(budget) <= 300, budget  # ~9 events each: far below 25,000


def test_a_free_layer_is_locked_at_once(env: None) -> None:
    state = acquire_layer_lock(_state("first"), SETTINGS)
    assert state.lock_wait is None
    assert "lock_wait" not in state.model_dump(mode="json", exclude_none=True)  # the Choice goes on
    assert _lock()["owner"] == "first"


def test_a_second_push_waits_for_the_holder_and_then_takes_the_lock(env: None) -> None:
    Registry(SETTINGS.table).acquire_lock("shared", "first", 3600)
    holder_since = _lock()["acquired_at"]
    t0 = 1_000_000.0

    state = acquire_layer_lock(_state("second"), SETTINGS, now=t0)
    wait = state.lock_wait
    assert wait is not None
    assert (wait.holder, wait.holder_since, wait.waiting_since, wait.retry_seconds, wait.attempts) == (
        "first",
        holder_since,
        t0,
        30,
        1,
    )
    assert state.model_dump(mode="json", exclude_none=True)["lock_wait"]["retry_seconds"] == 30  # SecondsPath
    assert _lock()["owner"] == "first"
    record = Registry(SETTINGS.table).rollout("shared", "second") or {}
    assert (record["status"], record["waiting_for"]) == ("waiting_for_lock", "first")

    state = acquire_layer_lock(state, SETTINGS, now=t0 + 30)
    assert state.lock_wait is not None
    assert (state.lock_wait.waiting_since, state.lock_wait.attempts) == (t0, 2)
    # the last wait ends at the deadline, not after it
    state = acquire_layer_lock(state, SETTINGS, now=t0 + 3590)
    assert state.lock_wait is not None and state.lock_wait.retry_seconds == 10

    Registry(SETTINGS.table).release_lock("shared", "first")
    state = acquire_layer_lock(state, SETTINGS, now=t0 + 3595)
    assert state.lock_wait is None
    assert _lock()["owner"] == "second"
    record = Registry(SETTINGS.table).rollout("shared", "second") or {}
    assert (record["status"], record["lock_waited_seconds"]) == ("locked", "3595")


def test_the_wait_is_bounded_and_the_refusal_says_who_since_when_and_what_to_do(env: None) -> None:
    Registry(SETTINGS.table).acquire_lock("shared", "first", 7200)
    holder = _lock()
    t0 = 1_000_000.0
    state = acquire_layer_lock(_state("second"), SETTINGS, now=t0)
    with pytest.raises(LayerLocked) as refused:
        acquire_layer_lock(state, SETTINGS, now=t0 + 3600)
    message = str(refused.value)
    assert f"still locked by rollout first (holding it since {holder['acquired_at']}" in message
    assert "rollout second waited 60 min for it, the most LockWaitSeconds (3600 s) allows" in message
    assert "stops without building anything" in message
    assert "Wait for first to end and push again" in message
    assert "`layershift abort shared`" in message and "`layershift unlock shared`" in message
    assert _lock()["owner"] == "first"  # left alone


def test_no_wait_at_all_when_lock_wait_seconds_is_zero(env: None) -> None:
    Registry(SETTINGS.table).acquire_lock("shared", "first", 3600)
    with pytest.raises(LayerLocked, match="rollout second did not wait for it"):
        acquire_layer_lock(_state("second"), Settings(bucket=BUCKET, table="registry", lock_wait_seconds=0))


def test_an_abort_ends_the_wait(env: None) -> None:
    Registry(SETTINGS.table).acquire_lock("shared", "first", 3600)
    state = acquire_layer_lock(_state("second"), SETTINGS)
    Registry(SETTINGS.table).request_abort("shared", "second", "not this one")
    with pytest.raises(RolloutAborted, match="not this one"):
        acquire_layer_lock(state, SETTINGS)
    assert _lock()["owner"] == "first"


# -- lease expiry -----------------------------------------------------------------------------------
def test_an_expired_lease_is_taken_over_and_the_old_holder_then_stops(env: None) -> None:
    registry = Registry(SETTINGS.table)
    registry.acquire_lock("shared", "crashed", -10)
    state = acquire_layer_lock(_state("next"), SETTINGS)
    assert state.lock_wait is None and _lock()["owner"] == "next"
    with pytest.raises(LockLost, match=r"rollout crashed no longer holds the lock on layer 'shared' \(now held by"):
        ensure_not_aborted(SETTINGS, "shared", "crashed")


def test_a_lapsed_lease_that_nobody_took_is_renewed(env: None) -> None:
    Registry(SETTINGS.table).acquire_lock("shared", "slow", -10)
    ensure_not_aborted(SETTINGS, "shared", "slow")
    assert _lock()["expires_at"] >= int(time.time()) + SETTINGS.lock_lease_seconds - 5


# -- superseded pushes ------------------------------------------------------------------------------
def test_a_push_replaced_by_a_newer_one_stops_before_taking_the_lock(env: None) -> None:
    older = _push("six==1.16.0\n")
    newer = _push("six==1.17.0\n")
    with pytest.raises(Superseded) as stopped:
        acquire_layer_lock(_state("older", older), SETTINGS)
    message = str(stopped.value)
    assert f"a newer push of s3://{BUCKET}/{KEY} arrived" in message
    assert f"(version {newer.requirements_version})" in message
    assert f"rollout older (version {older.requirements_version})" in message
    assert "that one rolls out instead. Nothing was built" in message
    assert _lock() == {}
    assert acquire_layer_lock(_state("newer", newer), SETTINGS).lock_wait is None


def test_a_waiting_push_is_superseded_when_a_newer_one_arrives(env: None) -> None:
    """Three quick pushes: the first rolls out, the second waits and is superseded, the third waits."""
    first = acquire_layer_lock(_state("first", _push("six==1.15.0\n")), SETTINGS)
    assert first.lock_wait is None
    second = acquire_layer_lock(_state("second", _push("six==1.16.0\n")), SETTINGS)
    assert second.lock_wait is not None
    third = acquire_layer_lock(_state("third", _push("six==1.17.0\n")), SETTINGS)
    assert third.lock_wait is not None
    with pytest.raises(Superseded):
        acquire_layer_lock(second, SETTINGS)
    Registry(SETTINGS.table).release_lock("shared", "first")
    assert acquire_layer_lock(third, SETTINGS).lock_wait is None
    assert _lock()["owner"] == "third"


def test_the_same_bytes_pushed_again_do_not_supersede(env: None) -> None:
    """They start no execution of their own (the execution name is a hash of the bytes)."""
    config = "[rollout]\nstrategy = 'AllAtOnce'\n"
    first = _push("six==1.16.0\n", config)
    again = _push("six==1.16.0\n", config)
    assert again.requirements_version != first.requirements_version
    assert acquire_layer_lock(_state("first", first), SETTINGS).lock_wait is None


def test_a_newer_layer_toml_with_the_same_requirements_supersedes(env: None) -> None:
    first = _push("six==1.16.0\n", "[rollout]\nstrategy = 'AllAtOnce'\n")
    _push("six==1.16.0\n", "[rollout]\nstrategy = 'Canary10Percent5Minutes'\n")
    with pytest.raises(Superseded):
        acquire_layer_lock(_state("first", first), SETTINGS)


def test_a_layer_toml_added_by_a_newer_push_supersedes(env: None) -> None:
    first = _push("six==1.16.0\n")
    _push("six==1.16.0\n", "[rollout]\nstrategy = 'AllAtOnce'\n")
    with pytest.raises(Superseded):
        acquire_layer_lock(_state("first", first), SETTINGS)


def test_a_superseded_retry_leaves_the_lock_it_took_free(env: None) -> None:
    """AcquireLayerLock is retried after a timeout: the first attempt may have taken the lock."""
    older = _push("six==1.16.0\n")
    Registry(SETTINGS.table).acquire_lock("shared", "older", 3600)
    _push("six==1.17.0\n")
    with pytest.raises(Superseded):
        acquire_layer_lock(_state("older", older), SETTINGS)
    assert _lock() == {}


def test_a_request_without_a_version_is_not_compared(env: None) -> None:
    _push("six==1.17.0\n")
    assert acquire_layer_lock(_state("unpinned"), SETTINGS).lock_wait is None


# -- every forward step holds the lock ----------------------------------------------------------------
def test_a_forward_step_renews_the_lease_of_the_rollout_that_holds_the_lock(env: None) -> None:
    Registry(SETTINGS.table).acquire_lock("shared", "mine", 60)
    before = _lock()["expires_at"]
    ensure_not_aborted(SETTINGS, "shared", "mine")
    after = _lock()
    assert after["owner"] == "mine"
    assert after["expires_at"] >= before - 60 + SETTINGS.lock_lease_seconds - 5
    assert "renewed_at" in after


def test_an_approval_wait_keeps_the_lock_for_as_long_as_the_approval_may_take(env: None) -> None:
    week = 7 * 86_400
    Registry(SETTINGS.table).acquire_lock("shared", "mine", 60)
    step = StepState.model_validate(
        {
            "rollout_id": "mine",
            "layer": "shared",
            "plan_key": "rollouts/shared/mine/plan.json",
            "alarms": [],
            "poll_seconds": 30,
            "step": {"wave": "main", "weight": 100, "bake_seconds": 0, "approval": True},
            "step_index": 1,
            "approval_timeout_seconds": week,  # what the ShiftTraffic Map hands each item
        }
    )
    control.register_wait(control.WaitRequest(kind="approval", token="t", step=step), SETTINGS)
    assert _lock()["expires_at"] >= int(time.time()) + week + SETTINGS.lock_lease_seconds - 5
    control.register_wait(control.WaitRequest(kind="bake", token="t", step=step), SETTINGS)
    assert _lock()["expires_at"] <= int(time.time()) + SETTINGS.lock_lease_seconds + 5


def test_a_forward_step_without_the_lock_stops_with_lock_lost(env: None) -> None:
    with pytest.raises(LockLost) as lost:
        ensure_not_aborted(SETTINGS, "shared", "old")
    assert str(lost.value) == (
        "rollout old no longer holds the lock on layer 'shared' (now free): it has already ended; "
        "push again rather than redriving it"
    )
    Registry(SETTINGS.table).acquire_lock("shared", "newer", 3600)
    since = _lock()["acquired_at"]
    with pytest.raises(LockLost, match=re.escape(f"(now held by rollout newer since {since})")):
        ensure_not_aborted(SETTINGS, "shared", "old")
    assert _lock()["owner"] == "newer"


def test_steps_before_the_lock_check_only_the_abort(env: None) -> None:
    ensure_not_aborted(SETTINGS, "shared", "validating", holding_lock=False)
    Registry(SETTINGS.table).request_abort("shared", "validating", "stop")
    with pytest.raises(RolloutAborted):
        ensure_not_aborted(SETTINGS, "shared", "validating", holding_lock=False)
    # an abort is reported as such even when the lock is gone too
    with pytest.raises(RolloutAborted):
        ensure_not_aborted(SETTINGS, "shared", "validating")


def test_a_redriven_rollout_touches_no_alias_after_its_lock_went_to_another(env: None) -> None:
    """An old execution redriven at a forward step: LockLost before any change, and its rollback
    (the workflow's catch) leaves the aliases alone, because it rolled back already."""
    lam = boto3.client("lambda")
    role = boto3.client("iam").create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    lam.create_function(
        FunctionName="fn",
        Runtime="python3.13",
        Role=role,
        Handler="app.handler",
        Code={"ZipFile": b"PK\x05\x06" + b"\0" * 18},
    )
    v1 = lam.publish_version(FunctionName="fn")["Version"]
    lam.update_function_configuration(FunctionName="fn", Description="v2")
    v2 = lam.publish_version(FunctionName="fn")["Version"]
    lam.create_alias(FunctionName="fn", Name="live", FunctionVersion=v1)
    plan_key = "rollouts/shared/old/plan.json"
    target = TargetPlan(function_name="fn", alias="live", verdict=Verdict.TARGET, old_version=v1, new_version=v2)
    save_plan(
        BUCKET,
        plan_key,
        RolloutPlan(
            rollout_id="old",
            layer="shared",
            layer_versions=[
                LayerVersionRef(arn="arn:aws:lambda:us-east-1:123456789012:layer:shared:2", version=2, build_key="k")
            ],
            alias="live",
            steps=[TrafficStep(weight=10, bake_seconds=0)],
            targets=[target],
        ),
    )
    registry = Registry(SETTINGS.table)
    registry.put_rollout("shared", "old", status="rolled_back", reason="it ended long ago")
    registry.acquire_lock("shared", "newer", 3600)
    lam.update_alias(FunctionName="fn", Name="live", FunctionVersion=v2)  # the newer rollout's doing
    before = lam.get_alias(FunctionName="fn", Name="live")
    before.pop("ResponseMetadata")

    targets_key = items_key("shared", "old", "targets")
    write_items(BUCKET, targets_key, [target.model_dump(mode="json")])
    step = ShiftStep(wave=Wave.MAIN, weight=10, bake_seconds=0)
    batch = Batch(
        Items=[target.model_dump(mode="json")],
        BatchInput={"rollout_id": "old", "layer": "shared", "step": step.model_dump()},
    )
    with pytest.raises(LockLost, match="held by rollout newer"):
        shift_aliases(BatchEvent(batch=batch), SETTINGS, 900)
    state = _state("old")
    state.layer_versions = [
        LayerVersionRef(arn="arn:aws:lambda:us-east-1:123456789012:layer:shared:2", version=2, build_key="k")
    ]
    state.plan = PlanSummary(plan_key=plan_key, targets_key=targets_key, target_count=1, skipped_count=0, steps=[])
    with pytest.raises(LockLost):
        promote(state, SETTINGS)
    state.error = ErrorInfo(Error="LockLost", Cause=json.dumps({"errorMessage": "no longer holds the lock"}))
    state = rolled_back(state, SETTINGS)  # the restore touches nothing of a rollout that has ended
    after = lam.get_alias(FunctionName="fn", Name="live")
    after.pop("ResponseMetadata")
    assert after == before
    assert _lock()["owner"] == "newer"


# -- layershift unlock ------------------------------------------------------------------------------
@pytest.fixture
def state_machine(env: None) -> str:
    sfn = boto3.client("stepfunctions")
    # Runs until stopped, whether moto only records executions or runs them (as it does once the
    # integration tests' local AWS has asked it to).
    definition = {"StartAt": "Hold", "States": {"Hold": {"Type": "Wait", "Seconds": 3600, "End": True}}}
    role = "arn:aws:iam::123456789012:role/sfn"
    return sfn.create_state_machine(name="rollout", definition=json.dumps(definition), roleArn=role)["stateMachineArn"]


def test_unlock_refuses_a_layer_that_is_not_locked(state_machine: str) -> None:
    settings = Settings(bucket=BUCKET, table="registry", state_machine_arn=state_machine)
    with pytest.raises(UnlockRefused, match="layer 'shared' is not locked: there is nothing to unlock"):
        unlock_layer(settings, "shared")


def test_unlock_refuses_a_running_holder_unless_forced(state_machine: str) -> None:
    settings = Settings(bucket=BUCKET, table="registry", state_machine_arn=state_machine)
    sfn = boto3.client("stepfunctions")
    arn = sfn.start_execution(stateMachineArn=state_machine, name="alive", input="{}")["executionArn"]
    Registry(settings.table).acquire_lock("shared", "alive", 3600)
    with pytest.raises(UnlockRefused) as refused:
        unlock_layer(settings, "shared")
    message = str(refused.value)
    assert "locked by rollout alive since" in message and f"still RUNNING: {arn}" in message
    assert "`layershift abort shared`" in message and "--force" in message
    assert _lock()["owner"] == "alive"

    result = unlock_layer(settings, "shared", force=True, reason="the holder hangs")
    assert (result.owner, result.execution_status, result.forced) == ("alive", "RUNNING", True)
    assert _lock() == {}


def test_unlock_frees_the_lock_of_an_ended_or_unknown_holder(state_machine: str) -> None:
    settings = Settings(bucket=BUCKET, table="registry", state_machine_arn=state_machine)
    sfn = boto3.client("stepfunctions")
    arn = sfn.start_execution(stateMachineArn=state_machine, name="dead", input="{}")["executionArn"]
    sfn.stop_execution(executionArn=arn)
    deadline = time.monotonic() + 10
    while sfn.describe_execution(executionArn=arn)["status"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.1)
    registry = Registry(settings.table)
    registry.put_rollout("shared", "dead", status="shifting")
    registry.acquire_lock("shared", "dead", 3600)
    result = unlock_layer(settings, "shared", reason="stuck since the outage")
    assert (result.owner, result.execution_arn, result.execution_status) == ("dead", arn, "ABORTED")
    assert _lock() == {}
    record = registry.rollout("shared", "dead") or {}
    assert record["unlock_reason"] == "stuck since the outage" and record["unlocked_at"]

    registry.acquire_lock("shared", "written-by-hand", 3600)
    result = unlock_layer(settings, "shared")
    assert (result.owner, result.execution_status) == ("written-by-hand", None)
    assert _lock() == {}
    assert registry.rollout("shared", "written-by-hand") is None  # no record is made up


# -- configuration ------------------------------------------------------------------------------------
def test_lock_wait_seconds_is_a_template_parameter_every_function_sees() -> None:
    template = load_template(ROOT / "template.yaml")
    parameter = template["Parameters"]["LockWaitSeconds"]
    assert (parameter["Type"], parameter["Default"], parameter["MinValue"]) == ("Number", 3600, 0)
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables[_ENV["lock_wait_seconds"]] == {"Ref": "LockWaitSeconds"}
    assert Settings(bucket=BUCKET, table="registry").lock_wait_seconds == 3600


def test_the_workflow_waits_and_asks_again() -> None:
    states = json.loads((ROOT / "statemachines" / "rollout.asl.json").read_text())["States"]
    assert states["AcquireLayerLock"]["Next"] == "LockAcquired"
    choice = states["LockAcquired"]
    assert choice["Choices"] == [{"Variable": "$.lock_wait", "IsPresent": True, "Next": "WaitForLayerLock"}]
    assert choice["Default"] == "FindCandidates"
    wait = states["WaitForLayerLock"]
    assert (wait["Type"], wait["SecondsPath"], wait["Next"]) == (
        "Wait",
        "$.lock_wait.retry_seconds",
        "AcquireLayerLock",
    )
