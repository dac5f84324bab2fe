"""Step 2 and every ending: one rollout per layer at a time."""

from __future__ import annotations

from .aborts import ensure_rollout_not_aborted
from .models import RolloutState
from .observability import logger
from .registry import Registry
from .settings import Settings


def acquire_layer_lock(state: RolloutState, settings: Settings) -> RolloutState:
    ensure_rollout_not_aborted(state, settings)
    if state.rollout is None:
        raise ValueError("the lock is taken after validation")
    Registry(settings.table).acquire_lock(state.rollout.layer, state.rollout.rollout_id, settings.lock_lease_seconds)
    return state


def release_layer_lock(state: RolloutState, settings: Settings) -> RolloutState:
    if state.rollout is not None:
        held = Registry(settings.table).release_lock(state.rollout.layer, state.rollout.rollout_id)
        if not held:
            logger.warning("lock was not held by this rollout", extra={"rollout_id": state.rollout.rollout_id})
    state.lock_released = True
    return state
