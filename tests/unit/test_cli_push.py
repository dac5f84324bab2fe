"""What `layershift push` says when the pushed bytes already have an execution (the trigger starts
nothing for them): it follows one still running, and never reports one that ended before the push.
And what `layershift retry` uploads."""

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from layershift import cli, controlplane
from layershift.controlplane import ControlPlane, NothingToRetry, PushResult
from layershift_core.trigger import (
    ATTEMPT_METADATA,
    COMMIT_METADATA,
    PUSHED_BY_METADATA,
    SOURCE_METADATA,
    execution_name,
)

ARN = "arn:aws:states:us-east-1:123456789012:execution:rollout:deps-0123456789abcde"


@pytest.fixture
def pushed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    seen: dict[str, Any] = {"followed": []}

    def push(cp: object, layer: str, requirements: bytes, config: bytes | None) -> PushResult:
        return PushResult(layer, "v2", "deps-0123456789abcde", ARN, seen["existing"])

    def follow(cp: object, arn: str, emit: Any = print) -> dict[str, str]:
        seen["followed"].append(arn)
        return {"status": "SUCCEEDED"}

    monkeypatch.setattr(cli, "_control_plane", lambda args: object())
    monkeypatch.setattr(controlplane, "push", push)
    monkeypatch.setattr(controlplane, "wait_for_execution", lambda cp, arn: None)
    monkeypatch.setattr(controlplane, "follow", follow)
    (tmp_path / "requirements.txt").write_text("six==1.16.0\n")
    seen["argv"] = ["push", str(tmp_path / "requirements.txt"), "--layer", "deps", "--local", "--wait"]
    return seen


def test_bytes_whose_execution_ended_start_nothing_and_wait_reports_no_old_result(
    pushed: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    pushed["existing"] = "SUCCEEDED"
    assert cli.main(pushed["argv"]) == 1
    out = capsys.readouterr().out
    assert "nothing new started: these bytes already rolled out as deps-0123456789abcde (SUCCEEDED)" in out
    assert "layershift retry deps" in out
    assert pushed["followed"] == []
    assert cli.main(pushed["argv"][:-1]) == 0  # without --wait the upload itself succeeded


def test_bytes_still_rolling_out_are_followed(pushed: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    pushed["existing"] = "RUNNING"
    assert cli.main(pushed["argv"]) == 0
    assert "these bytes are already rolling out" in capsys.readouterr().out
    assert pushed["followed"] == [ARN]


@mock_aws
def test_retry_uploads_the_same_bytes_with_the_next_attempt_and_keeps_their_commit() -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="artifacts")
    s3.put_bucket_versioning(Bucket="artifacts", VersioningConfiguration={"Status": "Enabled"})
    machine = boto3.client("stepfunctions", region_name="us-east-1").create_state_machine(
        name="rollout",
        definition=json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}),
        roleArn="arn:aws:iam::123456789012:role/sfn",
    )["stateMachineArn"]
    cp = ControlPlane(bucket="artifacts", table="t", state_machine_arn=machine, region="us-east-1")
    copied = {SOURCE_METADATA: "codecommit", COMMIT_METADATA: "c0ffee42", PUSHED_BY_METADATA: "someone"}
    s3.put_object(Bucket="artifacts", Key="layers/deps/requirements.txt", Body=b"six==1.16.0\n", Metadata=copied)
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    ended = sfn.start_execution(stateMachineArn=machine, name=execution_name("deps", b"six==1.16.0\n", None))
    with pytest.raises(NothingToRetry, match="still running"):
        controlplane.retry(cp, "deps")
    sfn.stop_execution(executionArn=ended["executionArn"])  # the push's own rollout, which has ended
    result = controlplane.retry(cp, "deps")
    assert result.execution_name == execution_name("deps", b"six==1.16.0\n", None, attempt=1)
    uploaded = s3.get_object(Bucket="artifacts", Key="layers/deps/requirements.txt")
    assert uploaded["Body"].read() == b"six==1.16.0\n"
    metadata = uploaded["Metadata"]
    assert metadata[ATTEMPT_METADATA] == "1" and metadata[COMMIT_METADATA] == "c0ffee42"
    assert metadata[PUSHED_BY_METADATA] == controlplane.caller_identity(cp) != "someone"
