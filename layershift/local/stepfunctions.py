"""Step Functions tweaks for the local emulated AWS: SendTaskFailure's cause, scaled waits, and
the "Execution Status Change" event.

The emulator's SendTaskFailure drops the ``cause``; Step Functions records it in the task's
failure, where the rollout reads why a bake or an approval was ended (an alarm, a reject, an abort).

The emulated interpreter waits in real time. A scale below 1.0 shortens every Wait state
(``Seconds``, ``SecondsPath``, ``Timestamp``) and every task timeout given by
``TimeoutSecondsPath`` (the rollout's bake and approval waits) by that factor, so a five-minute
bake can run in seconds on a laptop or in tests. Retry intervals and fixed ``TimeoutSeconds``
stay real time.

A stopped execution is ABORTED, as in Step Functions: the emulator lets the failure that the
stop causes in a waiting task (a Map iteration's task token wait) overwrite the stop, and the
execution then ends FAILED.

The interpreter parses the state machine's definition again for every execution, with an ANTLR
parser that takes about half a second of CPU for rollout.asl.json; here each definition is parsed
once, and every execution gets its own deep copy of the parsed program.

The interpreter makes a new boto3 client, from boto3's shared default session, for every Lambda
task it runs; here one client per service and region serves them all (clients are thread-safe).

GetExecutionHistory pages as Step Functions does (``maxResults``, default 100, at most 1000;
``nextToken``; ``reverseOrder``; ``includeExecutionData``); the emulator returns every event in
one answer, through a generic serializer that costs about as much per event as a Lambda task, so
a follower that polls a long history spends most of the local AWS's CPU there. Here a page is
serialized with ``json``.

The ``states:startExecution`` integration (``.sync``, ``.sync:2``) takes Step Functions' documented
PascalCase parameters (``StateMachineArn``, ``Input``, ``Name``) and answers in PascalCase
(``ExecutionArn``, ``Output``, ...); the emulator hands the parameters to boto as they are, which
refuses them, and answers boto's camelCase. Here they are translated both ways. A StartExecution
without a name gets a generated one, as in Step Functions; the emulator names it ``None``.

Step Functions sends an "Execution Status Change" event to EventBridge's default bus whenever a
standard execution ends (the reaper listens for it); the emulator sends none, so one is put here,
shaped as AWS documents it, when an execution ends for any reason, a stop from the API included.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime
import json
import logging
import os
import threading
import time
import uuid
from typing import Any

import boto3
from botocore.config import Config
from moto.core.exceptions import JsonRESTError
from moto.core.responses import EmptyResult
from moto.stepfunctions.exceptions import InvalidToken
from moto.stepfunctions.parser.asl.component.common.timeouts import timeout
from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_sfn import (
    StateTaskServiceSfn,
)
from moto.stepfunctions.parser.asl.component.state.wait.wait_function import wait_function
from moto.stepfunctions.parser.asl.eval.environment import Environment
from moto.stepfunctions.parser.asl.eval.program_state import ProgramStopped
from moto.stepfunctions.parser.backend.execution import BaseExecutionWorkerCommunication
from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker
from moto.stepfunctions.parser.models import StepFunctionsParserBackend
from moto.stepfunctions.responses import StepFunctionResponse

from layershift.local import distributed_map

LOG = logging.getLogger(__name__)
_originals: dict[str, Any] = {}
_state: dict[str, float] = {"scale": 1.0}


def _wait_interval(self: Any, env: Any, wait_seconds: int) -> None:
    # Same contract as the interpreter's wait: return after the (scaled) time, or early when the
    # execution stops running; unrelated wake-ups of the state event keep waiting.
    deadline = time.monotonic() + max(0.0, float(wait_seconds) * _state["scale"])
    while env.is_running():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        env.program_state_event.wait(remaining)


def _timeout_seconds_path(self: Any, env: Any) -> float:
    return _originals["timeout_seconds_path"](self, env) * _state["scale"]


def _send_task_failure(self: Any) -> EmptyResult:
    self.stepfunction_backend.send_task_failure(
        self._get_param("taskToken"), error=self._get_param("error"), cause=self._get_param("cause")
    )
    return EmptyResult()


HISTORY_PAGE_DEFAULT = 100
HISTORY_PAGE_MAX = 1000


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.timestamp()  # the JSON protocol's timestamps: epoch seconds
    raise TypeError(f"cannot serialize {type(value).__name__}")


def _without_data(event: dict[str, Any]) -> dict[str, Any]:
    stripped = {}
    for key, value in event.items():
        if key.endswith("EventDetails") and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in ("input", "inputDetails", "output", "outputDetails")}
        stripped[key] = value
    return stripped


def _get_execution_history(self: Any) -> str:
    arn = self._get_param("executionArn")
    limit = int(self._get_param("maxResults") or 0) or HISTORY_PAGE_DEFAULT
    if not 0 < limit <= HISTORY_PAGE_MAX:
        raise JsonRESTError("ValidationException", f"maxResults must be between 0 and {HISTORY_PAGE_MAX}")
    reverse = bool(self._get_param("reverseOrder"))
    token = self._get_param("nextToken")
    offset = 0
    if token:
        try:
            position = json.loads(base64.urlsafe_b64decode(token))
            offset = int(position["offset"])
            if position["arn"] != arn or position["reverse"] != reverse or offset < 0:
                raise ValueError
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise InvalidToken("the token does not belong to this history") from None
    events = list(self.stepfunction_backend.get_execution_history(arn)["events"])
    if reverse:
        events.reverse()
    page = events[offset : offset + limit]
    if self._get_param("includeExecutionData") is False:
        page = [_without_data(event) for event in page]
    body: dict[str, Any] = {"events": page}
    if offset + limit < len(events):
        position = {"arn": arn, "reverse": reverse, "offset": offset + limit}
        body["nextToken"] = base64.urlsafe_b64encode(json.dumps(position).encode()).decode()
    return json.dumps(body, default=_json_value)


_programs: dict[str, Any] = {}
_programs_lock = threading.Lock()


def _evaluation_entrypoint(self: Any) -> Any:
    definition = self._evaluation_details.state_machine_details.definition
    with _programs_lock:
        if definition not in _programs:
            _programs[definition] = distributed_map.parse(definition)
        program = _programs[definition]
    return copy.deepcopy(program)


_clients: dict[tuple[str, str, str], Any] = {}
_clients_lock = threading.Lock()


def _boto_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
    key = (region, service, os.environ.get("MOTO_PORT", ""))
    with _clients_lock:
        if key not in _clients:
            session = boto3.session.Session()
            _clients[key] = session.client(
                service,
                region_name=region,
                endpoint_url=f"http://localhost:{key[2] or 5000}",
                aws_access_key_id="ak",
                aws_secret_access_key="sk",
                config=Config(
                    parameter_validation=False,
                    retries={"max_attempts": 0, "total_max_attempts": 1},
                    connect_timeout=60,
                    read_timeout=3600,
                ),
            )
        return _clients[key]


def _set_error(self: Any, error: Any) -> None:
    if isinstance(self._program_state, ProgramStopped):
        return  # stopped first: the stop is the ending
    _originals["set_error"](self, error)


def _millis(when: Any) -> int | None:
    return int(when.timestamp() * 1000) if when is not None else None


def status_change_event(execution: Any) -> dict[str, Any]:
    """The EventBridge entry Step Functions puts for an execution's current status."""
    status = str(getattr(execution.exec_status, "value", execution.exec_status))
    detail = {
        "executionArn": execution.exec_arn,
        "stateMachineArn": execution.state_machine_arn,
        "name": execution.name,
        "status": status,
        "startDate": _millis(execution.start_date),
        "stopDate": _millis(execution.stop_date),
        "input": json.dumps(execution.input_data),
        "output": json.dumps(execution.output) if execution.output is not None else None,
        "error": execution.error,
        "cause": execution.cause,
    }
    return {
        "Source": "aws.states",
        "DetailType": "Step Functions Execution Status Change",
        "Resources": [execution.exec_arn],
        "Detail": json.dumps(detail),
    }


def _terminated(self: Any) -> None:
    _originals["terminated"](self)
    execution = self.execution
    try:
        from moto.events.models import events_backends

        events_backends[execution.account_id][execution.region_name].put_events([status_change_event(execution)])
    except Exception:
        LOG.warning("could not put the status change event of %s", execution.exec_arn, exc_info=True)


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def _pascal(name: str) -> str:
    return name[:1].upper() + name[1:]


def _sfn_parameters(
    self: Any, parameters: dict, boto_service_name: Any = None, service_action_name: Any = None
) -> None:
    _originals["sfn_parameters"](self, parameters, boto_service_name, service_action_name)
    if service_action_name is None:
        for key in list(parameters):
            parameters[_camel(key)] = parameters.pop(key)


def _sfn_response(self: Any, response: Any, boto_service_name: Any = None, service_action_name: Any = None) -> None:
    _originals["sfn_response"](self, response, boto_service_name, service_action_name)
    if isinstance(response, dict):
        for key in list(response):
            response[_pascal(key)] = response.pop(key)


def _start_execution(self: Any, state_machine_arn: str, name: Any = None, *args: Any, **kwargs: Any) -> Any:
    return _originals["start_execution"](self, state_machine_arn, name or str(uuid.uuid4()), *args, **kwargs)


def install(wait_scale: float = 1.0) -> None:
    if wait_scale < 0:
        raise ValueError("wait_scale must not be negative")
    _state["scale"] = float(wait_scale)
    if "entrypoint" not in _originals:
        _originals["entrypoint"] = ExecutionWorker._get_evaluation_entrypoint
        ExecutionWorker._get_evaluation_entrypoint = _evaluation_entrypoint  # type: ignore[method-assign]
    if "boto_client_for" not in _originals:
        _originals["boto_client_for"] = lambda_eval_utils.boto_client_for
        lambda_eval_utils.boto_client_for = _boto_client_for
    if "set_error" not in _originals:
        _originals["set_error"] = Environment.set_error
        Environment.set_error = _set_error  # type: ignore[method-assign]
    if "terminated" not in _originals:
        _originals["terminated"] = BaseExecutionWorkerCommunication.terminated
        BaseExecutionWorkerCommunication.terminated = _terminated  # type: ignore[method-assign]
    if "send_task_failure" not in _originals:
        _originals["send_task_failure"] = StepFunctionResponse.send_task_failure
        StepFunctionResponse.send_task_failure = _send_task_failure  # type: ignore[method-assign]
    if "sfn_parameters" not in _originals:
        _originals["sfn_parameters"] = StateTaskServiceSfn._normalise_parameters
        _originals["sfn_response"] = StateTaskServiceSfn._normalise_response
        StateTaskServiceSfn._normalise_parameters = _sfn_parameters  # type: ignore[method-assign]
        StateTaskServiceSfn._normalise_response = _sfn_response  # type: ignore[method-assign]
    if "start_execution" not in _originals:
        _originals["start_execution"] = StepFunctionsParserBackend.start_execution
        StepFunctionsParserBackend.start_execution = _start_execution  # type: ignore[method-assign]
    if "get_execution_history" not in _originals:
        _originals["get_execution_history"] = StepFunctionResponse.get_execution_history
        StepFunctionResponse.get_execution_history = _get_execution_history  # type: ignore[method-assign,assignment]
    if wait_scale != 1.0 and "wait_interval" not in _originals:
        _originals["wait_interval"] = wait_function.WaitFunction._wait_interval
        _originals["timeout_seconds_path"] = timeout.TimeoutSecondsPath._eval_seconds
        wait_function.WaitFunction._wait_interval = _wait_interval  # type: ignore[method-assign]
        timeout.TimeoutSecondsPath._eval_seconds = _timeout_seconds_path  # type: ignore[method-assign]


def uninstall() -> None:
    if "entrypoint" in _originals:
        ExecutionWorker._get_evaluation_entrypoint = _originals.pop("entrypoint")  # type: ignore[method-assign]
    if "boto_client_for" in _originals:
        lambda_eval_utils.boto_client_for = _originals.pop("boto_client_for")
    with _clients_lock:
        _clients.clear()
    with _programs_lock:
        _programs.clear()
    if "set_error" in _originals:
        Environment.set_error = _originals.pop("set_error")  # type: ignore[method-assign]
    if "terminated" in _originals:
        BaseExecutionWorkerCommunication.terminated = _originals.pop("terminated")  # type: ignore[method-assign]
    if "send_task_failure" in _originals:
        StepFunctionResponse.send_task_failure = _originals.pop("send_task_failure")  # type: ignore[method-assign]
    if "sfn_parameters" in _originals:
        StateTaskServiceSfn._normalise_parameters = _originals.pop("sfn_parameters")  # type: ignore[method-assign]
        StateTaskServiceSfn._normalise_response = _originals.pop("sfn_response")  # type: ignore[method-assign]
    if "start_execution" in _originals:
        StepFunctionsParserBackend.start_execution = _originals.pop("start_execution")  # type: ignore[method-assign]
    if "get_execution_history" in _originals:
        StepFunctionResponse.get_execution_history = _originals.pop("get_execution_history")  # type: ignore[method-assign]
    if "wait_interval" in _originals:
        wait_function.WaitFunction._wait_interval = _originals.pop("wait_interval")  # type: ignore[method-assign]
        timeout.TimeoutSecondsPath._eval_seconds = _originals.pop("timeout_seconds_path")  # type: ignore[method-assign]
    _state["scale"] = 1.0
