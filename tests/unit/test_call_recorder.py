"""The local call recorder: each call with its IAM-relevant parameters (never a body) and its
signer, an assumed role's session with its tags included. It runs in a process of its own, as in a
local Lambda execution environment, with botocore's Stubber answering instead of a service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from layershift.local import call_recorder

ROOT = Path(__file__).resolve().parents[2]
ROLE = "arn:aws:iam::123456789012:role/prepare-versions"
TENANT = "arn:aws:iam::123456789012:role/layershift-tenant"

# What a function does: its own calls, then an assumed role's session for its Lambda calls.
FUNCTION = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("recorder", {str(Path(call_recorder.__file__))!r})
recorder = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recorder)
recorder.install({{"name": "prepare-versions", "role_arn": {ROLE!r}}})
assert "botocore" not in sys.modules, "the recorder imported botocore before the handler did"

import datetime, io
import boto3
from botocore.stub import Stubber

s3 = boto3.client("s3")
with Stubber(s3) as stub:
    stub.add_response("put_object", {{}}, {{"Bucket": "bucket", "Key": "rollouts/a/plan.json", "Body": b"secret"}})
    s3.put_object(Bucket="bucket", Key="rollouts/a/plan.json", Body=b"secret")

sts = boto3.client("sts")
credentials = {{"AccessKeyId": "ASIATENANTSESSION1", "SecretAccessKey": "s", "SessionToken": "t",
               "Expiration": datetime.datetime(2030, 1, 1)}}
tags = [{{"Key": "layershift:layer", "Value": "common"}}]
with Stubber(sts) as stub:
    stub.add_response(
        "assume_role",
        {{"Credentials": credentials,
          "AssumedRoleUser": {{"AssumedRoleId": "AROA:rollout", "Arn": "arn:aws:sts::1:assumed-role/t/rollout"}}}},
        {{"RoleArn": {TENANT!r}, "RoleSessionName": "rollout", "Tags": tags}},
    )
    sts.assume_role(RoleArn={TENANT!r}, RoleSessionName="rollout", Tags=tags)

lam = boto3.client("lambda", aws_access_key_id="ASIATENANTSESSION1", aws_secret_access_key="s", aws_session_token="t")
with Stubber(lam) as stub:
    layers = ["arn:aws:lambda:us-east-1:123456789012:layer:layershift-common:2"]
    stub.add_response("update_function_configuration", {{}}, {{"FunctionName": "consumer", "Layers": layers}})
    lam.update_function_configuration(FunctionName="consumer", Layers=layers)

ddb = boto3.client("dynamodb")
with Stubber(ddb) as stub:
    items = [{{"Put": {{"TableName": "registry", "Item": {{"pk": {{"S": "private"}}}}}}}}]
    stub.add_response("transact_write_items", {{}}, {{"TransactItems": items}})
    ddb.transact_write_items(TransactItems=items)
"""


def _recorded(tmp_path: Path) -> list[dict]:
    log = tmp_path / "calls.jsonl"
    env = {
        **os.environ,
        "LAYERSHIFT_LOCAL_CALL_LOG": str(log),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    subprocess.run([sys.executable, "-c", FUNCTION], env=env, check=True, cwd=tmp_path, timeout=120)
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_each_call_is_recorded_with_its_signer_and_no_body(tmp_path: Path) -> None:
    put, assume, update, transaction = _recorded(tmp_path)

    assert (put["service"], put["operation"], put["function"]) == ("s3", "PutObject", "prepare-versions")
    assert put["params"] == {"Bucket": "bucket", "Key": "rollouts/a/plan.json"}  # no Body
    assert put["principal"] == {"role_arn": ROLE}
    assert assume["operation"] == "AssumeRole" and assume["principal"] == {"role_arn": ROLE}
    assert assume["params"]["Tags"] == [{"Key": "layershift:layer", "Value": "common"}]
    # the Lambda call is signed by the assumed session's key: the tenant role, with its session tags
    assert update["principal"] == {
        "role_arn": TENANT,
        "session_name": "rollout",
        "session_tags": {"layershift:layer": "common"},
    }
    assert update["params"]["Layers"] == ["arn:aws:lambda:us-east-1:123456789012:layer:layershift-common:2"]
    assert transaction["params"] == {"TransactItems": [{"Put": "registry"}]}  # the table, never the item
    assert "private" not in json.dumps(transaction)


def test_only_flat_iam_parameters_are_kept() -> None:
    kept = call_recorder.kept_parameters(
        {
            "FunctionName": "f",
            "Payload": b"{}",
            "Item": {"pk": {"S": "x"}},
            "Message": "a notification body",
            "Layers": ["arn:a", "arn:b"],
            "Key": {"pk": {"S": "nested"}},  # DynamoDB's Key is an item key, not an S3 key
        }
    )

    assert kept == {"FunctionName": "f", "Layers": ["arn:a", "arn:b"]}
