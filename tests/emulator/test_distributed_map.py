"""Distributed Map on the local emulated AWS, checked against what Step Functions documents:
items from S3, batches, child executions of their own, MaxConcurrency, tolerated failures,
ResultWriter files and the Map Run APIs."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from .support import handler_zip, wait_for

BATCH_HANDLER = """
import time

def handler(event, context):
    started = time.time()
    items = event["Items"]
    if any(item.get("fail") for item in items):
        raise RuntimeError("item failed: " + ",".join(str(item["n"]) for item in items if item.get("fail")))
    time.sleep(event.get("BatchInput", {}).get("sleep", 0))
    return {"n": [item["n"] for item in items], "tag": event.get("BatchInput", {}).get("tag"),
            "started": started, "ended": time.time()}
"""

ROLE = "arn:aws:iam::123456789012:role/map-tests"


def _definition(function_arn: str, bucket: str, **overrides: Any) -> str:
    processor = {
        "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
        "StartAt": "Work",
        "States": {
            "Work": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {"FunctionName": function_arn, "Payload.$": "$"},
                "OutputPath": "$.Payload",
                "End": True,
            }
        },
    }
    state: dict[str, Any] = {
        "Type": "Map",
        "Label": "Batches",
        "ItemReader": {
            "Resource": "arn:aws:states:::s3:getObject",
            "ReaderConfig": {"InputType": "JSON"},
            "Parameters": {"Bucket": bucket, "Key.$": "$.items_key"},
        },
        "ItemBatcher": {"MaxItemsPerBatchPath": "$.batch", "BatchInput": {"tag.$": "$.tag", "sleep.$": "$.sleep"}},
        "MaxConcurrency": 2,
        "ItemProcessor": processor,
        "ResultWriter": {
            "Resource": "arn:aws:states:::s3:putObject",
            "Parameters": {"Bucket": bucket, "Prefix.$": "$.tag"},
        },
        "ResultPath": "$.map",
        "Next": "Done",
    }
    state.update(overrides)
    for key in [k for k, v in state.items() if v is None]:
        del state[key]
    return json.dumps(
        {
            "StartAt": "Fan",
            "States": {
                "Fan": state,
                "Done": {"Type": "Succeed"},
                "Caught": {"Type": "Pass", "End": True},
            },
        }
    )


@pytest.fixture
def world(aws, make_function):
    lam, s3 = aws.client("lambda"), aws.client("s3")
    name = make_function(handler_zip(BATCH_HANDLER), Timeout=30)
    bucket = f"map-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    return {"function": lam.get_function(FunctionName=name)["Configuration"]["FunctionArn"], "bucket": bucket}


def _run(aws, world, items: list[dict], timeout: float = 90, **overrides: Any) -> tuple[dict, list[dict]]:
    sfn, s3 = aws.client("stepfunctions"), aws.client("s3")
    key = f"items-{uuid.uuid4().hex[:6]}.json"
    s3.put_object(Bucket=world["bucket"], Key=key, Body=json.dumps(items).encode())
    machine = sfn.create_state_machine(
        name=f"map-{uuid.uuid4().hex[:8]}",
        definition=_definition(world["function"], world["bucket"], **overrides),
        roleArn=ROLE,
    )["stateMachineArn"]
    arn = sfn.start_execution(
        stateMachineArn=machine,
        name=uuid.uuid4().hex,
        input=json.dumps({"items_key": key, "tag": "t1", "sleep": 0.3, "batch": 3}),
    )["executionArn"]
    described = wait_for(
        lambda: (d := sfn.describe_execution(executionArn=arn))["status"] != "RUNNING" and d, timeout=timeout
    )
    events = sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]
    return described, events


def _why(described: dict, events: list[dict]) -> tuple:
    return described.get("error"), described.get("cause"), [e["type"] for e in events]


def _read(aws, bucket: str, key: str) -> Any:
    return json.loads(aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())


def test_a_map_run_batches_items_into_child_executions_and_writes_their_results(aws, world):
    sfn = aws.client("stepfunctions")
    described, events = _run(aws, world, [{"n": n} for n in range(10)])

    assert described["status"] == "SUCCEEDED", _why(described, events)
    result = json.loads(described["output"])["map"]
    manifest = _read(aws, result["ResultWriterDetails"]["Bucket"], result["ResultWriterDetails"]["Key"])
    map_run_arn = result["MapRunArn"]
    assert manifest["MapRunArn"] == map_run_arn and ":mapRun:" in map_run_arn and "/Batches:" in map_run_arn
    # the ResultWriter's Parameters are evaluated against the state's input
    assert result["ResultWriterDetails"]["Key"].startswith("t1/") and manifest["ResultFiles"]["FAILED"] == []
    (succeeded_file,) = manifest["ResultFiles"]["SUCCEEDED"]
    records = _read(aws, world["bucket"], succeeded_file["Key"])
    # 10 items in batches of at most 3, each with the BatchInput evaluated against the state's input
    batches = sorted(json.loads(r["Input"])["Items"][0]["n"] for r in records)
    assert batches == [0, 3, 6, 9]
    assert sorted(len(json.loads(r["Input"])["Items"]) for r in records) == [1, 3, 3, 3]
    assert {json.loads(r["Input"])["BatchInput"]["tag"] for r in records} == {"t1"}
    assert {r["Status"] for r in records} == {"SUCCEEDED"}
    assert sorted(n for r in records for n in json.loads(r["Output"])["n"]) == list(range(10))

    # each child is an execution of its own: described, with a history, listed under its Map Run
    child = sfn.describe_execution(executionArn=records[0]["ExecutionArn"])
    assert child["status"] == "SUCCEEDED" and child["stateMachineArn"].endswith("/Batches")
    child_events = sfn.get_execution_history(executionArn=records[0]["ExecutionArn"])["events"]
    assert child_events[0]["type"] == "ExecutionStarted"
    assert any(e["type"] == "TaskStateEntered" for e in child_events)
    listed = sfn.list_executions(mapRunArn=map_run_arn)["executions"]
    assert sorted(e["executionArn"] for e in listed) == sorted(r["ExecutionArn"] for r in records)

    run = sfn.describe_map_run(mapRunArn=map_run_arn)
    assert run["status"] == "SUCCEEDED" and run["maxConcurrency"] == 2
    assert run["itemCounts"]["total"] == 10 and run["itemCounts"]["succeeded"] == 10
    assert run["executionCounts"]["total"] == 4 and run["executionCounts"]["succeeded"] == 4
    assert [r["mapRunArn"] for r in sfn.list_map_runs(executionArn=described["executionArn"])["mapRuns"]] == [
        map_run_arn
    ]

    # the parent's history holds the Map state's own events, not its children's
    types = [e["type"] for e in events]
    assert "MapRunStarted" in types and "MapRunSucceeded" in types
    assert not any(t.startswith("Task") or t.startswith("Lambda") for t in types)

    # MaxConcurrency 2: no moment had three children working at once
    spans = [(json.loads(r["Output"])["started"], json.loads(r["Output"])["ended"]) for r in records]
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 2


def test_failures_within_tolerance_are_written_and_the_map_goes_on(aws, world):
    items = [{"n": n, "fail": n == 4} for n in range(12)]  # one of four batches fails
    described, events = _run(aws, world, items, ToleratedFailurePercentage=25)

    assert described["status"] == "SUCCEEDED", _why(described, events)
    result = json.loads(described["output"])["map"]
    manifest = _read(aws, world["bucket"], result["ResultWriterDetails"]["Key"])
    (failed_file,) = manifest["ResultFiles"]["FAILED"]
    (failed,) = _read(aws, world["bucket"], failed_file["Key"])
    assert failed["Status"] == "FAILED" and failed["Error"] == "RuntimeError"
    assert "item failed: 4" in failed["Cause"]
    run = aws.client("stepfunctions").describe_map_run(mapRunArn=result["MapRunArn"])
    assert run["itemCounts"]["failed"] == 3 and run["itemCounts"]["succeeded"] == 9


def test_a_failure_past_the_tolerance_fails_the_map_state(aws, world):
    items = [{"n": n, "fail": n == 0} for n in range(12)]
    caught = [{"ErrorEquals": ["States.ExceedToleratedFailureThreshold"], "ResultPath": "$.error", "Next": "Caught"}]
    described, events = _run(aws, world, items, Catch=caught)

    assert described["status"] == "SUCCEEDED"  # through the Catch
    output = json.loads(described["output"])
    assert output["error"]["Error"] == "States.ExceedToleratedFailureThreshold"
    assert "MapRunFailed" in [e["type"] for e in events]
    map_run = aws.client("stepfunctions").list_map_runs(executionArn=described["executionArn"])["mapRuns"][0]
    run = aws.client("stepfunctions").describe_map_run(mapRunArn=map_run["mapRunArn"])
    assert run["status"] == "FAILED"
    # with MaxConcurrency 2 and the first batch failing, not every batch was started
    assert run["executionCounts"]["total"] == 4 and run["executionCounts"]["succeeded"] < 4


def test_without_a_result_writer_the_result_is_the_outputs_in_item_order(aws, world):
    described, events = _run(aws, world, [{"n": n} for n in range(7)], ResultWriter=None)
    assert described["status"] == "SUCCEEDED", _why(described, events)
    assert [out["n"] for out in json.loads(described["output"])["map"]] == [[0, 1, 2], [3, 4, 5], [6]]


def test_stopping_the_parent_aborts_its_children(aws, world):
    sfn, s3 = aws.client("stepfunctions"), aws.client("s3")
    s3.put_object(Bucket=world["bucket"], Key="slow.json", Body=json.dumps([{"n": n} for n in range(6)]).encode())
    machine = sfn.create_state_machine(
        name=f"map-{uuid.uuid4().hex[:8]}", definition=_definition(world["function"], world["bucket"]), roleArn=ROLE
    )["stateMachineArn"]
    slow = {"items_key": "slow.json", "tag": "t", "sleep": 20, "batch": 3}
    arn = sfn.start_execution(stateMachineArn=machine, name=uuid.uuid4().hex, input=json.dumps(slow))["executionArn"]
    run_arn = wait_for(lambda: (runs := sfn.list_map_runs(executionArn=arn)["mapRuns"]) and runs[0]["mapRunArn"])
    wait_for(lambda: sfn.list_executions(mapRunArn=run_arn)["executions"], timeout=30)
    time.sleep(1)
    sfn.stop_execution(executionArn=arn)
    wait_for(lambda: sfn.describe_execution(executionArn=arn)["status"] == "ABORTED", timeout=30)
    children = wait_for(
        lambda: (
            (c := sfn.list_executions(mapRunArn=run_arn)["executions"])
            and all(e["status"] != "RUNNING" for e in c)
            and c
        ),
        timeout=60,
    )
    assert {child["status"] for child in children} == {"ABORTED"}
    assert len(children) == 2  # MaxConcurrency: the other batches never started


def test_a_definition_the_adapter_cannot_run_is_refused(aws):
    sfn = aws.client("stepfunctions")
    definition = json.loads(_definition("arn:aws:lambda:us-east-1:123456789012:function:x", "b"))
    definition["States"]["Fan"]["ItemBatcher"] = {"MaxItemsPerBatch": 3, "MaxItemsPerBatchPath": "$.n"}
    with pytest.raises(sfn.exceptions.InvalidDefinition, match="both MaxItemsPerBatch and MaxItemsPerBatchPath"):
        sfn.create_state_machine(name=f"bad-{uuid.uuid4().hex[:6]}", definition=json.dumps(definition), roleArn=ROLE)
