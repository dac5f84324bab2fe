"""Fault injection at every AWS call a rollout makes: throttling, a 5xx, AccessDenied, a task timeout.

A baseline rollout records every AWS call each control-plane function makes (the local runtime's
fault hook, `layershift/local/fault_hook.py`). Then, for each call site and each fault, a fresh
rollout runs with that call failing. After each run DESIGN.md's invariants must hold, and the
ending must be one of: succeeded after retry, rolled back cleanly, or failed before any change.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from layershift.controlplane import ControlPlane, follow, history_events
from layershift.invariants import check_invariants

from .support import create_consumer, publish_bootstrap_layer, spec, start_rollout

pytestmark = [pytest.mark.integration, pytest.mark.network, pytest.mark.faults]

FAULTS = ("throttle", "server", "denied", "timeout")
TRANSIENT = {"throttle", "server"}
SUCCEEDED_AFTER_RETRY = "succeeded after retry"
ROLLED_BACK = "rolled back cleanly"
FAILED_BEFORE_CHANGE = "failed before any change"
PARALLEL_RUNS = 4
_plan_lock = threading.Lock()


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


def _calls(plan: Path) -> list[dict]:
    record = Path(json.loads(plan.read_text())["record"])
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines() if line.strip()]


def _set_fault(plan: Path, layer: str, faults: list[dict] | None) -> None:
    with _plan_lock:
        data = json.loads(plan.read_text())
        if faults is None:
            data["faults"].pop(layer, None)
        else:
            data["faults"][layer] = faults
        staging = plan.with_suffix(".tmp")
        staging.write_text(json.dumps(data))
        staging.replace(plan)


def _rollout(cp: ControlPlane, layer: str) -> tuple[dict, list[dict], list[str]]:
    """One rollout of `layer` onto its consumer: the ending, the history and the invariant problems."""
    create_consumer(cp, f"{layer}-fn", [publish_bootstrap_layer(cp, layer)])
    arn = start_rollout(cp, layer, "six==1.16.0\n", spec("[{weight = 50, bake_seconds = 1}]"))
    described = follow(cp, arn, emit=lambda line: None, poll=0.3, timeout=600)
    return described, history_events(cp, arn), check_invariants(cp, arn)


def _classify(fault: str, described: dict, history: list[dict]) -> tuple[str, str]:
    entered = [e["stateEnteredEventDetails"]["name"] for e in history if "stateEnteredEventDetails" in e]
    failed = next((e["executionFailedEventDetails"] for e in history if e["type"] == "ExecutionFailed"), {})
    if described["status"] == "SUCCEEDED":
        if fault in TRANSIENT:
            return SUCCEEDED_AFTER_RETRY, ""
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


def _injected_sites(plan: Path, layer: str) -> set[Site]:
    return {
        Site(call["function"], call["service"], call["operation"])
        for call in _calls(plan)
        if call["layer"] == layer and call["injected"]
    }


def _run(cp: ControlPlane, plan: Path, layer: str, sites: list[Site], fault: str) -> list[Row]:
    """One rollout with `fault` at every site in `sites`: a row per site."""
    _set_fault(
        plan,
        layer,
        [{"function": s.function, "service": s.service, "operation": s.operation, "fault": fault} for s in sites],
    )
    try:
        described, history, problems = _rollout(cp, layer)
    finally:
        _set_fault(plan, layer, None)
    injected = _injected_sites(plan, layer)
    grouped = f"one run, {len(sites)} sites at once" if len(sites) > 1 else ""
    rows = []
    for site in sites:
        if problems:
            rows.append(Row(site, fault, "INVARIANT VIOLATED", "; ".join(problems), layer))
        elif site not in injected:
            rows.append(Row(site, fault, "fault not reached", run=layer))
        else:
            outcome, detail = _classify(fault, described, history)
            rows.append(Row(site, fault, outcome, "; ".join(part for part in (detail, grouped) if part), layer))
    return rows


def test_every_call_site_under_every_fault_keeps_the_invariants(control_plane: ControlPlane, fault_plan: Path) -> None:
    cp = control_plane
    functions = {f["FunctionName"] for f in cp.client("lambda").list_functions()["Functions"]}
    names = {name: name.split("-")[1] if name.count("-") >= 2 else name for name in functions}

    described, _, problems = _rollout(cp, "faultbase")
    assert described["status"] == "SUCCEEDED" and problems == []
    sites = sorted(
        {
            Site(call["function"], call["service"], call["operation"])
            for call in _calls(fault_plan)
            if call["layer"] == "faultbase" and not call["function"].startswith("faultbase")
        },
        key=lambda site: (site.function, site.service, site.operation),
    )
    assert sites, "the baseline rollout recorded no AWS call"

    # Transient faults: every site at once, each call failing on its first attempt only, so one
    # rollout answers for all of them; a site whose row is not a success is run again alone.
    # Permanent faults end the rollout's forward path where they strike: one rollout per site and fault.
    layers = (f"fault{index:03d}" for index in range(100_000))
    rows: list[Row] = []
    with ThreadPoolExecutor(PARALLEL_RUNS) as pool:
        groups = [pool.submit(_run, cp, fault_plan, f"faultall{fault}", sites, fault) for fault in sorted(TRANSIENT)]
        work = [(next(layers), site, fault) for site in sites for fault in FAULTS if fault not in TRANSIENT]
        for result in pool.map(lambda item: _run(cp, fault_plan, item[0], [item[1]], item[2]), work):
            rows += result
        alone = []
        for group in groups:
            for row in group.result():
                if row.outcome == SUCCEEDED_AFTER_RETRY:
                    rows.append(row)
                else:
                    alone.append((next(layers), row.site, row.fault))
        for result in pool.map(lambda item: _run(cp, fault_plan, item[0], [item[1]], item[2]), alone):
            rows += result
    rows.sort(key=lambda row: (row.site.function, row.site.service, row.site.operation, FAULTS.index(row.fault)))
    runs = len({row.run for row in rows})

    width = max(len(row.site.label(names)) for row in rows)
    print(f"\n{'call site':<{width}}  {'fault':<8}  outcome")
    for row in rows:
        detail = f"  ({row.detail})" if row.detail else ""
        print(f"{row.site.label(names):<{width}}  {row.fault:<8}  {row.outcome}{detail}")
    counts = Counter(row.outcome for row in rows)
    violations = counts["INVARIANT VIOLATED"]
    print(
        f"{runs} fault runs, {violations} invariant violations; {len(rows)} (call site, fault) cells: "
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    )
    allowed = {SUCCEEDED_AFTER_RETRY, ROLLED_BACK, FAILED_BEFORE_CHANGE}
    bad = [
        f"{row.site.label(names)} {row.fault}: {row.outcome} {row.detail}" for row in rows if row.outcome not in allowed
    ]
    assert not bad, "\n".join(bad)
