"""The artifact bucket: pushed specs, per-rollout records, and build outputs."""

from __future__ import annotations

import json
from typing import Any

from .aws import client


def rollout_prefix(layer: str, rollout_id: str) -> str:
    return f"rollouts/{layer}/{rollout_id}/"


def artifact_prefix(layer: str, build_key: str) -> str:
    return f"artifacts/{layer}/{build_key}/"


def read_bytes(bucket: str, key: str, version_id: str | None = None) -> bytes:
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if version_id:
        kwargs["VersionId"] = version_id
    return client("s3").get_object(**kwargs)["Body"].read()


def head_if_present(bucket: str, key: str) -> dict[str, Any] | None:
    """The current version's HeadObject answer, or None when there is no object at ``key``.

    Asked first by listing the key itself as a prefix: S3 tells a missing key (404) from a denied one
    (403) only to a caller allowed to list the bucket, and the control plane may list only the
    prefixes it reads (an ``s3:prefix`` condition), which a HeadObject does not carry."""
    s3 = client("s3")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("Contents", [])
    if not listed or listed[0]["Key"] != key:
        return None
    return dict(s3.head_object(Bucket=bucket, Key=key))


def write_bytes(bucket: str, key: str, body: bytes, content_type: str = "application/octet-stream") -> str | None:
    response = client("s3").put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
    return response.get("VersionId")


def read_json(bucket: str, key: str) -> Any:
    return json.loads(read_bytes(bucket, key))


def write_json(bucket: str, key: str, value: Any) -> str | None:
    body = json.dumps(value, indent=2, sort_keys=True, default=str).encode()
    return write_bytes(bucket, key, body, "application/json")
