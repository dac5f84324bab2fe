"""An operator's abort, as every forward step of the workflow sees it."""

from __future__ import annotations

from .errors import RolloutAborted
from .models import RolloutState
from .registry import Registry
from .settings import Settings


def ensure_not_aborted(settings: Settings, layer: str, rollout_id: str) -> None:
    """Raise RolloutAborted when an operator asked to abort this rollout (`layershift abort`)."""
    request = Registry(settings.table).abort_request(layer, rollout_id)
    if request:
        raise RolloutAborted(f"aborted by an operator at {request.get('requested_at')}: {request.get('reason')}")


def abort_reason(settings: Settings, layer: str, rollout_id: str) -> str | None:
    """Why the rollout was aborted, when it was."""
    request = Registry(settings.table).abort_request(layer, rollout_id)
    return f"aborted by an operator: {request.get('reason')}" if request else None


def ensure_rollout_not_aborted(state: RolloutState, settings: Settings) -> None:
    """`ensure_not_aborted` for a task that receives the whole execution state."""
    if state.rollout is not None:
        ensure_not_aborted(settings, state.rollout.layer, state.rollout.rollout_id)
