"""Step 2 and every ending: one rollout per layer at a time.

A push that finds its layer locked by another rollout waits for it, bounded: AcquireLayerLock
returns the state with a ``lock_wait`` marker, the workflow waits (WaitForLayerLock) and asks again,
and after ``lock_wait_seconds`` it gives up with LayerLocked. Pushes are never interleaved, and
never rolled out out of order: before each attempt a push that a newer push of the same layer has
replaced stops with Superseded, so of three quick pushes only the first to take the lock and the
last one roll out. Every forward step then confirms the lock and renews its lease (aborts.py).

`unlock_layer` is `layershift unlock`: an operator frees a lock whose holder is dead.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from .aborts import ensure_rollout_not_aborted
from .artifacts import head_if_present, read_bytes
from .aws import client
from .errors import LayerLocked, RolloutAborted, Superseded, UnlockRefused
from .fanout import flush_usage
from .history import close_rollout
from .models import LockWait, RolloutRequest, RolloutState
from .observability import logger
from .registry import Registry
from .settings import Settings

# Between attempts: 30 s for the default hour (120 attempts), never less than 5 s, and at most 5 min, so
# that even a day's wait stays below 300 attempts (~9 history events each, far below Step Functions'
# 25,000) while a freed lock is still taken within minutes.
MAX_ATTEMPTS = 120
MIN_RETRY_SECONDS = 5
MAX_RETRY_SECONDS = 300
# Executions whose rollout is alive: their lock is not to be taken from them without --force.
LIVE_EXECUTION_STATUSES = frozenset({"RUNNING", "PENDING_REDRIVE"})


def retry_seconds(lock_wait_seconds: int) -> int:
    """Seconds between two attempts to take a locked layer."""
    return min(MAX_RETRY_SECONDS, max(MIN_RETRY_SECONDS, math.ceil(lock_wait_seconds / MAX_ATTEMPTS)))


def _iso(epoch: float | int | None) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds") if epoch is not None else "?"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def acquire_layer_lock(state: RolloutState, settings: Settings, now: float | None = None) -> RolloutState:
    """Take the layer's lock, or say how long to wait before asking again (``state.lock_wait``).

    Raises Superseded when a newer push of the layer exists, LayerLocked when the wait is over.
    """
    if state.rollout is None:
        raise ValueError("the lock is taken after validation")
    layer, me = state.rollout.layer, state.rollout.rollout_id
    registry = Registry(settings.table)
    try:
        ensure_rollout_not_aborted(state, settings, holding_lock=False)
        ensure_latest_push(state.request, me)
    except (RolloutAborted, Superseded):
        # A retried attempt may have taken the lock already: a rollout that stops here leaves it free.
        registry.release_lock(layer, me)
        raise
    now = time.time() if now is None else now
    holder = registry.try_acquire_lock(layer, me, settings.lock_lease_seconds)
    previous = state.lock_wait
    if holder is None:
        if previous is not None:
            waited = now - previous.waiting_since
            registry.put_rollout(layer, me, status="locked", lock_waited_seconds=f"{waited:.0f}")
            logger.info("lock acquired after waiting", extra={"layer": layer, "waited_seconds": round(waited)})
        state.lock_wait = None
        return state

    owner = str(holder.get("owner", "?"))
    waiting_since = previous.waiting_since if previous is not None else now
    waited = now - waiting_since
    if waited >= settings.lock_wait_seconds:
        raise LayerLocked(locked_message(layer, me, holder, waited, settings.lock_wait_seconds))
    retry = max(1, min(retry_seconds(settings.lock_wait_seconds), math.ceil(settings.lock_wait_seconds - waited)))
    state.lock_wait = LockWait(
        holder=owner,
        holder_since=holder.get("acquired_at"),
        waiting_since=waiting_since,
        retry_seconds=retry,
        attempts=(previous.attempts + 1) if previous is not None else 1,
    )
    if previous is None or previous.holder != owner:
        registry.put_rollout(layer, me, status="waiting_for_lock", waiting_for=owner)
        logger.info("layer locked by another rollout: waiting", extra={"layer": layer, "holder": owner})
    return state


def locked_message(layer: str, me: str, holder: dict[str, Any], waited: float, budget: int) -> str:
    owner = holder.get("owner", "?")
    waited_text = f"waited {_duration(waited)}" if waited > 0 else "did not wait"
    return (
        f"layer {layer!r} is still locked by rollout {owner} (holding it since {holder.get('acquired_at', '?')}, "
        f"lease until {_iso(holder.get('expires_at'))}); rollout {me} {waited_text} for it, the most "
        f"LockWaitSeconds ({budget} s) allows, and stops without building anything. Wait for {owner} to end "
        f"and push again (identical bytes count as a duplicate push and start nothing: change the file), "
        f"stop it with `layershift abort {layer}`, or, if its execution is no longer running, free the layer "
        f"with `layershift unlock {layer}`"
    )


def ensure_latest_push(request: RolloutRequest, rollout_id: str) -> None:
    """Raise Superseded when the pushed requirements file has a newer version with other content.

    The same bytes pushed again start no new execution (the execution name is a hash of them), so
    a newer version counts only when it, or the layer.toml beside it, differs from this push.
    """
    if request.requirements_version is None:
        return  # not pinned to a version: nothing to compare
    current = head_if_present(request.bucket, request.requirements_key)
    if current is None:
        return  # deleted since: no newer push to roll out instead
    version = current.get("VersionId")
    if not version or version == request.requirements_version:
        return
    if _same_push(request, version):
        return
    modified = current.get("LastModified")
    at = f" at {modified:%Y-%m-%d %H:%M:%S} UTC" if isinstance(modified, datetime) else ""
    raise Superseded(
        f"a newer push of s3://{request.bucket}/{request.requirements_key} arrived{at} (version {version}) "
        f"before rollout {rollout_id} (version {request.requirements_version}) took the lock on layer "
        f"{request.layer!r}; that one rolls out instead. Nothing was built"
    )


def _same_push(request: RolloutRequest, current_version: str) -> bool:
    """Whether the current requirements file and layer.toml are the bytes this rollout was pushed with."""
    bucket, key = request.bucket, request.requirements_key
    if read_bytes(bucket, key, current_version) != read_bytes(bucket, key, request.requirements_version):
        return False
    config_key = request.config_key or key.rsplit("/", 1)[0] + "/layer.toml"
    config_head = head_if_present(request.bucket, config_key)
    if config_head is None:
        return request.config_key is None
    config_version = config_head.get("VersionId")
    if request.config_key is None:
        return False
    if config_version == request.config_version:
        return True
    current = read_bytes(request.bucket, config_key, config_version)
    return current == read_bytes(request.bucket, config_key, request.config_version)


def release_layer_lock(state: RolloutState, settings: Settings) -> RolloutState:
    """ReleaseLayerLock: the last task of every ending that held the lock; it archives the final record."""
    if state.rollout is not None:
        layer, rollout_id = state.rollout.layer, state.rollout.rollout_id
        held = Registry(settings.table).release_lock(layer, rollout_id)
        if not held:
            logger.warning("lock was not held by this rollout", extra={"rollout_id": rollout_id})
        flush_usage(settings, layer, rollout_id)  # the record is final now: archive it as it is
        close_rollout(settings, layer, rollout_id)
    state.lock_released = True
    return state


# -- layershift unlock ------------------------------------------------------------------------------
class UnlockResult(BaseModel):
    layer: str
    owner: str
    acquired_at: str | None = None
    expires_at: int | None = None
    execution_arn: str | None = None
    execution_status: str | None = None  # None: no execution of that name
    forced: bool = False


def execution_arn(settings: Settings, rollout_id: str) -> str | None:
    if not settings.state_machine_arn:
        return None
    return settings.state_machine_arn.replace(":stateMachine:", ":execution:") + f":{rollout_id}"


def _execution_status(arn: str | None) -> str | None:
    if arn is None:
        return None
    sfn = client("stepfunctions")
    try:
        return str(sfn.describe_execution(executionArn=arn)["status"])
    except sfn.exceptions.ExecutionDoesNotExist:
        return None


def unlock_layer(settings: Settings, layer: str, *, force: bool = False, reason: str = "") -> UnlockResult:
    """Free the layer's lock when its holder's execution no longer runs (any holder, with ``force``).

    The delete is conditional on the holder that was checked, so a rollout that takes the lock
    meanwhile keeps it.
    """
    registry = Registry(settings.table)
    holder = registry.lock_holder(layer)
    if not holder:
        raise UnlockRefused(f"layer {layer!r} is not locked: there is nothing to unlock")
    owner = str(holder.get("owner"))
    arn = execution_arn(settings, owner)
    result = UnlockResult(
        layer=layer,
        owner=owner,
        acquired_at=holder.get("acquired_at"),
        expires_at=holder.get("expires_at"),
        execution_arn=arn,
        execution_status=_execution_status(arn),
        forced=force,
    )
    if arn is None and not force:
        raise UnlockRefused(
            f"layer {layer!r} is locked by rollout {owner}, and without the state machine's ARN its execution "
            "cannot be checked; use --force if you know it is no longer running"
        )
    if result.execution_status in LIVE_EXECUTION_STATUSES and not force:
        raise UnlockRefused(
            f"layer {layer!r} is locked by rollout {owner} since {result.acquired_at}, and its execution is "
            f"still {result.execution_status}: {arn}. Stop it with `layershift abort {layer}`: it rolls back "
            f"what it changed and releases the lock. `layershift unlock {layer} --force` frees the lock "
            "anyway; that rollout then stops at its next step (LockLost) and rolls back"
        )
    if not registry.release_lock(layer, owner):
        now = registry.lock_holder(layer)
        raise UnlockRefused(
            f"the lock on layer {layer!r} changed while it was being freed (now "
            f"{'held by rollout ' + str(now.get('owner')) if now else 'free'}); nothing was done"
        )
    registry.note_on_rollout(
        layer, owner, unlocked_at=datetime.now(UTC).isoformat(timespec="seconds"), unlock_reason=reason or "-"
    )
    logger.warning("layer unlocked by an operator", extra={"layer": layer, "owner": owner, "forced": force})
    return result
