"""PrepareVersions and RecordPreparedVersions: give every target a published version whose layers
include the new layer version.

PrepareVersions (each child batch) works in two sweeps, so that the time a function update takes
to settle (1 to 3 s on Lambda) overlaps with the others' instead of adding up:

1. put the new layers on each target's ``$LATEST``, guarded by the RevisionId the plan read, so a
   change someone else made since is never overwritten;
2. for each in turn, wait for its update to settle (the ``function_updated_v2`` waiter: GetFunction,
   its own bucket), then publish a version, guarded by the RevisionId after the update.

A target that cannot be prepared (changed by someone else, or a permanent error such as a size
limit or AccessDenied) is skipped with its reason, its ``$LATEST`` put back if this rollout changed
it, and the others go on. RecordPreparedVersions (one task) records every new version and every
skip in the plan before any alias moves, and rolls the whole rollout back when more targets were
skipped than the spec tolerates (``rollout.tolerated_failure_percent``).
"""

from __future__ import annotations

from typing import Any, cast

from botocore.exceptions import ClientError, WaiterError
from pydantic import BaseModel

from .aborts import ensure_not_aborted, ensure_rollout_not_aborted
from .aws import error_code, guarded, tenant_lambda
from .errors import TooManyTargetsFailed
from .fanout import BatchEvent, raise_first_failure, read_map_run, record_map_run, run_pass
from .models import RolloutState, TargetPlan, Verdict
from .observability import logger
from .pacing import OutOfTime
from .planner import load_plan, plan_summary, save_plan, write_targets
from .registry import Registry
from .settings import Settings
from .usage import THROTTLING

# Errors that a retry may cure: botocore retried them already; the batch fails rather than skip the function.
TRANSIENT = THROTTLING | {
    "ServiceException",
    "InternalFailure",
    "ServiceUnavailableException",
    "ResourceConflictException",
}
_SKIPPED_SHOWN = 5


class PrepareInput(BaseModel):
    """PrepareFunctionVersions' BatchInput."""

    rollout_id: str
    layer: str


def _permanent(exc: ClientError) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 400)
    return error_code(exc) not in TRANSIENT and status < 500


def _changed_by_someone_else(target: TargetPlan, revision_now: str | None, when: str) -> str:
    return (
        f"{target.function_name} was changed by someone else {when} "
        f"(RevisionId {target.revision_id} → {revision_now}); left untouched, push again to include it"
    )


def _configuration(lam: Any, name: str) -> dict[str, Any]:
    return lam.get_function(FunctionName=name)["Configuration"]


def _layers(config: dict[str, Any]) -> list[str]:
    return [entry["Arn"] for entry in config.get("Layers", [])]


def _update_layers(lam: Any, target: TargetPlan) -> str | None:
    """Put the new layers on `$LATEST`, guarded by the plan's RevisionId.

    None when they are on (also when an earlier attempt put them on), else why the function was
    left alone."""
    config = _configuration(lam, target.function_name)
    if _layers(config) == target.new_layers:
        return None
    if config.get("RevisionId") != target.revision_id:
        return _changed_by_someone_else(target, config.get("RevisionId"), "since the plan")
    try:
        lam.update_function_configuration(
            FunctionName=target.function_name, Layers=target.new_layers, **guarded(target.revision_id)
        )
    except lam.exceptions.PreconditionFailedException:
        now = _configuration(lam, target.function_name).get("RevisionId")
        return _changed_by_someone_else(target, now, "while its layers were being updated")
    except ClientError as exc:
        if not _permanent(exc):
            raise
        return f"{target.function_name}: its layers could not be updated: {error_code(exc)}: {exc}"
    return None


def _put_back(lam: Any, target: TargetPlan) -> None:
    """Undo this rollout's change of `$LATEST` on a target that is being skipped."""
    config = _configuration(lam, target.function_name)
    if _layers(config) != target.new_layers:
        return
    lam.update_function_configuration(
        FunctionName=target.function_name, Layers=target.current_layers, **guarded(config.get("RevisionId"))
    )


def _publish(lam: Any, target: TargetPlan, description: str) -> str | None:
    """Wait for the update to settle and publish a version; None when published, else why skipped."""
    try:
        lam.get_waiter("function_updated_v2").wait(
            FunctionName=target.function_name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
        )
    except WaiterError as exc:
        last = cast(dict[str, Any], exc.last_response or {})  # a GetFunction answer, typed as any error
        reason = last.get("Configuration", {}).get("LastUpdateStatusReason") or str(exc)
        _put_back(lam, target)
        return f"{target.function_name}: the update of its layers did not succeed: {reason}"
    config = _configuration(lam, target.function_name)
    try:
        published = lam.publish_version(
            FunctionName=target.function_name, Description=description, **guarded(config.get("RevisionId"))
        )
    except lam.exceptions.PreconditionFailedException:
        return _changed_by_someone_else(
            target, _configuration(lam, target.function_name).get("RevisionId"), "while its version was being published"
        )
    except ClientError as exc:
        if not _permanent(exc):
            raise
        _put_back(lam, target)
        return f"{target.function_name}: no version could be published: {error_code(exc)}: {exc}"
    target.new_version = published["Version"]
    return None


def _skipped(target: TargetPlan, reason: str) -> dict[str, Any]:
    logger.warning("target skipped", extra={"function": target.function_name, "reason": reason})
    return {"function_name": target.function_name, "skipped": reason}


def prepare_batch(
    items: list[dict[str, Any]], given: PrepareInput, tenant_role_arn: str | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The three sweeps over a batch, as the layer's tenant; (results of the finished targets, the items
    left for the next pass)."""
    lam = tenant_lambda(tenant_role_arn, given.layer)
    targets = [TargetPlan.model_validate(item) for item in items]
    description = f"layershift {given.layer} rollout {given.rollout_id}"[:256]
    results: list[dict[str, Any]] = []
    updated: list[TargetPlan] = []
    try:
        for target in targets:
            problem = _update_layers(lam, target)
            if problem:
                results.append(_skipped(target, problem))
            else:
                updated.append(target)
        for target in updated:
            problem = _publish(lam, target, description)
            if problem:
                results.append(_skipped(target, problem))
            else:
                results.append({"function_name": target.function_name, "new_version": target.new_version})
                logger.info(
                    "version prepared",
                    extra={"function": target.function_name, "old": target.old_version, "new": target.new_version},
                )
    except OutOfTime:
        pass  # the items not finished go to the next pass; every sweep is safe to repeat
    finished = {result["function_name"] for result in results}
    return results, [item for item in items if item["function_name"] not in finished]


def prepare_versions(event: BatchEvent, settings: Settings, seconds_left: float) -> Any:
    """PrepareVersions: one pass over a batch of targets."""

    def process(items: list[dict[str, Any]], head: dict[str, Any], _deadline: float) -> Any:
        given = PrepareInput.model_validate(head)
        ensure_not_aborted(settings, given.layer, given.rollout_id)
        return prepare_batch(items, given, settings.tenant_role_arn)

    return run_pass(event, seconds_left, process)


def record_prepared_versions(state: RolloutState, settings: Settings) -> RolloutState:
    """RecordPreparedVersions: the plan records each new version and each skip, before any alias moves."""
    ensure_rollout_not_aborted(state, settings)
    if state.plan is None or state.rollout is None or state.map_run is None:
        raise ValueError("recording prepared versions needs a plan and the PrepareFunctionVersions Map Run")
    rollout = state.rollout
    run = read_map_run(settings.bucket, state.map_run)
    record_map_run(run)
    raise_first_failure(run, "targets")
    outcomes = {result["function_name"]: result for result in run.results}
    plan = load_plan(settings.bucket, state.plan.plan_key)
    planned = plan.active
    skipped = []
    for target in planned:
        outcome = outcomes.get(target.function_name)
        if outcome is None:
            raise RuntimeError(f"no child execution reported on {target.function_name}")
        if outcome.get("skipped"):
            target.verdict, target.reason = Verdict.SKIPPED, outcome["skipped"]
            skipped.append(target)
        else:
            target.new_version = outcome["new_version"]
    save_plan(settings.bucket, state.plan.plan_key, plan)
    write_targets(settings.bucket, plan, state.plan.targets_key)
    state.plan = plan_summary(plan, state.plan.plan_key, state.plan.targets_key, rollout.spec)
    tolerated = rollout.spec.tolerated_failure_percent
    if planned and 100.0 * len(skipped) / len(planned) > tolerated:
        shown = "; ".join(target.reason or "" for target in skipped[:_SKIPPED_SHOWN])
        more = f"; and {len(skipped) - _SKIPPED_SHOWN} more" if len(skipped) > _SKIPPED_SHOWN else ""
        raise TooManyTargetsFailed(
            f"{len(skipped)} of {len(planned)} targets ({100.0 * len(skipped) / len(planned):.1f}%) could not be "
            f"prepared, more than the {tolerated:g}% rollout.tolerated_failure_percent allows: {shown}{more}"
        )
    Registry(settings.table).put_rollout(rollout.layer, rollout.rollout_id, status="prepared")
    state.map_run = None
    return state
