"""The rollout's phases in-process, each Map Run done as a Distributed Map state does it.

A Map Run reads its items from S3, hands them in batches to child executions, each of which loops
its task until the batch is done, and writes the children's records where its ResultWriter says;
the collector task then reads them. Here the same happens in one process, against moto, so a unit
test drives the real batch and collector code without the state machine (the integration tests run
the real ASL).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3

from layershift_core.fanout import Batch, BatchEvent, items_key, read_items, results_prefix
from layershift_core.health import preflight
from layershift_core.models import MapRunRef, RestoreResult, RolloutState, ShiftStep, StepState, Wave
from layershift_core.planner import assess_targets, find_candidates_task, plan_rollout
from layershift_core.settings import Settings
from layershift_core.traffic import (
    RestoreState,
    restore_targets,
    roll_back,
    shift_aliases,
    start_bake,
    summarise_restore,
)
from layershift_core.traffic import promote as promote_layer
from layershift_core.versions import prepare_versions, record_prepared_versions

Phase = Callable[[BatchEvent, Settings, float], Batch]
SECONDS = 900.0


def run_map(
    settings: Settings,
    phase: Phase,
    key: str,
    head: dict[str, Any],
    prefix: str,
    batch_size: int = 25,
    seconds: float = SECONDS,
) -> MapRunRef:
    """One Map Run: every batch of ``key``'s items through ``phase`` until done, results in S3."""
    items = read_items(settings.bucket, key)
    succeeded, failed = [], []
    for start in range(0, len(items), batch_size):
        batch = Batch(Items=items[start : start + batch_size], BatchInput=head)
        record = {"ExecutionArn": f"child-{start}", "Input": json.dumps(batch.model_dump())}
        try:
            while not batch.done:
                batch = phase(BatchEvent(batch=batch), settings, seconds)
        except Exception as exc:  # a failed child execution: its error and cause, as Step Functions records them
            error = {"errorType": type(exc).__name__, "errorMessage": str(exc)}
            failed.append({**record, "Status": "FAILED", "Error": type(exc).__name__, "Cause": json.dumps(error)})
            continue
        succeeded.append({**record, "Status": "SUCCEEDED", "Output": json.dumps(batch.model_dump())})
    s3 = boto3.client("s3")
    files: dict[str, list[dict[str, Any]]] = {"SUCCEEDED": [], "FAILED": [], "PENDING": []}
    for status, records in (("SUCCEEDED", succeeded), ("FAILED", failed)):
        if records:
            file_key = f"{prefix}/run/{status}_0.json"
            s3.put_object(Bucket=settings.bucket, Key=file_key, Body=json.dumps(records).encode())
            files[status].append({"Key": file_key, "Size": 0})
    manifest = f"{prefix}/run/manifest.json"
    body = {"DestinationBucket": settings.bucket, "MapRunArn": f"maprun:{prefix}", "ResultFiles": files}
    s3.put_object(Bucket=settings.bucket, Key=manifest, Body=json.dumps(body).encode())
    return MapRunRef(MapRunArn=f"maprun:{prefix}", ResultWriterDetails={"Bucket": settings.bucket, "Key": manifest})


def _head(state: RolloutState) -> dict[str, Any]:
    assert state.rollout is not None
    return {"rollout_id": state.rollout.rollout_id, "layer": state.rollout.layer}


def _prefix(state: RolloutState, phase: str) -> str:
    assert state.rollout is not None
    return f"{results_prefix(state.rollout.layer, state.rollout.rollout_id)}/{phase}"


def plan(state: RolloutState, settings: Settings, batch_size: int = 25) -> RolloutState:
    """FindCandidates, AssessCandidates, PlanRollout (and its pre-flight)."""
    state = find_candidates_task(state, settings)
    assert state.rollout is not None and state.candidates is not None
    if state.candidates.count:
        head = {
            **_head(state),
            "layer_versions": [version.model_dump(mode="json") for version in state.layer_versions],
            "alias": state.rollout.spec.alias,
            "pilots": state.rollout.spec.pilots,
        }
        state.map_run = run_map(
            settings, assess_targets, state.candidates.key, head, _prefix(state, "assess"), batch_size
        )
    return preflight(plan_rollout(state, settings))


def prepare(state: RolloutState, settings: Settings, batch_size: int = 25) -> RolloutState:
    """PrepareFunctionVersions, RecordPreparedVersions."""
    assert state.plan is not None
    state.map_run = run_map(
        settings, prepare_versions, state.plan.targets_key, _head(state), _prefix(state, "prepare"), batch_size
    )
    return record_prepared_versions(state, settings)


def shift(state: RolloutState, settings: Settings, step: ShiftStep | int = 0, batch_size: int = 25) -> RolloutState:
    """SelectTrafficStep (a step of the schedule by index, or a given step), SetTrafficWeight, StartBake."""
    assert state.plan is not None and state.rollout is not None
    if isinstance(step, int):
        step = state.plan.shift_steps[step]
    elif step.targets_key is None:
        key = state.plan.targets_key
        step = step.model_copy(
            update={"targets_key": key.replace(".json", "-pilot.json") if step.wave is Wave.PILOT else key}
        )
    spec = state.rollout.spec
    state.bake = StepState(
        **_head(state),
        plan_key=state.plan.plan_key,
        alarms=spec.alarms,
        poll_seconds=spec.poll_seconds,
        analysis=spec.analysis,
        preflight=state.preflight,
        step=step,
        step_index=0,
    )
    head = {**_head(state), "step": step.model_dump(mode="json")}
    state.map_run = run_map(settings, shift_aliases, step.targets_key or "", head, _prefix(state, "shift"), batch_size)
    return start_bake(state, settings)


def promote(state: RolloutState, settings: Settings, batch_size: int = 25) -> RolloutState:
    """PromoteAliases, PromoteLayer."""
    if state.plan is not None and state.plan.target_count:
        head = {**_head(state), "step": {"wave": "main", "weight": 100, "bake_seconds": 0}}
        state.map_run = run_map(
            settings, shift_aliases, state.plan.targets_key, head, _prefix(state, "promote"), batch_size
        )
    return promote_layer(state, settings)


def restore(state: RolloutState, settings: Settings, batch_size: int = 25) -> RolloutState:
    """RestoreAliases: the RestoreStateMachine's Map Run and SummariseRestore."""
    assert state.plan is not None and state.rollout is not None
    request = RestoreState(
        layer=state.rollout.layer, rollout_id=state.rollout.rollout_id, targets_key=state.plan.targets_key
    )
    request.map_run = run_map(
        settings, restore_targets, request.targets_key, _head(state), _prefix(state, "restore"), batch_size
    )
    state.restore = RestoreResult(execution_arn="restore", summary=summarise_restore(request, settings))
    return state


def rolled_back(state: RolloutState, settings: Settings, batch_size: int = 25) -> RolloutState:
    """AnythingToRestore, RestoreAliases, RollBack."""
    if state.plan is not None:
        state = restore(state, settings, batch_size)
    return roll_back(state, settings)


def targets_key(layer: str, rollout_id: str) -> str:
    return items_key(layer, rollout_id, "targets")
