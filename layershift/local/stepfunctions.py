"""Step Functions tweaks for the local emulated AWS: scaled Wait states.

The emulated interpreter waits in real time. A scale below 1.0 shortens every Wait state
(``Seconds``, ``SecondsPath``, ``Timestamp``) by that factor, so a five-minute bake can run in
seconds on a laptop or in tests. Retry intervals stay real time.
"""

from __future__ import annotations

import time
from typing import Any

from moto.stepfunctions.parser.asl.component.state.wait.wait_function import wait_function

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


def install(wait_scale: float = 1.0) -> None:
    if wait_scale < 0:
        raise ValueError("wait_scale must not be negative")
    _state["scale"] = float(wait_scale)
    if wait_scale != 1.0 and not _originals:
        _originals["wait_interval"] = wait_function.WaitFunction._wait_interval
        wait_function.WaitFunction._wait_interval = _wait_interval  # type: ignore[method-assign]


def uninstall() -> None:
    if _originals:
        wait_function.WaitFunction._wait_interval = _originals.pop("wait_interval")  # type: ignore[method-assign]
    _state["scale"] = 1.0
