"""What every forward step of the workflow checks before it changes anything.

- An operator's abort (`layershift abort`): the step refuses to go on, and the rollback reports it.
- The layer lock: the step's rollout must still hold it. The check renews the lease in the same
  conditional write, so a long rollout (bakes, an approval) keeps the layer, and an execution that
  has ended already (redriven after its lock was released, or taken by another rollout) stops at
  its first step with LockLost instead of changing aliases that may belong to another rollout.

ValidateRequest and AcquireLayerLock run before the lock is taken: they check the abort only
(``holding_lock=False``).
"""

from __future__ import annotations

from .errors import LockLost, RolloutAborted
from .models import RolloutState
from .registry import Registry
from .settings import Settings


def ensure_not_aborted(
    settings: Settings, layer: str, rollout_id: str, *, holding_lock: bool = True, lease_seconds: int | None = None
) -> None:
    """Raise RolloutAborted when an operator asked to abort this rollout (`layershift abort`); with
    ``holding_lock``, raise LockLost unless this rollout still holds the layer's lock, and renew its
    lease: ``settings.lock_lease_seconds``, or ``lease_seconds`` when longer (a wait that may last longer)."""
    registry = Registry(settings.table)
    request = registry.abort_request(layer, rollout_id)
    if request:
        raise RolloutAborted(f"aborted by an operator at {request.get('requested_at')}: {request.get('reason')}")
    if holding_lock:
        ensure_lock_held(registry, max(settings.lock_lease_seconds, lease_seconds or 0), layer, rollout_id)


def ensure_lock_held(registry: Registry, lease_seconds: int, layer: str, rollout_id: str) -> None:
    """Renew this rollout's lease on the layer lock; LockLost when it no longer holds the lock."""
    if registry.renew_lock(layer, rollout_id, lease_seconds):
        return
    holder = registry.lock_holder(layer)
    now = f"held by rollout {holder.get('owner')} since {holder.get('acquired_at')}" if holder else "free"
    raise LockLost(
        f"rollout {rollout_id} no longer holds the lock on layer {layer!r} (now {now}): it has already "
        "ended; push again rather than redriving it"
    )


def abort_reason(settings: Settings, layer: str, rollout_id: str) -> str | None:
    """Why the rollout was aborted, when it was."""
    request = Registry(settings.table).abort_request(layer, rollout_id)
    return f"aborted by an operator: {request.get('reason')}" if request else None


def ensure_rollout_not_aborted(state: RolloutState, settings: Settings, *, holding_lock: bool = True) -> None:
    """`ensure_not_aborted` for a task that receives the whole execution state."""
    if state.rollout is not None:
        ensure_not_aborted(settings, state.rollout.layer, state.rollout.rollout_id, holding_lock=holding_lock)
