"""Step Functions tweaks for the local emulated AWS: SendTaskFailure's cause, and scaled waits.

The emulator's SendTaskFailure drops the ``cause``; Step Functions records it in the task's
failure, where the rollout reads why a bake or an approval was ended (an alarm, a reject, an abort).

The emulated interpreter waits in real time. A scale below 1.0 shortens every Wait state
(``Seconds``, ``SecondsPath``, ``Timestamp``) and every task timeout given by
``TimeoutSecondsPath`` (the rollout's bake and approval waits) by that factor, so a five-minute
bake can run in seconds on a laptop or in tests. Retry intervals and fixed ``TimeoutSeconds``
stay real time.
"""

from __future__ import annotations

import time
from typing import Any

from moto.core.responses import EmptyResult
from moto.stepfunctions.parser.asl.component.common.timeouts import timeout
from moto.stepfunctions.parser.asl.component.state.wait.wait_function import wait_function
from moto.stepfunctions.responses import StepFunctionResponse

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


def install(wait_scale: float = 1.0) -> None:
    if wait_scale < 0:
        raise ValueError("wait_scale must not be negative")
    _state["scale"] = float(wait_scale)
    if "send_task_failure" not in _originals:
        _originals["send_task_failure"] = StepFunctionResponse.send_task_failure
        StepFunctionResponse.send_task_failure = _send_task_failure  # type: ignore[method-assign]
    if wait_scale != 1.0 and "wait_interval" not in _originals:
        _originals["wait_interval"] = wait_function.WaitFunction._wait_interval
        _originals["timeout_seconds_path"] = timeout.TimeoutSecondsPath._eval_seconds
        wait_function.WaitFunction._wait_interval = _wait_interval  # type: ignore[method-assign]
        timeout.TimeoutSecondsPath._eval_seconds = _timeout_seconds_path  # type: ignore[method-assign]


def uninstall() -> None:
    if "send_task_failure" in _originals:
        StepFunctionResponse.send_task_failure = _originals.pop("send_task_failure")  # type: ignore[method-assign]
    if "wait_interval" in _originals:
        wait_function.WaitFunction._wait_interval = _originals.pop("wait_interval")  # type: ignore[method-assign]
        timeout.TimeoutSecondsPath._eval_seconds = _originals.pop("timeout_seconds_path")  # type: ignore[method-assign]
    _state["scale"] = 1.0
