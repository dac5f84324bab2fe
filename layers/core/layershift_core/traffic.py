"""Moving alias traffic, promoting, and putting everything back.

- **ShiftAliases** (each child batch of SetTrafficWeight and PromoteAliases): one step of the
  schedule for a batch of targets: earlier waves at 100%, the step's wave at its weight.
- **StartBake** (one task): the step is applied; its bake starts.
- **PromoteLayer** (one task, after PromoteAliases moved every alias to 100%): the promoted ARN in
  SSM, the registry says promoted.
- **RestoreTargets** (each child batch of the RestoreStateMachine's RestoreAliases) and
  **SummariseRestore**: every touched alias back on its old version with no routing, then
  ``$LATEST``'s layers where nobody changed the function since; what could not be restored is
  named, with the commands that fix it.
- **RollBack** (one task): the rollout's ending, from the restore's summary.

Every alias change keeps the old version as the primary until promotion, so at any moment a
single UpdateAlias with no routing restores it. Every change is guarded by a RevisionId, so a
change someone else made since it was read fails instead of being overwritten.
"""

from __future__ import annotations

import json
import shlex
import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from .aborts import abort_reason, ensure_not_aborted
from .artifacts import read_json, rollout_prefix, write_json
from .aws import client, error_code, guarded, tenant_lambda
from .builder.build import BUILD_FAILURE_JSON
from .errors import ConcurrentModification, RollbackIncomplete, RolloutAborted
from .fanout import (
    BatchEvent,
    MapRunResults,
    raise_first_failure,
    read_map_run,
    record_map_run,
    run_pass,
    until_out_of_time,
)
from .models import FanOut, MapRunRef, Outcome, RestoreSummary, RolloutState, ShiftStep, TargetPlan, variant_for
from .observability import logger
from .pacing import OutOfTime
from .registry import Registry
from .settings import Settings
from .staging import staging_prefix
from .usage import CHILD_EXECUTIONS, TRANSITIONS_CHILDREN, USAGE

NO_ROUTING: dict[str, Any] = {"AdditionalVersionWeights": {}}
PARAMETER_NAME = "/layershift/{layer}/arn"
VARIANT_PARAMETER_NAME = "/layershift/{layer}/{runtime}/{arch}/arn"
FULL = 100
# Unrestored aliases named in the execution state and the notification; every one of them is in S3.
UNRESTORED_SHOWN = 20


def _routing(alias: dict[str, Any]) -> dict[str, float]:
    return (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}


def _ours(alias: dict[str, Any], target: TargetPlan) -> bool:
    """Whether the alias holds only this rollout's two versions (else someone else moved it)."""
    versions = {target.old_version, target.new_version}
    return alias["FunctionVersion"] in versions and all(version in versions for version in _routing(alias))


def set_alias_weight(lam: Any, target: TargetPlan, weight: int) -> None:
    """Route ``weight``% of the alias to the new version (100: the alias points at it, no routing).

    Guarded by the alias's RevisionId, so a change made since it was read fails instead of being
    overwritten."""
    alias = lam.get_alias(FunctionName=target.function_name, Name=target.alias)
    if not _ours(alias, target):
        raise ConcurrentModification(
            f"alias {target.alias} of {target.function_name} was changed by someone else "
            f"(now {alias['FunctionVersion']} {_routing(alias) or ''}); the rollout stops"
        )
    if weight >= FULL:
        version, routing = target.new_version, NO_ROUTING
    else:
        version, routing = target.old_version, {"AdditionalVersionWeights": {target.new_version: weight / 100}}
    if alias["FunctionVersion"] == version and _routing(alias) == routing["AdditionalVersionWeights"]:
        return
    try:
        lam.update_alias(
            FunctionName=target.function_name,
            Name=target.alias,
            FunctionVersion=version,
            RoutingConfig=routing,
            **guarded(alias.get("RevisionId")),
        )
    except lam.exceptions.PreconditionFailedException as exc:
        raise ConcurrentModification(
            f"alias {target.alias} of {target.function_name} changed while it was being shifted"
        ) from exc


# -- ShiftAliases -------------------------------------------------------------------------------------


class ShiftInput(BaseModel):
    """SetTrafficWeight's and PromoteAliases' BatchInput."""

    rollout_id: str
    layer: str
    step: ShiftStep


def weight_for(target: TargetPlan, step: ShiftStep) -> int | None:
    """The weight a step gives a target: 100 for earlier waves, the step's for its own, None for later ones."""
    if target.wave.rank < step.wave.rank:
        return FULL
    if target.wave == step.wave:
        return step.weight
    return None


def shift_aliases(event: BatchEvent, settings: Settings, seconds_left: float) -> Any:
    """ShiftAliases: one pass over a batch of targets."""

    def process(items: list[dict[str, Any]], head: dict[str, Any], _deadline: float) -> Any:
        given = ShiftInput.model_validate(head)
        ensure_not_aborted(settings, given.layer, given.rollout_id)
        lam = tenant_lambda(settings.tenant_role_arn, given.layer)

        def shift(item: dict[str, Any]) -> dict[str, Any]:
            target = TargetPlan.model_validate(item)
            if not target.new_version or not target.old_version:
                raise ValueError(f"{target.function_name} has no prepared version")
            weight = weight_for(target, given.step)
            if weight is not None:
                set_alias_weight(lam, target, weight)
            return {"function_name": target.function_name, "weight": weight}

        return until_out_of_time(items, shift)

    return run_pass(event, seconds_left, process)


def _children_spent(settings: Settings, state: RolloutState) -> MapRunResults | None:
    """Count the Map Run the state points at (children and transitions), and let it go."""
    if state.map_run is None or state.rollout is None:
        return None
    run = read_map_run(settings.bucket, state.map_run)
    record_map_run(run)
    state.map_run = None
    raise_first_failure(run, "aliases")
    return run


def start_bake(state: RolloutState, settings: Settings) -> RolloutState:
    """StartBake: the step is applied to every alias; its bake begins now."""
    bake = state.bake
    if bake is None or state.rollout is None:
        raise ValueError("a bake needs the step it bakes")
    ensure_not_aborted(settings, bake.layer, bake.rollout_id)
    _children_spent(settings, state)
    step = bake.step
    logger.info("traffic shifted", extra={"weight_percent": step.weight, "wave": step.wave.value})
    Registry(settings.table).put_rollout(
        bake.layer, bake.rollout_id, status="shifting", weight=str(step.weight), wave=step.wave.value
    )
    bake.started_at = time.time()
    bake.wait_seconds = max(1, min(bake.poll_seconds, step.bake_seconds))
    bake.bake_complete = step.bake_seconds == 0
    bake.extended_seconds = 0
    bake.checks = 0
    bake.verdict = None
    bake.verdict_detail = None
    return state


# -- PromoteLayer -------------------------------------------------------------------------------------


def _record_end(settings: Settings, state: RolloutState, status: str, reason: str | None) -> None:
    registry = Registry(settings.table)
    rollout = state.rollout
    if rollout is None:
        return
    registry.put_rollout(rollout.layer, rollout.rollout_id, status=status, reason=reason or "")
    for version in state.layer_versions:
        registry.set_version_status(rollout.layer, version.version, status, reason)
    # Archived and set to expire by the tasks after it (Notify, ReleaseLayerLock, or the reaper):
    # they change no alias, so a failed archive write there never rolls back a healthy promotion.


NONE_PROMOTED = "-"


def promoted_by(rollout_id: str) -> str:
    """The SSM parameter's description: who put the value there."""
    return f"Promoted by layershift rollout {rollout_id}"


def promoted_parameters(state: RolloutState) -> dict[str, str]:
    """SSM parameter name -> the layer version ARN a promotion writes there.

    ``/layershift/<layer>/<runtime>/<architecture>/arn`` for each target of the rollout, and
    ``/layershift/<layer>/arn`` for its first target (the newest runtime, x86_64 first, or the first
    pair layer.toml names)."""
    if state.rollout is None or state.matrix is None:
        return {}
    layer = state.rollout.layer
    names: dict[str, str] = {}
    for index, target in enumerate(state.matrix.targets):
        version = variant_for(state.layer_versions, target.runtime, target.architecture)
        if version is None:
            continue
        if index == 0:
            names[PARAMETER_NAME.format(layer=layer)] = version.arn
        names[VARIANT_PARAMETER_NAME.format(layer=layer, runtime=target.runtime, arch=target.architecture)] = (
            version.arn
        )
    return names


def _parameter(name: str) -> str | None:
    ssm = client("ssm")
    try:
        return str(ssm.get_parameter(Name=name)["Parameter"]["Value"])
    except ssm.exceptions.ParameterNotFound:
        return None


def unpromote(settings: Settings, state: RolloutState, record: dict[str, Any]) -> None:
    """Put the promoted parameters back when this rollout promoted them and then failed after all
    (its last task timed out after its work): the next deploy of a consumer stack must not pick up
    a layer version that was rolled back."""
    if state.rollout is None or "previous_promoted" not in record:
        return
    ssm = client("ssm")
    previous: dict[str, str] = json.loads(record["previous_promoted"])
    for name, value in previous.items():
        described = ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Values": [name]}])["Parameters"]
        if not described or described[0].get("Description") != promoted_by(state.rollout.rollout_id):
            continue  # not this rollout's promotion (any more)
        if value == NONE_PROMOTED:
            ssm.delete_parameter(Name=name)
        else:
            ssm.put_parameter(
                Name=name, Value=value, Type="String", Overwrite=True, Description="Restored by a layershift rollback"
            )


def promote(state: RolloutState, settings: Settings) -> RolloutState:
    """PromoteLayer: every alias is on its new version (PromoteAliases); the layer is promoted."""
    if state.rollout is None or not state.layer_versions:
        raise ValueError("promotion needs the published layer versions")
    ensure_not_aborted(settings, state.rollout.layer, state.rollout.rollout_id)
    run = _children_spent(settings, state)
    ssm, registry = client("ssm"), Registry(settings.table)
    parameters = promoted_parameters(state)
    if not (registry.rollout(state.rollout.layer, state.rollout.rollout_id) or {}).get("previous_promoted"):
        # What a rollback after all must put back: recorded before any parameter changes.
        previous = {name: _parameter(name) or NONE_PROMOTED for name in parameters}
        registry.put_rollout(state.rollout.layer, state.rollout.rollout_id, previous_promoted=json.dumps(previous))
    for name, arn in parameters.items():
        ssm.put_parameter(
            Name=name, Value=arn, Type="String", Overwrite=True, Description=promoted_by(state.rollout.rollout_id)
        )
    _record_end(settings, state, "promoted", None)
    state.outcome = Outcome(status="promoted", restored=[], unrestored=[])
    promoted = len(run.results) if run is not None else 0
    logger.info(
        "layer promoted",
        extra={"layer_versions": [v.arn for v in state.layer_versions], "aliases": promoted},
    )
    return state


# -- RestoreTargets and SummariseRestore ----------------------------------------------------------------


class RestoreRequest(BaseModel):
    """The RestoreStateMachine's input: whose targets, and who asked."""

    layer: str
    rollout_id: str
    targets_key: str
    started_by: Literal["workflow", "reaper"] = "workflow"
    reason: str | None = None
    fanout: FanOut = Field(default_factory=FanOut)


class RestoreState(RestoreRequest):
    map_run: MapRunRef | None = None


def fix_commands(target: TargetPlan) -> list[str]:
    """The AWS CLI commands that put one target back where the rollout found it."""
    function = shlex.quote(target.function_name)
    commands = [
        f"aws lambda update-alias --function-name {function} --name {shlex.quote(target.alias)} "
        f"--function-version {target.old_version} --routing-config AdditionalVersionWeights={{}}"
    ]
    layers = " ".join(shlex.quote(arn) for arn in target.current_layers)
    commands.append(
        f"aws lambda update-function-configuration --function-name {function} "
        + (f"--layers {layers}" if layers else "--layers '[]'")
    )
    return commands


def unrestored_entry(target: TargetPlan, now: str, why: str) -> dict[str, Any]:
    """One alias an operator must put back: where it is, where it belongs, and the commands."""
    return {
        "function": target.function_name,
        "alias": target.alias,
        "restore_to_version": target.old_version,
        "now": now,
        "why": why,
        "fix": fix_commands(target),
    }


def _restore_alias(lam: Any, target: TargetPlan) -> dict[str, Any] | None:
    """Put one alias back on its old version with no routing; None when done, else the entry to page."""
    if not target.new_version:
        return None  # never prepared, so never shifted: the alias is as the rollout found it
    try:
        alias = lam.get_alias(FunctionName=target.function_name, Name=target.alias)
    except OutOfTime:
        raise
    except Exception as exc:
        logger.exception("alias unreadable", extra={"function": target.function_name})
        return unrestored_entry(target, f"unknown ({type(exc).__name__}: {exc})", "it could not be read")
    routing = _routing(alias)
    now = f"version {alias['FunctionVersion']}" + (f" with routing {routing}" if routing else "")
    if not _ours(alias, target):
        return unrestored_entry(target, now, "changed by someone else since the rollout moved it; left as it is")
    if alias["FunctionVersion"] == target.old_version and not routing:
        return None
    try:
        lam.update_alias(
            FunctionName=target.function_name,
            Name=target.alias,
            FunctionVersion=target.old_version,
            RoutingConfig=NO_ROUTING,
            **guarded(alias.get("RevisionId")),
        )
    except OutOfTime:
        raise
    except Exception as exc:
        logger.exception("alias restore failed", extra={"function": target.function_name})
        return unrestored_entry(target, now, f"the restore failed: {type(exc).__name__}: {exc}")
    return None


def _restore_layers(lam: Any, target: TargetPlan) -> str | None:
    """``$LATEST``'s layers back where this rollout changed them and nobody changed them since."""
    try:
        config = lam.get_function(FunctionName=target.function_name)["Configuration"]
        if [entry["Arn"] for entry in config.get("Layers", [])] == target.new_layers:
            lam.update_function_configuration(
                FunctionName=target.function_name, Layers=target.current_layers, **guarded(config.get("RevisionId"))
            )
    except OutOfTime:
        raise
    except Exception as exc:
        logger.exception("layer restore failed", extra={"function": target.function_name})
        return f"{type(exc).__name__}: {exc}"
    return None


def restore_batch(
    items: list[dict[str, Any]], layer: str, tenant_role_arn: str | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Aliases first (they carry the traffic), then ``$LATEST``, as the layer's tenant; (results, items left)."""
    lam = tenant_lambda(tenant_role_arn, layer)
    targets = [TargetPlan.model_validate(item) for item in items]
    aliases: dict[str, dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    try:
        for target in targets:
            problem = _restore_alias(lam, target)
            aliases[target.function_name] = {"function_name": target.function_name, "restored_at": time.time()}
            if problem:
                aliases[target.function_name]["unrestored"] = problem
        for target in targets:
            result = aliases[target.function_name]
            layers_problem = _restore_layers(lam, target)
            if layers_problem:
                result["layers"] = layers_problem
            results.append(result)
    except OutOfTime:
        pass
    done = {result["function_name"] for result in results}
    return results, [item for item in items if item["function_name"] not in done]


# A rollout that was rolled back (or refused) has nothing left to restore: its aliases may belong to
# the next rollout by now. (A promoted one that fails after all, its last task having timed out after
# its work, is restored: its execution failed.)
ENDED = frozenset({"rolled_back", "rollback_incomplete", "rejected"})


def restore_targets(event: BatchEvent, settings: Settings, seconds_left: float) -> Any:
    """RestoreTargets: one pass over a batch of targets. It never refuses on an abort or a lost lock
    (putting things back is always allowed), but it touches nothing of a rollout that has ended
    already: a redriven execution of it must not undo what came after."""

    def process(items: list[dict[str, Any]], head: dict[str, Any], _deadline: float) -> Any:
        record = Registry(settings.table).rollout(head["layer"], head["rollout_id"]) or {}
        if record.get("status") in ENDED:
            logger.warning("the rollout ended already: nothing restored", extra={"status": record.get("status")})
            return [{"function_name": item["function_name"], "ended": record["status"]} for item in items], []
        return restore_batch(items, head["layer"], settings.tenant_role_arn)

    return run_pass(event, seconds_left, process)


def unrestored_key(layer: str, rollout_id: str) -> str:
    return rollout_prefix(layer, rollout_id) + "unrestored.json"


def summarise_restore(state: RestoreState, settings: Settings) -> RestoreSummary:
    """SummariseRestore: how many targets are back, and every one that is not, with its fix."""
    if state.map_run is None:
        return RestoreSummary()
    run = read_map_run(settings.bucket, state.map_run)
    record_map_run(run)
    # The restore execution itself is a child of the rollout: its two states, RestoreAliases and this one.
    USAGE.add(CHILD_EXECUTIONS)
    USAGE.add(TRANSITIONS_CHILDREN, 2)
    unrestored = [result["unrestored"] for result in run.results if result.get("unrestored")]
    for failed in run.failed:
        for item in failed.items:
            target = TargetPlan.model_validate(item)
            if target.new_version:
                unrestored.append(
                    unrestored_entry(target, "unknown", f"its batch failed: {failed.error}: {failed.cause[:300]}")
                )
    summary = RestoreSummary(
        restored=sum(1 for result in run.results if not result.get("unrestored") and not result.get("ended")),
        unrestored_count=len(unrestored),
        unrestored=unrestored[:UNRESTORED_SHOWN],
        failed_batches=len(run.failed),
        last_alias_restored_at=max((r["restored_at"] for r in run.results if "restored_at" in r), default=None),
    )
    if unrestored:
        summary.unrestored_key = unrestored_key(state.layer, state.rollout_id)
        write_json(settings.bucket, summary.unrestored_key, unrestored)
    layers = [result for result in run.results if result.get("layers")]
    if layers:
        logger.warning("layers left on $LATEST", extra={"count": len(layers), "first": layers[:3]})
    return summary


# -- RollBack -----------------------------------------------------------------------------------------


def _build_unfinished(state: RolloutState) -> bool:
    """Whether the rollout was building and not every target it built for has a published version."""
    if state.matrix is None or not state.matrix.to_build:
        return False
    published = {label for version in state.layer_versions if not version.reused for label in version.targets}
    return any(target.label not in published for target in state.matrix.to_build)


def _failed_build_arn(state: RolloutState) -> str | None:
    """The ARN of the build whose failure ended BuildLayer (the task's Cause is the build, as JSON)."""
    try:
        cause = json.loads(state.error.Cause or "") if state.error is not None else None
    except ValueError:
        return None
    build = cause.get("Build") if isinstance(cause, dict) else None
    arn = build.get("Arn") if isinstance(build, dict) else None
    return str(arn) if arn else None


def build_failure(bucket: str, state: RolloutState) -> tuple[str, str] | None:
    """The reason the build job recorded in its staging folder, when the build failed."""
    if not _build_unfinished(state):
        return None
    arn = _failed_build_arn(state)
    if arn is None:
        return None
    try:
        record = read_json(bucket, staging_prefix(arn) + BUILD_FAILURE_JSON)
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
    if name == "States.TaskFailed" and _build_unfinished(state):
        name = "BuildFailed"
    if name.startswith("States."):
        # The names Step Functions reserves cannot be a Fail state's error: say which one in the cause.
        name, cause = "RolloutFailed", f"{name}: {cause}"
    return name, cause[:4000]


def failure_reason(settings: Settings, state: RolloutState) -> tuple[str, str]:
    """Why the rollout is rolled back: an operator's abort, the build's failure, or the error."""
    name, cause = build_failure(settings.bucket, state) or error_summary(state)
    aborted = abort_reason(settings, state.rollout.layer, state.rollout.rollout_id) if state.rollout else None
    return (RolloutAborted.__name__, aborted) if aborted else (name, cause)


def unrestored_lines(summary: RestoreSummary) -> list[str]:
    return [
        f"{entry['function']}:{entry['alias']}: {entry['why']} (now {entry['now']})" for entry in summary.unrestored
    ]


def roll_back(state: RolloutState, settings: Settings) -> RolloutState:
    """RollBack: the ending of a rollout whose targets RestoreAliases put back (or that had none)."""
    name, cause = failure_reason(settings, state)
    record: dict[str, Any] = {}
    if state.rollout is not None:
        record = Registry(settings.table).rollout(state.rollout.layer, state.rollout.rollout_id) or {}
        if record.get("status") == "rolled_back":
            # Rolled back already (a redriven execution, or one the reaper finished): the aliases may
            # belong to a later rollout by now, so nothing is recorded again.
            state.outcome = Outcome(status="rolled_back", error=name, cause=cause)
            return state
    unpromote(settings, state, record)
    summary = state.restore.summary if state.restore is not None else RestoreSummary()
    if summary.unrestored_count:
        _record_end(settings, state, "rollback_incomplete", f"{name}: {cause}")
        shown = "; ".join(unrestored_lines(summary))
        more = summary.unrestored_count - len(summary.unrestored)
        raise RollbackIncomplete(
            f"could not restore {summary.unrestored_count} alias(es): {shown}"
            + (f"; and {more} more (s3://{settings.bucket}/{summary.unrestored_key})" if more > 0 else "")
            + f". The rollout had failed with {name}: {cause}"
        )
    _record_end(settings, state, "rolled_back", f"{name}: {cause}")
    state.outcome = Outcome(status="rolled_back", error=name, cause=cause, restored=[f"{summary.restored} target(s)"])
    logger.warning("rolled back", extra={"error": name, "cause": cause, "restored": summary.restored})
    return state


def reject(state: RolloutState, status: Literal["rejected", "rollback_incomplete"] = "rejected") -> RolloutState:
    """An ending decided by the error alone: a refused request, or a rollback that could not finish."""
    name, cause = error_summary(state)
    state.outcome = Outcome(status=status, error=name, cause=cause)
    return state
