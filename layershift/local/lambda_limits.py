"""The limits of Lambda's control plane that govern fan-out, on the local emulated AWS (``--aws-limits``).

Without them the emulator answers every request at once, so a rollout that could never finish on
AWS "works" locally. With them, as Lambda documents and as it behaves:

* **The shared control-plane rate.** Every control-plane request of the account and region
  (everything but invokes, ``GetFunction`` and ``GetPolicy``) draws from one token bucket, 15
  requests per second by default. Past it the request is refused with ``TooManyRequestsException``
  (HTTP 429, ``Reason: CallerRateLimitExceeded``), as Lambda refuses it.
* **GetFunction's own bucket**, 100 requests per second by default.
* **The settle time of an update.** After ``UpdateFunctionConfiguration`` or ``UpdateFunctionCode``
  the function's ``LastUpdateStatus`` is ``InProgress`` for ``settle_seconds`` (2 s by default, inside
  AWS's usual 1 to 3 s), and until then ``PublishVersion`` and another update are refused with
  ``ResourceConflictException``, as Lambda refuses them.

Each control-plane function's own timeout is enforced by the local runtime already.

The limits count every caller of the local AWS: the control plane, a test's or a benchmark's own
set-up, and a neighbour that shares the account. ``stats()`` says what was admitted and refused.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from moto.awslambda import models, responses

# Data-plane operations: not drawn from the control-plane buckets.
DATA_PLANE = frozenset({"Invoke", "InvokeAsync", "InvokeWithResponseStream"})
# Operations with a bucket of their own.
OWN_BUCKETS = {"GetFunction": "get_function", "GetPolicy": "get_policy"}
_IN_PROGRESS = "The operation cannot be performed at this time. An update is in progress for resource: {arn}"


@dataclass(frozen=True)
class AwsLimits:
    """The limits modelled; the defaults are Lambda's documented quotas (per account and region)."""

    control_rate: float = 15.0
    get_function_rate: float = 100.0
    get_policy_rate: float = 15.0
    settle_seconds: float = 2.0
    # Tokens a bucket holds when full: one second of its rate, so a burst is at most a second's worth.
    burst_seconds: float = 1.0

    def __post_init__(self) -> None:
        for name in ("control_rate", "get_function_rate", "get_policy_rate", "burst_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.settle_seconds < 0:
            raise ValueError("settle_seconds must not be negative")


class TokenBucket:
    """A token bucket: ``rate`` tokens a second, holding at most ``capacity``."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, capacity)
        self._tokens = self.capacity
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


class _Limiter:
    def __init__(self, limits: AwsLimits) -> None:
        self.limits = limits
        self.buckets = {
            "control": TokenBucket(limits.control_rate, limits.control_rate * limits.burst_seconds),
            "get_function": TokenBucket(limits.get_function_rate, limits.get_function_rate * limits.burst_seconds),
            "get_policy": TokenBucket(limits.get_policy_rate, limits.get_policy_rate * limits.burst_seconds),
        }
        self.admitted: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.conflicts: Counter[str] = Counter()
        self.lock = threading.Lock()

    def admit(self, operation: str) -> bool:
        if operation in DATA_PLANE:
            return True
        allowed = self.buckets[OWN_BUCKETS.get(operation, "control")].take()
        with self.lock:
            (self.admitted if allowed else self.refused)[operation] += 1
        return allowed


_state: dict[str, Any] = {"limiter": None}
_originals: dict[str, Any] = {}


def _limiter() -> _Limiter | None:
    return _state["limiter"]


def _throttled() -> tuple[int, dict[str, str], str]:
    body = {"Reason": "CallerRateLimitExceeded", "Type": "User", "message": "Rate exceeded"}
    return 429, {"x-amzn-ErrorType": "TooManyRequestsException", "Content-Type": "application/json"}, json.dumps(body)


def _conflict(fn: Any, operation: str) -> tuple[int, dict[str, str], str]:
    limiter = _limiter()
    if limiter is not None:
        with limiter.lock:
            limiter.conflicts[operation] += 1
    body = {"Type": "User", "message": _IN_PROGRESS.format(arn=fn.function_arn)}
    return 409, {"x-amzn-ErrorType": "ResourceConflictException", "Content-Type": "application/json"}, json.dumps(body)


def _settling(fn: Any) -> bool:
    return getattr(fn, "_layershift_settles_at", 0.0) > time.monotonic()


def _latest(backend: Any, name: str) -> Any | None:
    try:
        return backend.get_function(name, None)
    except Exception:
        return None


def _call_action(self: Any) -> Any:
    limiter = _limiter()
    if limiter is None:
        return _originals["call_action"](self)
    operation = self._get_action()
    if not limiter.admit(operation):
        return _throttled()
    if operation in {"PublishVersion", "UpdateFunctionConfiguration", "UpdateFunctionCode"}:
        name = responses.unquote(self.uri_match.get("FunctionName", "")) if self.uri_match else ""
        fn = _latest(self.backend, name) if name else None
        if fn is not None and _settling(fn):
            return _conflict(fn, operation)
    return _originals["call_action"](self)


def _settles(original: str) -> Any:
    def update(self: Any, function_name: str, qualifier: str, body: dict[str, Any]) -> Any:
        result = _originals[original](self, function_name, qualifier, body)
        limiter = _limiter()
        if limiter is not None and limiter.limits.settle_seconds > 0:
            fn = self.get_function(function_name, qualifier)
            fn._layershift_settles_at = time.monotonic() + limiter.limits.settle_seconds
            if isinstance(result, dict):
                result["LastUpdateStatus"] = "InProgress"
        return result

    return update


def _get_configuration(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    config = _originals["get_configuration"](self, *args, **kwargs)
    if str(getattr(self, "version", "")) == "$LATEST" and "LastUpdateStatus" in config and _settling(self):
        config["LastUpdateStatus"] = "InProgress"
        config["LastUpdateStatusReason"] = "The function is being updated."
        config["LastUpdateStatusReasonCode"] = "InProgress"
    return config


_PATCHES = {
    "call_action": (responses.LambdaResponse, _call_action),
    "update_function_configuration": (models.LambdaBackend, _settles("update_function_configuration")),
    "update_function_code": (models.LambdaBackend, _settles("update_function_code")),
    "get_configuration": (models.LambdaFunction, _get_configuration),
}


def install(limits: AwsLimits | None = None) -> None:
    """Patch the emulated Lambda service; the limits apply once ``enable`` is called (or given here)."""
    if not _originals:
        for name, (owner, replacement) in _PATCHES.items():
            _originals[name] = getattr(owner, name)
            setattr(owner, name, replacement)
    _state["limiter"] = _Limiter(limits) if limits is not None else None


def enable(limits: AwsLimits) -> None:
    """Apply ``limits`` from now on, with full buckets and fresh counts."""
    _state["limiter"] = _Limiter(limits)


def disable() -> None:
    """Answer every request again, as the emulator does without limits."""
    _state["limiter"] = None


NEIGHBOUR = "Neighbour"


def spend_as_neighbour() -> bool:
    """One control-plane request of another deployer in the account: it takes a token of the shared
    bucket as any request does (counted as ``Neighbour``), without the cost of an HTTP round trip, so a
    test's neighbour can hold the bucket empty however loaded the machine is. False: refused."""
    limiter = _limiter()
    return limiter.admit(NEIGHBOUR) if limiter is not None else True


def stats() -> dict[str, dict[str, int]]:
    """What the limits admitted, refused with TooManyRequestsException, and refused as in progress."""
    limiter = _limiter()
    if limiter is None:
        return {"admitted": {}, "refused": {}, "conflicts": {}}
    with limiter.lock:
        return {
            "admitted": dict(limiter.admitted),
            "refused": dict(limiter.refused),
            "conflicts": dict(limiter.conflicts),
        }


def uninstall() -> None:
    for name, (owner, _) in _PATCHES.items():
        if name in _originals:
            setattr(owner, name, _originals.pop(name))
    _state["limiter"] = None
