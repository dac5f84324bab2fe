"""What a build staged, verified and copied into ``artifacts/`` before anything is published.

The build runs untrusted package code, so nothing it leaves in S3 is trusted. The build job writes
only ``staging/<build ARN>/`` (the build role's one writable prefix) and exports, through CodeBuild's
exported variables, the sha256 of its ``variants.json``; Step Functions carries that value from the
``codebuild:startBuild.sync`` result (``Build.ExportedEnvironmentVariables``) to PublishLayerVersion.
:func:`promote` then:

1. reads ``variants.json`` from the build's staging folder and checks its sha256 against the
   exported one;
2. checks every file it names (each variant's zip, manifest and SBOM) against the sha256 it lists,
   reading the object version it hashes;
3. copies exactly those object versions to ``artifacts/<layer>/<matrix key>/``, and ``variants.json``
   last.

Any mismatch raises :class:`~layershift_core.errors.StagedBuildRejected`, naming the object and both
hashes, before anything is copied or published.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .aws import client, error_code
from .errors import ArtifactMissing, StagedBuildRejected
from .observability import logger

STAGING_ROOT = "staging/"
VARIANTS_JSON = "variants.json"
VARIANTS_SHA256 = "LAYERSHIFT_VARIANTS_SHA256"
_CHUNK = 1024 * 1024
# <variant id>/<file>: the only paths a variants.json may name (they become keys under artifacts/).
_FILE_PATH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}/(layer\.zip|manifest\.json|sbom\.cdx\.json)$")


def staging_prefix(build_arn: str) -> str:
    """``staging/<build ARN>/``: the one prefix the build role may write (``${codebuild:buildArn}``)."""
    return f"{STAGING_ROOT}{build_arn}/"


class ExportedVariable(BaseModel):
    model_config = ConfigDict(extra="ignore")

    Name: str
    Value: str = ""


class BuildResult(BaseModel):
    """What BuildLayer keeps of the ``codebuild:startBuild.sync`` result (``$.matrix.codebuild``)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    arn: str
    status: str = ""
    exported: list[ExportedVariable] = Field(default_factory=list)

    def exported_value(self, name: str) -> str:
        return next((v.Value.strip() for v in self.exported if v.Name == name), "")

    @classmethod
    def of(cls, raw: object) -> BuildResult:
        """The build result BuildLayer recorded, or StagedBuildRejected when there is none to check against."""
        if not isinstance(raw, dict) or not raw.get("arn") or not raw.get("id"):
            raise StagedBuildRejected(
                "PublishLayerVersion has no build id and ARN from BuildLayer ($.matrix.codebuild), so it cannot "
                "find or verify what the build staged; nothing is published"
            )
        return cls.model_validate(raw)


class VariantTargetView(BaseModel):
    model_config = ConfigDict(extra="ignore")

    runtime: str
    architecture: str
    build_key: str


class VariantView(BaseModel):
    """The fields of one entry of the build job's variants.json that publishing needs."""

    model_config = ConfigDict(extra="ignore")

    id: str
    targets: list[VariantTargetView]
    compatible_runtimes: list[str]
    compatible_architectures: list[str]
    sha256: str
    unzipped_bytes: int
    packages: list[dict[str, Any]] = []
    manifest: str
    zip: str
    files: dict[str, str] = {}


class VariantIndexView(BaseModel):
    model_config = ConfigDict(extra="ignore")

    matrix_key: str
    variants: list[VariantView]


class StagedObject(BaseModel):
    """One object read from staging: its version (None where the bucket keeps none) and sha256."""

    key: str
    version_id: str | None
    sha256: str


def _read(bucket: str, key: str) -> tuple[bytes, str | None]:
    try:
        response = client("s3").get_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if error_code(exc) in {"404", "NoSuchKey", "NotFound"}:
            raise ArtifactMissing(f"the build left no {key} in {bucket}") from None
        raise
    return response["Body"].read(), _version(response)


def _version(response: dict[str, Any]) -> str | None:
    version = response.get("VersionId")
    return None if version in (None, "", "null") else str(version)


def _hash_object(bucket: str, key: str) -> StagedObject:
    """The sha256 of the object's current version, streamed, and that version's id."""
    try:
        response = client("s3").get_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if error_code(exc) in {"404", "NoSuchKey", "NotFound"}:
            raise StagedBuildRejected(f"s3://{bucket}/{key} is listed in variants.json but is not there") from None
        raise
    digest = hashlib.sha256()
    for chunk in response["Body"].iter_chunks(_CHUNK):
        digest.update(chunk)
    return StagedObject(key=key, version_id=_version(response), sha256=digest.hexdigest())


def _check_index(index: VariantIndexView, where: str) -> None:
    """Every variant names its zip and manifest with a hash, the zip's the one the variant records,
    and no path leaves the variant's own folder."""
    for variant in index.variants:
        for path in variant.files:
            if not _FILE_PATH.match(path) or not path.startswith(f"{variant.id}/"):
                raise StagedBuildRejected(f"{where} names {path!r} for variant {variant.id}, outside its folder")
        for path in (variant.zip, variant.manifest):
            if path not in variant.files:
                raise StagedBuildRejected(f"{where} gives no sha256 for {path} of variant {variant.id}")
        if variant.files[variant.zip] != variant.sha256:
            raise StagedBuildRejected(
                f"{where}: variant {variant.id} records zip sha256 {variant.sha256} "
                f"but lists {variant.files[variant.zip]}"
            )


def verify(bucket: str, build: BuildResult) -> tuple[VariantIndexView, bytes, list[StagedObject]]:
    """The build's staged index, its bytes and every file it names, each checked against its sha256."""
    prefix = staging_prefix(build.arn)
    expected = build.exported_value(VARIANTS_SHA256)
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise StagedBuildRejected(
            f"build {build.id} exported no sha256 of its {VARIANTS_JSON} ({VARIANTS_SHA256}={expected!r}); "
            "its staged output cannot be verified, so nothing is published"
        )
    where = f"s3://{bucket}/{prefix}{VARIANTS_JSON}"
    body, _version_id = _read(bucket, prefix + VARIANTS_JSON)
    found = hashlib.sha256(body).hexdigest()
    if found != expected:
        raise StagedBuildRejected(
            f"{where} has sha256 {found}, but build {build.id} exported {expected}: it was changed after the "
            "build, so nothing is published"
        )
    index = VariantIndexView.model_validate_json(body)
    _check_index(index, where)
    staged: list[StagedObject] = []
    for variant in index.variants:
        for path, sha256 in sorted(variant.files.items()):
            obj = _hash_object(bucket, prefix + path)
            if obj.sha256 != sha256:
                raise StagedBuildRejected(
                    f"s3://{bucket}/{obj.key} has sha256 {obj.sha256}, but {VARIANTS_JSON} of build {build.id} "
                    f"lists {sha256}: it was changed after the build, so nothing is published"
                )
            staged.append(obj)
    return index, body, staged


def promote(bucket: str, build: BuildResult, artifact_prefix: str) -> VariantIndexView:
    """Verify the build's staged output and copy exactly the verified object versions to ``artifact_prefix``."""
    index, body, staged = verify(bucket, build)
    s3 = client("s3")
    source_prefix = staging_prefix(build.arn)
    for obj in staged:
        source: dict[str, str] = {"Bucket": bucket, "Key": obj.key}
        if obj.version_id:
            source["VersionId"] = obj.version_id
        s3.copy_object(
            Bucket=bucket,
            Key=artifact_prefix + obj.key.removeprefix(source_prefix),
            CopySource=source,
        )
    s3.put_object(Bucket=bucket, Key=artifact_prefix + VARIANTS_JSON, Body=body, ContentType="application/json")
    logger.info(
        "staged build verified and copied",
        extra={"build": build.id, "files": len(staged), "to": artifact_prefix, "variants": len(index.variants)},
    )
    return index
