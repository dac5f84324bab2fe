"""boto3 clients shared by the domain modules.

Standard retry mode retries throttling and 5xx with backoff and jitter. Lambda's control plane
allows about 15 requests per second for the whole account, which a rollout across many functions
reaches: every Lambda request first takes a slot of the shared budget (``pacing``), and the Lambda
client retries a throttle that gets through anyway more patiently than the others. Every request is
counted (``usage``).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from botocore.config import Config

from .pacing import pace
from .usage import count_requests

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 6}, connect_timeout=5, read_timeout=60)
# A throttle is another deployer using the account's budget: wait it out (about 2.5 minutes at most).
_LAMBDA_CONFIG = Config(retries={"mode": "standard", "max_attempts": 12}, connect_timeout=5, read_timeout=60)


@cache
def client(service: str) -> Any:
    make: Any = boto3.client  # typed per service literal; the service here is a run-time name
    made = count_requests(make(service, config=_LAMBDA_CONFIG if service == "lambda" else _CONFIG))
    return pace(made) if service == "lambda" else made


def error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def guarded(revision_id: str | None) -> dict[str, str]:
    """`RevisionId=...` for a mutating Lambda call, when the revision is known."""
    return {"RevisionId": revision_id} if revision_id else {}
