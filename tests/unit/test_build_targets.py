"""A mixed fleet: the rollout's targets come from its functions, each function moves to the variant
of its runtime and architecture, one promotion names every variant, and a rollback puts them all back."""

import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from layershift.local import revisions
from layershift_core import aws
from layershift_core.errors import BuildFailed, InvalidRequirements, StagedBuildRejected
from layershift_core.models import (
    ErrorInfo,
    LayerSpec,
    RolloutRequest,
    RolloutState,
    TrafficStep,
    ValidatedRollout,
    Verdict,
)
from layershift_core.planner import find_candidates_task, load_plan
from layershift_core.publish import publish_layer
from layershift_core.registry import Registry
from layershift_core.targets import choose_targets, find_reusable_build

from .map_runs import plan, prepare, promote, rolled_back, shift
from .registry_table import create_registry_table
from .test_rollout_logic import SETTINGS, _zip

LAYER = "shared"
FLEET = {  # function -> (runtime, architecture)
    "api-312": ("python3.12", "x86_64"),
    "api-313": ("python3.13", "x86_64"),
    "worker-arm": ("python3.13", "arm64"),
    "legacy-310": ("python3.10", "x86_64"),
}


def _spec(**fields: Any) -> LayerSpec:
    defaults: dict[str, Any] = {
        "alias": "live",
        "strategy": "Custom",
        "steps": [TrafficStep(weight=10, bake_seconds=0)],
        "poll_seconds": 1,
    }
    return LayerSpec(**(defaults | fields))


def test_the_targets_come_from_the_spec_then_the_consumers_then_the_defaults() -> None:
    consumers = ["python3.12/x86_64", "python3.13/arm64", "python3.13/x86_64", "python3.10/x86_64", "Image/x86_64"]
    both = _spec(runtimes=["python3.12"], architectures=["arm64", "x86_64"])
    assert choose_targets(both, consumers, "python3.13", "x86_64") == (
        [("python3.12", "arm64"), ("python3.12", "x86_64")],
        "spec",
    )
    runtimes_only = _spec(runtimes=["python3.11"])
    assert choose_targets(runtimes_only, consumers, "python3.13", "x86_64") == (
        [("python3.11", "x86_64"), ("python3.11", "arm64")],
        "spec",
    )
    arm_only = _spec(architectures=["arm64"])
    assert choose_targets(arm_only, consumers, "python3.13", "x86_64") == ([("python3.13", "arm64")], "spec")
    # the newest runtime first, x86_64 first: it names /layershift/<layer>/arn; python3.10 cannot be built
    assert choose_targets(_spec(), consumers, "python3.13", "x86_64") == (
        [("python3.13", "x86_64"), ("python3.13", "arm64"), ("python3.12", "x86_64")],
        "consumers",
    )
    assert choose_targets(_spec(), ["python3.9/x86_64"], "python3.12", "arm64") == (
        [("python3.12", "arm64")],
        "defaults",
    )


@pytest.fixture
def fleet() -> Iterator[dict[str, str]]:
    revisions.install()
    with mock_aws():
        aws.client.cache_clear()
        boto3.client("s3").create_bucket(Bucket=SETTINGS.bucket)
        create_registry_table(SETTINGS.table)
        role = boto3.client("iam").create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        lam = boto3.client("lambda")
        old = lam.publish_layer_version(LayerName=LAYER, Content={"ZipFile": _zip()})["LayerVersionArn"]
        for name, (runtime, architecture) in FLEET.items():
            lam.create_function(
                FunctionName=name,
                Runtime=runtime,
                Architectures=[architecture],
                Role=role,
                Handler="app.handler",
                Code={"ZipFile": _zip()},
                Layers=[old],
                Tags={"layershift:layer": LAYER},
            )
            version = lam.publish_version(FunctionName=name)["Version"]
            lam.create_alias(FunctionName=name, Name="live", FunctionVersion=version)
        yield {"old": old}
        aws.client.cache_clear()
    revisions.uninstall()


def _rollout(rollout_id: str, requirements: str = "six==1.16.0\n", spec: LayerSpec | None = None) -> RolloutState:
    key = f"rollouts/{LAYER}/{rollout_id}/requirements.txt"
    boto3.client("s3").put_object(Bucket=SETTINGS.bucket, Key=key, Body=requirements.encode())
    Registry(SETTINGS.table).acquire_lock(LAYER, rollout_id, 3600)
    return RolloutState(
        request=RolloutRequest(
            layer=LAYER, bucket=SETTINGS.bucket, requirements_key=f"layers/{LAYER}/requirements.txt"
        ),
        rollout=ValidatedRollout(
            rollout_id=rollout_id,
            layer=LAYER,
            spec=spec or _spec(),
            requirements_uri=f"s3://{SETTINGS.bucket}/{key}",
        ),
    )


BUILD_ARN = "arn:aws:codebuild:us-east-1:123456789012:build/LayerBuildProject-X:5e1f"
STAGED = f"staging/{BUILD_ARN}/"
MANIFEST = b'{"unzipped_bytes": 6}'


def _fake_build(state: RolloutState, groups: dict[str, list[str]]) -> None:
    """What the build job leaves for PublishLayerVersion: a zip, a manifest and variants.json entry per
    variant in its staging folder, and the sha256 of variants.json exported through CodeBuild, which
    BuildLayer records. (tests/integration builds them for real.)"""
    assert state.matrix is not None
    keys = {target.label: target.build_key for target in state.matrix.to_build}
    s3, prefix = boto3.client("s3"), STAGED
    variants = []
    for variant, labels in groups.items():
        body = io.BytesIO()
        with zipfile.ZipFile(body, "w") as archive:
            archive.writestr(f"python/{variant}.py", "X = 1\n")
        s3.put_object(Bucket=SETTINGS.bucket, Key=f"{prefix}{variant}/layer.zip", Body=body.getvalue())
        s3.put_object(Bucket=SETTINGS.bucket, Key=f"{prefix}{variant}/manifest.json", Body=MANIFEST)
        files = {
            f"{variant}/layer.zip": hashlib.sha256(body.getvalue()).hexdigest(),
            f"{variant}/manifest.json": hashlib.sha256(MANIFEST).hexdigest(),
        }
        variants.append(
            {
                "id": variant,
                "targets": [
                    {"runtime": label.split("/")[0], "architecture": label.split("/")[1], "build_key": keys[label]}
                    for label in labels
                ],
                "compatible_runtimes": sorted({label.split("/")[0] for label in labels}),
                "compatible_architectures": sorted({label.split("/")[1] for label in labels}),
                "sha256": hashlib.sha256(body.getvalue()).hexdigest(),
                "unzipped_bytes": 6,
                "packages": [{"name": "six", "version": "1.16.0"}],
                "manifest": f"{variant}/manifest.json",
                "zip": f"{variant}/layer.zip",
                "files": files,
            }
        )
    index = json.dumps({"matrix_key": state.matrix.matrix_key, "variants": variants}).encode()
    s3.put_object(Bucket=SETTINGS.bucket, Key=f"{prefix}variants.json", Body=index)
    exported = [{"Name": "LAYERSHIFT_VARIANTS_SHA256", "Value": hashlib.sha256(index).hexdigest()}]
    state.matrix.codebuild = {
        "id": "LayerBuildProject-X:5e1f",
        "arn": BUILD_ARN,
        "status": "SUCCEEDED",
        "exported": exported,
    }


NATIVE = {
    "python3.12-python3.13-x86_64": ["python3.13/x86_64", "python3.12/x86_64"],
    "python3.13-arm64": ["python3.13/arm64"],
}


def _parameters() -> dict[str, str]:
    ssm = boto3.client("ssm")
    described = ssm.describe_parameters()["Parameters"]
    return {p["Name"]: ssm.get_parameter(Name=p["Name"])["Parameter"]["Value"] for p in described}


def _built(rollout_id: str, groups: dict[str, list[str]] = NATIVE) -> RolloutState:
    state = find_candidates_task(_rollout(rollout_id), SETTINGS)
    state = find_reusable_build(state, SETTINGS)
    _fake_build(state, groups)
    return publish_layer(state, SETTINGS)


def test_a_mixed_fleet_builds_for_every_platform_and_each_function_gets_its_own_variant(
    fleet: dict[str, str],
) -> None:
    state = find_candidates_task(_rollout("r1"), SETTINGS)
    assert state.candidates is not None
    assert state.candidates.platforms == {
        "python3.10/x86_64": 1,
        "python3.12/x86_64": 1,
        "python3.13/arm64": 1,
        "python3.13/x86_64": 1,
    }
    state = find_reusable_build(state, SETTINGS)
    assert state.matrix is not None and state.matrix.source == "consumers" and state.matrix.build_needed
    environment = {v.Name: v.Value for v in state.matrix.build_environment}
    assert environment["LAYERSHIFT_TARGETS"] == "python3.13/x86_64,python3.13/arm64,python3.12/x86_64"
    assert environment["LAYERSHIFT_BUILD_KEY"] == state.matrix.matrix_key
    _fake_build(state, NATIVE)
    state = publish_layer(state, SETTINGS)
    versions = {v.variant: v for v in state.layer_versions}
    x86, arm = versions["python3.12-python3.13-x86_64"], versions["python3.13-arm64"]
    layer = boto3.client("lambda").get_layer_version(LayerName=LAYER, VersionNumber=arm.version)
    assert (layer["CompatibleRuntimes"], layer["CompatibleArchitectures"]) == (["python3.13"], ["arm64"])

    state = prepare(plan(state, SETTINGS), SETTINGS)
    assert state.plan is not None
    targets = {t.function_name: t for t in load_plan(SETTINGS.bucket, state.plan.plan_key).targets}
    for name, version in (("api-312", x86), ("api-313", x86), ("worker-arm", arm)):
        assert targets[name].verdict is Verdict.TARGET, targets[name].reason
        assert (targets[name].variant, targets[name].new_layers) == (version.variant, [version.arn])
    legacy = targets["legacy-310"]
    assert legacy.verdict is Verdict.SKIPPED and "python3.10/x86_64 is not a runtime and architecture" in (
        legacy.reason or ""
    )
    assert state.plan.variant_counts == {x86.variant: 2, arm.variant: 1}

    state = promote(shift(state, SETTINGS), SETTINGS)
    lam = boto3.client("lambda")
    for name in ("api-312", "api-313", "worker-arm"):
        alias = lam.get_alias(FunctionName=name, Name="live")
        assert alias["FunctionVersion"] == targets[name].new_version and not (alias.get("RoutingConfig") or {}).get(
            "AdditionalVersionWeights"
        )
        published = lam.get_function(FunctionName=name, Qualifier=targets[name].new_version)["Configuration"]
        assert [entry["Arn"] for entry in published["Layers"]] == targets[name].new_layers
    assert _parameters() == {
        f"/layershift/{LAYER}/arn": x86.arn,
        f"/layershift/{LAYER}/python3.13/x86_64/arn": x86.arn,
        f"/layershift/{LAYER}/python3.12/x86_64/arn": x86.arn,
        f"/layershift/{LAYER}/python3.13/arm64/arn": arm.arn,
    }

    # The same requirements again: every target is served by a published version, nothing is built.
    Registry(SETTINGS.table).release_lock(LAYER, "r1")
    again = find_reusable_build(find_candidates_task(_rollout("r2"), SETTINGS), SETTINGS)
    assert again.matrix is not None and not again.matrix.build_needed and not again.matrix.build_environment
    assert {(v.arn, tuple(v.targets), v.reused) for v in again.layer_versions} == {
        (x86.arn, ("python3.13/x86_64", "python3.12/x86_64"), True),
        (arm.arn, ("python3.13/arm64",), True),
    }


def test_a_rollback_after_promotion_puts_every_variants_parameter_back(fleet: dict[str, str]) -> None:
    state = prepare(plan(_built("r1"), SETTINGS), SETTINGS)
    state = promote(shift(state, SETTINGS), SETTINGS)
    assert len(_parameters()) == 4
    state.error = ErrorInfo(Error="States.Timeout", Cause="the promotion's last task timed out after its work")
    state = rolled_back(state, SETTINGS)
    assert state.outcome is not None and state.outcome.status == "rolled_back"
    assert _parameters() == {}  # nothing was promoted before this rollout
    lam = boto3.client("lambda")
    for name in ("api-312", "api-313", "worker-arm"):
        alias = lam.get_alias(FunctionName=name, Name="live")
        assert alias["FunctionVersion"] == "1" and not (alias.get("RoutingConfig") or {}).get(
            "AdditionalVersionWeights"
        )


def test_a_pure_python_variant_serves_every_platform_from_one_version(fleet: dict[str, str]) -> None:
    labels = ["python3.13/x86_64", "python3.13/arm64", "python3.12/x86_64"]
    state = prepare(plan(_built("r1", {"python3.12-python3.13-any": labels}), SETTINGS), SETTINGS)
    assert len(state.layer_versions) == 1 and state.plan is not None
    assert (state.plan.target_count, state.plan.variant_counts) == (3, {"python3.12-python3.13-any": 3})


def test_a_build_that_leaves_out_a_target_fails_before_publishing(fleet: dict[str, str]) -> None:
    state = find_reusable_build(find_candidates_task(_rollout("r1"), SETTINGS), SETTINGS)
    _fake_build(state, {"python3.13-arm64": ["python3.13/arm64"]})
    with pytest.raises(BuildFailed, match=r"made no layer for python3.12/x86_64, python3.13/x86_64"):
        publish_layer(state, SETTINGS)


def test_a_marker_that_holds_on_none_of_the_consumers_platforms_is_refused(fleet: dict[str, str]) -> None:
    state = find_candidates_task(_rollout("r1", 'six==1.16.0\nuvloop==0.21.0 ; sys_platform == "win32"\n'), SETTINGS)
    with pytest.raises(InvalidRequirements, match=r"holds on none of the layer's targets \(python3.13/x86_64"):
        find_reusable_build(state, SETTINGS)


# ---------------------------------------------------------------- nothing staged is trusted


def _published_versions() -> list[dict[str, Any]]:
    return boto3.client("lambda").list_layer_versions(LayerName=LAYER)["LayerVersions"]


def _artifact_keys() -> list[str]:
    listed = boto3.client("s3").list_objects_v2(Bucket=SETTINGS.bucket, Prefix="artifacts/")
    return [o["Key"] for o in listed.get("Contents", [])]


def test_publication_copies_the_verified_build_into_artifacts(fleet: dict[str, str]) -> None:
    state = _built("r1")
    prefix = state.matrix.artifact_prefix if state.matrix else ""
    assert sorted(_artifact_keys()) == sorted(
        [f"{prefix}variants.json"] + [f"{prefix}{v}/{n}" for v in NATIVE for n in ("layer.zip", "manifest.json")]
    )
    record = Registry(SETTINGS.table).find_build(LAYER, state.matrix.to_build[0].build_key if state.matrix else "")
    assert record is not None and record["manifest_key"].startswith(prefix)


@pytest.mark.parametrize("tamper", ["zip bytes", "manifest bytes", "variants.json swapped", "no export"])
def test_a_staged_file_changed_after_the_build_is_refused_and_nothing_is_published(
    fleet: dict[str, str], tamper: str
) -> None:
    before = _published_versions()
    state = find_reusable_build(find_candidates_task(_rollout("r1"), SETTINGS), SETTINGS)
    _fake_build(state, NATIVE)
    s3 = boto3.client("s3")
    variant = "python3.13-arm64"
    if tamper == "zip bytes":
        s3.put_object(Bucket=SETTINGS.bucket, Key=f"{STAGED}{variant}/layer.zip", Body=b"PK planted")
        expected = rf"{variant}/layer.zip has sha256 [0-9a-f]{{64}}, but variants.json .* lists"
    elif tamper == "manifest bytes":
        s3.put_object(Bucket=SETTINGS.bucket, Key=f"{STAGED}{variant}/manifest.json", Body=b'{"unzipped_bytes": 1}')
        expected = rf"{variant}/manifest.json has sha256 .* it was changed after the build"
    elif tamper == "variants.json swapped":
        # a whole consistent index of other files: its own hashes match, the exported one does not
        body = s3.get_object(Bucket=SETTINGS.bucket, Key=f"{STAGED}variants.json")["Body"].read()
        index = json.loads(body)
        planted = b"PK planted"
        s3.put_object(Bucket=SETTINGS.bucket, Key=f"{STAGED}{variant}/layer.zip", Body=planted)
        for entry in index["variants"]:
            if entry["id"] == variant:
                entry["sha256"] = entry["files"][entry["zip"]] = hashlib.sha256(planted).hexdigest()
        s3.put_object(Bucket=SETTINGS.bucket, Key=f"{STAGED}variants.json", Body=json.dumps(index).encode())
        expected = r"variants.json has sha256 [0-9a-f]{64}, but build .* exported [0-9a-f]{64}"
    else:
        assert state.matrix is not None
        state.matrix.codebuild = {**state.matrix.codebuild, "exported": []}
        expected = r"exported no sha256 of its variants.json"
    with pytest.raises(StagedBuildRejected, match=expected):
        publish_layer(state, SETTINGS)
    assert _published_versions() == before
    assert _artifact_keys() == []
    assert all(Registry(SETTINGS.table).find_build(LAYER, t.build_key) is None for t in state.matrix.to_build)


def test_object_metadata_claiming_a_build_is_ignored_and_only_the_registry_decides(fleet: dict[str, str]) -> None:
    first = find_reusable_build(find_candidates_task(_rollout("r1"), SETTINGS), SETTINGS)
    assert first.matrix is not None and first.matrix.build_needed
    s3, prefix = boto3.client("s3"), first.matrix.artifact_prefix
    # objects under artifacts/ that claim, by metadata, to be this matrix's finished build
    index = {"matrix_key": first.matrix.matrix_key, "variants": []}
    for key, body in ((f"{prefix}variants.json", json.dumps(index).encode()), (f"{prefix}x/layer.zip", b"PK")):
        s3.put_object(
            Bucket=SETTINGS.bucket,
            Key=key,
            Body=body,
            Metadata={"build-key": first.matrix.matrix_key, "sha256": hashlib.sha256(b"PK").hexdigest()},
        )
    Registry(SETTINGS.table).release_lock(LAYER, "r1")
    again = find_reusable_build(find_candidates_task(_rollout("r2"), SETTINGS), SETTINGS)
    assert again.matrix is not None and again.matrix.build_needed and not again.layer_versions

    # a registry record whose sha256 is not Lambda's CodeSha256 of that version is not reused either
    Registry(SETTINGS.table).release_lock(LAYER, "r2")
    built = _built("r3")
    target = built.matrix.to_build[0] if built.matrix else None
    assert target is not None
    registry = Registry(SETTINGS.table)
    record = registry.find_build(LAYER, target.build_key)
    assert record is not None
    registry.record_version(
        LAYER, int(record["version"]), record["arn"], [target.build_key], record["manifest_key"], "0" * 64, "r3"
    )
    registry.release_lock(LAYER, "r3")
    after = find_reusable_build(find_candidates_task(_rollout("r4"), SETTINGS), SETTINGS)
    assert after.matrix is not None and target.label in {t.label for t in after.matrix.to_build}
