"""Aliases that CodeDeploy manages are found from the stack's template and left alone.

Stacks are created in moto's CloudFormation. moto deploys the Lambda function but not the
AWS::Lambda::Alias (it warns and skips it); GetTemplate returns the body as given, which is what the
detection reads. moto ignores DescribeStackResources' PhysicalResourceId, so `_by_physical_id` below
gives moto that one missing behaviour, as CloudFormation documents it. Cases moto cannot produce (an
untransformed SAM template behind a deployed function, an alias in another stack, access denied)
use botocore's Stubber with the responses CloudFormation gives.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws
from moto.cloudformation import responses as cfn_responses
from moto.cloudformation.exceptions import ValidationError

from layershift_core import aws
from layershift_core.codedeploy import codedeploy_manager
from layershift_core.errors import CodeDeployCheckFailed

# moto deploys the function and skips the alias, with this warning.
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS..Lambda..Alias:UserWarning")

STACK_ID = "arn:aws:cloudformation:us-east-1:123456789012:stack/orders/0b1c2d3e"
ALIAS_ARN = "arn:aws:lambda:us-east-1:123456789012:function:orders:live"

_original_describe = cfn_responses.CloudFormationResponse.describe_stack_resources


def _by_physical_id(self: Any) -> Any:
    """DescribeStackResources(PhysicalResourceId=...): the owning stack's resources, at most 100."""
    physical_id = self._get_param("PhysicalResourceId")
    if not physical_id or self._get_param("StackName"):
        return _original_describe(self)
    for stack in self.cloudformation_backend.stacks.values():
        resources = [r for r in stack.stack_resources if r is not None]
        if any(getattr(r, "physical_resource_id", None) == physical_id for r in resources):
            dtos = [cfn_responses.StackResourceDTO(stack, r) for r in resources]
            return cfn_responses.ActionResult({"StackResources": dtos[:100]})
    raise ValidationError(message=f"Stack for {physical_id} does not exist")


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(cfn_responses.CloudFormationResponse, "describe_stack_resources", _by_physical_id)
    with mock_aws():
        aws.client.cache_clear()
        yield
        aws.client.cache_clear()


@pytest.fixture
def stubbed() -> Iterator[Stubber]:
    """The control plane's CloudFormation client, answering only what the test queues."""
    aws.client.cache_clear()
    with Stubber(aws.client("cloudformation")) as stub:
        yield stub
        stub.assert_no_pending_responses()
    aws.client.cache_clear()


def _deploy(name: str, body: str) -> None:
    boto3.client("cloudformation").create_stack(StackName=name, TemplateBody=body)


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", "def handler(event, context):\n    return event\n")
    return buffer.getvalue()


FUNCTION = """
AWSTemplateFormatVersion: 2010-09-09
Resources:
  Role:
    Type: AWS::IAM::Role
    Properties:
      AssumeRolePolicyDocument: {Version: '2012-10-17', Statement: []}
  Fn:
    Type: AWS::Lambda::Function
    Properties:
      FunctionName: orders
      Runtime: python3.13
      Handler: index.handler
      Role: !GetAtt Role.Arn
      Code:
        ZipFile: |
          def handler(event, context):
              return event
  Version:
    Type: AWS::Lambda::Version
    Properties:
      FunctionName: !Ref Fn
"""

MANAGED_ALIAS = """
  LiveAlias:
    Type: AWS::Lambda::Alias
    UpdatePolicy:
      CodeDeployLambdaAliasUpdate:
        ApplicationName: orders-app
        DeploymentGroupName: orders-dg
    Properties:
      FunctionName: {reference}
      FunctionVersion: !GetAtt Version.Version
      Name: live
"""


@pytest.mark.parametrize(
    "reference",
    [
        "!Ref Fn",
        "!GetAtt Fn.Arn",
        "{'Fn::GetAtt': [Fn, Arn]}",
        "!Sub '${Fn}'",
        "orders",
        "arn:aws:lambda:us-east-1:123456789012:function:orders",
    ],
)
def test_an_alias_with_a_codedeploy_update_policy_is_managed(cloud: None, reference: str) -> None:
    _deploy("orders-stack", FUNCTION + MANAGED_ALIAS.format(reference=reference))
    reason = codedeploy_manager("orders", "live")
    assert reason == (
        "alias 'live' is updated by CodeDeploy (application orders-app, deployment group orders-dg) "
        "through the CodeDeployLambdaAliasUpdate UpdatePolicy of LiveAlias in stack orders-stack"
    )
    assert codedeploy_manager("arn:aws:lambda:us-east-1:123456789012:function:orders", "live") == reason


def test_another_alias_of_the_same_function_is_not_managed(cloud: None) -> None:
    _deploy("orders-stack", FUNCTION + MANAGED_ALIAS.format(reference="!Ref Fn"))
    assert codedeploy_manager("orders", "beta") is None


def test_an_alias_without_update_policy_is_not_managed(cloud: None) -> None:
    plain = MANAGED_ALIAS.format(reference="!Ref Fn").replace(
        "    UpdatePolicy:\n      CodeDeployLambdaAliasUpdate:\n"
        "        ApplicationName: orders-app\n        DeploymentGroupName: orders-dg\n",
        "",
    )
    assert "UpdatePolicy" not in plain
    _deploy("orders-stack", FUNCTION + plain)
    assert codedeploy_manager("orders", "live") is None


def test_a_function_created_outside_cloudformation_is_not_managed(cloud: None) -> None:
    _deploy("orders-stack", FUNCTION + MANAGED_ALIAS.format(reference="!Ref Fn"))
    lam = boto3.client("lambda")
    role = boto3.client("iam").create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    lam.create_function(
        FunctionName="payments", Runtime="python3.13", Role=role, Handler="app.handler", Code={"ZipFile": _zip()}
    )
    version = lam.publish_version(FunctionName="payments")["Version"]
    alias_arn = lam.create_alias(FunctionName="payments", Name="live", FunctionVersion=version)["AliasArn"]
    assert codedeploy_manager("payments", "live", alias_arn) is None


def test_the_sam_transform_output_is_managed(cloud: None) -> None:
    """What GetTemplate(Processed) returns for AutoPublishAlias + DeploymentPreference: JSON, so a dict."""
    role = {"Type": "AWS::IAM::Role", "Properties": {"AssumeRolePolicyDocument": {"Statement": []}}}
    transformed = {
        "Resources": {
            "OrdersFunctionRole": role,
            "OrdersFunction": {
                "Type": "AWS::Lambda::Function",
                "Properties": {
                    "FunctionName": "orders",
                    "Runtime": "python3.13",
                    "Handler": "index.handler",
                    "Role": {"Fn::GetAtt": ["OrdersFunctionRole", "Arn"]},
                    "Code": {"ZipFile": "def handler(event, context):\n    return event\n"},
                },
            },
            "OrdersFunctionVersion0a1b2c3d4e": {
                "Type": "AWS::Lambda::Version",
                "DeletionPolicy": "Retain",
                "Properties": {"FunctionName": {"Ref": "OrdersFunction"}},
            },
            "OrdersFunctionAliaslive": {
                "Type": "AWS::Lambda::Alias",
                "UpdatePolicy": {
                    "CodeDeployLambdaAliasUpdate": {
                        "ApplicationName": {"Ref": "ServerlessDeploymentApplication"},
                        "DeploymentGroupName": {"Ref": "OrdersFunctionDeploymentGroup"},
                    }
                },
                "Properties": {
                    "Name": "live",
                    "FunctionName": {"Ref": "OrdersFunction"},
                    "FunctionVersion": {"Fn::GetAtt": ["OrdersFunctionVersion0a1b2c3d4e", "Version"]},
                },
            },
        }
    }
    _deploy("sam-app", json.dumps(transformed))
    assert codedeploy_manager("orders", "live") == (
        "alias 'live' is updated by CodeDeploy through the CodeDeployLambdaAliasUpdate UpdatePolicy "
        "of OrdersFunctionAliaslive in stack sam-app"
    )
    assert codedeploy_manager("orders", "beta") is None


def test_a_big_stack_is_read_past_the_first_100_resources(cloud: None) -> None:
    topics = "".join(f"  Topic{i}:\n    Type: AWS::SNS::Topic\n" for i in range(100))
    body = FUNCTION.replace("Resources:\n", "Resources:\n" + topics, 1) + MANAGED_ALIAS.format(reference="!Ref Fn")
    _deploy("big", body)
    assert "LiveAlias in stack big" in (codedeploy_manager("orders", "live") or "")


def _resource(logical_id: str, resource_type: str, physical_id: str, stack: str = "sam-app") -> dict[str, Any]:
    return {
        "StackName": stack,
        "StackId": STACK_ID.replace("orders", stack),
        "LogicalResourceId": logical_id,
        "PhysicalResourceId": physical_id,
        "ResourceType": resource_type,
        "Timestamp": "2026-01-01T00:00:00Z",
        "ResourceStatus": "UPDATE_COMPLETE",
    }


SAM = """
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Runtime: python3.13
{globals}Resources:
  OrdersFunction:
    Type: AWS::Serverless::Function
    Properties:
      FunctionName: orders
      Handler: app.handler
      CodeUri: src/
{properties}"""
ON_FUNCTION = "      AutoPublishAlias: live\n      DeploymentPreference:\n        Type: Canary10Percent5Minutes\n"
IN_GLOBALS = "    AutoPublishAlias: live\n    DeploymentPreference:\n      Type: Canary10Percent5Minutes\n"


def _queue_sam(stub: Stubber, body: str) -> None:
    """A deployed SAM function whose Processed template is unavailable: the Original one is read."""
    stub.add_response(
        "describe_stack_resources",
        {"StackResources": [_resource("OrdersFunction", "AWS::Lambda::Function", "orders")]},
        {"PhysicalResourceId": "orders"},
    )
    stack_id = STACK_ID.replace("orders", "sam-app")
    stub.add_client_error(
        "get_template",
        service_error_code="ValidationError",
        service_message="Processed template is not available",
        expected_params={"StackName": stack_id, "TemplateStage": "Processed"},
    )
    stub.add_response("get_template", {"TemplateBody": body}, {"StackName": stack_id, "TemplateStage": "Original"})


@pytest.mark.parametrize(
    ("globals_", "properties"), [("", ON_FUNCTION), (IN_GLOBALS, ""), (IN_GLOBALS, "      Tracing: Active\n")]
)
def test_an_untransformed_sam_template_with_auto_publish_alias_and_deployment_preference_is_managed(
    stubbed: Stubber, globals_: str, properties: str
) -> None:
    _queue_sam(stubbed, SAM.format(globals=globals_, properties=properties))
    assert codedeploy_manager("orders", "live") == (
        "alias 'live' is published by SAM's AutoPublishAlias on OrdersFunction in stack sam-app "
        "and shifted by CodeDeploy through its DeploymentPreference (Canary10Percent5Minutes)"
    )


@pytest.mark.parametrize(
    ("alias", "properties"),
    [
        ("beta", ON_FUNCTION),
        ("live", "      AutoPublishAlias: live\n"),
        ("live", ON_FUNCTION + "        Enabled: false\n"),
    ],
    ids=["other-alias", "no-deployment-preference", "preference-disabled"],
)
def test_sam_without_codedeploy_for_the_alias_is_not_managed(stubbed: Stubber, alias: str, properties: str) -> None:
    _queue_sam(stubbed, SAM.format(globals="", properties=properties))
    assert codedeploy_manager("orders", alias) is None


def test_an_alias_declared_in_another_stack_is_found_by_its_arn(stubbed: Stubber) -> None:
    stubbed.add_client_error(
        "describe_stack_resources",
        service_error_code="ValidationError",
        service_message="Stack for orders does not exist",
        expected_params={"PhysicalResourceId": "orders"},
    )
    stubbed.add_response(
        "describe_stack_resources",
        {"StackResources": [_resource("Live", "AWS::Lambda::Alias", ALIAS_ARN, stack="aliases")]},
        {"PhysicalResourceId": ALIAS_ARN},
    )
    template = {
        "Parameters": {"AliasName": {"Type": "String"}},
        "Resources": {
            "Live": {
                "Type": "AWS::Lambda::Alias",
                "UpdatePolicy": {
                    "CodeDeployLambdaAliasUpdate": {"ApplicationName": "app", "DeploymentGroupName": "dg"}
                },
                "Properties": {"FunctionName": "orders", "FunctionVersion": "3", "Name": {"Ref": "AliasName"}},
            }
        },
    }
    stubbed.add_response(
        "get_template",
        {"TemplateBody": json.dumps(template)},
        {"StackName": STACK_ID.replace("orders", "aliases"), "TemplateStage": "Processed"},
    )
    assert codedeploy_manager("orders", "live", ALIAS_ARN) == (
        "alias 'live' is updated by CodeDeploy (application app, deployment group dg) "
        "through the CodeDeployLambdaAliasUpdate UpdatePolicy of Live in stack aliases"
    )


@pytest.mark.parametrize("code", ["AccessDenied", "Throttling"])
def test_an_alias_that_cannot_be_checked_stops_the_plan(stubbed: Stubber, code: str) -> None:
    stubbed.add_client_error(
        "describe_stack_resources",
        service_error_code=code,
        service_message="not authorized to perform: cloudformation:DescribeStackResources",
        http_status_code=403 if code == "AccessDenied" else 400,
    )
    with pytest.raises(CodeDeployCheckFailed) as raised:
        codedeploy_manager("orders", "live")
    assert f"alias 'live' of orders: {code} on cloudformation:DescribeStackResources" in str(raised.value)


def test_access_denied_on_the_template_stops_the_plan(stubbed: Stubber) -> None:
    stubbed.add_response(
        "describe_stack_resources",
        {"StackResources": [_resource("OrdersFunction", "AWS::Lambda::Function", "orders")]},
        {"PhysicalResourceId": "orders"},
    )
    stubbed.add_client_error("get_template", service_error_code="AccessDenied", http_status_code=403)
    with pytest.raises(CodeDeployCheckFailed, match="AccessDenied on cloudformation:GetTemplate"):
        codedeploy_manager("orders", "live")


def test_other_errors_are_raised(stubbed: Stubber) -> None:
    stubbed.add_client_error(
        "describe_stack_resources", service_error_code="InvalidClientTokenId", http_status_code=403
    )
    with pytest.raises(ClientError, match="InvalidClientTokenId"):
        codedeploy_manager("orders", "live")
