"""One budget of Lambda API requests per second, shared by every task of every rollout.

Lambda's control plane allows about 15 requests per second per account and region, across all of its
APIs but invokes, GetFunction (100 per second of its own) and GetPolicy, and the quota cannot be
raised. A rollout's children run side by side, and so do the rollouts of other layers: each pacing
itself alone would add up past the quota. So every Lambda request of the control plane first takes
a slot from one shared budget per bucket (template parameters ``LambdaRequestsPerSecond`` and
``GetFunctionRequestsPerSecond``, by default a share of the quota that leaves room for the teams'
own deploys).

The budget is GCRA (the generic cell rate algorithm) in one DynamoDB item per bucket: ``tat``, the
time at which the next request may go. A request reserves the next slot with one conditional
UpdateItem (``tat = tat + 1/rate`` while there is a backlog, ``tat = now + 1/rate`` when there is
none) and sleeps until its slot. Slots are exactly ``1/rate`` apart, so no window of any length holds
more than its share, whichever task in whichever execution sent them.

A throttle that gets through anyway (another deployer in the account) is retried by botocore with
backoff and jitter, each attempt taking a slot again; it is counted (``usage.THROTTLES``), never a
failure by itself.

A task sets a deadline (``set_deadline``): a slot that falls after it raises ``OutOfTime`` instead
of sleeping past the task's own timeout, so a batch can stop and hand the rest of its items on.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

from .usage import USAGE

CONTROL = "lambda-control"
GET_FUNCTION = "lambda-get-function"
# Operations outside the control-plane budget: GetFunction has a bucket of its own; invokes are data plane.
_BUCKET_OF = {"GetFunction": GET_FUNCTION}
_UNPACED = frozenset({"Invoke", "InvokeAsync", "InvokeWithResponseStream"})
_PACING_REQUESTS = "pacing_requests"
_MAX_RACES = 20


class OutOfTime(Exception):
    """The next slot of the budget falls after this task's deadline."""


@dataclass(frozen=True)
class Budget:
    """Requests per second of each bucket."""

    control: float
    get_function: float

    def rate(self, bucket: str) -> float:
        return self.control if bucket == CONTROL else self.get_function


class Pacer:
    """Slots of a shared budget, reserved in the registry table."""

    def __init__(self, table: str, budget: Budget, ddb: Any | None = None, clock: Any = time.time) -> None:
        self.table = table
        self.budget = budget
        self.ddb = ddb or boto3.client("dynamodb", config=Config(retries={"mode": "standard", "max_attempts": 8}))
        self.clock = clock
        self.deadline: float | None = None

    def _key(self, bucket: str) -> dict[str, Any]:
        return {"pk": {"S": f"PACE#{bucket}"}, "sk": {"S": "BUCKET"}}

    def reserve(self, bucket: str) -> float:
        """The epoch second of the slot reserved for one request of ``bucket``."""
        interval = 1.0 / self.budget.rate(bucket)
        conflict = self.ddb.exceptions.ConditionalCheckFailedException
        for _ in range(_MAX_RACES):
            now = self.clock()
            USAGE.add(_PACING_REQUESTS)
            try:
                answer = self.ddb.update_item(
                    TableName=self.table,
                    Key=self._key(bucket),
                    UpdateExpression="SET tat = tat + :interval",
                    ConditionExpression="tat > :now",
                    ExpressionAttributeValues={":interval": {"N": f"{interval:.6f}"}, ":now": {"N": f"{now:.6f}"}},
                    ReturnValues="UPDATED_NEW",
                )
                return float(answer["Attributes"]["tat"]["N"]) - interval
            except conflict:
                pass  # no backlog: the slot is now, if nobody takes it first
            USAGE.add(_PACING_REQUESTS)
            try:
                self.ddb.update_item(
                    TableName=self.table,
                    Key=self._key(bucket),
                    UpdateExpression="SET tat = :next",
                    ConditionExpression="attribute_not_exists(tat) OR tat <= :now",
                    ExpressionAttributeValues={":next": {"N": f"{now + interval:.6f}"}, ":now": {"N": f"{now:.6f}"}},
                )
                return now
            except conflict:
                continue  # another request took the free slot: there is a backlog now
        raise RuntimeError(f"could not reserve a slot of {bucket} after {_MAX_RACES} races")

    def acquire(self, bucket: str) -> None:
        """Wait for a slot of ``bucket``; OutOfTime when it falls after the deadline."""
        slot = self.reserve(bucket)
        if self.deadline is not None and slot > self.deadline:
            raise OutOfTime(f"the next {bucket} slot is {slot - self.clock():.0f} s away, after this task's deadline")
        wait = slot - self.clock()
        if wait > 0:
            USAGE.waited(wait)
            time.sleep(wait)

    def before_send(self, event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        if operation not in _UNPACED:
            self.acquire(_BUCKET_OF.get(operation, CONTROL))


_state: dict[str, Pacer | None] = {"pacer": None}


def pacer() -> Pacer | None:
    """The process's pacer, when the environment configures a budget (``LAYERSHIFT_LAMBDA_BUDGET``)."""
    if _state["pacer"] is None and os.environ.get("LAYERSHIFT_LAMBDA_BUDGET") and os.environ.get("LAYERSHIFT_TABLE"):
        budget = Budget(
            control=float(os.environ["LAYERSHIFT_LAMBDA_BUDGET"]),
            get_function=float(os.environ.get("LAYERSHIFT_GET_FUNCTION_BUDGET") or 50),
        )
        _state["pacer"] = Pacer(os.environ["LAYERSHIFT_TABLE"], budget)
    return _state["pacer"]


def reset() -> None:
    """Forget the process's pacer, so the next client reads the budget from the environment again."""
    _state["pacer"] = None


def pace(client: Any) -> Any:
    """Make every Lambda request of ``client`` take a slot of the shared budget first."""
    shared = pacer()
    if shared is not None:
        client.meta.events.register("before-send.lambda", shared.before_send)
    return client


def set_deadline(deadline: float | None) -> None:
    """Slots after ``deadline`` (epoch seconds) raise OutOfTime instead of being waited for."""
    shared = pacer()
    if shared is not None:
        shared.deadline = deadline
