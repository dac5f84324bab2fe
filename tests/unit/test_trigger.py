"""From a push to one execution: S3 events, duplicate deliveries, and CodeCommit pushes."""

import json
from collections.abc import Iterator

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from layershift_core import aws
from layershift_core.trigger import execution_name, mirror_codecommit_push, start_rollout

BUCKET = "artifacts"


@pytest.fixture
def machine() -> Iterator[str]:
    with mock_aws():
        aws.client.cache_clear()
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        boto3.client("s3").put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        arn = boto3.client("stepfunctions").create_state_machine(
            name="rollout",
            definition=json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}),
            roleArn="arn:aws:iam::123456789012:role/sfn",
        )["stateMachineArn"]
        yield arn
        aws.client.cache_clear()


def _event(key: str, version: str | None) -> dict:
    return {
        "detail-type": "Object Created",
        "source": "aws.s3",
        "detail": {"bucket": {"name": BUCKET}, "object": {"key": key, "version-id": version}},
    }


def test_execution_name_depends_on_content_and_fits_the_limit() -> None:
    one = execution_name("api", b"six==1.16.0\n", None)
    assert one == execution_name("api", b"six==1.16.0\n", None)
    assert one != execution_name("api", b"six==1.16.0\n", b"[rollout]\n")
    assert len(execution_name("x" * 64, b"", None)) <= 80


def test_a_push_starts_one_execution_and_a_duplicate_event_none(machine: str) -> None:
    s3 = boto3.client("s3")
    s3.put_object(Bucket=BUCKET, Key="layers/api/layer.toml", Body=b"[rollout]\nstrategy = 'AllAtOnce'\n")
    version = s3.put_object(Bucket=BUCKET, Key="layers/api/requirements.txt", Body=b"six==1.16.0\n")["VersionId"]
    first = start_rollout(_event("layers/api/requirements.txt", version), machine)
    assert first.started
    second = start_rollout(_event("layers/api/requirements.txt", version), machine)
    assert not second.started and second.execution_name == first.execution_name
    executions = boto3.client("stepfunctions").list_executions(stateMachineArn=machine)["executions"]
    assert len(executions) == 1
    state = json.loads(boto3.client("stepfunctions").describe_execution(executionArn=first.execution_arn)["input"])
    assert state["request"]["requirements_version"] == version
    assert state["request"]["config_key"] == "layers/api/layer.toml"


def test_execution_name_of_a_retry_differs_and_attempt_0_is_a_plain_push() -> None:
    plain = execution_name("api", b"six==1.16.0\n", None)
    assert execution_name("api", b"six==1.16.0\n", None, attempt=0) == plain
    retried = {execution_name("api", b"six==1.16.0\n", None, attempt=n) for n in (1, 2)}
    assert len(retried) == 2 and plain not in retried


def test_a_retry_upload_starts_a_new_execution_once_and_records_the_pusher(machine: str) -> None:
    s3 = boto3.client("s3")
    key = "layers/api/requirements.txt"
    first = s3.put_object(Bucket=BUCKET, Key=key, Body=b"six==1.16.0\n")["VersionId"]
    event = _event(key, first)
    event["detail"]["requester"] = "123456789012"  # the account S3 names as the requester
    assert start_rollout(event, machine).started
    again = s3.put_object(Bucket=BUCKET, Key=key, Body=b"six==1.16.0\n")["VersionId"]
    assert not start_rollout(_event(key, again), machine).started  # the same bytes: nothing new
    metadata = {"layershift-attempt": "1", "layershift-pushed-by": "arn:aws:iam::123456789012:user/ops"}
    retry = s3.put_object(Bucket=BUCKET, Key=key, Body=b"six==1.16.0\n", Metadata=metadata)["VersionId"]
    started = start_rollout(_event(key, retry), machine)
    assert started.started
    assert not start_rollout(_event(key, retry), machine).started  # the retry's event delivered twice
    sfn = boto3.client("stepfunctions")
    assert len(sfn.list_executions(stateMachineArn=machine)["executions"]) == 2
    request = json.loads(sfn.describe_execution(executionArn=started.execution_arn)["input"])["request"]
    assert (request["attempt"], request["pushed_by"]) == (1, "arn:aws:iam::123456789012:user/ops")
    executions = sfn.list_executions(stateMachineArn=machine)["executions"]
    first_arn = next(e["executionArn"] for e in executions if e["executionArn"] != started.execution_arn)
    first_request = json.loads(sfn.describe_execution(executionArn=first_arn)["input"])["request"]
    assert first_request["pushed_by"] == "123456789012"  # no metadata: the event's requester


def test_other_keys_start_nothing(machine: str) -> None:
    result = start_rollout(_event("layers/api/notes.txt", None), machine)
    assert not result.started and "not a layers/<layer>/requirements.txt" in (result.reason or "")


def test_a_codecommit_push_is_mirrored_with_its_commit_id(machine: str) -> None:
    codecommit = aws.client("codecommit")
    event = {
        "detail-type": "CodeCommit Repository State Change",
        "source": "aws.codecommit",
        "detail": {"repositoryName": "layers", "referenceName": "main", "commitId": "c2", "oldCommitId": "c1"},
    }
    with Stubber(codecommit) as stub:
        stub.add_response(
            "get_differences",
            {
                "differences": [
                    {"afterBlob": {"path": "layers/api/requirements.txt"}, "changeType": "M"},
                    {"afterBlob": {"path": "README.md"}, "changeType": "M"},
                ]
            },
            {"repositoryName": "layers", "afterCommitSpecifier": "c2", "beforeCommitSpecifier": "c1"},
        )
        for path, content in (("requirements.txt", b"six==1.16.0\n"), ("layer.toml", b"[rollout]\n")):
            stub.add_response(
                "get_file",
                {
                    "commitId": "c2",
                    "blobId": "b",
                    "filePath": f"layers/api/{path}",
                    "fileMode": "NORMAL",
                    "fileSize": len(content),
                    "fileContent": content,
                },
                {"repositoryName": "layers", "commitSpecifier": "c2", "filePath": f"layers/api/{path}"},
            )
        assert mirror_codecommit_push(event, BUCKET, "main") == ["api"]
        stub.assert_no_pending_responses()
    s3 = boto3.client("s3")
    head = s3.head_object(Bucket=BUCKET, Key="layers/api/requirements.txt")
    config_version = s3.head_object(Bucket=BUCKET, Key="layers/api/layer.toml")["VersionId"]
    assert head["Metadata"] == {
        "layershift-source": "codecommit",
        "layershift-commit": "c2",
        "layershift-config-version": config_version,
    }
    # a newer push's layer.toml lands before this push is read: this push keeps its commit's own
    s3.put_object(Bucket=BUCKET, Key="layers/api/layer.toml", Body=b"[rollout]\nstrategy = 'AllAtOnce'\n")
    result = start_rollout(_event("layers/api/requirements.txt", head["VersionId"]), machine)
    state = json.loads(boto3.client("stepfunctions").describe_execution(executionArn=result.execution_arn)["input"])
    assert (state["request"]["source"], state["request"]["commit_id"]) == ("codecommit", "c2")
    assert state["request"]["config_version"] == config_version


def test_a_push_to_another_branch_is_ignored(machine: str) -> None:
    event = {
        "detail-type": "CodeCommit Repository State Change",
        "detail": {"repositoryName": "layers", "referenceName": "feature", "commitId": "c2"},
    }
    assert mirror_codecommit_push(event, BUCKET, "main") == []
