"""An ended rollout leaves the registry for S3: its record is archived, then its registry items expire.

The registry table would otherwise only grow: every rollout adds its record, and its waits leave a
task token and an alarm index behind. So once a rollout has ended (promoted, rolled_back, rejected,
rollback_incomplete), the tasks after its ending close it (`close_rollout`): Notify, then
ReleaseLayerLock, and the reaper for the endings it writes or announces, or that the workflow could
not close. (PromoteLayer and RollBack, which write the endings, do not: they change aliases and
parameters, and a failed archive write must not roll back a healthy promotion.) Closing:

1. its ROLLOUT# record, whole (usage counters included), is written as JSON to
   ``history/<layer>/<rollout id>.json`` in the artifact bucket, where `layershift history` reads
   it once the registry has forgotten it (the current version is never expired; the bucket keeps
   the earlier archives of it as noncurrent versions for NoncurrentVersionRetentionDays);
2. then the record gets ``expires_at``, the table's TTL attribute, ``RegistryRetentionDays`` after
   its ending, and so does the rollout's ABORT# request;
3. the layer's WAIT item and the ALARM# index items the rollout registered are deleted while they
   are still its own: the task token of an ended execution answers nothing, and the index only
   leads to it (the next rollout's wait overwrites them, but a layer that never rolls out again
   would keep them for ever).

Archive first, then expire: a task that dies between the two leaves a record that never expires,
never one that expires unarchived. Closing is idempotent: each archive is the record as it is then,
fuller each time (the notification's time, the last usage counters), and the expiry stays the first
one. What closing itself spends is not counted (``USAGE.paused``), so after the last task the
archive equals the record.

VERSION# and BUILD# items never expire here: they describe layer versions that still exist. The
LOCK item's ``expires_at`` is its lease.
"""

from __future__ import annotations

import time
from typing import Any

from .artifacts import write_json
from .registry import Registry
from .settings import Settings
from .usage import USAGE

ENDINGS = frozenset({"promoted", "rolled_back", "rejected", "rollback_incomplete"})
DAY_SECONDS = 86_400


def history_prefix(layer: str) -> str:
    return f"history/{layer}/"


def history_key(layer: str, rollout_id: str) -> str:
    return f"{history_prefix(layer)}{rollout_id}.json"


def close_rollout(settings: Settings, layer: str, rollout_id: str) -> int | None:
    """Archive an ended rollout's record in S3, then let its registry items expire.

    Returns the record's ``expires_at``, or None when the rollout has no record or has not ended
    (the lock's release after a rollback that could not record its ending: the reaper finishes that
    rollout, and closes it then)."""
    with USAGE.paused():
        registry = Registry(settings.table)
        record = registry.rollout(layer, rollout_id)
        if record is None or record.get("status") not in ENDINGS:
            return None
        write_json(settings.bucket, history_key(layer, rollout_id), record)
        expires_at = int(record.get("expires_at") or time.time() + settings.registry_retention_days * DAY_SECONDS)
        registry.expire_rollout(layer, rollout_id, expires_at, _names(record.get("gating_alarms")))
    return expires_at


def _names(value: Any) -> list[str]:
    return sorted(value) if isinstance(value, list | set) else []
