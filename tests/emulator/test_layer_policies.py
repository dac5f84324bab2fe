"""The local emulation checks and stores layer version permissions as Lambda does."""

import io
import json
import zipfile
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from layershift.local import layer_policies
from layershift_core.sharing import Grant, grants_of_policy

ACCOUNT, ORG = "111122223333", "o-a1b2c3d4e5"


@pytest.fixture
def lam() -> Iterator[Any]:
    layer_policies.install()
    try:
        with mock_aws():
            client = boto3.client("lambda")
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as archive:
                archive.writestr("python/x.py", "")
            client.publish_layer_version(LayerName="shared", Content={"ZipFile": buffer.getvalue()})
            yield client
    finally:
        layer_policies.uninstall()


def _add(lam: Any, sid: str, principal: str, **extra: str) -> dict[str, Any]:
    return lam.add_layer_version_permission(
        LayerName="shared",
        VersionNumber=1,
        StatementId=sid,
        Action="lambda:GetLayerVersion",
        Principal=principal,
        **extra,
    )


def test_the_policy_has_lambdas_shape(lam: Any) -> None:
    added = json.loads(_add(lam, "one", ACCOUNT)["Statement"])
    assert added["Principal"] == {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}
    _add(lam, "org", "*", OrganizationId=ORG)
    _add(lam, "all", "*")
    policy = json.loads(lam.get_layer_version_policy(LayerName="shared", VersionNumber=1)["Policy"])
    org = policy["Statement"][1]
    assert org["Principal"] == "*" and org["Condition"] == {"StringEquals": {"aws:PrincipalOrgID": ORG}}
    assert "OrganizationId" not in org
    assert grants_of_policy(policy) == [
        Grant(sid="one", principal=ACCOUNT),
        Grant(sid="org", principal="*", organization_id=ORG),
        Grant(sid="all", principal="*"),
    ]


@pytest.mark.parametrize(
    ("sid", "principal", "extra", "code"),
    [
        ("bad id!", ACCOUNT, {}, "ValidationException"),
        ("x", "1234", {}, "ValidationException"),
        ("x", "arn:aws:iam::111122223333:role/r", {}, "ValidationException"),
        ("x", "*", {"OrganizationId": "o-short"}, "ValidationException"),
        ("x", ACCOUNT, {"OrganizationId": ORG}, "InvalidParameterValueException"),
    ],
)
def test_what_lambda_refuses_is_refused(lam: Any, sid: str, principal: str, extra: dict[str, str], code: str) -> None:
    with pytest.raises(ClientError) as caught:
        _add(lam, sid, principal, **extra)
    assert caught.value.response["Error"]["Code"] == code


def test_a_statement_id_in_use_is_a_conflict(lam: Any) -> None:
    _add(lam, "one", ACCOUNT)
    with pytest.raises(ClientError) as caught:
        _add(lam, "one", "*")
    assert caught.value.response["Error"]["Code"] == "ResourceConflictException"
    policy = json.loads(lam.get_layer_version_policy(LayerName="shared", VersionNumber=1)["Policy"])
    assert len(policy["Statement"]) == 1
