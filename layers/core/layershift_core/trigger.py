"""From a pushed requirements file to one execution of the rollout workflow.

The execution name is the layer name plus a hash of the pushed bytes, so a duplicated S3 event,
or the same content pushed again, starts nothing new.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .artifacts import read_bytes
from .aws import client, error_code
from .models import RolloutRequest, RolloutState
from .observability import logger

_KEY = re.compile(r"^layers/(?P<layer>[^/]+)/requirements\.txt$")
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


class ObjectCreatedEvent(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    detail_type: str = Field(alias="detail-type")
    detail: ObjectCreatedDetail


class StartResult(BaseModel):
    started: bool
    execution_name: str | None = None
    execution_arn: str | None = None
    reason: str | None = None


def execution_name(layer: str, requirements: bytes, config: bytes | None) -> str:
    digest = hashlib.sha256(requirements + b"\0" + (config or b"")).hexdigest()
    safe = _NAME_UNSAFE.sub("_", layer)[:64]
    return f"{safe}-{digest[: 79 - len(safe)][:15]}"


def request_for_push(bucket: str, key: str, version_id: str | None) -> tuple[RolloutRequest, bytes, bytes | None]:
    match = _KEY.match(key)
    if not match:
        raise ValueError(f"{key!r} is not a layers/<layer>/requirements.txt key")
    layer = match["layer"]
    config_key = f"layers/{layer}/layer.toml"
    config: bytes | None = None
    config_version: str | None = None
    try:
        head = client("s3").head_object(Bucket=bucket, Key=config_key)
        config_version = head.get("VersionId")
        config = read_bytes(bucket, config_key, config_version)
    except Exception as exc:
        if error_code(exc) not in {"404", "NoSuchKey", "NotFound"}:
            raise
    requirements = read_bytes(bucket, key, version_id)
    request = RolloutRequest(
        layer=layer,
        bucket=bucket,
        requirements_key=key,
        requirements_version=version_id,
        config_key=config_key if config is not None else None,
        config_version=config_version,
        source="s3",
    )
    return request, requirements, config


def start_rollout(event: dict[str, Any], state_machine_arn: str) -> StartResult:
    parsed = ObjectCreatedEvent.model_validate(event)
    key = parsed.detail.object.key
    if not _KEY.match(key):
        return StartResult(started=False, reason=f"{key!r} is not a layers/<layer>/requirements.txt push")
    request, requirements, config = request_for_push(parsed.detail.bucket.name, key, parsed.detail.object.version_id)
    name = execution_name(request.layer, requirements, config)
    payload = RolloutState(request=request).model_dump(mode="json", exclude_none=True)
    sfn = client("stepfunctions")
    try:
        response = sfn.start_execution(stateMachineArn=state_machine_arn, name=name, input=json.dumps(payload))
    except sfn.exceptions.ExecutionAlreadyExists:
        logger.info("duplicate push: execution already exists", extra={"execution_name": name})
        return StartResult(started=False, execution_name=name, reason="an execution for this exact content exists")
    logger.info("rollout started", extra={"execution_name": name, "layer": request.layer})
    return StartResult(started=True, execution_name=name, execution_arn=response["executionArn"])
