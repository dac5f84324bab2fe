"""Recorded calls as the IAM requests AWS evaluates for them: actions, resources and context."""

from __future__ import annotations

from typing import Any

import pytest

from .deployed import DeployedAccount
from .recorded_calls import UnknownOperation, iam_requests
from .simulator import Policy, require_evaluator

ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/layershift-ChangeFunctionsRole-X"
TENANT = f"arn:aws:iam::{ACCOUNT}:role/layershift-TenantRole-X"
KEY = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
TRUST = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": ROLE}, "Action": "*"}]}


class Account(DeployedAccount):
    """An account with one tagged function, a trust policy, and roles without policies."""

    def __init__(self) -> None:
        super().__init__(lambda service: None, ACCOUNT, "us-east-1")

    def _role_policies(self, role_arn: str) -> tuple[tuple[str, Policy], ...]:
        return ()

    def _trust_policy(self, role_arn: str) -> Policy:
        return TRUST

    def _bucket_policy(self, bucket: str) -> Policy | None:
        return None

    def _function_tags(self, function_arn: str) -> tuple[tuple[str, str], ...]:
        return (("layershift:layer", "billing common"),) if function_arn.endswith(":function:target") else ()

    def _topic_key(self, topic_arn: str) -> str | None:
        return KEY if topic_arn.endswith(":encrypted") else None

    def _key_policy(self, key_arn: str) -> Policy:
        return TRUST


@pytest.fixture(autouse=True)
def _reference_data() -> None:
    require_evaluator()  # the service authorization reference comes with the evaluator


def _call(service: str, operation: str, params: dict[str, Any], principal: dict[str, Any] | None = None) -> dict:
    return {
        "function": "layershift-PrepareVersionsFunction-X",
        "role_arn": ROLE,
        "principal": principal or {"role_arn": ROLE},
        "service": service,
        "operation": operation,
        "params": params,
        "time": 0.0,
    }


def _translated(call: dict) -> list[tuple[str, str, dict]]:
    return [(t.request.action, t.request.resource, t.request.context_dict()) for t in iam_requests(call, Account())]


def test_a_tenant_sessions_alias_update_is_on_the_qualified_arn_with_the_functions_tags() -> None:
    tenant = {"role_arn": TENANT, "session_name": "layershift-common", "session_tags": {"layershift:layer": "common"}}
    call = _call("lambda", "UpdateAlias", {"FunctionName": "target", "Name": "live"}, tenant)
    [translated] = iam_requests(call, Account())
    request, context = translated.request, translated.request.context_dict()

    assert request.action == "lambda:UpdateAlias"
    assert request.resource == f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:target:live"
    assert context["aws:ResourceTag/layershift:layer"] == "billing common"
    assert context["aws:PrincipalTag/layershift:layer"] == "common"
    assert context["aws:PrincipalArn"] == TENANT
    assert request.principal == f"arn:aws:sts::{ACCOUNT}:assumed-role/layershift-TenantRole-X/layershift-common"


def test_a_version_deletion_is_on_the_qualified_arn_and_a_path_read_on_its_parameter_path() -> None:
    """What CleanUpVersions' policy is written against: DeleteFunction of a version is evaluated on
    ``function:NAME:VERSION`` with the function's tags; GetParametersByPath on the path's ARN."""
    deletion = _translated(_call("lambda", "DeleteFunction", {"FunctionName": "target", "Qualifier": "3"}))
    assert deletion == [
        (
            "lambda:DeleteFunction",
            f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:target:3",
            deletion[0][2] | {"aws:ResourceTag/layershift:layer": "billing common"},
        )
    ]
    [(action, resource, _)] = _translated(_call("ssm", "GetParametersByPath", {"Path": "/layershift/common"}))
    assert (action, resource) == (
        "ssm:GetParametersByPath",
        f"arn:aws:ssm:us-east-1:{ACCOUNT}:parameter/layershift/common",
    )


def test_an_update_brings_its_layers_as_lambda_layer() -> None:
    layers = [f"arn:aws:lambda:us-east-1:{ACCOUNT}:layer:layershift-common:2"]
    [(action, resource, context)] = _translated(
        _call("lambda", "UpdateFunctionConfiguration", {"FunctionName": "target", "Layers": layers})
    )

    assert action == "lambda:UpdateFunctionConfiguration"
    assert resource == f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:target"
    assert context["lambda:Layer"] == layers


def test_s3_operations_become_the_actions_iam_checks() -> None:
    bucket = "arn:aws:s3:::bucket"
    head = _translated(_call("s3", "HeadObject", {"Bucket": "bucket", "Key": "layers/a/layer.toml"}))
    versioned = _translated(_call("s3", "GetObject", {"Bucket": "bucket", "Key": "k", "VersionId": "v1"}))
    listing = _translated(_call("s3", "ListObjectsV2", {"Bucket": "bucket", "Prefix": "layers/a/layer.toml"}))
    source = "bucket/staging/b?versionId=v2"
    copy = _translated(_call("s3", "CopyObject", {"Bucket": "bucket", "Key": "artifacts/a", "CopySource": source}))

    assert [(a, r) for a, r, _ in head] == [("s3:GetObject", f"{bucket}/layers/a/layer.toml")]
    assert [a for a, _, _ in versioned] == ["s3:GetObjectVersion"]
    assert [(a, r, c["s3:prefix"]) for a, r, c in listing] == [("s3:ListBucket", bucket, "layers/a/layer.toml")]
    assert [(a, r) for a, r, _ in copy] == [
        ("s3:PutObject", f"{bucket}/artifacts/a"),
        ("s3:GetObjectVersion", f"{bucket}/staging/b"),
    ]


def test_a_tagged_assume_role_is_also_a_tag_session_with_the_request_tags() -> None:
    tags = [{"Key": "layershift:layer", "Value": "common"}]
    translated = _translated(_call("sts", "AssumeRole", {"RoleArn": TENANT, "RoleSessionName": "s", "Tags": tags}))

    assert [(a, r) for a, r, _ in translated] == [("sts:AssumeRole", TENANT), ("sts:TagSession", TENANT)]
    for _, _, context in translated:
        assert context["aws:RequestTag/layershift:layer"] == "common"
        assert context["aws:TagKeys"] == ["layershift:layer"]
    untagged = iam_requests(_call("sts", "AssumeRole", {"RoleArn": TENANT}), Account())
    assert [t.request.action for t in untagged] == ["sts:AssumeRole"]
    assert all(t.request.resource_policy for t in untagged)  # the role's trust policy


def test_actions_without_resource_types_are_evaluated_on_star() -> None:
    assert [r for _, r, _ in _translated(_call("stepfunctions", "SendTaskSuccess", {}))] == ["*"]
    assert [r for _, r, _ in _translated(_call("lambda", "ListFunctions", {}))] == ["*"]


def test_a_publish_to_an_encrypted_topic_also_uses_its_key_through_sns() -> None:
    topic = f"arn:aws:sns:us-east-1:{ACCOUNT}:encrypted"
    translated = iam_requests(_call("sns", "Publish", {"TopicArn": topic}), Account())
    plain = iam_requests(_call("sns", "Publish", {"TopicArn": f"arn:aws:sns:us-east-1:{ACCOUNT}:plain"}), Account())

    assert [(t.request.action, t.request.resource) for t in translated] == [
        ("sns:Publish", topic),
        ("kms:GenerateDataKey", KEY),
        ("kms:Decrypt", KEY),
    ]
    for item in translated[1:]:
        assert item.request.context_dict()["kms:ViaService"] == "sns.us-east-1.amazonaws.com"
        assert item.request.resource_policy is not None  # the key policy
    assert [t.request.action for t in plain] == ["sns:Publish"]


def test_a_transaction_needs_each_items_action_on_its_table() -> None:
    items = [{"Put": "registry"}, {"ConditionCheck": "registry"}]
    translated = _translated(_call("dynamodb", "TransactWriteItems", {"TransactItems": items}))

    table = f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/registry"
    assert [(a, r) for a, r, _ in translated] == [("dynamodb:PutItem", table), ("dynamodb:ConditionCheckItem", table)]


def test_an_operation_not_described_fails_loudly() -> None:
    with pytest.raises(UnknownOperation, match=r"lambda\.DeleteAlias"):
        _translated(_call("lambda", "DeleteAlias", {"FunctionName": "target", "Name": "live"}))


def test_a_call_signed_by_unknown_credentials_fails_loudly() -> None:
    with pytest.raises(AssertionError, match=r"neither its execution role's nor a role session"):
        _translated(_call("lambda", "GetFunction", {"FunctionName": "target"}, {"access_key": "AKIAOTHER"}))
