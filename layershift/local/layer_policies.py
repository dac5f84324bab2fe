"""Layer version permissions, as Lambda checks and stores them.

moto accepts any AddLayerVersionPermission and keeps the request's fields as they came: an account
principal stays ``"111122223333"``, an organization stays an ``OrganizationId`` key, and a second
statement with the same id is appended beside the first. Lambda checks each request and stores the
policy in IAM's own shape, which is what GetLayerVersionPolicy returns and what layershift reads:

- ``Principal`` is an account id, an account's root ARN, or ``*``; ``Action`` is
  ``lambda:GetLayerVersion``; ``StatementId`` is letters, digits, ``-`` and ``_``;
- an ``OrganizationId`` (``o-`` and 10-32 lower-case letters or digits) goes with principal ``*`` only,
  and is stored as the condition ``StringEquals aws:PrincipalOrgID``;
- an account principal is stored as ``{"AWS": "arn:aws:iam::<id>:root"}``;
- a statement id already in the policy is a ResourceConflictException.

Nothing here makes another account able to read a layer: the local AWS has one account, and no
request is evaluated against these policies.
"""

from __future__ import annotations

import json
import re
from typing import Any

from moto.awslambda import models
from moto.awslambda.exceptions import InvalidParameterValueException, LambdaClientError, ValidationException

_PRINCIPAL = re.compile(r"^(\d{12}|\*|arn:aws[a-zA-Z-]*:iam::\d{12}:root)$")
_ORGANIZATION = re.compile(r"^o-[a-z0-9]{10,32}$")
_STATEMENT_ID = re.compile(r"^[a-zA-Z0-9_-]{1,100}$")
_ACTION = "lambda:GetLayerVersion"
_originals: dict[str, Any] = {}


class _Conflict(LambdaClientError):
    code = 409

    def __init__(self, message: str) -> None:
        super().__init__("ResourceConflictException", message)


def _check(request: dict[str, Any], existing: list[dict[str, Any]]) -> None:
    sid, principal = str(request.get("StatementId", "")), str(request.get("Principal", ""))
    action, organization = str(request.get("Action", "")), request.get("OrganizationId")
    if not _STATEMENT_ID.match(sid):
        raise ValidationException(
            sid, "statementId", r"Member must satisfy regular expression pattern: ([a-zA-Z0-9-_]+)"
        )
    if action != _ACTION:
        raise ValidationException(
            action, "action", "Member must satisfy regular expression pattern: lambda:GetLayerVersion"
        )
    if not _PRINCIPAL.match(principal):
        raise ValidationException(
            principal,
            "principal",
            r"Member must satisfy regular expression pattern: \d{12}|\*|arn:(aws[a-zA-Z-]*):iam::\d{12}:root",
        )
    if organization is not None:
        if not _ORGANIZATION.match(str(organization)):
            raise ValidationException(
                str(organization), "organizationId", "Member must satisfy regular expression pattern: o-[a-z0-9]{10,32}"
            )
        if principal != "*":
            raise InvalidParameterValueException("OrganizationId can only be used with the principal *")
    if any(statement.get("Sid") == sid for statement in existing):
        raise _Conflict(
            f"The statement id ({sid}) provided already exists. Please provide a new statement id, or remove the "
            "existing statement."
        )


def _as_lambda_stores_it(statement: dict[str, Any]) -> None:
    principal = str(statement.get("Principal", ""))
    if principal.isdigit():
        statement["Principal"] = {"AWS": f"arn:aws:iam::{principal}:root"}
    elif principal.startswith("arn:"):
        statement["Principal"] = {"AWS": principal}
    organization = statement.pop("OrganizationId", None)
    if organization:
        statement["Condition"] = {"StringEquals": {"aws:PrincipalOrgID": organization}}


def _add_layer_version_permission(self: Any, layer_name: str, version_number: int, statement: str) -> Any:
    layer_version = self.get_layer_version(layer_name, str(version_number))
    _check(json.loads(statement or "{}"), layer_version.policy.statements)
    added, revision = _originals["add_layer_version_permission"](self, layer_name, version_number, statement)
    _as_lambda_stores_it(added)  # the policy holds this very dict
    return added, revision


_PATCHES = {"add_layer_version_permission": (models.LambdaBackend, _add_layer_version_permission)}


def install() -> None:
    if _originals:
        return
    for name, (owner, replacement) in _PATCHES.items():
        _originals[name] = getattr(owner, name)
        setattr(owner, name, replacement)


def uninstall() -> None:
    for name, (owner, _) in _PATCHES.items():
        if name in _originals:
            setattr(owner, name, _originals.pop(name))
