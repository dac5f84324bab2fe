"""The layer registry and the per-layer lock, in one DynamoDB table.

Items (pk / sk):
- `LAYER#<name>` / `LOCK`: who holds the layer, until when (a lease, so a crashed execution
  cannot block the layer for ever; `expires_at` is also the table's TTL attribute);
- `LAYER#<name>` / `VERSION#<000042>`: one published layer version, its build key and status;
- `LAYER#<name>` / `ROLLOUT#<rollout id>`: one rollout, its status and reason, its usage counters
  and the alarms that gated its bakes (`gating_alarms`);
- `LAYER#<name>` / `BUILD#<build key>`: the published version a build key produced, for reuse;
- `LAYER#<name>` / `WAIT`: the task token of the bake or approval the running rollout waits in, so
  an alarm, an approval or an abort can end the wait at once;
- `LAYER#<name>` / `ABORT#<rollout id>`: an operator's abort request;
- `ALARM#<alarm name>` / `LAYER#<name>`: the layers whose running rollout that alarm gates.

When a rollout has ended, its ROLLOUT# record and ABORT# request expire (`expires_at`, once its
record is archived in S3) and its WAIT and ALARM# items are deleted (`expire_rollout`, history.py);
an ABORT# request carries an expiry from the start, for one written just after its rollout ended.
VERSION# and BUILD# items never expire: they describe layer versions that exist.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from .aws import client, error_code
from .errors import LayerLocked
from .usage import PREFIX as USAGE_PREFIX

VersionStatus = str  # published | rolling_out | promoted | rolled_back
# A Standard execution runs for a year at most, and can be redriven for 14 days after it ended.
ABORT_KEPT_SECONDS = (365 + 15) * 86_400


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _layer_pk(layer: str) -> dict[str, str]:
    return {"S": f"LAYER#{layer}"}


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    """A DynamoDB item as plain Python values."""
    out: dict[str, Any] = {}
    for name, typed in item.items():
        ((kind, value),) = typed.items()
        out[name] = _number(value) if kind == "N" else value
    return out


def _number(text: str) -> int | float:
    number = float(text)
    return int(number) if number.is_integer() else number


class Registry:
    def __init__(self, table: str) -> None:
        self.table = table
        self.ddb = client("dynamodb")

    # -- the lock ---------------------------------------------------------------------------
    def try_acquire_lock(self, layer: str, owner: str, lease_seconds: int) -> dict[str, Any] | None:
        """Take the lock, or renew it when `owner` holds it already. Returns None when `owner` now
        holds it, else the item of the rollout that does (a lease that has expired is taken over)."""
        now = int(time.time())
        try:
            self.ddb.put_item(
                TableName=self.table,
                Item={
                    "pk": _layer_pk(layer),
                    "sk": {"S": "LOCK"},
                    "owner": {"S": owner},
                    "acquired_at": {"S": _now_iso()},
                    "expires_at": {"N": str(now + lease_seconds)},
                },
                ConditionExpression="attribute_not_exists(pk) OR #owner = :me OR expires_at < :now",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":me": {"S": owner}, ":now": {"N": str(now)}},
            )
        except self.ddb.exceptions.ConditionalCheckFailedException:
            # Released between the write and this read: report the last known holder anyway; the
            # caller asks again after its wait.
            return self.lock_holder(layer) or {"owner": "?"}
        return None

    def acquire_lock(self, layer: str, owner: str, lease_seconds: int) -> None:
        holder = self.try_acquire_lock(layer, owner, lease_seconds)
        if holder is not None:
            raise LayerLocked(
                f"layer {layer!r} is locked by rollout {holder.get('owner', '?')} since "
                f"{holder.get('acquired_at', '?')}; it is released when that rollout ends"
            )

    def renew_lock(self, layer: str, owner: str, lease_seconds: int) -> bool:
        """Extend the lease of `owner`'s lock, in one conditional write. Returns whether `owner` held it.

        A lease that has run out but that nobody took over is still `owner`'s: taking over and
        renewing are both conditional writes on the same item, so only one of them can succeed.
        """
        try:
            self.ddb.update_item(
                TableName=self.table,
                Key={"pk": _layer_pk(layer), "sk": {"S": "LOCK"}},
                UpdateExpression="SET expires_at = :expires, renewed_at = :at",
                ConditionExpression="#owner = :me",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={
                    ":me": {"S": owner},
                    ":expires": {"N": str(int(time.time()) + lease_seconds)},
                    ":at": {"S": _now_iso()},
                },
            )
        except self.ddb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def release_lock(self, layer: str, owner: str) -> bool:
        """Release the lock if `owner` holds it. Returns whether it was held."""
        try:
            self.ddb.delete_item(
                TableName=self.table,
                Key={"pk": _layer_pk(layer), "sk": {"S": "LOCK"}},
                ConditionExpression="#owner = :me",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":me": {"S": owner}},
            )
        except self.ddb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def lock_holder(self, layer: str) -> dict[str, Any] | None:
        item = self.ddb.get_item(
            TableName=self.table, Key={"pk": _layer_pk(layer), "sk": {"S": "LOCK"}}, ConsistentRead=True
        ).get("Item")
        return _plain(item) if item else None

    # -- builds and versions ----------------------------------------------------------------
    def find_build(self, layer: str, build_key: str) -> dict[str, Any] | None:
        item = self.ddb.get_item(
            TableName=self.table, Key={"pk": _layer_pk(layer), "sk": {"S": f"BUILD#{build_key}"}}
        ).get("Item")
        return _plain(item) if item else None

    def forget_build(self, layer: str, build_key: str) -> None:
        self.ddb.delete_item(TableName=self.table, Key={"pk": _layer_pk(layer), "sk": {"S": f"BUILD#{build_key}"}})

    def forget_build_of(self, layer: str, build_key: str, arn: str) -> bool:
        """Delete the BUILD# item of ``build_key`` while it still names ``arn`` (a later publication of
        the same key names another version, and stays). Returns whether it was deleted."""
        try:
            self.ddb.delete_item(
                TableName=self.table,
                Key={"pk": _layer_pk(layer), "sk": {"S": f"BUILD#{build_key}"}},
                ConditionExpression="arn = :arn",
                ExpressionAttributeValues={":arn": {"S": arn}},
            )
        except self.ddb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def forget_version(self, layer: str, version: int) -> None:
        """Delete a layer version's VERSION# item: Lambda no longer has the version."""
        self.ddb.delete_item(TableName=self.table, Key={"pk": _layer_pk(layer), "sk": {"S": f"VERSION#{version:06d}"}})

    def record_version(
        self,
        layer: str,
        version: int,
        arn: str,
        build_keys: list[str],
        manifest_key: str,
        sha256: str,
        rollout_id: str,
        variant: str = "",
    ) -> None:
        """The version's record, and one BUILD# item per build key it serves (a pure-Python variant
        serves several targets), written together."""
        now = _now_iso()
        found = {"arn": {"S": arn}, "version": {"N": str(version)}, "manifest_key": {"S": manifest_key}}
        found |= {"sha256": {"S": sha256}, "variant": {"S": variant}}
        version_item = {
            "pk": _layer_pk(layer),
            "sk": {"S": f"VERSION#{version:06d}"},
            **found,
            "build_key": {"S": build_keys[0]},
            "build_keys": {"SS": sorted(set(build_keys))},
            "status": {"S": "published"},
            "rollout_id": {"S": rollout_id},
            "published_at": {"S": now},
        }
        builds = [{"pk": _layer_pk(layer), "sk": {"S": f"BUILD#{key}"}, **found} for key in sorted(set(build_keys))]
        self.ddb.transact_write_items(
            TransactItems=[{"Put": {"TableName": self.table, "Item": item}} for item in [version_item, *builds]]
        )

    def set_version_status(self, layer: str, version: int, status: VersionStatus, reason: str | None = None) -> None:
        names = {"#status": "status"}
        values: dict[str, Any] = {":status": {"S": status}, ":at": {"S": _now_iso()}}
        update = "SET #status = :status, updated_at = :at"
        if reason:
            update += ", reason = :reason"
            values[":reason"] = {"S": reason[:2000]}
        self.ddb.update_item(
            TableName=self.table,
            Key={"pk": _layer_pk(layer), "sk": {"S": f"VERSION#{version:06d}"}},
            UpdateExpression=update,
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )

    def versions(self, layer: str) -> list[dict[str, Any]]:
        return self._query(layer, "VERSION#")

    def builds(self, layer: str) -> list[dict[str, Any]]:
        return self._query(layer, "BUILD#")

    # -- rollouts ---------------------------------------------------------------------------
    def put_rollout(self, layer: str, rollout_id: str, **fields: str) -> None:
        values = {name: {"S": value} for name, value in fields.items() if value is not None}
        names = {f"#{name}": name for name in values}
        update = "SET " + ", ".join(f"#{name} = :{name}" for name in values) + ", updated_at = :updated_at"
        attr_values = {f":{name}": value for name, value in values.items()}
        attr_values[":updated_at"] = {"S": _now_iso()}
        self.ddb.update_item(
            TableName=self.table,
            Key={"pk": _layer_pk(layer), "sk": {"S": f"ROLLOUT#{rollout_id}"}},
            UpdateExpression=update,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=attr_values,
        )

    def add_usage(self, layer: str, rollout_id: str, counts: dict[str, float]) -> None:
        """Add counters to the rollout's usage (attributes ``usage:<counter>``), in one atomic UpdateItem."""
        if not counts:
            return
        names = {f"#u{index}": USAGE_PREFIX + name for index, name in enumerate(counts)}
        values = {f":u{index}": {"N": f"{value:g}"} for index, value in enumerate(counts.values())}
        self.ddb.update_item(
            TableName=self.table,
            Key={"pk": _layer_pk(layer), "sk": {"S": f"ROLLOUT#{rollout_id}"}},
            UpdateExpression="ADD " + ", ".join(f"{name} {name.replace('#', ':')}" for name in names),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )

    def note_on_rollout(self, layer: str, rollout_id: str, **fields: str) -> bool:
        """Add fields to an existing rollout record (never creates one). Returns whether it existed."""
        names = {f"#{name}": name for name in fields}
        try:
            self.ddb.update_item(
                TableName=self.table,
                Key={"pk": _layer_pk(layer), "sk": {"S": f"ROLLOUT#{rollout_id}"}},
                UpdateExpression="SET " + ", ".join(f"#{name} = :{name}" for name in fields),
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={f":{name}": {"S": value} for name, value in fields.items()},
            )
        except self.ddb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def rollout(self, layer: str, rollout_id: str) -> dict[str, Any] | None:
        item = self.ddb.get_item(
            TableName=self.table,
            Key={"pk": _layer_pk(layer), "sk": {"S": f"ROLLOUT#{rollout_id}"}},
            ConsistentRead=True,
        ).get("Item")
        return _plain(item) if item else None

    # -- waits and signals ------------------------------------------------------------------
    def put_wait(self, layer: str, rollout_id: str, kind: str, token: str, alarms: list[str]) -> None:
        """Record the task token the rollout now waits in, and index it under each gating alarm."""
        self.ddb.put_item(
            TableName=self.table,
            Item={
                "pk": _layer_pk(layer),
                "sk": {"S": "WAIT"},
                "rollout_id": {"S": rollout_id},
                "kind": {"S": kind},
                "token": {"S": token},
                "registered_at": {"S": _now_iso()},
            },
        )
        for alarm in alarms:
            self.ddb.put_item(
                TableName=self.table,
                Item={"pk": {"S": f"ALARM#{alarm}"}, "sk": {"S": f"LAYER#{layer}"}, "rollout_id": {"S": rollout_id}},
            )
        if alarms:
            # Named on the rollout too, so its ending finds every index item it registered.
            self.ddb.update_item(
                TableName=self.table,
                Key={"pk": _layer_pk(layer), "sk": {"S": f"ROLLOUT#{rollout_id}"}},
                UpdateExpression="ADD gating_alarms :alarms",
                ExpressionAttributeValues={":alarms": {"SS": sorted(set(alarms))}},
            )

    def get_wait(self, layer: str) -> dict[str, Any] | None:
        item = self.ddb.get_item(
            TableName=self.table, Key={"pk": _layer_pk(layer), "sk": {"S": "WAIT"}}, ConsistentRead=True
        ).get("Item")
        return _plain(item) if item else None

    def layers_gated_by(self, alarm: str) -> list[dict[str, Any]]:
        """``{"layer", "rollout_id"}`` of every rollout that registered ``alarm`` as a gate."""
        response = self.ddb.query(
            TableName=self.table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": f"ALARM#{alarm}"}},
        )
        return [
            {"layer": item["sk"]["S"].removeprefix("LAYER#"), "rollout_id": item["rollout_id"]["S"]}
            for item in response.get("Items", [])
        ]

    def request_abort(self, layer: str, rollout_id: str, reason: str) -> None:
        """Record an operator's abort. It expires even when its rollout ended just before it was
        written (nothing closes the rollout again then): after the longest an execution can run and
        then be redriven; the rollout's ending sets it to the record's own expiry."""
        self.ddb.put_item(
            TableName=self.table,
            Item={
                "pk": _layer_pk(layer),
                "sk": {"S": f"ABORT#{rollout_id}"},
                "reason": {"S": reason},
                "requested_at": {"S": _now_iso()},
                "expires_at": {"N": str(int(time.time()) + ABORT_KEPT_SECONDS)},
            },
        )

    def abort_request(self, layer: str, rollout_id: str) -> dict[str, Any] | None:
        item = self.ddb.get_item(
            TableName=self.table, Key={"pk": _layer_pk(layer), "sk": {"S": f"ABORT#{rollout_id}"}}, ConsistentRead=True
        ).get("Item")
        return _plain(item) if item else None

    # -- an ended rollout's items ---------------------------------------------------------------
    def expire_rollout(self, layer: str, rollout_id: str, expires_at: int, alarms: list[str]) -> None:
        """Let an ended rollout's items go: its record and abort request expire at ``expires_at``
        (the record keeps an expiry it has already), its wait and alarm index items are deleted.

        Each write is conditional: it never creates an item, and it deletes the layer's WAIT and
        ALARM# items only while they are still this rollout's (the next rollout overwrites them)."""
        expire = {":at": {"N": str(expires_at)}}
        self._conditional(
            self.ddb.update_item,
            Key={"pk": _layer_pk(layer), "sk": {"S": f"ROLLOUT#{rollout_id}"}},
            UpdateExpression="SET expires_at = if_not_exists(expires_at, :at)",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeValues=expire,
        )
        self._conditional(
            self.ddb.update_item,
            Key={"pk": _layer_pk(layer), "sk": {"S": f"ABORT#{rollout_id}"}},
            UpdateExpression="SET expires_at = :at",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeValues=expire,
        )
        mine = {"ConditionExpression": "rollout_id = :me", "ExpressionAttributeValues": {":me": {"S": rollout_id}}}
        self._conditional(self.ddb.delete_item, Key={"pk": _layer_pk(layer), "sk": {"S": "WAIT"}}, **mine)
        for alarm in alarms:
            self._conditional(
                self.ddb.delete_item, Key={"pk": {"S": f"ALARM#{alarm}"}, "sk": {"S": f"LAYER#{layer}"}}, **mine
            )

    def _conditional(self, write: Any, **kwargs: Any) -> bool:
        """One conditional write; whether its condition held."""
        try:
            write(TableName=self.table, **kwargs)
        except self.ddb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def rollouts(self, layer: str) -> list[dict[str, Any]]:
        return self._query(layer, "ROLLOUT#")

    def layers(self) -> list[str]:
        """Every layer with a registry record (a scan: for the CLI's status, not the workflow)."""
        names: set[str] = set()
        paginator = self.ddb.get_paginator("scan")
        for page in paginator.paginate(TableName=self.table, ProjectionExpression="pk"):
            for item in page["Items"]:
                pk = item["pk"]["S"]
                if pk.startswith("LAYER#"):
                    names.add(pk.removeprefix("LAYER#"))
        return sorted(names)

    def _query(self, layer: str, prefix: str) -> list[dict[str, Any]]:
        paginator = self.ddb.get_paginator("query")
        items: list[dict[str, Any]] = []
        for page in paginator.paginate(
            TableName=self.table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
            ExpressionAttributeValues={":pk": _layer_pk(layer), ":prefix": {"S": prefix}},
        ):
            items.extend(_plain(item) for item in page["Items"])
        return items


def is_missing(exc: Exception) -> bool:
    return error_code(exc) in {"ResourceNotFoundException", "NoSuchKey", "ParameterNotFound"}
