"""Helpers for the integration tests: pushing, following and checking rollouts; sample consumers."""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from layershift.controlplane import (
    ControlPlane,
    HistoryTail,
    describe_event,
    history_events,
    push,
    wait_for_end,
    wait_for_execution,
)
from layershift.demo import put_error_alarm
from layershift.invariants import check_invariants

ROOT = Path(__file__).resolve().parents[2]
# The session's control plane waits this long for a locked layer (template default: an hour): long
# enough for a second push to outwait a test rollout, short enough for a test to outwait a stale lock.
LOCK_WAIT_SECONDS = 60
# Small batches, so that a fleet of a few dozen functions runs in several child executions per Map Run.
FANOUT_BATCH_SIZE = 10
# The whole share of Lambda's quota the template allows: each worker's local AWS serves a dozen rollouts
# at once (the fault matrix), all paced from one budget.
STACK_PARAMETERS = {
    "LockWaitSeconds": str(LOCK_WAIT_SECONDS),
    "FanOutBatchSize": str(FANOUT_BATCH_SIZE),
    "LambdaRequestsPerSecond": "15",
    "GetFunctionRequestsPerSecond": "100",
}


def zip_source(source: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", source)
    return buffer.getvalue()


@dataclass
class Rollout:
    execution_arn: str
    status: str
    output: dict[str, Any] | None
    error: str | None
    cause: str | None
    history: list[dict[str, Any]]
    lines: list[str]

    def states_entered(self) -> list[str]:
        return [e["stateEnteredEventDetails"]["name"] for e in self.history if "stateEnteredEventDetails" in e]


def start_rollout(cp: ControlPlane, layer: str, requirements: str, config: str | None = None) -> str:
    """Push, and wait for the execution the push starts; returns its ARN."""
    result = push(cp, layer, requirements.encode(), config.encode() if config is not None else None)
    wait_for_execution(cp, result.execution_arn)
    return result.execution_arn


def finish_rollout(cp: ControlPlane, execution_arn: str) -> Rollout:
    """Follow the execution to its end, and check the invariants."""
    described = wait_for_end(cp, execution_arn, poll=0.3, timeout=600)
    history = history_events(cp, execution_arn)
    lines = [line for line in map(describe_event, history) if line]
    failed = next((e["executionFailedEventDetails"] for e in history if e["type"] == "ExecutionFailed"), {})
    problems = check_invariants(cp, execution_arn)
    assert problems == [], f"invariants violated after {execution_arn}: {problems}"
    return Rollout(
        execution_arn=execution_arn,
        status=described["status"],
        output=json.loads(described["output"]) if described.get("output") else None,
        error=failed.get("error"),
        cause=failed.get("cause"),
        history=history,
        lines=lines,
    )


def run_rollout(cp: ControlPlane, layer: str, requirements: str, config: str | None = None) -> Rollout:
    """Push, wait for the execution the push starts, follow it to its end, and check the invariants."""
    return finish_rollout(cp, start_rollout(cp, layer, requirements, config))


def wait_for_state(cp: ControlPlane, execution_arn: str, state: str, timeout: float = 300) -> None:
    """Wait until the execution has entered ``state`` (or ended)."""
    sfn = cp.client("stepfunctions")
    history = HistoryTail(cp, execution_arn)

    def entered() -> bool:
        names = [e["stateEnteredEventDetails"]["name"] for e in history.new_events() if "stateEnteredEventDetails" in e]
        return state in names or sfn.describe_execution(executionArn=execution_arn)["status"] != "RUNNING"

    wait_until(entered, timeout=timeout, interval=0.1)


CONSUMER = "import six\n\ndef handler(event, context):\n    return {'six': six.__version__}\n"


def publish_bootstrap_layer(cp: ControlPlane, layer: str) -> str:
    """A first version of `layer`, published directly (as a team's existing layer would be)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("python/six.py", "__version__ = 'bootstrap'\n\ndef legacy_answer():\n    return 42\n")
    response = cp.client("lambda").publish_layer_version(
        LayerName=cp.published_name(layer),
        Content={"ZipFile": buffer.getvalue()},
        CompatibleRuntimes=["python3.13"],
        CompatibleArchitectures=["x86_64"],
    )
    return response["LayerVersionArn"]


def create_consumer(
    cp: ControlPlane,
    name: str,
    layers: list[str],
    alias: str | None = "live",
    source: str = CONSUMER,
    tags: dict[str, str] | None = None,
    runtime: str = "python3.13",
    architecture: str = "x86_64",
) -> str | None:
    lam = cp.client("lambda")
    role = _role(cp)
    lam.create_function(
        FunctionName=name,
        Runtime=runtime,
        Architectures=[architecture],
        Role=role,
        Handler="app.handler",
        Code={"ZipFile": zip_source(source)},
        Layers=layers,
        Tags={"layershift:layer": " ".join(_layers_of(cp, layers))} if tags is None else tags,
        # Lambda's default is 3 s; on two cores shared by three test workers, scheduling alone
        # can stretch a trivial invocation past that.
        Timeout=15,
    )
    if alias is None:
        return None
    version = lam.publish_version(FunctionName=name)["Version"]
    lam.create_alias(FunctionName=name, Name=alias, FunctionVersion=version)
    return version


def _layers_of(cp: ControlPlane, layers: list[str]) -> list[str]:
    """The control plane's layer names among a function's layer ARNs: what its opt-in tag names."""
    names = [arn.split(":")[6] for arn in layers]
    return [name.removeprefix(cp.layer_name_prefix) for name in names if name.startswith(cp.layer_name_prefix)]


def _role(cp: ControlPlane) -> str:
    iam = cp.client("iam")
    try:
        return iam.get_role(RoleName="consumer-role")["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        return iam.create_role(RoleName="consumer-role", AssumeRolePolicyDocument="{}")["Role"]["Arn"]


def create_alarm(cp: ControlPlane, name: str, function: str, alias: str = "live") -> None:
    put_error_alarm(cp, name, function, alias)


def wait_until(predicate: Any, timeout: float = 60, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(interval)


def spec(
    steps: str = "[{weight = 50, bake_seconds = 1}]",
    alarms: str = "[]",
    extra: str = "",
    analysis: str = "enabled = false",
    poll_seconds: int = 1,
) -> str:
    """A layer.toml. The canary analysis is off unless a test asks for it: a test without traffic
    would otherwise wait out the inconclusive extension."""
    return (
        f"[rollout]\nsteps = {steps}\npoll_seconds = {poll_seconds}\nalarms = {alarms}\n{extra}\n"
        f"[analysis]\n{analysis}\n"
    )


_fault_plan_lock = threading.Lock()


def set_fault(plan: Path, layer: str, faults: dict[str, str] | list[dict[str, str]] | None) -> None:
    """Plan the fault harness's faults for `layer`'s rollouts (None: none), rewriting the plan atomically."""
    with _fault_plan_lock:
        data = json.loads(plan.read_text())
        if faults is None:
            data["faults"].pop(layer, None)
        else:
            data["faults"][layer] = faults
        staging = plan.with_suffix(f".{threading.get_ident()}.staging")
        staging.write_text(json.dumps(data))
        staging.replace(plan)


def session_function(cp: ControlPlane, logical_id: str) -> str:
    """The name of a function of the session's own control plane (stack ``layershift``), as
    ``<stack>-<LogicalId>-<suffix>``: some tests deploy control planes of their own beside it."""
    pages = cp.client("lambda").get_paginator("list_functions").paginate()
    names = [f["FunctionName"] for page in pages for f in page["Functions"]]
    (name,) = [name for name in names if name.startswith(f"layershift-{logical_id}-")]
    return str(name)


def use_local_state(cp: ControlPlane, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``layershift ... --local`` find the session's control plane (its state file, in ``folder``)."""
    state = folder / "control-plane.json"
    cp.save_local(state)
    monkeypatch.setenv("LAYERSHIFT_LOCAL_STATE", str(state))
