"""Step 4: publish a layer version for each variant the build job made (its variants.json).

What the build staged is verified and copied into ``artifacts/`` first (:mod:`.staging`); the layer
versions are published from those copies, the exact object versions verified, and Lambda's
CodeSha256 of each is checked against the sha256 the build recorded.
"""

from __future__ import annotations

import base64
from typing import Any

from botocore.exceptions import ClientError

from .aborts import ensure_rollout_not_aborted
from .artifacts import read_json
from .aws import client
from .errors import BuildFailed
from .models import LayerVersionRef, RolloutState, ValidatedRollout, platform_label
from .notify import publish
from .observability import logger
from .registry import Registry
from .settings import Settings
from .staging import VARIANTS_JSON, BuildResult, VariantView, promote

DESCRIPTION_LIMIT = 256


def describe(build_key: str, packages: list[dict[str, Any]], variant: str = "") -> str:
    """The layer version's description: the build key and variant, then as many package pins as fit."""
    text = f"layershift {build_key[:16]}" + (f" {variant}" if variant else "")
    for package in sorted(packages, key=lambda p: str(p.get("name", "")).lower()):
        piece = f" {package.get('name')}=={package.get('version')}"
        if len(text) + len(piece) > DESCRIPTION_LIMIT - 4:
            return text + " ..."
        text += piece
    return text


def code_sha256(hex_digest: str) -> str:
    """Lambda's CodeSha256 (base64 of the digest) of a hex sha256."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _publish_variant(
    settings: Settings, rollout: ValidatedRollout, prefix: str, variant: VariantView, serves: list[str]
) -> LayerVersionRef:
    """PublishLayerVersion for one variant and its registry record (once: a retried task finds it)."""
    registry = Registry(settings.table)
    build_keys = [t.build_key for t in variant.targets]
    manifest_key, zip_key = prefix + variant.manifest, prefix + variant.zip
    record = registry.find_build(rollout.layer, build_keys[0])
    lam = client("lambda")
    if record is not None and record.get("sha256") == variant.sha256 and record.get("manifest_key") == manifest_key:
        arn, version = str(record["arn"]), int(record["version"])  # published by an earlier attempt of this task
    else:
        content: dict[str, str] = {"S3Bucket": settings.bucket, "S3Key": zip_key}
        version_id = client("s3").head_object(Bucket=settings.bucket, Key=zip_key).get("VersionId")
        if version_id and version_id != "null":
            content["S3ObjectVersion"] = str(version_id)
        kwargs: dict[str, Any] = {
            "LayerName": settings.published_name(rollout.layer),
            "Description": describe(build_keys[0], variant.packages, variant.id),
            "Content": content,
            "CompatibleRuntimes": variant.compatible_runtimes,
            "CompatibleArchitectures": variant.compatible_architectures,
        }
        if rollout.spec.license:
            kwargs["LicenseInfo"] = rollout.spec.license
        published = lam.publish_layer_version(**kwargs)
        arn, version = published["LayerVersionArn"], int(published["Version"])
        published_sha = (published.get("Content") or {}).get("CodeSha256")
        if published_sha and published_sha != code_sha256(variant.sha256):
            raise BuildFailed(
                f"{arn} has CodeSha256 {published_sha}, not the {code_sha256(variant.sha256)} of the verified "
                f"s3://{settings.bucket}/{zip_key}; it is not recorded and no function moves to it"
            )
        registry.record_version(
            rollout.layer,
            version,
            arn,
            build_keys,
            manifest_key,
            variant.sha256,
            rollout.rollout_id,
            variant=variant.id,
        )
    return LayerVersionRef(
        arn=arn,
        version=version,
        build_key=build_keys[0],
        compatible_runtimes=variant.compatible_runtimes,
        compatible_architectures=variant.compatible_architectures,
        unzipped_bytes=variant.unzipped_bytes,
        variant=variant.id,
        targets=serves,
        manifest_key=manifest_key,
    )


def publish_layer(state: RolloutState, settings: Settings) -> RolloutState:
    """PublishLayerVersion: one layer version per variant the build made, beside those reused."""
    ensure_rollout_not_aborted(state, settings)
    if state.rollout is None or state.matrix is None:
        raise ValueError("publishing needs a validated rollout and its build matrix")
    rollout, matrix = state.rollout, state.matrix
    build = BuildResult.of(getattr(matrix, "codebuild", None))
    index = promote(settings.bucket, build, matrix.artifact_prefix)
    if index.matrix_key != matrix.matrix_key:
        raise BuildFailed(f"the build's matrix key {index.matrix_key} is not the requested {matrix.matrix_key}")
    wanted = {t.label: t.build_key for t in matrix.to_build}
    published: list[LayerVersionRef] = []
    for variant in index.variants:
        serves = [
            platform_label(t.runtime, t.architecture)
            for t in variant.targets
            if wanted.get(platform_label(t.runtime, t.architecture)) == t.build_key
        ]
        if serves:
            published.append(_publish_variant(settings, rollout, matrix.artifact_prefix, variant, serves))
    missing = sorted(set(wanted) - {label for version in published for label in version.targets})
    if missing:
        raise BuildFailed(
            f"the build made no layer for {', '.join(missing)} (s3://{settings.bucket}/"
            f"{matrix.artifact_prefix}{VARIANTS_JSON})"
        )
    state.layer_versions = [*state.layer_versions, *published]
    Registry(settings.table).put_rollout(
        rollout.layer,
        rollout.rollout_id,
        status="published",
        layer_version_arns=",".join(v.arn for v in state.layer_versions),
    )
    _announce_built(settings, rollout, index.variants, published)
    return state


def package_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """``name old -> new``, ``+name version`` and ``-name version``, by name."""
    changes = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old is None:
            changes.append(f"+{name} {new}")
        elif new is None:
            changes.append(f"-{name} {old}")
        elif old != new:
            changes.append(f"{name} {old} -> {new}")
    return changes


def _promoted_packages(settings: Settings, layer: str) -> dict[str, dict[str, str]]:
    """The packages of the layer's promoted version of each variant, from its manifest (none found: {})."""
    found: dict[str, dict[str, str]] = {}
    for record in Registry(settings.table).versions(layer):
        if record.get("status") != "promoted" or not record.get("manifest_key"):
            continue
        try:
            manifest = read_json(settings.bucket, str(record["manifest_key"]))
        except (ClientError, ValueError):  # unreadable: the notification goes without the comparison
            logger.warning("promoted manifest unreadable", extra={"key": record.get("manifest_key")})
            continue
        packages = {str(p["name"]): str(p["version"]) for p in manifest.get("packages", []) if "name" in p}
        found[str(record.get("variant") or "")] = packages  # later versions come later: the newest wins
    return found


def _announce_built(
    settings: Settings, rollout: ValidatedRollout, variants: list[VariantView], published: list[LayerVersionRef]
) -> None:
    """The ``built`` notification: each published layer version, its size and its packages."""
    by_id = {variant.id: variant for variant in variants}
    promoted = _promoted_packages(settings, rollout.layer)
    versions: list[dict[str, Any]] = []
    lines: list[str] = []
    for ref in published:
        variant = by_id.get(ref.variant or "")
        packages = sorted(f"{p.get('name')}=={p.get('version')}" for p in (variant.packages if variant else []))
        size_mb = round(ref.unzipped_bytes / 1_000_000, 1)
        entry: dict[str, Any] = {
            "layer_version": ref.arn,
            "variant": ref.variant,
            "serves": ref.targets,
            "unzipped_mb": size_mb,
            "packages": packages,
        }
        line = f"- {ref.arn} ({', '.join(ref.targets)}): {size_mb} MB unzipped, {len(packages)} package(s)"
        before = promoted.get(ref.variant)
        if before is not None and variant is not None:
            now = {str(p.get("name")): str(p.get("version")) for p in variant.packages}
            entry["changed_since_promoted"] = changes = package_changes(before, now)
            line += "; since the promoted version: " + (", ".join(changes) or "no package changed")
        versions.append(entry)
        lines.append(line)
    publish(
        settings,
        rollout.layer,
        "built",
        "info",
        f"layershift: {rollout.layer} built and published",
        "\n".join(lines),
        {"layer_versions": versions},
        rollout_id=rollout.rollout_id,
    )
