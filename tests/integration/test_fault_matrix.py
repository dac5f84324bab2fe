"""Fault injection at every AWS call a rollout makes: throttling, a 5xx, AccessDenied, a task timeout.

A baseline rollout records every AWS call each control-plane function makes (the local runtime's
fault hook, `layershift/local/fault_hook.py`). Then, for each call site and each fault, a fresh
rollout runs with that call failing. After each run DESIGN.md's invariants must hold, and the
ending must be one of: succeeded after retry, rolled back cleanly, or failed before any change.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from layershift.controlplane import ControlPlane, history_events, wait_for_end
from layershift.invariants import check_invariants

from .support import create_consumer, publish_bootstrap_layer, set_fault, spec, start_rollout

pytestmark = [pytest.mark.integration, pytest.mark.network, pytest.mark.faults]

FAULTS = ("throttle", "server", "denied", "timeout")
TRANSIENT = {"throttle", "server"}
SUCCEEDED_AFTER_RETRY = "succeeded after retry"
ROLLED_BACK = "rolled back cleanly"
FAILED_BEFORE_CHANGE = "failed before any change"
BAKE_REGISTRATION = "WaitForSignal"
BAKE_WAITING_SECONDS = 30
PARALLEL_RUNS = 12  # runs mostly wait (bakes, retry intervals); the local AWS is one process


@dataclass(frozen=True)
class Site:
    function: str
    service: str
    operation: str

    def label(self, names: dict[str, str]) -> str:
        return f"{names.get(self.function, self.function)} {self.service}.{self.operation}"


@dataclass
class Row:
    site: Site
    fault: str
    outcome: str
    detail: str = ""
    run: str = ""
    seconds: float = 0.0


_read: dict[Path, tuple[int, list[dict]]] = {}  # record file -> (bytes parsed, the calls in them)
_read_lock = threading.Lock()


def _calls(plan: Path) -> list[dict]:
    """Every call recorded so far; the record only grows, so only its new lines are parsed."""
    record = Path(json.loads(plan.read_text())["record"])
    if not record.exists():
        return []
    with _read_lock:
        offset, calls = _read.get(record, (0, []))
        with record.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
        calls = calls + [json.loads(line) for line in complete.splitlines() if line.strip()]
        _read[record] = (offset + len(complete), calls)
        return calls


@dataclass
class Consumer:
    name: str
    bootstrap: str  # the layer version ARN it starts on


_consumers: dict[str, Consumer] = {}


def _consumer_at_start(cp: ControlPlane, layer: str) -> None:
    """`layer`'s consumer, on the bootstrap layer version with no routing: made once, reset later."""
    consumer = _consumers.get(layer)
    if consumer is None:
        bootstrap = publish_bootstrap_layer(cp, layer)
        create_consumer(cp, f"{layer}-fn", [bootstrap])
        _consumers[layer] = Consumer(f"{layer}-fn", bootstrap)
        return
    lam = cp.client("lambda")
    lam.update_function_configuration(FunctionName=consumer.name, Layers=[consumer.bootstrap])
    lam.get_waiter("function_updated_v2").wait(FunctionName=consumer.name, WaiterConfig={"Delay": 1})
    version = lam.publish_version(FunctionName=consumer.name)["Version"]
    lam.update_alias(
        FunctionName=consumer.name, Name="live", FunctionVersion=version, RoutingConfig={"AdditionalVersionWeights": {}}
    )


def _children(cp: ControlPlane, arn: str) -> list[list[dict]]:
    """The histories of the execution's Map Run children, and of its restore and theirs."""
    sfn = cp.client("stepfunctions")
    found: list[list[dict]] = []
    for run in sfn.list_map_runs(executionArn=arn)["mapRuns"]:
        for child in sfn.list_executions(mapRunArn=run["mapRunArn"])["executions"]:
            found.append(history_events(cp, child["executionArn"]))
    for event in history_events(cp, arn):
        if event["type"] == "TaskSucceeded" and '"ExecutionArn"' in (
            event["taskSucceededEventDetails"].get("output") or ""
        ):
            restore = json.loads(event["taskSucceededEventDetails"]["output"]).get("ExecutionArn")
            if restore:
                found.append(history_events(cp, restore))
                found += _children(cp, restore)
    return found


def _rollout(
    cp: ControlPlane, layer: str, run: int = 0, bake_seconds: int = 2, poll_seconds: int = 1
) -> tuple[dict, list[list[dict]], list[str]]:
    """One rollout of `layer` onto its consumer: the ending, the histories (the execution's first,
    then its children's) and the invariant problems.

    Run 0 of a layer builds it; later runs push the same requirements with a different layer.toml,
    so they reuse that build and skip BuildLayer and PublishLayerVersion.
    """
    _consumer_at_start(cp, layer)
    config = spec(f"[{{weight = 50, bake_seconds = {bake_seconds}}}]", extra=f"# run {run}", poll_seconds=poll_seconds)
    arn = start_rollout(cp, layer, "six==1.16.0\n", config)
    described = wait_for_end(cp, arn, poll=1.0, timeout=600)
    return described, [history_events(cp, arn), *_children(cp, arn)], check_invariants(cp, arn)


def _classify(fault: str, described: dict, histories: list[list[dict]]) -> tuple[str, str]:
    history = histories[0]
    entered = [e["stateEnteredEventDetails"]["name"] for e in history if "stateEnteredEventDetails" in e]
    failed = next((e["executionFailedEventDetails"] for e in history if e["type"] == "ExecutionFailed"), {})
    if described["status"] == "SUCCEEDED":
        if fault in TRANSIENT:
            return SUCCEEDED_AFTER_RETRY, ""
        if any(_timed_out_tasks_retried(one) for one in histories) and not any(
            _timed_out_unretried(one) for one in histories
        ):
            # the task timed out after its call took effect; its retry found the change made and went on
            return SUCCEEDED_AFTER_RETRY, "the task's retry found its change made"
        output = json.loads(described.get("output") or "{}")
        parts = (("notification", output.get("notified")), ("lock", output.get("lock_released")))
        left = [part for part, done in parts if not done]
        if left:  # the workflow's own attempt failed; the reaper retried it, and the invariants say it worked
            return SUCCEEDED_AFTER_RETRY, f"{' and '.join(left)} by the reaper"
        return "succeeded despite a permanent fault", ""
    error = failed.get("error", described["status"])
    if error == "RollbackIncomplete":
        return "rollback incomplete", failed.get("cause", "")[:200]
    changed = "PrepareFunctionVersions" in entered
    if "RollBack" in entered and changed:
        return ROLLED_BACK, error
    return FAILED_BEFORE_CHANGE, error


def _timed_out_tasks_retried(history: list[dict]) -> bool:
    """Whether some task timed out (Sandbox.Timedout) and every such task's next attempt succeeded.

    A next attempt that ends any other way does not count, nor a state left by its Catch: a bake's
    wait that ends by its own timer (TaskTimedOut, caught) would otherwise pass for a retry that
    worked."""
    timed_out = pending = False
    for event in history:
        if event["type"] == "TaskFailed" and "Sandbox.Timedout" in json.dumps(event, default=str):
            timed_out = pending = True
        elif pending and event["type"] == "TaskSucceeded":
            pending = False
        elif pending and (event["type"] in ("TaskFailed", "TaskTimedOut") or event["type"].endswith("StateExited")):
            return False  # the next attempt failed or timed out, or the state was left without one
    return timed_out and not pending


def _timed_out_unretried(history: list[dict]) -> bool:
    """A task timed out and its next attempt did not succeed."""
    return _timed_out(history) and not _timed_out_tasks_retried(history)


def _timed_out(history: list[dict]) -> bool:
    return any(e["type"] == "TaskFailed" and "Sandbox.Timedout" in json.dumps(e, default=str) for e in history)


def _injected_sites(plan: Path, layer: str, since: float) -> set[Site]:
    return {
        Site(call["function"], call["service"], call["operation"])
        for call in _calls(plan)
        if call["layer"] == layer and call["injected"] and call["time"] >= since
    }


def _recorded_sites(plan: Path, layer: str, since: float = 0.0) -> set[Site]:
    return {
        Site(call["function"], call["service"], call["operation"])
        for call in _calls(plan)
        if call["layer"] == layer and call["time"] >= since and not call["function"].startswith(layer)
    }


def _run(cp: ControlPlane, plan: Path, layer: str, sites: list[Site], fault: str, run: int = 0) -> list[Row]:
    """One rollout with `fault` at every site in `sites`: a row per site."""
    set_fault(
        plan,
        layer,
        [{"function": s.function, "service": s.service, "operation": s.operation, "fault": fault} for s in sites],
    )
    started = time.time()
    # A fault in the bake's own wait registration must end the bake, not race its timer. Each wait
    # lasts one poll interval, and an attempt that outlasts it (a killed worker restarting) ends as
    # the poll's timeout, not as the fault; so these bakes poll once, for longer than any attempt.
    registration = any(BAKE_REGISTRATION in site.function for site in sites)
    bake, poll = (BAKE_WAITING_SECONDS, BAKE_WAITING_SECONDS) if registration else (2, 1)
    try:
        described, histories, problems = _rollout(cp, layer, run, bake, poll_seconds=poll)
    finally:
        set_fault(plan, layer, None)
    elapsed = time.time() - started
    injected = _injected_sites(plan, layer, started)
    grouped = f"one run, {len(sites)} sites at once" if len(sites) > 1 else ""
    label = f"{layer}#{run}"
    rows = []
    for site in sites:
        if problems:
            rows.append(Row(site, fault, "INVARIANT VIOLATED", "; ".join(problems), label))
        elif site not in injected:
            rows.append(Row(site, fault, "fault not reached", run=label))
        else:
            outcome, detail = _classify(fault, described, histories)
            rows.append(
                Row(site, fault, outcome, "; ".join(part for part in (detail, grouped) if part), label, elapsed)
            )
    return rows


def test_every_call_site_under_every_fault_keeps_the_invariants(
    control_plane: ControlPlane, fault_plan: Path, record_property: Callable[[str, object], None]
) -> None:
    cp = control_plane
    functions = {f["FunctionName"] for f in cp.client("lambda").list_functions()["Functions"]}
    names = {name: name.split("-")[1] if name.count("-") >= 2 else name for name in functions}

    # Two baselines: a push that builds the layer, and one that reuses that build.
    for run in (0, 1):
        started = time.time()
        described, _, problems = _rollout(cp, "faultbase", run)
        assert described["status"] == "SUCCEEDED" and problems == [], (run, problems)
    fresh, reused = _recorded_sites(fault_plan, "faultbase"), _recorded_sites(fault_plan, "faultbase", started)
    sites = sorted(fresh | reused, key=lambda site: (site.function, site.service, site.operation))
    built_only = fresh - reused  # met only when the layer is built
    assert sites, "the baseline rollouts recorded no AWS call"

    layers = (f"fault{index:03d}" for index in range(100_000))
    name_lock = threading.Lock()

    def new_layer() -> str:
        with name_lock:
            return next(layers)

    def alone(site: Site, fault: str) -> list[Row]:
        """One rollout with one fault, on a fresh layer (built first when the site needs a reuse)."""
        layer = new_layer()
        if site in built_only:
            return _run(cp, fault_plan, layer, [site], fault)
        _rollout(cp, layer)
        return _run(cp, fault_plan, layer, [site], fault, 1)

    def transient(fault: str) -> list[Row]:
        """Every site at once, each call failing on its first attempt only: one build, one reuse.
        A site whose row is not a success is run again alone."""
        layer = new_layer()
        rows = _run(cp, fault_plan, layer, sorted(fresh, key=sites.index), fault)
        rows += _run(cp, fault_plan, layer, sorted(reused - fresh, key=sites.index), fault, 1)
        kept = [row for row in rows if row.outcome == SUCCEEDED_AFTER_RETRY]
        for row in rows:
            if row.outcome != SUCCEEDED_AFTER_RETRY:
                kept += alone(row.site, fault)
        return kept

    queue: list[tuple[Site, str]] = []

    def lane() -> list[Row]:
        """One permanent fault per rollout, one after another on one layer that is built once."""
        layer = new_layer()
        described, _, problems = _rollout(cp, layer)
        assert described["status"] == "SUCCEEDED" and problems == [], problems
        rows: list[Row] = []
        for run in range(1, 100_000):
            with name_lock:
                if not queue:
                    return rows
                site, fault = queue.pop(0)
            rows += _run(cp, fault_plan, layer, [site], fault, run)
        return rows

    # Permanent faults end the rollout's forward path where they strike: one rollout per site and fault.
    # The slowest (the bake registration's, with their long bake) go first.
    permanent = [(site, fault) for site in sites for fault in FAULTS if fault not in TRANSIENT]
    queue += sorted(
        (item for item in permanent if item[0] not in built_only),
        key=lambda item: BAKE_REGISTRATION not in item[0].function,
    )
    jobs = [lambda fault=fault: transient(fault) for fault in sorted(TRANSIENT)]
    jobs += [lambda item=item: alone(*item) for item in permanent if item[0] in built_only]
    jobs += [lane] * PARALLEL_RUNS
    rows: list[Row] = []
    with ThreadPoolExecutor(PARALLEL_RUNS) as pool:
        for result in pool.map(lambda job: job(), jobs):
            rows += result
    rows.sort(key=lambda row: (row.site.function, row.site.service, row.site.operation, FAULTS.index(row.fault)))
    runs = len({row.run for row in rows})  # the warm-up builds of the lanes and baselines not counted

    width = max(len(row.site.label(names)) for row in rows)
    table = [f"{'call site':<{width}}  {'fault':<8}  {'run':>6}  outcome"]
    for row in rows:
        detail = f"  ({row.detail})" if row.detail else ""
        table.append(f"{row.site.label(names):<{width}}  {row.fault:<8}  {row.seconds:5.1f}s  {row.outcome}{detail}")
    counts = Counter(row.outcome for row in rows)
    summary = (
        f"{runs} fault runs, {counts['INVARIANT VIOLATED']} invariant violations; {len(rows)} (call site, fault) "
        "cells: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    )
    report = fault_plan.parent / "fault-matrix.txt"
    report.write_text("\n".join([*table, summary]) + "\n")
    print("\n".join(table))
    record_property("summary", f"{summary}\n(the table: {report})")
    allowed = {SUCCEEDED_AFTER_RETRY, ROLLED_BACK, FAILED_BEFORE_CHANGE}
    bad = [
        f"{row.site.label(names)} {row.fault}: {row.outcome} {row.detail}" for row in rows if row.outcome not in allowed
    ]
    assert not bad, "\n".join(bad)
