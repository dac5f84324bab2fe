"""Functions in awkward states are left out of the rollout, never changed, and named in the notification.

Most tests run one rollout, in-process against moto, from plan to promotion and its notification,
with a healthy function ("good") beside the awkward one: the awkward one is skipped in the plan with
a reason that names the offending fact, the notification lists it with that reason, its
configuration, alias and versions are exactly as they were, and the healthy one still moves. The
last two pin down retries of PrepareFunctionVersions and a prepare that leaves no target at all.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.cloudformation import responses as cfn_responses

from layershift.local import revisions
from layershift_core import aws
from layershift_core.fanout import Batch, BatchEvent, read_items
from layershift_core.models import NotifyRequest, RolloutState, TargetPlan, Verdict
from layershift_core.notify import notify
from layershift_core.planner import UNZIPPED_LIMIT_BYTES, load_plan
from layershift_core.settings import Settings
from layershift_core.versions import prepare_versions

from .map_runs import plan, prepare, promote, shift
from .notification_inbox import create_topic_with_inbox
from .registry_table import create_registry_table
from .test_codedeploy import FUNCTION, MANAGED_ALIAS, _by_physical_id
from .test_rollout_logic import SETTINGS, _state, _zip

# moto deploys a stack's function but not its AWS::Lambda::Alias (it warns and skips it).
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS..Lambda..Alias:UserWarning")

FOR_THE_LAYER = {"layershift:layer": "shared"}


@dataclass
class World:
    settings: Settings
    new: str  # the layer version being rolled out
    old: str  # the version of the same layer the functions use now
    queue_url: str
    create: Callable[..., None]
    # What each watched function must look like when the rollout ends: as it was, or as someone
    # else left it.
    expected: dict[str, dict[str, Any]] = field(default_factory=dict)

    def hotfix(self, name: str) -> None:
        """Someone else changes the function (not its layers)."""
        boto3.client("lambda").update_function_configuration(FunctionName=name, Description="their hotfix")
        self.expected[name] = _snapshot(name)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setattr(cfn_responses.CloudFormationResponse, "describe_stack_resources", _by_physical_id)
    revisions.install()  # moto ignores RevisionId; the emulation's adapter enforces it as Lambda does
    with mock_aws():
        aws.client.cache_clear()
        boto3.client("s3").create_bucket(Bucket=SETTINGS.bucket)
        create_registry_table(SETTINGS.table)
        topic, queue_url = create_topic_with_inbox("layershift")
        role = boto3.client("iam").create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        lam = boto3.client("lambda")
        arns = {}
        for name in ("shared", "shared", "other"):
            arns[name] = lam.publish_layer_version(
                LayerName=name, Content={"ZipFile": _zip()}, CompatibleRuntimes=["python3.13"]
            )["LayerVersionArn"]
        old = arns["shared"].rsplit(":", 1)[0] + ":1"

        def create(
            name: str,
            layers: list[str],
            *,
            tags: dict[str, str] = FOR_THE_LAYER,
            alias: bool = True,
            **properties: Any,
        ) -> None:
            given = {"Runtime": "python3.13", "Handler": "app.handler", "Code": {"ZipFile": _zip()}} | properties
            given = {key: value for key, value in given.items() if value is not None}  # None: leave it out
            lam.create_function(FunctionName=name, Role=role, Layers=layers, Tags=tags, **given)
            if alias:
                version = lam.publish_version(FunctionName=name)["Version"]
                lam.create_alias(FunctionName=name, Name="live", FunctionVersion=version)

        create("good", [arns["other"], old])
        yield World(
            settings=SETTINGS.model_copy(update={"topic_arn": topic}),
            new=arns["shared"],
            old=old,
            queue_url=queue_url,
            create=create,
        )
        aws.client.cache_clear()
    revisions.uninstall()


def _snapshot(name: str) -> dict[str, Any]:
    """Everything a rollout could change about a function: $LATEST, the alias, the versions."""
    lam = boto3.client("lambda")

    def read(response: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in response.items() if key != "ResponseMetadata"}

    return {
        "latest": read(lam.get_function_configuration(FunctionName=name)),
        "alias": read(lam.get_alias(FunctionName=name, Name="live")),
        "versions": lam.list_versions_by_function(FunctionName=name)["Versions"],
    }


def _published(world: World) -> dict[str, Any]:
    messages = boto3.client("sqs").receive_message(QueueUrl=world.queue_url, MaxNumberOfMessages=10)["Messages"]
    assert len(messages) == 1
    return json.loads(messages[0]["Body"])


def _roll_out(
    world: World, watched: str, state: RolloutState | None = None, after_plan: Callable[[], None] | None = None
) -> tuple[dict[str, TargetPlan], RolloutState, dict[str, Any]]:
    """Plan, prepare, shift every step, promote and notify; `watched` must come out as expected.

    Returns the plan's targets by name, the final state and the published notification."""
    world.expected[watched] = _snapshot(watched)
    state = plan(state or _state(world.new), world.settings)
    if after_plan:
        after_plan()
    state = prepare(state, world.settings)
    assert state.plan is not None
    for index in range(state.plan.step_count):
        state = shift(state, world.settings, index)
    state = promote(state, world.settings)
    state = notify(NotifyRequest(event="promoted", state=state), world.settings)
    assert _snapshot(watched) == world.expected[watched]
    assert state.plan is not None
    targets = {t.function_name: t for t in load_plan(world.settings.bucket, state.plan.plan_key).targets}
    good = boto3.client("lambda").get_alias(FunctionName="good", Name="live")
    assert targets["good"].verdict is Verdict.TARGET and good["FunctionVersion"] == targets["good"].new_version
    return targets, state, _published(world)


def _assert_skipped(world: World, name: str, *facts: str, **kwargs: Any) -> str:
    """Roll out; `name` is skipped, its reason names every fact, and the notification says so."""
    targets, state, message = _roll_out(world, name, **kwargs)
    skipped = targets[name]
    assert skipped.verdict is Verdict.SKIPPED and skipped.new_version is None
    reason = skipped.reason or ""
    for fact in facts:
        assert fact in reason
    assert {"function": name, "reason": reason} in message["skipped"]
    assert state.plan is not None
    assert (state.plan.target_count, state.plan.skipped_count) == (1, len(targets) - 1)
    return reason


def test_a_container_image_function_is_skipped(world: World) -> None:
    world.create(
        "image",
        [],
        tags=FOR_THE_LAYER,
        PackageType="Image",
        Code={"ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/app:1"},
        Runtime=None,
        Handler=None,
    )
    _assert_skipped(world, "image", "container image")


def test_a_function_that_already_has_five_layers_is_skipped(world: World) -> None:
    lam = boto3.client("lambda")
    five = [
        lam.publish_layer_version(LayerName=f"pad{i}", Content={"ZipFile": _zip()})["LayerVersionArn"] for i in range(5)
    ]
    world.create("full", five, tags=FOR_THE_LAYER)
    reason = _assert_skipped(world, "full", "already has 5 layers", "would make 6", "Lambda allows 5")
    assert reason.startswith("already has 5 layers and adding shared")


def test_a_function_over_250_mb_unzipped_with_the_new_layer_is_skipped(world: World) -> None:
    state = _state(world.new)
    assert state.layer_versions
    state.layer_versions[0].unzipped_bytes = UNZIPPED_LIMIT_BYTES - 10_000  # "good" still fits
    bulky = io.BytesIO()
    with zipfile.ZipFile(bulky, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("python/blob.bin", os.urandom(20_000))
    lam = boto3.client("lambda")
    big = lam.publish_layer_version(LayerName="bulky", Content={"ZipFile": bulky.getvalue()})["LayerVersionArn"]
    world.create("heavy", [big, world.old])
    _assert_skipped(world, "heavy", "bytes unzipped, over Lambda's 250 MB limit", state=state)


def test_an_alias_already_routing_traffic_is_skipped(world: World) -> None:
    world.create("split", [world.old])
    lam = boto3.client("lambda")
    lam.update_function_configuration(FunctionName="split", Description="second")
    second = lam.publish_version(FunctionName="split")["Version"]
    lam.update_alias(FunctionName="split", Name="live", RoutingConfig={"AdditionalVersionWeights": {second: 0.5}})
    _assert_skipped(world, "split", "alias 'live' is already routing traffic to two versions")


def test_an_alias_codedeploy_manages_is_skipped(world: World) -> None:
    boto3.client("cloudformation").create_stack(
        StackName="orders-stack", TemplateBody=FUNCTION + MANAGED_ALIAS.format(reference="!Ref Fn")
    )
    lam = boto3.client("lambda")
    arn = lam.get_function_configuration(FunctionName="orders")["FunctionArn"]
    # CloudFormation tags what it creates with its stack (moto's CloudFormation tags only EC2 resources)
    stack_id = boto3.client("cloudformation").describe_stacks(StackName="orders-stack")["Stacks"][0]["StackId"]
    lam.tag_resource(Resource=arn, Tags={**FOR_THE_LAYER, "aws:cloudformation:stack-id": stack_id})
    version = lam.publish_version(FunctionName="orders")["Version"]
    lam.create_alias(FunctionName="orders", Name="live", FunctionVersion=version)
    _assert_skipped(
        world,
        "orders",
        "updated by CodeDeploy (application orders-app, deployment group orders-dg)",
        "LiveAlias in stack orders-stack",
        "layershift leaves aliases that CodeDeploy manages alone",
    )


@pytest.mark.parametrize(
    ("properties", "fact"),
    [
        ({"Runtime": "python3.11"}, "python3.11/x86_64 is not a runtime and architecture this rollout builds for"),
        ({"Architectures": ["arm64"]}, "python3.13/arm64 is not a runtime and architecture this rollout builds for"),
    ],
    ids=["runtime", "architecture"],
)
def test_a_runtime_or_architecture_the_layer_does_not_support_is_skipped(
    world: World, properties: dict[str, Any], fact: str
) -> None:
    world.create("misfit", [world.old], **properties)
    _assert_skipped(world, "misfit", fact, "it serves python3.13/x86_64", "build.runtimes")


@pytest.mark.parametrize("when", ["since the plan", "while its layers were being updated"])
def test_a_function_changed_by_someone_else_after_the_plan_is_skipped_and_the_others_go_on(
    world: World, when: str
) -> None:
    world.create("busy", [world.old])
    lam = boto3.client("lambda")
    planned = lam.get_function_configuration(FunctionName="busy")["RevisionId"]

    def race(params: dict[str, Any], **_: Any) -> None:
        if params.get("FunctionName") == "busy" and "Layers" in params:
            world.hotfix("busy")  # lands between layershift's read and its guarded update

    def their_change() -> None:
        if when == "since the plan":
            world.hotfix("busy")
        else:
            aws.client("lambda").meta.events.register("before-parameter-build.lambda.UpdateFunctionConfiguration", race)

    reason = _assert_skipped(world, "busy", after_plan=their_change)
    now = lam.get_function_configuration(FunctionName="busy")["RevisionId"]
    assert now != planned
    assert reason == (
        f"busy was changed by someone else {when} (RevisionId {planned} → {now}); "
        "left untouched, push again to include it"
    )
    assert lam.get_function_configuration(FunctionName="busy")["Description"] == "their hotfix"


def test_a_retried_prepare_does_not_skip_the_change_its_earlier_attempt_made(world: World) -> None:
    """The task timed out after updating $LATEST, before publishing: the retry publishes, it does not skip."""
    planned = plan(_state(world.new), world.settings)
    assert planned.plan is not None
    items = read_items(world.settings.bucket, planned.plan.targets_key)
    batch = Batch(Items=items, BatchInput={"rollout_id": "shared-abc", "layer": "shared"})
    attempts: list[str] = []

    def time_out_once(params: dict[str, Any], **_: Any) -> None:
        attempts.append(params["FunctionName"])
        if len(attempts) == 1:
            raise TimeoutError("Task timed out")

    aws.client("lambda").meta.events.register("before-parameter-build.lambda.PublishVersion", time_out_once)
    with pytest.raises(TimeoutError):
        prepare_versions(BatchEvent(batch=batch.model_copy(deep=True)), world.settings, 900)
    lam = boto3.client("lambda")
    target = load_plan(world.settings.bucket, planned.plan.plan_key).active[0]
    latest = lam.get_function_configuration(FunctionName="good")
    assert [layer["Arn"] for layer in latest["Layers"]] == target.new_layers  # the earlier attempt's change
    assert latest["RevisionId"] != target.revision_id

    # The child's Retry runs the task again with the same batch: it publishes, it does not skip.
    done = prepare_versions(BatchEvent(batch=batch, retry_count=1), world.settings, 900)
    assert done.done and done.retries == 1
    (result,) = done.results
    assert result["function_name"] == "good" and result.get("new_version") and not result.get("skipped")
    published = lam.get_function_configuration(FunctionName="good", Qualifier=result["new_version"])
    assert [layer["Arn"] for layer in published["Layers"]] == target.new_layers


def test_when_every_target_changed_after_the_plan_none_is_left_and_the_notification_says_why(world: World) -> None:
    state = plan(_state(world.new), world.settings)
    assert state.plan is not None and state.plan.target_count == 1
    world.hotfix("good")
    state = prepare(state, world.settings)
    assert state.plan is not None
    assert (state.plan.target_count, state.plan.skipped_count, state.plan.pilot_count) == (0, 1, 0)
    assert state.plan.shift_steps == []  # no traffic step to run
    assert _snapshot("good") == world.expected["good"]
    notify(NotifyRequest(event="promoted", state=state), world.settings)
    [skipped] = _published(world)["skipped"]
    assert skipped["function"] == "good"
    assert skipped["reason"].startswith("good was changed by someone else since the plan (RevisionId ")
