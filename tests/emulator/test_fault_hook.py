"""The fault harness's hook in a local execution environment: it records every AWS call, and injects
the planned fault where the real error would surface, below botocore's retries."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from layershift.local.server import LocalAws

from .support import TRUST_POLICY, handler_zip

WRITER = """
import boto3

def handler(event, context):
    boto3.client("s3").put_object(Bucket=event["bucket"], Key=event["key"], Body=b"written")
    return {"written": event["key"]}
"""


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalAws, Path, str]]:
    folder = tmp_path_factory.mktemp("faults")
    plan = folder / "plan.json"
    plan.write_text(json.dumps({"record": str(folder / "calls.jsonl"), "faults": {}}))
    with LocalAws(state_dir=folder / "state", alarm_interval=None, fault_plan=plan) as local:
        role = local.client("iam").create_role(RoleName="faults", AssumeRolePolicyDocument=TRUST_POLICY)["Role"]
        name = f"writer-{uuid.uuid4().hex[:6]}"
        local.client("lambda").create_function(
            FunctionName=name,
            Runtime="python3.13",
            Role=role["Arn"],
            Handler="app.handler",
            Code={"ZipFile": handler_zip(WRITER)},
        )
        local.client("s3").create_bucket(Bucket="fault-target")
        yield local, plan, name


def _invoke(aws: LocalAws, plan: Path, function: str, layer: str, fault: str | None) -> tuple[dict, dict, bool]:
    """Invoke with ``fault`` planned for PutObject of ``layer``; returns (answer, payload, object written)."""
    data = json.loads(plan.read_text())
    data["faults"] = {"planned": {"function": function, "service": "s3", "operation": "PutObject", "fault": fault}}
    plan.write_text(json.dumps(data))
    key = f"{layer}-{uuid.uuid4().hex[:6]}"
    answer = aws.client("lambda").invoke(
        FunctionName=function, Payload=json.dumps({"layer": layer, "bucket": "fault-target", "key": key}).encode()
    )
    payload = json.loads(answer["Payload"].read())
    written = aws.client("s3").list_objects_v2(Bucket="fault-target", Prefix=key).get("KeyCount", 0) == 1
    return answer, payload, written


def _calls(plan: Path, function: str) -> list[dict]:
    record = Path(json.loads(plan.read_text())["record"])
    return [c for c in map(json.loads, record.read_text().splitlines()) if c["function"] == function]


def test_a_throttle_is_retried_by_the_client_and_recorded(faulty) -> None:
    aws, plan, function = faulty
    answer, _, written = _invoke(aws, plan, function, "planned", "throttle")
    assert "FunctionError" not in answer and written
    puts = [c for c in _calls(plan, function) if c["operation"] == "PutObject" and c["layer"] == "planned"]
    assert [c["injected"] for c in puts[-2:]] == ["throttle", None]  # failed once, then the retry went through


def test_access_denied_reaches_the_function_as_the_service_error(faulty) -> None:
    aws, plan, function = faulty
    answer, payload, written = _invoke(aws, plan, function, "planned", "denied")
    assert answer["FunctionError"] == "Unhandled" and not written
    assert "(AccessDenied) when calling the PutObject operation" in payload["errorMessage"]


def test_a_timeout_comes_after_the_call_took_effect(faulty) -> None:
    aws, plan, function = faulty
    answer, payload, written = _invoke(aws, plan, function, "planned", "timeout")
    assert answer["FunctionError"] == "Unhandled" and written
    assert payload["errorType"] == "Sandbox.Timedout" and "Task timed out" in payload["errorMessage"]


def test_other_rollouts_are_left_alone(faulty) -> None:
    aws, plan, function = faulty
    answer, _, written = _invoke(aws, plan, function, "another-layer", "denied")
    assert "FunctionError" not in answer and written
