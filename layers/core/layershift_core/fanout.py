"""Per-function work on Step Functions Distributed Map: items in S3, batches in child executions.

Each phase that touches functions (assessing, preparing, shifting, reading metrics, restoring) is a
Map Run. Its items are a JSON array in the artifact bucket (``write_items``), read by the Map state's
ItemReader; ItemBatcher hands a child execution up to ``FanOut.batch_size`` of them, with the
phase's ``BatchInput``; the child's results go to S3 through the ResultWriter, and the phase's
collector reads them back (``read_map_run``). No single invocation makes a call per function of
the whole fleet, and the parent execution carries only keys and counts.

A child is one task in a loop (``run_pass``): each pass works through as many of its items as its
time allows, the pacer refusing slots past the task's deadline (``pacing.OutOfTime``), and hands
the rest to the next pass with the results so far. So a batch finishes however long the shared
budget makes it wait, and no task runs into its timeout.

Child executions are Standard workflows: a batch's duration is set by the shared budget (other
rollouts may hold most of it), which can exceed Express workflows' five minutes; Standard runs
each child exactly once and keeps its history for the console's Map Run view.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from . import errors
from .artifacts import read_json, rollout_prefix, write_bytes
from .errors import ControlPlaneSaturated
from .models import MapRunRef
from .pacing import OutOfTime, set_deadline
from .registry import Registry
from .settings import Settings
from .usage import CHILD_EXECUTIONS, TRANSITIONS_CHILDREN, USAGE

# A pass stops this long before its task's timeout, to hand its results on.
SAFETY_SECONDS = 30
# Passes in a row that finish no item: the budget is not reaching this batch at all.
MAX_STALLED_PASSES = 5


class BatchInput(BaseModel):
    """What every phase's BatchInput carries; each phase adds its own fields."""

    model_config = ConfigDict(extra="allow")

    rollout_id: str
    layer: str


class Batch(BaseModel):
    """A child execution's input, and the state its loop carries from one pass to the next."""

    model_config = ConfigDict(extra="forbid")

    Items: list[dict[str, Any]]
    BatchInput: dict[str, Any]
    results: list[dict[str, Any]] = Field(default_factory=list)
    passes: int = 0
    retries: int = 0
    stalled: int = 0
    done: bool = False


class BatchEvent(BaseModel):
    """The child's task payload: the batch and the task state's retry count (``$$.State.RetryCount``)."""

    batch: Batch
    retry_count: int = 0


Process = Callable[[list[dict[str, Any]], dict[str, Any], float], tuple[list[dict[str, Any]], list[dict[str, Any]]]]


def run_pass(event: BatchEvent, seconds_left: float, process: Process) -> Batch:
    """One pass of a child's loop: ``process(items, batch_input, deadline)`` returns the results of the
    items it finished and the items left; the batch is done when none are left."""
    batch = event.batch
    BatchInput.model_validate(batch.BatchInput)
    deadline = time.time() + max(1.0, seconds_left - SAFETY_SECONDS)
    set_deadline(deadline)
    try:
        results, left = process(batch.Items, batch.BatchInput, deadline)
    finally:
        set_deadline(None)
    batch.stalled = batch.stalled + 1 if left and not results else 0
    if batch.stalled >= MAX_STALLED_PASSES:
        raise ControlPlaneSaturated(
            f"{len(left)} function(s) of this batch got no Lambda request slot in {batch.stalled} passes in a "
            "row: the account's control-plane budget is used up by others; the rollout stops"
        )
    batch.results.extend(results)
    batch.Items = left
    batch.passes += 1
    batch.retries += event.retry_count
    batch.done = not left
    return batch


def until_out_of_time(
    items: list[dict[str, Any]], work: Callable[[dict[str, Any]], dict[str, Any] | None]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``work`` each item in turn until the budget's next slot is past the deadline: (results, items left)."""
    results: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            result = work(item)
        except OutOfTime:
            return results, items[index:]
        if result is not None:
            results.append(result)
    return results, []


def flush_usage(settings: Settings, layer: str, rollout_id: str) -> None:
    """Add what this invocation spent to the rollout's record.

    The write itself is not counted: bookkeeping, as the archive of an ended record is (history.py),
    so that a record flushed last and then archived stays equal to its archive."""
    counts = USAGE.take()
    if counts:
        with USAGE.paused():
            Registry(settings.table).add_usage(layer, rollout_id, counts)


# -- items and results in S3 -------------------------------------------------------------------------


def items_key(layer: str, rollout_id: str, name: str) -> str:
    return f"{rollout_prefix(layer, rollout_id)}items/{name}.json"


def results_prefix(layer: str, rollout_id: str) -> str:
    return f"{rollout_prefix(layer, rollout_id)}results"


def write_items(bucket: str, key: str, items: list[dict[str, Any]]) -> int:
    """A Map Run's items, as the JSON array its ItemReader reads; returns the bytes written."""
    body = json.dumps(items, separators=(",", ":"), sort_keys=True).encode()
    write_bytes(bucket, key, body, "application/json")
    return len(body)


class FailedChild(BaseModel):
    """A child execution that ended without finishing its batch."""

    items: list[dict[str, Any]]
    error: str
    cause: str


class MapRunResults(BaseModel):
    """A finished Map Run: every child's final batch, the children that failed, and what they cost."""

    map_run_arn: str
    batches: list[Batch]
    failed: list[FailedChild]
    child_executions: int
    transitions: int

    @property
    def results(self) -> list[dict[str, Any]]:
        return [result for batch in self.batches for result in batch.results]


def _message(cause: str) -> str:
    """A Lambda task's error message, out of the cause Step Functions records (the error as JSON)."""
    try:
        parsed = json.loads(cause)
    except ValueError:
        return cause
    return str(parsed.get("errorMessage") or cause) if isinstance(parsed, dict) else cause


def raise_first_failure(run: MapRunResults, what: str) -> None:
    """Stop the rollout when a child execution failed, with that child's own error name and message.

    The Map Runs tolerate every failure, so that every child runs and the collector can say which
    error stopped the rollout; a failure rolls the rollout back all the same."""
    if not run.failed:
        return
    first = run.failed[0]
    message = f"{len(run.failed)} batch(es) of {what} failed; the first: {_message(first.cause)}"
    kind = getattr(errors, first.error, None)
    if isinstance(kind, type) and issubclass(kind, errors.LayershiftError):
        raise kind(message)
    raise errors.BatchFailed(f"{first.error}: {message}")


def _child_transitions(batch: Batch | None) -> int:
    """States a child entered: a task and its loop's Choice per pass, each retry, and the final state."""
    if batch is None:
        return 1
    return 2 * max(batch.passes, 1) + batch.retries + 1


def read_map_run(bucket: str, ref: MapRunRef) -> MapRunResults:
    """The results a Map Run's ResultWriter wrote (its manifest, then each result file)."""
    manifest = read_json(ref.ResultWriterDetails["Bucket"], ref.ResultWriterDetails["Key"])
    files = manifest.get("ResultFiles", {})
    batches: list[Batch] = []
    failed: list[FailedChild] = []
    transitions = children = 0
    for status in ("SUCCEEDED", "FAILED", "PENDING"):
        for entry in files.get(status, []):
            for record in read_json(manifest.get("DestinationBucket", bucket), entry["Key"]):
                children += 1 if status != "PENDING" else 0
                if status == "SUCCEEDED":
                    batch = Batch.model_validate(json.loads(record["Output"]))
                    batches.append(batch)
                    transitions += _child_transitions(batch)
                    continue
                started = Batch.model_validate(json.loads(record.get("Input") or "{}"))
                transitions += _child_transitions(None) if status == "FAILED" else 0
                failed.append(
                    FailedChild(
                        items=started.Items,
                        error=str(record.get("Error") or status),
                        cause=str(record.get("Cause") or "the child execution did not run"),
                    )
                )
    return MapRunResults(
        map_run_arn=ref.MapRunArn, batches=batches, failed=failed, child_executions=children, transitions=transitions
    )


def record_map_run(run: MapRunResults) -> None:
    """Count a Map Run's child executions and their state transitions in this task's usage."""
    USAGE.add(CHILD_EXECUTIONS, run.child_executions)
    USAGE.add(TRANSITIONS_CHILDREN, run.transitions)


def read_items(bucket: str, key: str) -> list[dict[str, Any]]:
    items = read_json(bucket, key)
    if not isinstance(items, list):
        raise ValueError(f"s3://{bucket}/{key} is not a JSON array of items")
    return items
