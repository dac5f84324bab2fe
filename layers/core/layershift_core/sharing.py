"""ShareLayerVersions: every version of a layer carries exactly the grants of layer.toml's [share].

A layer version's resource policy is the only thing that lets another account use it
(``lambda:GetLayerVersion``). Lambda takes three kinds of grant for a layer version: an account, every
account of an AWS Organizations organization (principal ``*`` with an OrganizationId), and every AWS
account (principal ``*`` alone). There is no organizational-unit grant for layers.

Each grant layershift makes has a statement id derived from what it grants (``layershift-account-<id>``,
``layershift-organization-<o-id>``, ``layershift-public``), so a version's policy can be compared with the
spec statement by statement. ``reconcile`` adds what is missing and removes every other statement, one
added by hand included: the spec is the whole truth about who may use the layer. It grants before it
revokes, so an account that keeps its grant never loses access on the way.

Every rollout reconciles every version of the layer that still exists, whether it built, reused,
promotes or rolls back, with the spec it validated: a change to [share] reaches the old versions too,
and a version made public by hand is made private again at the next rollout.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

from .aborts import ensure_rollout_not_aborted
from .aws import client, error_code
from .errors import LayerShareFailed
from .models import RolloutState, ShareSpec, ShareSummary
from .observability import logger
from .settings import Settings

ACTION = "lambda:GetLayerVersion"
EVERY_ACCOUNT = "*"
SID_PREFIX = "layershift-"


class Grant(BaseModel):
    """One statement of a layer version's policy, as Lambda grants it."""

    model_config = ConfigDict(frozen=True)

    sid: str = Field(description="the statement id: what RemoveLayerVersionPermission names")
    principal: str = Field(description='an account id, or "*": every account (of the organization, when one is set)')
    organization_id: str | None = Field(default=None, description="the aws:PrincipalOrgID condition, if any")
    action: str = ACTION

    @property
    def public(self) -> bool:
        return self.principal == EVERY_ACCOUNT and self.organization_id is None

    def describe(self) -> str:
        if self.organization_id:
            return f"organization {self.organization_id}"
        if self.public:
            return "every AWS account (public)"
        return f"account {self.principal}"


class VersionChange(BaseModel):
    """What ``reconcile`` changed on one layer version."""

    version: int
    added: list[str] = Field(default_factory=list, description="statement ids granted")
    removed: list[str] = Field(default_factory=list, description="statement ids revoked")
    gone: bool = Field(default=False, description="the version was deleted meanwhile: it needs no grant")


def desired_grants(share: ShareSpec, *, allow_public: bool) -> list[Grant]:
    """The grants of a [share] spec, in a stable order; a public grant only where the template allows it."""
    grants = [Grant(sid=f"{SID_PREFIX}account-{account}", principal=account) for account in share.accounts]
    if share.organization:
        grants.append(
            Grant(
                sid=f"{SID_PREFIX}organization-{share.organization}",
                principal=EVERY_ACCOUNT,
                organization_id=share.organization,
            )
        )
    if share.public:
        if not allow_public:
            raise LayerShareFailed(
                'share.public is true, but the template parameter AllowPublicLayers is "false": no layer version '
                "is made public"
            )
        grants.append(Grant(sid=f"{SID_PREFIX}public", principal=EVERY_ACCOUNT))
    return grants


def _principal(value: Any) -> str:
    """An account id from ``{"AWS": "arn:aws:iam::111122223333:root"}``, ``"111122223333"`` or an
    account's ARN; ``"*"`` as such. Anything else is kept as given (it matches no grant of a spec)."""
    if isinstance(value, dict):
        value = value.get("AWS", json.dumps(value, sort_keys=True))
    if isinstance(value, list):
        value = ",".join(sorted(str(v) for v in value))
    text = str(value)
    if text.startswith("arn:") and text.endswith(":root"):
        return text.split(":")[4]
    return text


def _organization(statement: dict[str, Any]) -> str | None:
    """The organization a statement is limited to: its aws:PrincipalOrgID condition (as Lambda returns
    it), or the OrganizationId it was added with (as the local emulation keeps it)."""
    equals = (statement.get("Condition") or {}).get("StringEquals") or {}
    found = equals.get("aws:PrincipalOrgID") or statement.get("OrganizationId")
    return str(found) if found else None


def grants_of_policy(policy: dict[str, Any]) -> list[Grant]:
    """Every statement of a layer version's policy document, as a grant."""
    statements = policy.get("Statement") or []
    if isinstance(statements, dict):
        statements = [statements]
    grants = []
    for statement in statements:
        action = statement.get("Action", "")
        grants.append(
            Grant(
                sid=str(statement.get("Sid", "")),
                principal=_principal(statement.get("Principal", "")),
                organization_id=_organization(statement),
                action=action if isinstance(action, str) else ",".join(sorted(action)),
            )
        )
    return grants


def current_grants(layer_name: str, version: int) -> list[Grant]:
    """The grants a layer version carries now (GetLayerVersionPolicy; no policy: none).

    ``layer_name`` is the Lambda layer name (this stack's prefix included) or the layer's ARN. Lambda
    answers ResourceNotFoundException both when the version has no policy and when it does not exist:
    either way it grants nothing."""
    lam = client("lambda")
    try:
        answer = lam.get_layer_version_policy(LayerName=layer_name, VersionNumber=version)
    except lam.exceptions.ResourceNotFoundException:
        return []
    return grants_of_policy(json.loads(answer["Policy"]))


def _failure(what: str, exc: ClientError) -> LayerShareFailed:
    message = (exc.response.get("Error") or {}).get("Message", str(exc))
    return LayerShareFailed(f"could not {what}: {error_code(exc)}: {message}")


def _on(grant: Grant, layer_name: str, version: int) -> str:
    return f"{grant.describe()} (statement {grant.sid}) on layer {layer_name} version {version}"


def _add(layer_name: str, version: int, grant: Grant) -> bool:
    """AddLayerVersionPermission; False when the version no longer exists."""
    kwargs: dict[str, Any] = {
        "LayerName": layer_name,
        "VersionNumber": version,
        "StatementId": grant.sid,
        "Action": grant.action,
        "Principal": grant.principal,
    }
    if grant.organization_id:
        kwargs["OrganizationId"] = grant.organization_id
    try:
        client("lambda").add_layer_version_permission(**kwargs)
    except ClientError as exc:
        if error_code(exc) == "ResourceNotFoundException":
            return False  # deleted since it was listed: a version that is gone needs no grant
        raise _failure(f"grant {_on(grant, layer_name, version)}", exc) from None
    return True


def _remove(layer_name: str, version: int, grant: Grant) -> None:
    try:
        client("lambda").remove_layer_version_permission(
            LayerName=layer_name, VersionNumber=version, StatementId=grant.sid
        )
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":  # already gone, or the version is
            raise _failure(f"revoke {_on(grant, layer_name, version)}", exc) from None


def reconcile(layer_name: str, version: int, desired: list[Grant]) -> VersionChange:
    """Make the version's grants exactly ``desired``: add the missing, then remove every other statement
    (a statement whose id a desired grant uses, but which grants something else, is replaced after that)."""
    try:
        current = current_grants(layer_name, version)
    except ClientError as exc:
        raise _failure(f"read the grants of layer {layer_name} version {version}", exc) from None
    wanted, present = set(desired), set(current)
    stale = [grant for grant in current if grant not in wanted]
    held = {grant.sid for grant in current}
    missing = [grant for grant in dict.fromkeys(desired) if grant not in present]
    change = VersionChange(version=version)
    for grant in [g for g in missing if g.sid not in held]:
        if not _add(layer_name, version, grant):
            return VersionChange(version=version, gone=True)
        change.added.append(grant.sid)
    for grant in stale:
        _remove(layer_name, version, grant)
        change.removed.append(grant.sid)
    for grant in [g for g in missing if g.sid in held]:
        if not _add(layer_name, version, grant):
            return VersionChange(version=version, gone=True)
        change.added.append(grant.sid)
    return change


def layer_versions(layer_name: str) -> list[int]:
    """Every version of the layer that exists, newest first (ListLayerVersions, every page)."""
    paginator = client("lambda").get_paginator("list_layer_versions")
    return [
        int(entry["Version"]) for page in paginator.paginate(LayerName=layer_name) for entry in page["LayerVersions"]
    ]


def reconcile_layer(layer_name: str, desired: list[Grant]) -> list[VersionChange]:
    """``reconcile`` every version of the layer: each one carries exactly ``desired`` afterwards."""
    try:
        versions = layer_versions(layer_name)
    except ClientError as exc:
        raise _failure(f"list the versions of layer {layer_name}", exc) from None
    changes = []
    for version in versions:
        change = reconcile(layer_name, version, desired)
        if change.added or change.removed:
            logger.info(
                "layer version grants reconciled",
                extra={"layer": layer_name, "version": version, "added": change.added, "removed": change.removed},
            )
        changes.append(change)
    return changes


def share_layer_versions(state: RolloutState, settings: Settings) -> RolloutState:
    """ShareLayerVersions: every version of the rollout's layer carries exactly its [share] grants."""
    ensure_rollout_not_aborted(state, settings)
    if state.rollout is None:
        raise ValueError("sharing needs a validated rollout")
    desired = desired_grants(state.rollout.spec.share, allow_public=settings.allow_public_layers)
    changes = reconcile_layer(settings.published_name(state.rollout.layer), desired)
    present = [change for change in changes if not change.gone]
    state.sharing = ShareSummary(
        layer_versions=len(present),
        grants=len(desired),
        added=sum(len(change.added) for change in present),
        removed=sum(len(change.removed) for change in present),
    )
    return state
