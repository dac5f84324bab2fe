"""What a rollout spends, counted where it is spent.

Every boto3 client of the domain package (``aws.client``) counts its requests here, one per HTTP
attempt (a retried request is spent twice), by service and operation, and the throttling answers it
absorbed. A task adds what its invocation spent to its rollout's record in the registry with one
UpdateItem (``flush``); child batches of a Map Run do the same, so the record is the sum over the
parent and every child, whatever ran where.

Step Functions' own spend is added by the tasks that can see it: the state transitions and child
executions of each Map Run (``fanout.MapRunResults``), and the parent's transitions at the end.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Error codes that mean "slow down": retried, never a failure.
THROTTLING = frozenset(
    {
        "TooManyRequestsException",
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "ProvisionedThroughputExceededException",
        "SlowDown",
        "PriorRequestNotComplete",
    }
)
# The registry record's attribute names: a prefix and the counter's name.
PREFIX = "usage:"
LAMBDA_CALLS = "lambda:"  # + operation: Lambda API requests (the control plane's budget, and GetFunction's)
GET_METRIC_DATA = "cloudwatch:GetMetricData"
THROTTLES = "throttles"
PACING_SECONDS = "pacing_seconds"
CHILD_EXECUTIONS = "child_executions"
TRANSITIONS_PARENT = "transitions_parent"
TRANSITIONS_CHILDREN = "transitions_children"


class Usage:
    """Counters of one invocation (thread-safe: a batch may work in threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._seconds = 0.0
        self._paused = 0

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            if not self._paused:
                self._counts[name] += amount

    def waited(self, seconds: float) -> None:
        with self._lock:
            if not self._paused:
                self._seconds += seconds

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Count nothing meanwhile: the process's requests are bookkeeping, not a rollout's spend."""
        with self._lock:
            self._paused += 1
        try:
            yield
        finally:
            with self._lock:
                self._paused -= 1

    def take(self) -> dict[str, float]:
        """What was counted since the last take, and start again from zero."""
        with self._lock:
            counts: dict[str, float] = {name: value for name, value in self._counts.items() if value}
            if self._seconds > 0:
                counts[PACING_SECONDS] = round(self._seconds, 3)
            self._counts.clear()
            self._seconds = 0.0
        return counts


USAGE = Usage()


def _operation(event_name: str) -> tuple[str, str]:
    """``before-send.lambda.UpdateAlias`` → (``lambda``, ``UpdateAlias``)."""
    parts = event_name.split(".")
    return (parts[1], parts[2]) if len(parts) >= 3 else ("?", "?")


def _count_request(event_name: str, **_: Any) -> None:
    service, operation = _operation(event_name)
    if service == "lambda":
        USAGE.add(LAMBDA_CALLS + operation)
    elif service == "cloudwatch" and operation == "GetMetricData":
        USAGE.add(GET_METRIC_DATA)
    else:
        USAGE.add(f"{service}:{operation}")


def _count_throttle(response: Any = None, **_: Any) -> None:
    if not response:
        return
    parsed = response[1] if isinstance(response, tuple) and len(response) > 1 else {}
    code = (parsed or {}).get("Error", {}).get("Code", "")
    if code in THROTTLING:
        USAGE.add(THROTTLES)


def count_requests(client: Any) -> Any:
    """Count every request ``client`` sends, and the throttling answers it gets."""
    service = client.meta.service_model.service_id.hyphenize()
    client.meta.events.register(f"before-send.{service}", _count_request)
    client.meta.events.register(f"needs-retry.{service}", _count_throttle)
    return client


def lambda_calls(counts: dict[str, Any]) -> dict[str, int]:
    """The Lambda API requests of a usage record, by operation."""
    return {
        name.removeprefix(LAMBDA_CALLS): int(value) for name, value in counts.items() if name.startswith(LAMBDA_CALLS)
    }


def from_record(record: dict[str, Any]) -> dict[str, float]:
    """The usage counters of a registry rollout record (attributes named ``usage:<counter>``)."""
    return {name.removeprefix(PREFIX): value for name, value in record.items() if name.startswith(PREFIX)}
