"""boto3 clients shared by the domain modules.

Standard retry mode retries throttling and 5xx with backoff and jitter. Lambda's control plane
allows about 15 requests per second for the whole account, which a rollout across many functions
reaches: every Lambda request first takes a slot of the shared budget (``pacing``), and the Lambda
client retries a throttle that gets through anyway more patiently than the others. Every request is
counted (``usage``).

The tasks that change functions (PrepareVersions, ShiftAliases, RestoreTargets) make their Lambda
calls as the tenant role (``tenant_lambda``), in a session tagged with the rollout's layer: IAM lets
that session change only the functions whose ``layershift:layer`` tag names the layer, whatever the
plan it is handed says.
"""

from __future__ import annotations

import time
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


# The session tag the tenant role's policy compares with each function's `layershift:layer` tag.
TENANT_TAG = "layershift:layer"
# A task runs at most 900 s, the shortest session STS grants; a session is renewed this long before it ends.
_TENANT_SESSION_SECONDS = 900
_RENEW_BEFORE_SECONDS = 300
_tenant_clients: dict[tuple[str, str], tuple[float, Any]] = {}


def tenant_lambda(role_arn: str | None, layer: str) -> Any:
    """The Lambda client that changes the functions of a rollout of ``layer``: paced and counted like
    ``client("lambda")``, with the credentials of ``role_arn`` assumed in a session tagged
    ``layershift:layer=<layer>``. Without a role (outside the template) the function's own credentials
    are used; in the template the function's own role cannot change any function."""
    if not role_arn:
        return client("lambda")
    held = _tenant_clients.get((role_arn, layer))
    if held is not None and held[0] - time.time() > _RENEW_BEFORE_SECONDS:
        return held[1]
    credentials = client("sts").assume_role(
        RoleArn=role_arn,
        RoleSessionName=f"layershift-{layer}"[:64],
        DurationSeconds=_TENANT_SESSION_SECONDS,
        Tags=[{"Key": TENANT_TAG, "Value": layer}],
    )["Credentials"]
    make: Any = boto3.client
    made = make(
        "lambda",
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
        config=_LAMBDA_CONFIG,
    )
    tenant = pace(count_requests(made))
    _tenant_clients[(role_arn, layer)] = (credentials["Expiration"].timestamp(), tenant)
    return tenant


def error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def guarded(revision_id: str | None) -> dict[str, str]:
    """`RevisionId=...` for a mutating Lambda call, when the revision is known."""
    return {"RevisionId": revision_id} if revision_id else {}
