"""Planning, preparing, shifting, promoting and rolling back against moto's Lambda, in-process.

The workflow-level tests (tests/integration) run the same code through the state machine; these
pin down each step's decisions and its effect on aliases and $LATEST.
"""

import io
import zipfile
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from layershift.local import revisions
from layershift_core import aws
from layershift_core.errors import ConcurrentModification, LayerLocked, RollbackIncomplete, RolloutAborted
from layershift_core.models import (
    BuildMatrix,
    BuildTarget,
    ErrorInfo,
    LayerSpec,
    LayerVersionRef,
    RolloutRequest,
    RolloutState,
    ShiftStep,
    TrafficStep,
    ValidatedRollout,
    Wave,
)
from layershift_core.planner import load_plan, replace_layer
from layershift_core.registry import Registry
from layershift_core.settings import Settings

from .map_runs import plan, prepare, promote, rolled_back, shift
from .registry_table import create_registry_table

SETTINGS = Settings(bucket="artifacts-bucket", table="registry")


def _zip(text: str = "def handler(e, c):\n    return 1\n") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", text)
    return buffer.getvalue()


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    revisions.install()  # moto ignores RevisionId; the emulation's adapter enforces it as Lambda does
    with mock_aws():
        aws.client.cache_clear()
        boto3.client("s3").create_bucket(Bucket=SETTINGS.bucket)
        create_registry_table(SETTINGS.table)
        role = boto3.client("iam").create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        lam = boto3.client("lambda")
        layer = {}
        for name in ("shared", "other"):
            for _ in range(2):
                layer[name] = lam.publish_layer_version(
                    LayerName=name, Content={"ZipFile": _zip()}, CompatibleRuntimes=["python3.13"]
                )["LayerVersionArn"]
        old_shared = layer["shared"].rsplit(":", 1)[0] + ":1"

        def function(
            name: str,
            layers: list[str],
            alias: str | None = "live",
            runtime: str = "python3.13",
            opted_in: str | None = "shared",
        ) -> None:
            lam.create_function(
                FunctionName=name,
                Runtime=runtime,
                Role=role,
                Handler="app.handler",
                Code={"ZipFile": _zip()},
                Layers=layers,
                Tags={"layershift:layer": opted_in} if opted_in else {},
            )
            if alias:
                version = lam.publish_version(FunctionName=name)["Version"]
                lam.create_alias(FunctionName=name, Name=alias, FunctionVersion=version)

        function("good", [layer["other"].rsplit(":", 1)[0] + ":1", old_shared])
        function("no-alias", [old_shared], alias=None)
        function("old-runtime", [old_shared], runtime="python3.11")
        function("unrelated", [layer["other"]], opted_in="other")
        function("not-opted-in", [old_shared], opted_in=None)
        function("split", [old_shared])
        version = lam.publish_version(FunctionName="split", Description="second")["Version"]
        lam.update_alias(FunctionName="split", Name="live", RoutingConfig={"AdditionalVersionWeights": {version: 0.5}})
        yield {"new": layer["shared"], "old": old_shared}
        aws.client.cache_clear()
    revisions.uninstall()


def _state(new_arn: str, steps: list[TrafficStep] | None = None) -> RolloutState:
    spec = LayerSpec(
        runtimes=["python3.13"],
        architectures=["x86_64"],
        alias="live",
        strategy="Custom",
        steps=steps or [TrafficStep(weight=10, bake_seconds=0)],
        poll_seconds=1,
        tolerated_failure_percent=100,
    )
    rollout = ValidatedRollout(
        rollout_id="shared-abc",
        layer="shared",
        spec=spec,
        requirements_uri="s3://x/y",
    )
    Registry(SETTINGS.table).record_version("shared", 2, new_arn, ["k" * 64], "m", "sha", "shared-abc")
    Registry(SETTINGS.table).acquire_lock("shared", "shared-abc", 3600)  # every forward step checks it holds it
    return RolloutState(
        request=RolloutRequest(
            layer="shared", bucket=SETTINGS.bucket, requirements_key="layers/shared/requirements.txt"
        ),
        rollout=rollout,
        matrix=one_target_matrix(),
        layer_versions=[
            LayerVersionRef(
                arn=new_arn,
                version=2,
                build_key="k" * 64,
                compatible_runtimes=["python3.13"],
                compatible_architectures=["x86_64"],
                variant="python3.13-x86_64",
                targets=["python3.13/x86_64"],
            )
        ],
    )


def one_target_matrix() -> BuildMatrix:
    """The build matrix of a rollout for python3.13 on x86_64 alone, already built."""
    target = BuildTarget(runtime="python3.13", architecture="x86_64", build_key="k" * 64)
    return BuildMatrix(source="spec", targets=[target], matrix_key="m" * 64, artifact_prefix="artifacts/shared/m/")


def test_replace_layer_keeps_position_and_order() -> None:
    a1 = "arn:aws:lambda:us-east-1:1:layer:a:1"
    b1, b2 = "arn:aws:lambda:us-east-1:1:layer:b:1", "arn:aws:lambda:us-east-1:1:layer:b:2"
    c1 = "arn:aws:lambda:us-east-1:1:layer:c:1"
    assert replace_layer([a1, b1, c1], b2) == [a1, b2, c1]
    assert replace_layer([a1], b2) == [a1, b2]


def test_plan_targets_users_of_the_layer_and_skips_with_reasons(env: dict[str, str]) -> None:
    state = plan(_state(env["new"]), SETTINGS, batch_size=2)
    assert state.plan is not None
    planned = load_plan(SETTINGS.bucket, state.plan.plan_key)
    verdicts = {t.function_name: (t.verdict.value, t.reason) for t in planned.targets}
    assert verdicts["good"] == ("target", None)
    assert "no alias 'live'" in verdicts["no-alias"][1]
    assert "python3.11/x86_64 is not a runtime and architecture this rollout builds for" in verdicts["old-runtime"][1]
    assert "already routing" in verdicts["split"][1]
    assert "not opted in: tag it layershift:layer=shared" in verdicts["not-opted-in"][1]
    assert "unrelated" not in verdicts
    good = next(t for t in planned.targets if t.function_name == "good")
    assert good.new_layers[1] == env["new"] and good.new_layers[0] == good.current_layers[0]
    assert (state.plan.target_count, state.plan.skipped_count) == (1, 4)


def _step(weight: int = 10, wave: Wave = Wave.MAIN) -> ShiftStep:
    return ShiftStep(wave=wave, weight=weight, bake_seconds=0)


def _through_shift(env: dict[str, str]) -> RolloutState:
    state = prepare(plan(_state(env["new"]), SETTINGS), SETTINGS)
    assert state.plan is not None
    return shift(state, SETTINGS, _step())


def test_shift_keeps_old_version_primary(env: dict[str, str]) -> None:
    state = _through_shift(env)
    alias = boto3.client("lambda").get_alias(FunctionName="good", Name="live")
    plan = load_plan(SETTINGS.bucket, state.plan.plan_key)  # type: ignore[union-attr]
    target = plan.active[0]
    assert alias["FunctionVersion"] == target.old_version
    assert alias["RoutingConfig"]["AdditionalVersionWeights"] == {target.new_version: 0.1}
    latest = boto3.client("lambda").get_function_configuration(FunctionName="good")
    assert [entry["Arn"] for entry in latest["Layers"]] == target.new_layers


def test_roll_back_restores_alias_and_latest(env: dict[str, str]) -> None:
    state = _through_shift(env)
    state.error = ErrorInfo(
        Error="RolloutUnhealthy", Cause='{"errorMessage": "alarm x fired", "errorType": "RolloutUnhealthy"}'
    )
    state = rolled_back(state, SETTINGS)
    lam = boto3.client("lambda")
    alias = lam.get_alias(FunctionName="good", Name="live")
    assert alias["FunctionVersion"] == "1"
    assert not (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights")
    plan = load_plan(SETTINGS.bucket, state.plan.plan_key)  # type: ignore[union-attr]
    latest = lam.get_function_configuration(FunctionName="good")
    assert [entry["Arn"] for entry in latest["Layers"]] == plan.active[0].current_layers
    assert state.outcome is not None and state.outcome.error == "RolloutUnhealthy"
    assert state.outcome.cause == "alarm x fired"
    assert state.restore is not None and state.restore.summary.restored == 1
    assert Registry(SETTINGS.table).rollouts("shared")[0]["status"] == "rolled_back"


def test_roll_back_leaves_an_alias_someone_else_moved_and_says_so(env: dict[str, str]) -> None:
    state = _through_shift(env)
    lam = boto3.client("lambda")
    lam.update_function_configuration(FunctionName="good", Description="hotfix by a human")
    foreign = lam.publish_version(FunctionName="good")["Version"]
    lam.update_alias(
        FunctionName="good", Name="live", FunctionVersion=foreign, RoutingConfig={"AdditionalVersionWeights": {}}
    )
    with pytest.raises(RollbackIncomplete, match="changed by someone else"):
        rolled_back(state, SETTINGS)
    assert state.restore is not None
    (entry,) = state.restore.summary.unrestored
    assert entry["function"] == "good" and entry["now"] == f"version {foreign}"
    assert entry["fix"][0].startswith("aws lambda update-alias --function-name good --name live --function-version 1")
    assert lam.get_alias(FunctionName="good", Name="live")["FunctionVersion"] == foreign


def test_promote_moves_alias_and_publishes_the_arn(env: dict[str, str]) -> None:
    state = _through_shift(env)
    state = promote(state, SETTINGS)
    lam = boto3.client("lambda")
    plan = load_plan(SETTINGS.bucket, state.plan.plan_key)  # type: ignore[union-attr]
    alias = lam.get_alias(FunctionName="good", Name="live")
    assert alias["FunctionVersion"] == plan.active[0].new_version
    assert not (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights")
    assert boto3.client("ssm").get_parameter(Name="/layershift/shared/arn")["Parameter"]["Value"] == env["new"]
    versions = Registry(SETTINGS.table).versions("shared")
    assert versions[0]["status"] == "promoted"


def test_lock_is_exclusive_and_released_only_by_its_owner(env: dict[str, str]) -> None:
    registry = Registry(SETTINGS.table)
    registry.acquire_lock("shared", "first", 3600)
    registry.acquire_lock("shared", "first", 3600)  # a retried acquire by the owner is fine
    with pytest.raises(LayerLocked, match="locked by rollout first"):
        registry.acquire_lock("shared", "second", 3600)
    assert registry.release_lock("shared", "second") is False
    assert registry.release_lock("shared", "first") is True
    registry.acquire_lock("shared", "second", 3600)


def test_an_expired_lease_does_not_block_the_layer(env: dict[str, str]) -> None:
    registry = Registry(SETTINGS.table)
    registry.acquire_lock("shared", "crashed", -10)
    registry.acquire_lock("shared", "next", 3600)
    assert registry.lock_holder("shared")["owner"] == "next"  # type: ignore[index]


def test_a_function_changed_after_the_plan_is_skipped_not_overwritten(env: dict[str, str]) -> None:
    state = plan(_state(env["new"]), SETTINGS)
    lam = boto3.client("lambda")
    lam.update_function_configuration(FunctionName="good", Description="changed by its team")
    before = lam.get_function_configuration(FunctionName="good")["Layers"]
    state = prepare(state, SETTINGS)
    assert lam.get_function_configuration(FunctionName="good")["Layers"] == before
    assert state.plan is not None and (state.plan.target_count, state.plan.skipped_count) == (0, 5)
    good = next(t for t in load_plan(SETTINGS.bucket, state.plan.plan_key).targets if t.function_name == "good")
    assert good.verdict.value == "skipped" and good.new_version is None
    assert "good was changed by someone else since the plan (RevisionId" in (good.reason or "")


def test_shift_refuses_an_alias_someone_else_moved(env: dict[str, str]) -> None:
    state = _through_shift(env)
    lam = boto3.client("lambda")
    lam.update_function_configuration(FunctionName="good", Description="hotfix by a human")
    foreign = lam.publish_version(FunctionName="good")["Version"]
    lam.update_alias(FunctionName="good", Name="live", FunctionVersion=foreign)
    with pytest.raises(ConcurrentModification, match="changed by someone else"):
        shift(state, SETTINGS, _step(weight=50))
    assert lam.get_alias(FunctionName="good", Name="live")["FunctionVersion"] == foreign


def test_waves_shift_pilots_first_and_leave_the_rest_alone(env: dict[str, str]) -> None:
    lam = boto3.client("lambda")
    state = _state(env["new"])
    state.rollout.spec.pilots = ["good"]  # type: ignore[union-attr]
    # a second target, in the main wave
    role = boto3.client("iam").get_role(RoleName="r")["Role"]["Arn"]
    lam.create_function(
        FunctionName="later",
        Runtime="python3.13",
        Role=role,
        Handler="app.handler",
        Code={"ZipFile": _zip()},
        Layers=[env["old"]],
        Tags={"layershift:layer": "shared"},
    )
    lam.create_alias(
        FunctionName="later", Name="live", FunctionVersion=lam.publish_version(FunctionName="later")["Version"]
    )
    state = prepare(plan(state, SETTINGS), SETTINGS)
    assert state.plan is not None and state.plan.pilot_count == 1
    assert [(s.wave, s.weight) for s in state.plan.shift_steps] == [(Wave.PILOT, 10), (Wave.MAIN, 10)]
    before = lam.get_alias(FunctionName="later", Name="live")

    shift(state, SETTINGS, _step(10, Wave.PILOT))
    planned = {t.function_name: t for t in load_plan(SETTINGS.bucket, state.plan.plan_key).active}
    assert planned["good"].wave is Wave.PILOT and planned["later"].wave is Wave.MAIN
    assert lam.get_alias(FunctionName="good", Name="live")["RoutingConfig"]["AdditionalVersionWeights"] == {
        planned["good"].new_version: 0.1
    }
    assert lam.get_alias(FunctionName="later", Name="live")["RevisionId"] == before["RevisionId"]

    shift(state, SETTINGS, _step(10, Wave.MAIN))
    pilot = lam.get_alias(FunctionName="good", Name="live")
    assert pilot["FunctionVersion"] == planned["good"].new_version
    assert not (pilot.get("RoutingConfig") or {}).get("AdditionalVersionWeights")
    assert lam.get_alias(FunctionName="later", Name="live")["RoutingConfig"]["AdditionalVersionWeights"] == {
        planned["later"].new_version: 0.1
    }

    state.error = ErrorInfo(Error="RolloutUnhealthy", Cause="canary analysis")
    rolled_back(state, SETTINGS)
    assert lam.get_alias(FunctionName="good", Name="live")["FunctionVersion"] == planned["good"].old_version
    assert lam.get_alias(FunctionName="later", Name="live")["FunctionVersion"] == planned["later"].old_version


def test_an_abort_stops_the_next_step_and_the_rollback_says_why(env: dict[str, str]) -> None:
    state = _through_shift(env)
    Registry(SETTINGS.table).request_abort("shared", "shared-abc", "bad feeling")
    with pytest.raises(RolloutAborted, match="bad feeling"):
        shift(state, SETTINGS, _step(weight=50))
    with pytest.raises(RolloutAborted):
        promote(state, SETTINGS)
    state.error = ErrorInfo(Error="RolloutAborted", Cause="aborted")
    state = rolled_back(state, SETTINGS)
    assert state.outcome is not None and state.outcome.error == "RolloutAborted"
    assert "bad feeling" in (state.outcome.cause or "")
    assert boto3.client("lambda").get_alias(FunctionName="good", Name="live")["FunctionVersion"] == "1"


def test_a_function_tagged_for_the_layer_is_found_without_listing_every_functions_tags(env: dict[str, str]) -> None:
    lam = boto3.client("lambda")
    role = boto3.client("iam").get_role(RoleName="r")["Role"]["Arn"]
    lam.create_function(
        FunctionName="tagged-only",
        Runtime="python3.13",
        Role=role,
        Handler="app.handler",
        Code={"ZipFile": _zip()},
        Tags={"layershift:layer": "shared"},
    )
    lam.create_alias(
        FunctionName="tagged-only",
        Name="live",
        FunctionVersion=lam.publish_version(FunctionName="tagged-only")["Version"],
    )
    state = plan(_state(env["new"]), SETTINGS)
    planned = {t.function_name: t for t in load_plan(SETTINGS.bucket, state.plan.plan_key).targets}  # type: ignore[union-attr]
    assert planned["tagged-only"].verdict.value == "target"
    assert planned["tagged-only"].new_layers == [env["new"]]
    assert "unrelated" not in planned


def test_a_promotion_whose_last_task_failed_after_its_work_is_rolled_back_whole(env: dict[str, str]) -> None:
    """PromoteLayer moved every alias and the parameter, then timed out: the rollback restores the
    aliases and puts back the parameter an earlier rollout promoted."""
    ssm = boto3.client("ssm")
    ssm.put_parameter(Name="/layershift/shared/arn", Value=env["old"], Type="String", Description="earlier")
    state = promote(_through_shift(env), SETTINGS)
    assert ssm.get_parameter(Name="/layershift/shared/arn")["Parameter"]["Value"] == env["new"]

    state.error = ErrorInfo(Error="Sandbox.Timedout", Cause="the task timed out")
    state = rolled_back(state, SETTINGS)

    assert boto3.client("lambda").get_alias(FunctionName="good", Name="live")["FunctionVersion"] == "1"
    assert ssm.get_parameter(Name="/layershift/shared/arn")["Parameter"]["Value"] == env["old"]
    assert Registry(SETTINGS.table).rollouts("shared")[0]["status"] == "rolled_back"


def test_a_rollback_leaves_a_parameter_another_rollout_promoted(env: dict[str, str]) -> None:
    ssm = boto3.client("ssm")
    ssm.put_parameter(Name="/layershift/shared/arn", Value=env["new"], Type="String", Description="another rollout")
    state = _through_shift(env)
    state.error = ErrorInfo(Error="RolloutUnhealthy", Cause="alarm")
    rolled_back(state, SETTINGS)
    assert ssm.get_parameter(Name="/layershift/shared/arn")["Parameter"]["Value"] == env["new"]
