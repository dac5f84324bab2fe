"""boto3 clients shared by the domain modules.

Standard retry mode retries throttling and 5xx with backoff and jitter; Lambda's control plane
allows about 15 requests per second, which a rollout across many functions can reach.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from botocore.config import Config

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 6}, connect_timeout=5, read_timeout=60)


@cache
def client(service: str) -> Any:
    return boto3.client(service, config=_CONFIG)


def error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def guarded(revision_id: str | None) -> dict[str, str]:
    """`RevisionId=...` for a mutating Lambda call, when the revision is known."""
    return {"RevisionId": revision_id} if revision_id else {}
