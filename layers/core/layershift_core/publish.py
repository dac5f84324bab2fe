"""Steps 3 and 4: reuse a published version with the same build key, or publish the new build."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from .aborts import ensure_rollout_not_aborted
from .artifacts import read_json
from .aws import client, error_code
from .errors import ArtifactMissing, BuildFailed
from .models import BuildDecision, LayerVersionRef, RolloutState, ValidatedRollout
from .registry import Registry
from .settings import Settings

DESCRIPTION_LIMIT = 256


class ManifestView(BaseModel):
    """The fields of the builder's manifest.json that publishing needs."""

    model_config = ConfigDict(extra="ignore")

    build_key: str
    sha256: str
    unzipped_bytes: int
    compatible_runtimes: list[str]
    compatible_architectures: list[str]
    packages: list[dict[str, Any]]


def _rollout(state: RolloutState) -> ValidatedRollout:
    if state.rollout is None:
        raise ValueError("the execution state has no validated rollout")
    return state.rollout


def find_reusable_build(state: RolloutState, settings: Settings) -> RolloutState:
    ensure_rollout_not_aborted(state, settings)
    rollout = _rollout(state)
    record = Registry(settings.table).find_build(rollout.layer, rollout.build_key)
    state.build = BuildDecision(reused=False)
    if record is None:
        return state
    try:
        layer = client("lambda").get_layer_version(LayerName=rollout.layer, VersionNumber=int(record["version"]))
    except client("lambda").exceptions.ResourceNotFoundException:
        Registry(settings.table).forget_build(rollout.layer, rollout.build_key)
        return state
    manifest = ManifestView.model_validate(read_json(settings.bucket, record["manifest_key"]))
    reused = LayerVersionRef(
        arn=layer["LayerVersionArn"],
        version=layer["Version"],
        build_key=rollout.build_key,
        compatible_runtimes=layer.get("CompatibleRuntimes", []),
        compatible_architectures=layer.get("CompatibleArchitectures", []),
        unzipped_bytes=manifest.unzipped_bytes,
    )
    state.build = BuildDecision(reused=True, layer_version=reused)
    state.layer_version = reused
    return state


def describe(build_key: str, packages: list[dict[str, Any]]) -> str:
    """The layer version's description: the build key, then as many package pins as fit."""
    text = f"layershift {build_key[:16]}"
    for package in sorted(packages, key=lambda p: str(p.get("name", "")).lower()):
        piece = f" {package.get('name')}=={package.get('version')}"
        if len(text) + len(piece) > DESCRIPTION_LIMIT - 4:
            return text + " ..."
        text += piece
    return text


def publish_layer(state: RolloutState, settings: Settings) -> RolloutState:
    ensure_rollout_not_aborted(state, settings)
    rollout = _rollout(state)
    manifest_key = rollout.artifact_prefix + "manifest.json"
    zip_key = rollout.artifact_prefix + "layer.zip"
    try:
        manifest = ManifestView.model_validate(read_json(settings.bucket, manifest_key))
        client("s3").head_object(Bucket=settings.bucket, Key=zip_key)
    except Exception as exc:
        if error_code(exc) in {"404", "NoSuchKey", "NotFound"}:
            raise ArtifactMissing(f"the build left no {zip_key} or {manifest_key} in {settings.bucket}") from None
        raise
    if manifest.build_key != rollout.build_key:
        raise BuildFailed(f"manifest build key {manifest.build_key} is not the requested {rollout.build_key}")
    runtimes = [r for r in manifest.compatible_runtimes if r in rollout.spec.runtimes] or manifest.compatible_runtimes
    kwargs: dict[str, Any] = {
        "LayerName": rollout.layer,
        "Description": describe(rollout.build_key, manifest.packages),
        "Content": {"S3Bucket": settings.bucket, "S3Key": zip_key},
        "CompatibleRuntimes": runtimes,
        "CompatibleArchitectures": manifest.compatible_architectures,
    }
    if rollout.spec.license:
        kwargs["LicenseInfo"] = rollout.spec.license
    published = client("lambda").publish_layer_version(**kwargs)
    registry = Registry(settings.table)
    registry.record_version(
        rollout.layer,
        published["Version"],
        published["LayerVersionArn"],
        rollout.build_key,
        manifest_key,
        manifest.sha256,
        rollout.rollout_id,
    )
    registry.put_rollout(
        rollout.layer, rollout.rollout_id, status="published", layer_version_arn=published["LayerVersionArn"]
    )
    state.layer_version = LayerVersionRef(
        arn=published["LayerVersionArn"],
        version=published["Version"],
        build_key=rollout.build_key,
        compatible_runtimes=runtimes,
        compatible_architectures=manifest.compatible_architectures,
        unzipped_bytes=manifest.unzipped_bytes,
    )
    return state
