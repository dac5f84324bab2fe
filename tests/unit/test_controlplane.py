"""Finding a deployed control plane from its stack, the way `--stack` does."""

import json
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from layershift.controlplane import ControlPlaneNotFound, from_stack, stack_name_from_samconfig

ROOT = Path(__file__).resolve().parents[2]


def _stack(name: str, outputs: dict[str, str]) -> None:
    template = {
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {key: {"Value": value} for key, value in outputs.items()},
    }
    boto3.client("cloudformation").create_stack(StackName=name, TemplateBody=json.dumps(template))


@mock_aws
def test_the_stack_outputs_locate_the_control_plane() -> None:
    _stack(
        "layershift",
        {
            "ArtifactBucketName": "bucket",
            "RegistryTableName": "table",
            "RolloutStateMachineArn": "arn:aws:states:us-east-1:123456789012:stateMachine:rollout",
            "NotificationTopicArn": "arn:aws:sns:us-east-1:123456789012:topic",
        },
    )
    cp = from_stack("layershift", "us-east-1")
    assert (cp.bucket, cp.table) == ("bucket", "table")
    assert cp.state_machine_arn.endswith(":stateMachine:rollout")
    assert cp.endpoint_url is None


@mock_aws
def test_a_stack_that_is_not_layershift_is_named_clearly() -> None:
    _stack("other", {"Something": "else"})
    with pytest.raises(ControlPlaneNotFound, match="ArtifactBucketName"):
        from_stack("other", "us-east-1")
    with pytest.raises(ControlPlaneNotFound, match="no stack 'missing'"):
        from_stack("missing", "us-east-1")


def test_template_outputs_are_the_ones_the_cli_reads() -> None:
    text = (ROOT / "template.yaml").read_text()
    outputs = text[text.index("\nOutputs:") :]
    for key in ("ArtifactBucketName", "RegistryTableName", "RolloutStateMachineArn", "NotificationTopicArn"):
        assert f"\n  {key}:" in outputs


def test_samconfig_names_the_default_stack() -> None:
    assert stack_name_from_samconfig(ROOT / "samconfig.toml") == "layershift"
