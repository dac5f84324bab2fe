"""Step 6: give every target a published version whose layers include the new layer version.

`$LATEST` is updated with the function's own RevisionId, so a change someone else made since the
plan is never overwritten; the plan records each new version before any alias moves.
"""

from __future__ import annotations

from .aborts import ensure_rollout_not_aborted
from .aws import client, guarded
from .errors import ConcurrentModification
from .models import RolloutState
from .observability import logger
from .planner import load_plan, save_plan
from .registry import Registry
from .settings import Settings


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
        config = lam.get_function_configuration(FunctionName=target.function_name)
        layers = [entry["Arn"] for entry in config.get("Layers", [])]
        if layers != target.new_layers:
            if config.get("RevisionId") != target.revision_id:
                raise ConcurrentModification(
                    f"{target.function_name} changed since the plan (RevisionId {target.revision_id} → "
                    f"{config.get('RevisionId')}); nothing of it was touched"
                )
            try:
                lam.update_function_configuration(
                    FunctionName=target.function_name, Layers=target.new_layers, **guarded(target.revision_id)
                )
            except lam.exceptions.PreconditionFailedException:
                raise ConcurrentModification(
                    f"{target.function_name} changed while its layers were being updated"
                ) from None
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
    Registry(settings.table).put_rollout(plan.layer, plan.rollout_id, status="prepared")
    return state
