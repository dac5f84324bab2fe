"""Step 6: give every target a published version whose layers include the new layer version.

`$LATEST` is updated with the RevisionId the plan read, so a change someone else made since the
plan is never overwritten: that function is skipped, the plan says why (naming both RevisionIds),
and the other targets go on. The plan records each new version before any alias moves.
"""

from __future__ import annotations

from typing import Any

from .aborts import ensure_rollout_not_aborted
from .aws import client, guarded
from .models import RolloutState, TargetPlan, Verdict
from .observability import logger
from .planner import load_plan, plan_summary, save_plan
from .registry import Registry
from .settings import Settings


def _changed_by_someone_else(target: TargetPlan, revision_now: str | None, when: str) -> str:
    return (
        f"{target.function_name} was changed by someone else {when} "
        f"(RevisionId {target.revision_id} → {revision_now}); left untouched, push again to include it"
    )


def _update_layers(lam: Any, target: TargetPlan) -> str | None:
    """Put the new layers on `$LATEST`, guarded by the plan's RevisionId.

    None when they are on (also when an earlier attempt of this task put them on), else why the
    function was left alone."""
    config = lam.get_function_configuration(FunctionName=target.function_name)
    if [entry["Arn"] for entry in config.get("Layers", [])] == target.new_layers:
        return None
    if config.get("RevisionId") != target.revision_id:
        return _changed_by_someone_else(target, config.get("RevisionId"), "since the plan")
    try:
        lam.update_function_configuration(
            FunctionName=target.function_name, Layers=target.new_layers, **guarded(target.revision_id)
        )
    except lam.exceptions.PreconditionFailedException:
        now = lam.get_function_configuration(FunctionName=target.function_name).get("RevisionId")
        return _changed_by_someone_else(target, now, "while its layers were being updated")
    return None


def prepare_versions(state: RolloutState, settings: Settings) -> RolloutState:
    ensure_rollout_not_aborted(state, settings)
    if state.plan is None or state.rollout is None:
        raise ValueError("preparing versions needs a plan")
    plan = load_plan(settings.bucket, state.plan.plan_key)
    lam = client("lambda")
    waiter = lam.get_waiter("function_updated_v2")
    for target in plan.active:
        if target.new_version:
            continue  # prepared by an earlier attempt of this task
        skipped = _update_layers(lam, target)
        if skipped:
            target.verdict, target.reason = Verdict.SKIPPED, skipped
            save_plan(settings.bucket, state.plan.plan_key, plan)
            logger.warning("target skipped", extra={"function": target.function_name, "reason": skipped})
            continue
        waiter.wait(FunctionName=target.function_name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
        updated = lam.get_function_configuration(FunctionName=target.function_name)
        published = lam.publish_version(
            FunctionName=target.function_name,
            **guarded(updated.get("RevisionId")),
            Description=f"layershift {plan.layer} rollout {plan.rollout_id}"[:256],
        )
        target.new_version = published["Version"]
        save_plan(settings.bucket, state.plan.plan_key, plan)
        logger.info(
            "version prepared",
            extra={"function": target.function_name, "old": target.old_version, "new": target.new_version},
        )
    state.plan = plan_summary(plan, state.plan.plan_key, state.rollout.spec)
    Registry(settings.table).put_rollout(plan.layer, plan.rollout_id, status="prepared")
    return state
