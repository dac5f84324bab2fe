"""Faults for the state machine's own Lambda integration: the ``lambda:invoke`` of each task.

The fault harness's plan (``fault_hook.py`` describes it) may name the site
``(<function>, "states", "lambda:invoke")``: the Step Functions task that invokes that function
for the rollout of a given layer; or ``(<project>, "states", "codebuild:startBuild.sync")``, the
build task (``codebuild.py`` asks here before it starts the build, and answers as CodeBuild's
StartBuild would). Step Functions invokes Lambda synchronously (``RequestResponse``) with the
execution state as the payload, which names the layer. The Lambda service then answers, as Lambda
would:

- ``throttle``: TooManyRequestsException (429), on the task's first attempt only;
- ``server``: ServiceException (500), on the first attempt only;
- ``denied``: AccessDeniedException (403), on every attempt;
- ``timeout``: the function runs, then the invocation is reported timed out (``Sandbox.Timedout``).

Every such invoke is recorded in the plan's record file, like the functions' own AWS calls.
"""

from __future__ import annotations

import fcntl
import json
import threading
import time
from pathlib import Path
from typing import Any

from moto.core.exceptions import JsonRESTError

SERVICE = "states"
OPERATION = "lambda:invoke"
TRANSIENT = {"throttle", "server"}
_lock = threading.Lock()
_injected: set[tuple[str, str, str]] = set()


class ServiceException(JsonRESTError):
    code = 500

    def __init__(self, message: str) -> None:
        super().__init__("ServiceException", message)


class AccessDeniedException(JsonRESTError):
    code = 403

    def __init__(self, message: str) -> None:
        super().__init__("AccessDeniedException", message)


def layer_of(payload: bytes) -> str | None:
    """The layer a task's payload (the execution state, a traffic step, a Map Run's batch) belongs to."""
    try:
        data = json.loads(payload or b"{}")
    except ValueError:
        return None
    candidates = [data]
    if isinstance(data, dict):
        state, batch = data.get("state"), data.get("batch")
        candidates += [
            data.get("request"),
            state.get("request") if isinstance(state, dict) else None,
            data.get("step"),
            batch.get("BatchInput") if isinstance(batch, dict) else None,
        ]
    for candidate in candidates:
        if isinstance(candidate, dict) and isinstance(candidate.get("layer"), str):
            return candidate["layer"]
    return None


def planned_faults(plan: dict[str, Any], layer: str) -> list[dict[str, str]]:
    """The faults planned for a layer's rollout: one, or several at different sites."""
    planned = plan.get("faults", {}).get(layer) or []
    return [planned] if isinstance(planned, dict) else list(planned)


def fault_for(
    plan_path: Path | None, function: str, payload: bytes, operation: str = OPERATION, layer: str | None = None
) -> str | None:
    """Record this call and return the fault to inject, if the plan has one for it now."""
    if plan_path is None:
        return None
    layer = layer or layer_of(payload)
    if layer is None:
        return None
    plan = json.loads(plan_path.read_text(encoding="utf-8"))
    fault = None
    for planned in planned_faults(plan, layer):
        if (planned["function"], planned["service"], planned["operation"]) != (function, SERVICE, operation):
            continue
        key = (layer, function, operation, planned["fault"])
        with _lock:
            if planned["fault"] not in TRANSIENT or key not in _injected:
                fault = planned["fault"]
                _injected.add(key)
    line = {"layer": layer, "function": function, "service": SERVICE, "operation": operation, "injected": fault}
    with open(plan["record"], "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(json.dumps({**line, "time": time.time()}) + "\n")
    return fault


def raise_for(fault: str, function: str) -> Any:
    """The Lambda service's error for ``fault`` (timeout is handled after the run)."""
    if fault == "throttle":
        from layershift.local.lambda_invoke import TooManyRequestsException

        raise TooManyRequestsException("Rate Exceeded. (injected throttle fault)")
    if fault == "server":
        raise ServiceException(f"injected server fault invoking {function}")
    if fault == "denied":
        raise AccessDeniedException(f"injected: not authorized to invoke {function}")
    return None
