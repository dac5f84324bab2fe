"""Steps 7, 9 and 10: move alias traffic, promote, or put everything back.

Every alias change keeps the old version as the primary until promotion, so at any moment a
single UpdateAlias with no routing restores it.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from .aborts import abort_reason, ensure_not_aborted
from .artifacts import read_json
from .aws import client, error_code, guarded
from .builder.build import BUILD_FAILURE_JSON
from .errors import ConcurrentModification, RollbackIncomplete, RolloutAborted
from .models import Outcome, RolloutPlan, RolloutState, StepState, TargetPlan
from .observability import logger
from .planner import load_plan
from .registry import Registry
from .settings import Settings

NO_ROUTING: dict[str, Any] = {"AdditionalVersionWeights": {}}
PARAMETER_NAME = "/layershift/{layer}/arn"
FULL = 100


def _routing(alias: dict[str, Any]) -> dict[str, float]:
    return (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}


def _claim_alias(target: TargetPlan) -> dict[str, Any]:
    """The alias, checked to hold only this rollout's two versions (else someone else moved it)."""
    alias = client("lambda").get_alias(FunctionName=target.function_name, Name=target.alias)
    ours = {target.old_version, target.new_version}
    if alias["FunctionVersion"] not in ours or any(version not in ours for version in _routing(alias)):
        raise ConcurrentModification(
            f"alias {target.alias} of {target.function_name} was changed by someone else "
            f"(now {alias['FunctionVersion']} {_routing(alias) or ''}); the rollout stops"
        )
    return alias


def set_alias_weight(target: TargetPlan, weight: int) -> None:
    """Route ``weight``% of the alias to the new version (100: the alias points at it, no routing).

    Guarded by the alias's RevisionId, so a change made since it was read fails instead of being
    overwritten."""
    alias = _claim_alias(target)
    if weight >= FULL:
        version, routing = target.new_version, NO_ROUTING
    else:
        version, routing = target.old_version, {"AdditionalVersionWeights": {target.new_version: weight / 100}}
    if alias["FunctionVersion"] == version and _routing(alias) == routing["AdditionalVersionWeights"]:
        return
    try:
        client("lambda").update_alias(
            FunctionName=target.function_name,
            Name=target.alias,
            FunctionVersion=version,
            RoutingConfig=routing,
            **guarded(alias.get("RevisionId")),
        )
    except Exception as exc:
        if error_code(exc) == "PreconditionFailedException":
            raise ConcurrentModification(
                f"alias {target.alias} of {target.function_name} changed while it was being shifted"
            ) from exc
        raise


def shift_traffic(step_state: StepState, settings: Settings) -> StepState:
    """Apply one step of the schedule: earlier waves at 100%, this wave at the step's weight."""
    ensure_not_aborted(settings, step_state.layer, step_state.rollout_id)
    plan = load_plan(settings.bucket, step_state.plan_key)
    step = step_state.step
    for target in plan.active:
        if not target.new_version or not target.old_version:
            raise ValueError(f"{target.function_name} has no prepared version")
        if target.wave.rank < step.wave.rank:
            set_alias_weight(target, FULL)
        elif target.wave == step.wave:
            set_alias_weight(target, step.weight)
    logger.info("traffic shifted", extra={"weight_percent": step.weight, "wave": step.wave.value})
    Registry(settings.table).put_rollout(
        plan.layer, plan.rollout_id, status="shifting", weight=str(step.weight), wave=step.wave.value
    )
    step_state.started_at = time.time()
    step_state.wait_seconds = max(1, min(step_state.poll_seconds, step.bake_seconds))
    step_state.bake_complete = step.bake_seconds == 0
    step_state.extended_seconds = 0
    step_state.checks = 0
    step_state.verdict = None
    step_state.verdict_detail = None
    return step_state


def _record_end(settings: Settings, state: RolloutState, status: str, reason: str | None) -> None:
    registry = Registry(settings.table)
    rollout = state.rollout
    if rollout is None:
        return
    registry.put_rollout(rollout.layer, rollout.rollout_id, status=status, reason=reason or "")
    if state.layer_version is not None:
        registry.set_version_status(rollout.layer, state.layer_version.version, status, reason)


def promote(state: RolloutState, settings: Settings) -> RolloutState:
    if state.rollout is None or state.layer_version is None:
        raise ValueError("promotion needs a published layer version")
    ensure_not_aborted(settings, state.rollout.layer, state.rollout.rollout_id)
    promoted: list[str] = []
    if state.plan is not None:
        plan = load_plan(settings.bucket, state.plan.plan_key)
        for target in plan.active:
            set_alias_weight(target, FULL)
            promoted.append(f"{target.function_name}:{target.alias}={target.new_version}")
    client("ssm").put_parameter(
        Name=PARAMETER_NAME.format(layer=state.rollout.layer),
        Value=state.layer_version.arn,
        Type="String",
        Overwrite=True,
        Description=f"Promoted by layershift rollout {state.rollout.rollout_id}",
    )
    _record_end(settings, state, "promoted", None)
    state.outcome = Outcome(status="promoted", restored=[], unrestored=[])
    logger.info("layer promoted", extra={"layer_version": state.layer_version.arn, "aliases": promoted})
    return state


def build_failure(bucket: str, state: RolloutState) -> tuple[str, str] | None:
    """The reason the build job recorded beside its output, when the build failed."""
    if state.rollout is None or state.layer_version is not None:
        return None
    try:
        record = read_json(bucket, state.rollout.artifact_prefix + BUILD_FAILURE_JSON)
    except Exception as exc:
        if error_code(exc) in {"NoSuchKey", "404", "NotFound"}:
            return None
        raise
    return str(record.get("error") or "BuildFailed"), str(record.get("message") or "")


def error_summary(state: RolloutState) -> tuple[str, str]:
    """The failure that led here, as a name and a message an operator can read."""
    if state.error is None:
        return "RolloutFailed", "the rollout failed"
    name, cause = state.error.Error, state.error.Cause or ""
    try:
        parsed = json.loads(cause)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        if "errorMessage" in parsed:
            name = parsed.get("errorType") or name
            cause = str(parsed["errorMessage"])
        elif "Build" in parsed or "BuildStatus" in parsed:
            build = parsed.get("Build", parsed)
            cause = f"build {build.get('Id', '?')} ended {build.get('BuildStatus', 'FAILED')}"
            cause += f": {build['Logs']}" if isinstance(build.get("Logs"), str) else ""
    if name == "States.TaskFailed" and state.layer_version is None:
        name = "BuildFailed"
    return name, cause[:4000]


def _restore(target: TargetPlan) -> str | None:
    """Put one target back. Returns None when restored, else why not."""
    lam = client("lambda")
    alias = lam.get_alias(FunctionName=target.function_name, Name=target.alias)
    routing = _routing(alias)
    ours = {target.old_version, target.new_version}
    if alias["FunctionVersion"] not in ours or any(version not in ours for version in routing):
        return (
            f"alias {target.alias} of {target.function_name} was changed by someone else "
            f"(now {alias['FunctionVersion']} {routing or ''}); left as it is"
        )
    if alias["FunctionVersion"] != target.old_version or routing:
        lam.update_alias(
            FunctionName=target.function_name,
            Name=target.alias,
            FunctionVersion=target.old_version,
            RoutingConfig=NO_ROUTING,
            **guarded(alias.get("RevisionId")),
        )
    config = lam.get_function_configuration(FunctionName=target.function_name)
    if [entry["Arn"] for entry in config.get("Layers", [])] == target.new_layers:
        lam.update_function_configuration(
            FunctionName=target.function_name, Layers=target.current_layers, **guarded(config.get("RevisionId"))
        )
    return None


def restore_targets(plan: RolloutPlan | None) -> tuple[list[str], list[str]]:
    """Put every active target of `plan` back: (restored, what could not be restored and why)."""
    restored: list[str] = []
    unrestored: list[str] = []
    for target in plan.active if plan else []:
        label = f"{target.function_name}:{target.alias}"
        try:
            problem = _restore(target)
        except Exception as exc:
            logger.exception("restore failed", extra={"target": label})
            problem = f"{label}: {type(exc).__name__}: {exc}"
        if problem:
            unrestored.append(problem)
        else:
            restored.append(f"{label}={target.old_version}")
    return restored, unrestored


def roll_back(state: RolloutState, settings: Settings) -> RolloutState:
    name, cause = build_failure(settings.bucket, state) or error_summary(state)
    aborted = abort_reason(settings, state.rollout.layer, state.rollout.rollout_id) if state.rollout else None
    if aborted:
        name, cause = RolloutAborted.__name__, aborted
    if state.rollout is not None:
        record = Registry(settings.table).rollout(state.rollout.layer, state.rollout.rollout_id) or {}
        if record.get("status") == "rolled_back":
            # Rolled back already (a redriven execution, or one the reaper finished): the aliases may
            # belong to a later rollout by now, so nothing is touched again.
            state.outcome = Outcome(status="rolled_back", error=name, cause=cause)
            return state
    plan = load_plan(settings.bucket, state.plan.plan_key) if state.plan is not None else None
    restored, unrestored = restore_targets(plan)
    if unrestored:
        _record_end(settings, state, "rollback_incomplete", f"{name}: {cause}")
        raise RollbackIncomplete(
            "could not restore: " + "; ".join(unrestored) + f". The rollout had failed with {name}: {cause}"
        )
    _record_end(settings, state, "rolled_back", f"{name}: {cause}")
    state.outcome = Outcome(status="rolled_back", error=name, cause=cause, restored=restored)
    logger.warning("rolled back", extra={"error": name, "cause": cause, "restored": restored})
    return state


def reject(state: RolloutState, status: Literal["rejected", "rollback_incomplete"] = "rejected") -> RolloutState:
    """An ending decided by the error alone: a refused request, or a rollback that could not finish."""
    name, cause = error_summary(state)
    state.outcome = Outcome(status=status, error=name, cause=cause)
    return state
