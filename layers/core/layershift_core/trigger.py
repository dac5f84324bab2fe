"""From a pushed requirements file to one execution of the rollout workflow.

The execution name is the layer name plus a hash of the pushed bytes, so a duplicated S3 event,
or the same content pushed again, starts nothing new. A deliberate retry of the same bytes
(`layershift retry`) uploads them again with an attempt number in the object's metadata, which goes
into the hash: the retry gets a name of its own, and a duplicated event of that upload still carries
the same attempt, so it still starts nothing new.

Who pushed is recorded from the object's metadata (`layershift-pushed-by`, which `layershift push`
sets to the caller's IAM identity), else from the event's `requester` (the account or AWS service
that made the request, as S3 reports it).

A CodeCommit push takes the same road: each changed `layers/<name>/` folder's requirements.txt
(and layer.toml) is copied from the pushed commit into the artifact bucket, tagged with the commit
id, and that upload starts the rollout like any other push.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .artifacts import head_if_present, read_bytes
from .aws import client
from .models import RolloutRequest, RolloutState
from .observability import logger

_KEY = re.compile(r"^layers/(?P<layer>[^/]+)/requirements\.txt$")
_SPEC_PATH = re.compile(r"^layers/(?P<layer>[^/]+)/(requirements\.txt|layer\.toml)$")
SOURCE_METADATA = "layershift-source"
COMMIT_METADATA = "layershift-commit"
# The S3 version of the layer.toml that belongs to this requirements.txt (a CodeCommit push records
# the one its own commit mirrored, or NO_CONFIG), so a newer push cannot swap it before it is read.
CONFIG_VERSION_METADATA = "layershift-config-version"
NO_CONFIG = "none"
PUSHED_BY_METADATA = "layershift-pushed-by"
ATTEMPT_METADATA = "layershift-attempt"
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class S3Object(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    key: str
    version_id: str | None = Field(default=None, alias="version-id")


class S3Bucket(BaseModel):
    name: str


class ObjectCreatedDetail(BaseModel):
    bucket: S3Bucket
    object: S3Object
    requester: str | None = None


class ObjectCreatedEvent(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    detail_type: str = Field(alias="detail-type")
    detail: ObjectCreatedDetail


class StartResult(BaseModel):
    started: bool
    execution_name: str | None = None
    execution_arn: str | None = None
    reason: str | None = None


def execution_name(layer: str, requirements: bytes, config: bytes | None, attempt: int = 0) -> str:
    """The layer plus a hash of the pushed bytes and, for a retry, its attempt number (attempt 0,
    a plain push, hashes as it always did)."""
    marker = f"\0attempt={attempt}".encode() if attempt else b""
    digest = hashlib.sha256(requirements + b"\0" + (config or b"") + marker).hexdigest()
    safe = _NAME_UNSAFE.sub("_", layer)[:64]
    return f"{safe}-{digest[: 79 - len(safe)][:15]}"


def attempt_of(metadata: dict[str, str]) -> int:
    """The retry attempt an upload's metadata names (0: a plain push)."""
    value = metadata.get(ATTEMPT_METADATA, "")
    return int(value) if value.isdigit() else 0


def request_for_push(
    bucket: str, key: str, version_id: str | None, requester: str | None = None
) -> tuple[RolloutRequest, bytes, bytes | None]:
    match = _KEY.match(key)
    if not match:
        raise ValueError(f"{key!r} is not a layers/<layer>/requirements.txt key")
    layer = match["layer"]
    config_key = f"layers/{layer}/layer.toml"
    requirements = read_bytes(bucket, key, version_id)
    head = client("s3").head_object(Bucket=bucket, Key=key, **({"VersionId": version_id} if version_id else {}))
    metadata = head.get("Metadata", {})
    config, config_version = _pushed_config(bucket, config_key, metadata.get(CONFIG_VERSION_METADATA))
    request = RolloutRequest(
        layer=layer,
        bucket=bucket,
        requirements_key=key,
        requirements_version=version_id,
        config_key=config_key if config is not None else None,
        config_version=config_version,
        source="codecommit" if metadata.get(SOURCE_METADATA) == "codecommit" else "s3",
        commit_id=metadata.get(COMMIT_METADATA),
        pushed_by=metadata.get(PUSHED_BY_METADATA) or requester,
        attempt=attempt_of(metadata),
    )
    return request, requirements, config


def _pushed_config(bucket: str, config_key: str, pinned: str | None) -> tuple[bytes | None, str | None]:
    """The layer.toml of this push and its version: the one the push recorded, else the current one."""
    if pinned == NO_CONFIG:
        return None, None
    if pinned:
        return read_bytes(bucket, config_key, pinned), pinned
    head = head_if_present(bucket, config_key)
    if head is None:
        return None, None
    version = head.get("VersionId")
    return read_bytes(bucket, config_key, version), version


def start_rollout(event: dict[str, Any], state_machine_arn: str) -> StartResult:
    parsed = ObjectCreatedEvent.model_validate(event)
    key = parsed.detail.object.key
    if not _KEY.match(key):
        return StartResult(started=False, reason=f"{key!r} is not a layers/<layer>/requirements.txt push")
    detail = parsed.detail
    bucket, version_id = detail.bucket.name, detail.object.version_id
    request, requirements, config = request_for_push(bucket, key, version_id, detail.requester)
    name = execution_name(request.layer, requirements, config, request.attempt)
    payload = RolloutState(request=request).model_dump(mode="json", exclude_none=True)
    sfn = client("stepfunctions")
    arn = state_machine_arn.replace(":stateMachine:", ":execution:") + f":{name}"
    duplicate = StartResult(
        started=False, execution_name=name, execution_arn=arn, reason="an execution for this exact content exists"
    )
    try:
        sfn.describe_execution(executionArn=arn)
        logger.info("duplicate push: execution already exists", extra={"execution_name": name})
        return duplicate
    except sfn.exceptions.ExecutionDoesNotExist:
        pass
    try:
        # StartExecution is itself idempotent for a running execution of the same name and input,
        # so two deliveries racing past the check above still start one execution.
        response = sfn.start_execution(stateMachineArn=state_machine_arn, name=name, input=json.dumps(payload))
    except sfn.exceptions.ExecutionAlreadyExists:
        return duplicate
    logger.info("rollout started", extra={"execution_name": name, "layer": request.layer})
    return StartResult(started=True, execution_name=name, execution_arn=response["executionArn"])


class CodeCommitDetail(BaseModel):
    repositoryName: str
    referenceName: str
    commitId: str
    oldCommitId: str | None = None


class CodeCommitEvent(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    detail_type: str = Field(alias="detail-type")
    detail: CodeCommitDetail


def _commit_file(repository: str, commit_id: str, path: str) -> bytes | None:
    codecommit = client("codecommit")
    try:
        return codecommit.get_file(repositoryName=repository, commitSpecifier=commit_id, filePath=path)["fileContent"]
    except codecommit.exceptions.FileDoesNotExistException:
        return None


def changed_layers(repository: str, commit_id: str, old_commit_id: str | None) -> list[str]:
    """The layers whose requirements.txt or layer.toml the push changed."""
    kwargs = {"repositoryName": repository, "afterCommitSpecifier": commit_id}
    if old_commit_id and set(old_commit_id) != {"0"}:
        kwargs["beforeCommitSpecifier"] = old_commit_id
    layers: set[str] = set()
    for page in client("codecommit").get_paginator("get_differences").paginate(**kwargs):
        for difference in page.get("differences", []):
            for side in ("afterBlob", "beforeBlob"):
                path = (difference.get(side) or {}).get("path", "")
                if match := _SPEC_PATH.match(path):
                    layers.add(match["layer"])
    return sorted(layers)


def mirror_codecommit_push(event: dict[str, Any], bucket: str, branch: str) -> list[str]:
    """Copy each changed layer spec of the pushed commit into the bucket; the uploads start the rollouts."""
    detail = CodeCommitEvent.model_validate(event).detail
    if detail.referenceName != branch:
        logger.info("push to another branch ignored", extra={"branch": detail.referenceName})
        return []
    s3 = client("s3")
    mirrored: list[str] = []
    for layer in changed_layers(detail.repositoryName, detail.commitId, detail.oldCommitId):
        requirements = _commit_file(detail.repositoryName, detail.commitId, f"layers/{layer}/requirements.txt")
        if requirements is None:
            logger.warning("layer folder without requirements.txt ignored", extra={"layer": layer})
            continue
        config = _commit_file(detail.repositoryName, detail.commitId, f"layers/{layer}/layer.toml")
        if config is None:
            s3.delete_object(Bucket=bucket, Key=f"layers/{layer}/layer.toml")
            config_version = NO_CONFIG
        else:
            written = s3.put_object(Bucket=bucket, Key=f"layers/{layer}/layer.toml", Body=config)
            config_version = written.get("VersionId") or ""
        s3.put_object(
            Bucket=bucket,
            Key=f"layers/{layer}/requirements.txt",
            Body=requirements,
            Metadata={
                SOURCE_METADATA: "codecommit",
                COMMIT_METADATA: detail.commitId,
                CONFIG_VERSION_METADATA: config_version,
            },
        )
        mirrored.append(layer)
    logger.info("codecommit push mirrored", extra={"commit": detail.commitId, "layers": mirrored})
    return mirrored
