"""[share]: what layer.toml may ask for, and reconciling a layer's versions to exactly those grants (moto)."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from layershift_core import aws
from layershift_core.errors import InvalidLayerSpec, LayerShareFailed, LockLost
from layershift_core.models import LayerSpec, RolloutRequest, RolloutState, ShareSpec, ValidatedRollout
from layershift_core.registry import Registry
from layershift_core.settings import Settings
from layershift_core.sharing import (
    Grant,
    current_grants,
    desired_grants,
    grants_of_policy,
    reconcile,
    reconcile_layer,
    share_layer_versions,
)
from layershift_core.spec import SpecDefaults, parse_layer_spec

from .registry_table import create_registry_table

OWN = "123456789012"  # moto's account: the control plane's own
A, B, C = "111122223333", "444455556666", "777788889999"
ORG = "o-a1b2c3d4e5"
DEFAULTS = SpecDefaults(own_account=OWN)


def _share(text: str, defaults: SpecDefaults = DEFAULTS) -> ShareSpec:
    return parse_layer_spec(f"[share]\n{text}\n".encode(), defaults).share


# --- layer.toml ---------------------------------------------------------------------------------


def test_no_share_section_shares_with_nobody() -> None:
    assert parse_layer_spec(None, DEFAULTS).share == ShareSpec()
    assert desired_grants(ShareSpec(), allow_public=True) == []


def test_accounts_and_organization_are_kept_in_order_without_repeats() -> None:
    share = _share(f'accounts = ["{B}", "{A}", "{B}"]\norganization = "{ORG}"')
    assert (share.accounts, share.organization, share.public) == ([B, A], ORG, False)


def test_this_account_needs_no_grant_and_is_left_out() -> None:
    """The control plane's own account uses its layers without a grant: listing it changes nothing."""
    assert _share(f'accounts = ["{OWN}", "{A}"]').accounts == [A]
    assert _share(f'accounts = ["{OWN}"]').accounts == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'accounts = ["111122223333", "1234"]',
            "layer.toml: share.accounts[1]: an AWS account id is 12 digits, as a string",
        ),
        ("accounts = [111122223333]", "layer.toml: share.accounts[0]: Input should be a valid string"),
        ('accounts = "111122223333"', "layer.toml: share.accounts: should be an array"),
        ('organization = "o-short"', 'layer.toml: share.organization: an AWS Organizations id is "o-" and 10 to 32'),
        ('organization = "O-A1B2C3D4E5"', "layer.toml: share.organization: an AWS Organizations id"),
        ('organization = "r-a1b2"', "(got 'r-a1b2')"),
        ('public = "yes"', "layer.toml: share.public: should be true or false"),
        ('principals = ["*"]', "layer.toml: share.principals: is not a known key"),
        (
            'organizational_units = ["ou-a1b2-c3d4e5f6"]',
            "layer.toml: share.organizational_units: Lambda layer permissions cannot be scoped to an organizational "
            "unit (AddLayerVersionPermission takes an account or an organization id only); share with the whole "
            "organization (share.organization) or list the accounts (share.accounts)",
        ),
        (
            "public = true",
            "layer.toml: share.public: true would let every AWS account use the layer, and this control plane does "
            'not allow public layer versions (template parameter AllowPublicLayers is "false")',
        ),
        (
            "accounts = [" + ", ".join(f'"{n:012d}"' for n in range(1, 52)) + "]",
            "layer.toml: share.accounts: 51 accounts, more than the 50 a layer version's policy holds; share with "
            "their organization (share.organization) instead",
        ),
    ],
)
def test_what_lambda_cannot_or_may_not_grant_is_refused_with_a_precise_message(text: str, message: str) -> None:
    with pytest.raises(InvalidLayerSpec) as caught:
        _share(text)
    assert message in str(caught.value)


def test_public_is_allowed_only_where_the_template_parameter_allows_it() -> None:
    allowed = SpecDefaults(own_account=OWN, allow_public=True)
    assert _share("public = true", allowed).public is True
    assert Settings(bucket="bkt", table="tbl").spec_defaults.allow_public is False
    assert Settings(bucket="bkt", table="tbl", allow_public_layers=True).spec_defaults.allow_public is True


def test_the_settings_know_this_account_from_the_template() -> None:
    settings = Settings(bucket="bkt", table="tbl", own_lambda_arn=f"arn:aws:lambda:us-east-1:{OWN}")
    assert settings.spec_defaults.own_account == OWN
    assert Settings(bucket="bkt", table="tbl").spec_defaults.own_account == ""


# --- the grants of a spec, and of a policy ----------------------------------------------------------


def test_each_grant_has_a_statement_id_named_after_what_it_grants() -> None:
    grants = desired_grants(ShareSpec(accounts=[A, B], organization=ORG, public=True), allow_public=True)
    assert [(g.sid, g.principal, g.organization_id, g.action) for g in grants] == [
        (f"layershift-account-{A}", A, None, "lambda:GetLayerVersion"),
        (f"layershift-account-{B}", B, None, "lambda:GetLayerVersion"),
        (f"layershift-organization-{ORG}", "*", ORG, "lambda:GetLayerVersion"),
        ("layershift-public", "*", None, "lambda:GetLayerVersion"),
    ]


def test_a_public_spec_is_not_granted_where_the_template_forbids_it() -> None:
    with pytest.raises(LayerShareFailed, match="AllowPublicLayers"):
        desired_grants(ShareSpec(public=True), allow_public=False)


def test_a_policy_as_lambda_returns_it_reads_as_grants() -> None:
    """The shape GetLayerVersionPolicy returns on AWS: an account as its root ARN, an organization as a condition."""
    arn = "arn:aws:lambda:us-east-1:123456789012:layer:team-x:3"
    policy = {
        "Version": "2012-10-17",
        "Id": "default",
        "Statement": [
            {
                "Sid": f"layershift-account-{A}",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{A}:root"},
                "Action": "lambda:GetLayerVersion",
                "Resource": arn,
            },
            {
                "Sid": f"layershift-organization-{ORG}",
                "Effect": "Allow",
                "Principal": "*",
                "Action": "lambda:GetLayerVersion",
                "Resource": arn,
                "Condition": {"StringEquals": {"aws:PrincipalOrgID": ORG}},
            },
            {
                "Sid": "by-hand",
                "Effect": "Allow",
                "Principal": "*",
                "Action": "lambda:GetLayerVersion",
                "Resource": arn,
            },
        ],
    }
    assert grants_of_policy(policy) == [
        *desired_grants(ShareSpec(accounts=[A], organization=ORG), allow_public=False),
        Grant(sid="by-hand", principal="*"),
    ]
    assert grants_of_policy(policy)[2].public


# --- reconcile on moto ----------------------------------------------------------------------------

LAYER = "team-shared"
SETTINGS = Settings(
    bucket="bkt", table="registry", layer_name_prefix="team-", own_lambda_arn=f"arn:aws:lambda:us-east-1:{OWN}"
)


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("python/shared.py", "")
    return buffer.getvalue()


@pytest.fixture
def lam() -> Iterator[object]:
    with mock_aws():
        aws.client.cache_clear()
        client = boto3.client("lambda")
        for _ in range(3):
            client.publish_layer_version(LayerName=LAYER, Content={"ZipFile": _zip()})
        yield client
        aws.client.cache_clear()


def _grants(version: int) -> set[Grant]:
    return set(current_grants(LAYER, version))


def test_a_version_without_a_policy_grants_nothing(lam: object) -> None:
    assert current_grants(LAYER, 1) == []
    assert current_grants(LAYER, 99) == []  # a version that does not exist grants nothing either


def test_reconcile_adds_the_missing_grants_and_says_so(lam: object) -> None:
    desired = desired_grants(ShareSpec(accounts=[A, B]), allow_public=False)
    change = reconcile(LAYER, 2, desired)
    assert change.added == [f"layershift-account-{A}", f"layershift-account-{B}"] and change.removed == []
    assert _grants(2) == set(desired)
    again = reconcile(LAYER, 2, desired)  # already right: nothing to do
    assert (again.added, again.removed) == ([], [])
    assert _grants(2) == set(desired)


def test_reconcile_removes_every_other_statement_including_one_added_by_hand(lam: object) -> None:
    reconcile(LAYER, 1, desired_grants(ShareSpec(accounts=[A, B]), allow_public=False))
    boto3.client("lambda").add_layer_version_permission(
        LayerName=LAYER, VersionNumber=1, StatementId="by-hand", Action="lambda:GetLayerVersion", Principal="*"
    )

    desired = desired_grants(ShareSpec(accounts=[B], organization=ORG), allow_public=False)
    change = reconcile(LAYER, 1, desired)

    assert change.added == [f"layershift-organization-{ORG}"]
    assert sorted(change.removed) == sorted(["by-hand", f"layershift-account-{A}"])
    assert _grants(1) == set(desired)
    assert not any(grant.public for grant in _grants(1))
    assert reconcile(LAYER, 1, []).removed and current_grants(LAYER, 1) == []  # no [share]: nobody


def test_a_statement_with_a_layershift_id_but_another_grant_is_replaced(lam: object) -> None:
    boto3.client("lambda").add_layer_version_permission(
        LayerName=LAYER,
        VersionNumber=3,
        StatementId=f"layershift-account-{A}",
        Action="lambda:GetLayerVersion",
        Principal=C,
    )
    desired = desired_grants(ShareSpec(accounts=[A]), allow_public=False)
    change = reconcile(LAYER, 3, desired)
    assert change.removed == [f"layershift-account-{A}"] and change.added == [f"layershift-account-{A}"]
    assert current_grants(LAYER, 3) == desired


def test_a_grant_lambda_refuses_fails_clearly(lam: object) -> None:
    def refuse(**_: object) -> None:
        error = {"Code": "InvalidParameterValueException", "Message": "The provided principal was invalid"}
        raise ClientError({"Error": error}, "AddLayerVersionPermission")

    aws.client("lambda").meta.events.register("before-call.lambda.AddLayerVersionPermission", refuse)
    with pytest.raises(LayerShareFailed) as caught:
        reconcile(LAYER, 1, desired_grants(ShareSpec(accounts=[A]), allow_public=False))
    assert str(caught.value) == (
        f"could not grant account {A} (statement layershift-account-{A}) on layer {LAYER} version 1: "
        "InvalidParameterValueException: The provided principal was invalid"
    )


def test_every_version_of_the_layer_is_reconciled(lam: object) -> None:
    desired = desired_grants(ShareSpec(accounts=[A], organization=ORG), allow_public=False)
    changes = reconcile_layer(LAYER, desired)
    assert [change.version for change in changes] == [3, 2, 1]
    assert all(_grants(version) == set(desired) for version in (1, 2, 3))


def test_the_task_reconciles_the_prefixed_layer_of_a_rollout_that_holds_its_lock(lam: object) -> None:
    create_registry_table(SETTINGS.table)
    published = SETTINGS.published_name("shared")
    assert published == LAYER
    spec = parse_layer_spec(f'[share]\naccounts = ["{A}", "{OWN}"]\n'.encode(), SETTINGS.spec_defaults)
    state = RolloutState(
        request=RolloutRequest(layer="shared", bucket="bkt", requirements_key="layers/shared/requirements.txt"),
        rollout=ValidatedRollout(
            rollout_id="r1", layer="shared", spec=LayerSpec.model_validate(spec.model_dump()), requirements_uri="s3://x"
        ),
    )
    with pytest.raises(LockLost):  # a rollout that no longer holds the layer changes no grant
        share_layer_versions(state, SETTINGS)
    assert all(current_grants(LAYER, version) == [] for version in (1, 2, 3))

    Registry(SETTINGS.table).acquire_lock("shared", "r1", 600)
    shared = share_layer_versions(state, SETTINGS)

    assert shared.sharing is not None
    assert shared.sharing.model_dump() == {"layer_versions": 3, "grants": 1, "added": 3, "removed": 0}
    assert all(current_grants(LAYER, v) == [Grant(sid=f"layershift-account-{A}", principal=A)] for v in (1, 2, 3))
    assert json.loads(json.dumps(shared.model_dump(mode="json")))["sharing"]["layer_versions"] == 3


def test_grants_that_cannot_be_read_fail_clearly(lam: object) -> None:
    def deny(**_: object) -> None:
        raise ClientError(
            {"Error": {"Code": "AccessDeniedException", "Message": "not allowed"}}, "GetLayerVersionPolicy"
        )

    aws.client("lambda").meta.events.register("before-call.lambda.GetLayerVersionPolicy", deny)
    with pytest.raises(LayerShareFailed) as caught:
        reconcile_layer(LAYER, [])
    assert str(caught.value) == (
        f"could not read the grants of layer {LAYER} version 3: AccessDeniedException: not allowed"
    )
