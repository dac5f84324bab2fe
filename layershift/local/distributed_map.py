"""Step Functions' Distributed Map on the local emulated AWS: Map Runs of real child executions.

The emulator's interpreter (moto 5.2.5) parses a Map state in DISTRIBUTED mode but does not run it
as Step Functions does:

* ``ItemBatcher`` is not in its grammar, so a definition that batches items is refused as invalid;
* the iterations run as frames of the parent execution: they have no execution ARN, no history of
  their own, and ``ListExecutions(mapRunArn=...)`` knows nothing of them;
* ``ToleratedFailurePercentage`` and ``ToleratedFailureCount`` are ignored: a failed iteration
  never fails the Map state, and its output is ``null``;
* the ``ResultWriter`` manifest lists no result files, and its Parameters are evaluated against the
  Map's result instead of the state's input.

Here a Map Run is what Step Functions documents:

* the items come from the ``ItemReader`` (``s3:getObject`` of a JSON array, through the
  interpreter's own reader) or from ``ItemsPath``, each passed through ``ItemSelector``, then
  grouped by ``ItemBatcher`` (``MaxItemsPerBatch``, ``MaxInputBytesPerBatch``, either as a number or a ``...Path``,
  and ``BatchInput``)
  into ``{"BatchInput": ..., "Items": [...]}``;
* each item (or batch) is the input of a child execution of the ``ItemProcessor`` as a state
  machine of its own, ``<parent>/<Label>``, with an ARN, a history and a status;
  ``DescribeExecution``, ``GetExecutionHistory``, ``StopExecution`` and
  ``ListExecutions(mapRunArn=...)`` answer for it, and its end sends the "Execution Status Change"
  event like any other execution's;
* at most ``MaxConcurrency`` children run at once (0: all of them);
* failed items (every item of a failed child) are counted against ``ToleratedFailureCount`` and
  ``ToleratedFailurePercentage`` (of all items); when neither is set none is tolerated. Past the
  threshold no new child starts, the running ones are stopped, and the Map state fails with
  ``States.ExceedToleratedFailureThreshold``;
* ``DescribeMapRun`` and ``ListMapRuns`` report the run's item and execution counts;
* with a ``ResultWriter`` (``s3:putObject``), ``<Prefix>/<map run id>/manifest.json`` and one
  ``SUCCEEDED_0.json``/``FAILED_0.json``/``PENDING_0.json`` per status that has executions are
  written, each execution as Step Functions records it (``ExecutionArn``, ``Input``, ``Output``,
  ``Status``, ``Error``, ``Cause``...), and the state's result is ``{"MapRunArn",
  "ResultWriterDetails": {"Bucket", "Key"}}``; without one, the result is the children's outputs
  in item order (a failed child's record in its place).

The parent's history holds only the Map state's own events (MapStateEntered, MapStateStarted,
MapRunStarted, MapRunSucceeded or MapRunFailed, ...), whatever the number of items.

Not emulated: ``ItemReader`` forms other than a JSON array in S3 (CSV, manifests, listing
objects), ``ResultWriter.WriterConfig``, Express children's at-most-once semantics (children run as
Standard executions), redrive.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from moto.core.exceptions import JsonRESTError
from moto.core.responses import ActionResult
from moto.stepfunctions.models import StateMachineInstance, StepFunctionBackend
from moto.stepfunctions.parser.api import (
    ExecutionStatus,
    HistoryEventType,
    MapRunFailedEventDetails,
    MapRunStartedEventDetails,
    MapRunStatus,
)
from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
    FailureEvent,
    FailureEventException,
)
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import StatesErrorName
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import StatesErrorNameType
from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration.distributed_iteration_component import (
    DistributedIterationComponent,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_map.result_writer.resource_eval import (
    resource_eval_s3,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_map.result_writer.result_writer_decl import ResultWriter
from moto.stepfunctions.parser.asl.component.state.exec.state_map.state_map import StateMap
from moto.stepfunctions.parser.asl.eval.environment import Environment
from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails
from moto.stepfunctions.parser.asl.eval.states import ItemData, MapData
from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
from moto.stepfunctions.parser.asl.utils.boto_client import boto_client_for
from moto.stepfunctions.parser.backend.execution import Execution
from moto.stepfunctions.parser.models import StepFunctionsParserBackend
from moto.stepfunctions.responses import StepFunctionResponse

LOG = logging.getLogger(__name__)

# Step Functions' own limit on a batch's input.
MAX_INPUT_BYTES_PER_BATCH = 262_144
_TOLERANCE_FIELDS = (
    "ToleratedFailureCount",
    "ToleratedFailureCountPath",
    "ToleratedFailurePercentage",
    "ToleratedFailurePercentagePath",
)
_BATCHER_FIELDS = {
    "MaxItemsPerBatch",
    "MaxItemsPerBatchPath",
    "MaxInputBytesPerBatch",
    "MaxInputBytesPerBatchPath",
    "BatchInput",
}

_originals: dict[str, Any] = {}


class DistributedMapError(ValueError):
    """A Distributed Map definition the local adapter cannot run as Step Functions would."""


# ------------------------------------------------------------------------------------ definitions


@dataclass(frozen=True)
class MapSpec:
    """What the parser drops or cannot keep of one Distributed Map state, from its JSON."""

    child_definition: str
    batcher: Any = None  # ItemBatcher's limits (numbers or paths), evaluated with the interpreter's JSONPath
    batch_input: Any = None  # a payload template, evaluated the same way (see _template_program)
    tolerates_count: bool = False
    tolerates_percentage: bool = False

    @property
    def batches(self) -> bool:
        return self.batcher is not None


@dataclass
class _Prepared:
    definition: str  # what the interpreter parses: the original without ItemBatcher
    maps: dict[str, MapSpec]


def _distributed(state: dict[str, Any]) -> bool:
    processor = state.get("ItemProcessor") or {}
    return state.get("Type") == "Map" and (processor.get("ProcessorConfig") or {}).get("Mode") == "DISTRIBUTED"


def _walk_states(states: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every state of a definition's scope, into Parallel branches and inline Map processors; a
    Distributed Map's processor is a definition of its own (a child state machine), not this scope."""
    for name, state in states.items():
        if not isinstance(state, dict):
            continue
        yield name, state
        if state.get("Type") == "Parallel":
            for branch in state.get("Branches") or []:
                yield from _walk_states(branch.get("States") or {})
        elif state.get("Type") == "Map" and not _distributed(state):
            processor = state.get("ItemProcessor") or state.get("Iterator") or {}
            yield from _walk_states(processor.get("States") or {})


def _batcher(name: str, batcher: Any) -> dict[str, Any]:
    if not isinstance(batcher, dict) or not batcher:
        raise DistributedMapError(f"state {name}: ItemBatcher must be an object with MaxItemsPerBatch and/or ...")
    unknown = set(batcher) - _BATCHER_FIELDS
    if unknown:
        raise DistributedMapError(
            f"state {name}: ItemBatcher field(s) {', '.join(sorted(unknown))} are not emulated locally "
            f"(supported: {', '.join(sorted(_BATCHER_FIELDS))})"
        )
    for key in ("MaxItemsPerBatch", "MaxInputBytesPerBatch"):
        value = batcher.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise DistributedMapError(f"state {name}: ItemBatcher.{key} must be a positive integer, not {value!r}")
        if value is not None and f"{key}Path" in batcher:
            raise DistributedMapError(f"state {name}: ItemBatcher sets both {key} and {key}Path")
    if batcher.get("MaxInputBytesPerBatch", 0) > MAX_INPUT_BYTES_PER_BATCH:
        raise DistributedMapError(f"state {name}: ItemBatcher.MaxInputBytesPerBatch is at most 256 KiB")
    if not set(batcher) & (_BATCHER_FIELDS - {"BatchInput"}):
        raise DistributedMapError(f"state {name}: ItemBatcher needs MaxItemsPerBatch or MaxInputBytesPerBatch")
    return batcher


def prepare_definition(definition: str) -> _Prepared:
    """The definition the interpreter can parse, and what it would lose of each Distributed Map."""
    try:
        document = json.loads(definition)
    except ValueError:
        return _Prepared(definition, {})  # not JSON: let the interpreter report it
    if not isinstance(document, dict):
        return _Prepared(definition, {})
    maps: dict[str, MapSpec] = {}
    for name, state in _walk_states(document.get("States") or {}):
        if not _distributed(state):
            continue
        if name in maps:
            raise DistributedMapError(f"two Distributed Map states are named {name}; the local adapter needs one")
        reader = state.get("ItemReader")
        if reader is not None:
            config = reader.get("ReaderConfig") or {}
            if reader.get("Resource", "").rsplit(":", 1)[-1] != "getObject" or config.get("InputType") != "JSON":
                raise DistributedMapError(
                    f"state {name}: only an ItemReader of s3:getObject with ReaderConfig.InputType JSON is "
                    "emulated locally"
                )
        if (state.get("ResultWriter") or {}).get("WriterConfig") is not None:
            raise DistributedMapError(f"state {name}: ResultWriter.WriterConfig is not emulated locally")
        batcher = _batcher(name, state.pop("ItemBatcher")) if "ItemBatcher" in state else {}
        if isinstance(state.get("ToleratedFailurePercentage"), int):
            # the interpreter's grammar takes only a decimal number here, where Step Functions takes both
            state["ToleratedFailurePercentage"] = float(state["ToleratedFailurePercentage"])
        processor = {k: v for k, v in state["ItemProcessor"].items() if k != "ProcessorConfig"}
        if "QueryLanguage" in document and "QueryLanguage" not in processor:
            processor["QueryLanguage"] = document["QueryLanguage"]
        limits = {key: value for key, value in batcher.items() if key != "BatchInput"}
        maps[name] = MapSpec(
            child_definition=json.dumps(processor, sort_keys=True),
            batcher={
                (key.removesuffix("Path") + ".$" if key.endswith("Path") else key): value
                for key, value in limits.items()
            }
            or None,
            batch_input=batcher.get("BatchInput"),
            tolerates_count=any(key in state for key in _TOLERANCE_FIELDS[:2]),
            tolerates_percentage=any(key in state for key in _TOLERANCE_FIELDS[2:]),
        )
    if not maps:
        return _Prepared(definition, {})
    return _Prepared(json.dumps(document), maps)


def _state_maps(program: Any) -> Iterator[StateMap]:
    """Every Map state of a parsed program's scope (as ``_walk_states`` walks the JSON)."""
    for state in program.states.states.values():
        if isinstance(state, StateMap):
            yield state
            component = state.iteration_component
            if not isinstance(component, DistributedIterationComponent):
                yield from _state_maps(component)
        for branch in getattr(getattr(state, "branches", None), "programs", None) or []:
            yield from _state_maps(branch)


_templates: dict[str, Any] = {}
_templates_lock = threading.Lock()


def _template_program(template: Any) -> Any:
    """BatchInput is a payload template like Parameters (and ItemBatcher's ``...Path`` fields are
    paths): a one-state program evaluates it with the interpreter's own JSONPath, context object
    and intrinsic functions."""
    text = json.dumps(
        {"StartAt": "Template", "States": {"Template": {"Type": "Pass", "Parameters": template, "End": True}}}
    )
    with _templates_lock:
        if text not in _templates:
            _templates[text] = AmazonStateLanguageParser.parse(text)[0].states.states["Template"].parameters
        return _templates[text]


def parse(definition: str) -> Any:
    """Parse a definition as the interpreter does, with each Distributed Map run by this adapter."""
    prepared = prepare_definition(definition)
    program = AmazonStateLanguageParser.parse(prepared.definition)[0]
    for state in _state_maps(program):
        spec = prepared.maps.get(state.name)
        if spec is not None:
            state.iteration_component._layershift_map = spec  # type: ignore[attr-defined]
    return program


def _validate_definition(definition: str) -> None:
    try:
        prepared = prepare_definition(definition)
    except DistributedMapError as exc:
        raise JsonRESTError("InvalidDefinition", str(exc)) from None
    _originals["validate_definition"](definition=prepared.definition)


# ------------------------------------------------------------------------------------ child executions


class _Children:
    """Child executions by ARN, and the Map Run each belongs to."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_arn: dict[str, Execution] = {}
        self.by_map_run: dict[str, list[Execution]] = {}

    def add(self, map_run_arn: str, execution: Execution) -> None:
        with self.lock:
            self.by_arn[execution.exec_arn] = execution
            self.by_map_run.setdefault(map_run_arn, []).append(execution)

    def open(self, map_run_arn: str) -> None:
        with self.lock:
            self.by_map_run.setdefault(map_run_arn, [])

    def get(self, arn: str) -> Execution | None:
        with self.lock:
            return self.by_arn.get(arn)

    def of_map_run(self, map_run_arn: str) -> list[Execution] | None:
        with self.lock:
            found = self.by_map_run.get(map_run_arn)
            return list(found) if found is not None else None

    def clear(self) -> None:
        with self.lock:
            self.by_arn.clear()
            self.by_map_run.clear()


_children = _Children()


def _describe_execution(self: Any, execution_arn: str) -> Any:
    child = _children.get(execution_arn)
    return child if child is not None else _originals["describe_execution"](self, execution_arn)


def _stop_execution(self: Any, execution_arn: str) -> Any:
    child = _children.get(execution_arn)
    if child is None:
        return _originals["stop_execution"](self, execution_arn)
    if child.exec_status == ExecutionStatus.RUNNING and child.exec_worker is not None:
        child.stop(stop_date=datetime.datetime.now(tz=datetime.UTC), error=None, cause=None)
    return child


def _list_executions(self: Any) -> Any:
    map_run_arn = self._get_param("mapRunArn")
    if not map_run_arn:
        return _originals["list_executions"](self)
    executions = _children.of_map_run(map_run_arn)
    if executions is None:
        raise JsonRESTError("ResourceNotFound", f"Map Run Does Not Exist: '{map_run_arn}'")
    status_filter = self._get_param("statusFilter")
    listed = []
    for execution in sorted(executions, key=lambda e: e.start_date, reverse=True):
        status = execution.exec_status.value
        if status_filter and status != status_filter:
            continue
        item = {
            "executionArn": execution.exec_arn,
            "stateMachineArn": execution.state_machine.arn,
            "name": execution.name,
            "status": status,
            "startDate": execution.start_date,
            "mapRunArn": map_run_arn,
        }
        if execution.stop_date is not None:
            item["stopDate"] = execution.stop_date
        listed.append(item)
    return ActionResult({"executions": listed})


# ------------------------------------------------------------------------------------ a Map Run


def _now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


@dataclass
class _Child:
    index: int
    items: int
    input: Any
    execution: Execution | None = None


@dataclass
class _RunState:
    children: list[_Child]
    total_items: int
    finished: list[_Child] = field(default_factory=list)
    failed_items: int = 0


def _selected_items(env: Environment, eval_input: Any, items: list[Any]) -> list[Any]:
    selector = eval_input.item_selector
    if selector is None:
        return items
    selected = []
    for index, item in enumerate(items):
        frame = env.open_frame()
        try:
            frame.states.reset(input_value=env.states.get_input())
            frame.states.context_object.context_object_data["Map"] = MapData(Item=ItemData(Index=index, Value=item))
            frame.stack.append(frame.states.get_input())
            selector.eval(env=frame)
            selected.append(frame.stack.pop())
        finally:
            env.close_frame(frame)
    return selected


def _evaluate(env: Environment, template: Any) -> Any:
    parameters = _template_program(template)
    frame = env.open_frame()
    try:
        frame.states.reset(input_value=env.states.get_input())
        frame.stack.append(frame.states.get_input())
        parameters.eval(env=frame)
        return frame.stack.pop()
    finally:
        env.close_frame(frame)


def _limit(limits: dict[str, Any], key: str, name: str) -> int | None:
    value = limits.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _failure(StatesErrorNameType.StatesRuntime, f"ItemBatcher.{name} is {value!r}, not a positive integer")
    return value


def _batches(env: Environment, spec: MapSpec, items: list[Any], batch_input: Any) -> list[tuple[int, Any]]:
    """(item count, child input) per child: the items one by one, or grouped as ItemBatcher says."""
    if not spec.batches:
        return [(1, item) for item in items]
    limits = _evaluate(env, spec.batcher)
    limit_items = _limit(limits, "MaxItemsPerBatch", "MaxItemsPerBatch") or len(items) or 1
    limit_bytes = min(
        _limit(limits, "MaxInputBytesPerBatch", "MaxInputBytesPerBatch") or MAX_INPUT_BYTES_PER_BATCH,
        MAX_INPUT_BYTES_PER_BATCH,
    )
    base = {"BatchInput": batch_input} if batch_input is not None else {}
    batches: list[tuple[int, Any]] = []
    current: list[Any] = []

    def size(members: list[Any]) -> int:
        return len(_compact({**base, "Items": members}).encode())

    for item in items:
        if current and (len(current) >= limit_items or size([*current, item]) > limit_bytes):
            batches.append((len(current), {**base, "Items": current}))
            current = []
        if size([item]) > limit_bytes:
            raise _failure(
                StatesErrorNameType.StatesItemReaderFailed,
                f"an item is larger than MaxInputBytesPerBatch ({limit_bytes} bytes) on its own",
            )
        current.append(item)
    if current:
        batches.append((len(current), {**base, "Items": current}))
    return batches


class _MapFailure(Exception):
    def __init__(self, error: str, cause: str) -> None:
        super().__init__(f"{error}: {cause}")
        self.error = error
        self.cause = cause


def _failure(kind: StatesErrorNameType, cause: str) -> _MapFailure:
    return _MapFailure(StatesErrorName(typ=kind).error_name, cause)


def _child_execution(env: Environment, record: Any, spec: MapSpec, child: _Child) -> Execution:
    context = env.states.context_object.context_object_data
    map_state_machine_arn = record.map_state_machine_arn
    name = str(uuid.uuid4())
    machine = StateMachineInstance(
        arn=map_state_machine_arn,
        name=map_state_machine_arn.split(":stateMachine:", 1)[-1],
        definition=spec.child_definition,
        roleArn=context["Execution"]["RoleArn"],
    )
    machine.revision_id = None  # type: ignore[attr-defined]
    machine.create_date = machine.creation_date  # type: ignore[attr-defined]
    machine.logging_config = None  # type: ignore[attr-defined]
    details = env.aws_execution_details
    return Execution(
        name=name,
        sm_type=machine.sm_type,
        role_arn=context["Execution"]["RoleArn"],
        exec_arn=f"{map_state_machine_arn.replace(':stateMachine:', ':execution:')}:{name}",
        account_id=details.account,
        region_name=details.region,
        state_machine=machine,
        start_date=_now(),
        cloud_watch_logging_session=None,
        activity_store={},
        input_data=_compact(child.input),
    )


def _run_child(execution: Execution) -> Execution:
    """Run one child execution to its end, in this thread (Step Functions runs it on its own)."""
    execution.exec_worker = execution._get_start_execution_worker()
    execution.exec_status = ExecutionStatus.RUNNING
    execution.exec_worker._execution_logic()
    return execution


def _exceeded(spec: MapSpec, record: Any, failed: int, total: int) -> bool:
    if failed == 0:
        return False
    checks = []
    if spec.tolerates_count:
        checks.append(failed > record.tolerated_failure_count)
    if spec.tolerates_percentage:
        checks.append(100.0 * failed / max(total, 1) > record.tolerated_failure_percentage)
    return any(checks) if checks else True


def _count(record: Any, child: _Child, status: ExecutionStatus) -> None:
    items, executions = record.item_counter, record.execution_counter
    items.running.offset(-child.items)
    executions.running.offset(-1)
    if status == ExecutionStatus.SUCCEEDED:
        items.succeeded.count(child.items)
        executions.succeeded.count()
    elif status == ExecutionStatus.ABORTED:
        items.aborted.count(child.items)
        executions.aborted.count()
    elif status == ExecutionStatus.TIMED_OUT:
        items.timed_out.count(child.items)
        executions.timed_out.count()
    else:
        items.failed.count(child.items)
        executions.failed.count()


def _run_children(env: Environment, record: Any, spec: MapSpec, run: _RunState) -> None:
    """Start the children, at most MaxConcurrency at a time, until all end or the tolerance is exceeded."""
    limit = record.max_concurrency or len(run.children) or 1
    pending = list(reversed(run.children))
    running: dict[Future[Execution], _Child] = {}
    record.item_counter.total.count(run.total_items)
    record.item_counter.pending.count(run.total_items)
    record.execution_counter.total.count(len(run.children))
    record.execution_counter.pending.count(len(run.children))
    exceeded = False
    with ThreadPoolExecutor(max_workers=min(limit, max(len(run.children), 1)), thread_name_prefix="map-run") as pool:
        while pending or running:
            while pending and len(running) < limit and not exceeded and env.is_running():
                child = pending.pop()
                child.execution = _child_execution(env, record, spec, child)
                _children.add(record.map_run_arn, child.execution)
                record.item_counter.pending.offset(-child.items)
                record.item_counter.running.count(child.items)
                record.execution_counter.pending.offset(-1)
                record.execution_counter.running.count()
                running[pool.submit(_run_child, child.execution)] = child
            if not running:
                break
            done, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
            if not env.is_running() or exceeded:
                _stop(running.values())
            for future in done:
                child = running.pop(future)
                future.result()
                status = child.execution.exec_status if child.execution else ExecutionStatus.FAILED
                _count(record, child, status)
                run.finished.append(child)
                if status != ExecutionStatus.SUCCEEDED:
                    run.failed_items += child.items
                if not exceeded and _exceeded(spec, record, run.failed_items, run.total_items):
                    exceeded = True
                    _stop(running.values())
    if exceeded:
        raise _failure(
            StatesErrorNameType.StatesExceedToleratedFailureThreshold,
            "The specified tolerated failure threshold was exceeded",
        )


def _stop(children: Any) -> None:
    for child in children:
        execution = child.execution
        if execution is not None and execution.exec_worker is not None and execution.exec_worker.env is not None:
            execution.stop(stop_date=_now(), error=None, cause=None)


def _execution_record(execution: Execution) -> dict[str, Any]:
    """One child as a ResultWriter file records it."""
    entry: dict[str, Any] = {
        "ExecutionArn": execution.exec_arn,
        "Input": _compact(execution.input_data),
        "InputDetails": {"Included": True},
        "Name": execution.name,
        "RedriveCount": 0,
        "RedriveStatus": "NOT_REDRIVABLE",
        "StartDate": execution.start_date.isoformat(),
        "StateMachineArn": execution.state_machine.arn,
        "Status": execution.exec_status.value,
        "StopDate": (execution.stop_date or _now()).isoformat(),
    }
    if execution.exec_status == ExecutionStatus.SUCCEEDED:
        entry["Output"] = _compact(execution.output)
        entry["OutputDetails"] = {"Included": True}
    if execution.error is not None:
        entry["Error"] = execution.error
    if execution.cause is not None:
        entry["Cause"] = execution.cause
    return entry


def _outputs(run: _RunState) -> list[Any]:
    """Without a ResultWriter: each child's output in item order (a failed child's record instead)."""
    outputs = []
    for child in run.children:
        execution = child.execution
        if execution is None:
            continue
        if execution.exec_status == ExecutionStatus.SUCCEEDED:
            outputs.append(execution.output)
        else:
            outputs.append(_execution_record(execution))
    return outputs


def _eval_body(self: DistributedIterationComponent, env: Environment) -> None:
    eval_input = env.stack.pop()
    spec: MapSpec | None = getattr(self, "_layershift_map", None)
    record = eval_input.map_run_record
    if spec is None:
        raise RuntimeError("a Distributed Map state parsed without the local adapter")
    _children.open(record.map_run_arn)
    env.event_manager.add_event(
        context=env.event_history_context,
        event_type=HistoryEventType.MapRunStarted,
        event_details=EventDetails(mapRunStartedEventDetails=MapRunStartedEventDetails(mapRunArn=record.map_run_arn)),
    )
    run: _RunState | None = None
    try:
        if eval_input.item_reader is not None:
            eval_input.item_reader.eval(env=env)
            items = env.stack.pop()
        else:
            items = eval_input.input_items
        if not isinstance(items, list):
            raise _failure(StatesErrorNameType.StatesItemReaderFailed, "the items are not a JSON array")
        items = _selected_items(env, eval_input, items)
        batch_input = _evaluate(env, spec.batch_input) if spec.batch_input is not None else None
        run = _RunState(
            children=[_Child(i, n, value) for i, (n, value) in enumerate(_batches(env, spec, items, batch_input))],
            total_items=len(items),
        )
        record._layershift_run = run  # type: ignore[attr-defined]  # for the ResultWriter
        _run_children(env, record, spec, run)
    except _MapFailure as failure:
        _fail(env, record, failure.error, failure.cause)
    except FailureEventException as failure:
        error, cause = failure.extract_error_cause_pair() or (None, None)
        env.event_manager.add_event(
            context=env.event_history_context,
            event_type=HistoryEventType.MapRunFailed,
            event_details=EventDetails(
                mapRunFailedEventDetails=MapRunFailedEventDetails(error=error or "", cause=cause or "")
            ),
        )
        record.set_stop(status=MapRunStatus.FAILED)
        raise
    if not env.is_running():
        record.set_stop(status=MapRunStatus.ABORTED)
        return
    env.event_manager.add_event(context=env.event_history_context, event_type=HistoryEventType.MapRunSucceeded)
    record.set_stop(status=MapRunStatus.SUCCEEDED)
    env.stack.append(_outputs(run) if run is not None else [])


def _fail(env: Environment, record: Any, error: str, cause: str) -> None:
    details = MapRunFailedEventDetails(error=error, cause=cause)
    env.event_manager.add_event(
        context=env.event_history_context,
        event_type=HistoryEventType.MapRunFailed,
        event_details=EventDetails(mapRunFailedEventDetails=details),
    )
    record.set_stop(status=MapRunStatus.FAILED)
    raise FailureEventException(
        failure_event=FailureEvent(
            env=env,
            error_name=StatesErrorName(typ=_error_type(error)),
            event_type=HistoryEventType.MapRunFailed,
            event_details=EventDetails(mapRunFailedEventDetails=details),
        )
    )


def _error_type(error: str) -> StatesErrorNameType:
    for kind in StatesErrorNameType:
        if StatesErrorName(typ=kind).error_name == error:
            return kind
    raise ValueError(error)


# ------------------------------------------------------------------------------------ the ResultWriter


def _result_writer_eval(self: Any, env: Environment) -> None:
    """ResultWriter's Parameters are evaluated against the state's input, as Step Functions does (the
    interpreter evaluates them against the Map's result)."""
    results = env.stack.pop()
    env.stack.append(env.states.get_input())
    self.parargs.eval(env=env)
    parameters = env.stack.pop()
    env.stack.pop()
    env.stack.append(results)
    env.stack.append(parameters)
    self.resource_eval.eval_resource(env=env)


def _put_results(env: Environment, resource_runtime_part: Any, state_credentials: Any) -> None:
    parameters = env.stack.pop()
    env.stack.pop()  # the Map's result: replaced by the details of what was written
    record = env.map_run_record_pool_manager.get_all()[-1]
    run: _RunState | None = getattr(record, "_layershift_run", None)
    bucket, prefix = parameters["Bucket"], parameters.get("Prefix", "")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    folder = f"{prefix}{record.map_run_arn.rsplit(':', 1)[-1]}/"
    s3 = boto_client_for(service="s3", region=resource_runtime_part.region, state_credentials=state_credentials)
    by_status: dict[str, list[dict[str, Any]]] = {"SUCCEEDED": [], "FAILED": [], "PENDING": []}
    for child in run.finished if run is not None else []:
        if child.execution is None:
            continue
        status = "SUCCEEDED" if child.execution.exec_status == ExecutionStatus.SUCCEEDED else "FAILED"
        by_status[status].append(_execution_record(child.execution))
    started = {id(child) for child in (run.finished if run else [])}
    for child in run.children if run is not None else []:
        if id(child) not in started:
            by_status["PENDING"].append({"Input": _compact(child.input), "Status": "PENDING"})
    files: dict[str, list[dict[str, Any]]] = {status: [] for status in by_status}
    for status, entries in by_status.items():
        if not entries:
            continue
        key = f"{folder}{status}_0.json"
        body = json.dumps(entries).encode()
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        files[status].append({"Key": key, "Size": len(body)})
    manifest = {"DestinationBucket": bucket, "MapRunArn": record.map_run_arn, "ResultFiles": files}
    key = f"{folder}manifest.json"
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest).encode())
    env.stack.append({"MapRunArn": record.map_run_arn, "ResultWriterDetails": {"Bucket": bucket, "Key": key}})


# ------------------------------------------------------------------------------------ install


_PATCHES: dict[str, tuple[Any, str, Any]] = {
    "eval_body": (DistributedIterationComponent, "_eval_body", _eval_body),
    "put_object": (resource_eval_s3.ResourceEvalS3, "_handle_put_object", staticmethod(_put_results)),
    "result_writer": (ResultWriter, "_eval_body", _result_writer_eval),
    "describe_execution": (StepFunctionBackend, "describe_execution", _describe_execution),
    "stop_execution": (StepFunctionBackend, "stop_execution", _stop_execution),
    "list_executions": (StepFunctionResponse, "list_executions", _list_executions),
}


def install() -> None:
    if _originals:
        return
    _originals["validate_definition"] = StepFunctionsParserBackend.__dict__["_validate_definition"].__func__
    StepFunctionsParserBackend._validate_definition = staticmethod(_validate_definition)  # type: ignore[method-assign]
    for name, (owner, attribute, replacement) in _PATCHES.items():
        _originals[name] = owner.__dict__[attribute]
        setattr(owner, attribute, replacement)


def uninstall() -> None:
    if not _originals:
        return
    StepFunctionsParserBackend._validate_definition = staticmethod(_originals.pop("validate_definition"))  # type: ignore[method-assign]
    for name, (owner, attribute, _) in _PATCHES.items():
        if name in _originals:
            setattr(owner, attribute, _originals.pop(name))
    _children.clear()
    with _templates_lock:
        _templates.clear()
