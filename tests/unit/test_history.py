"""An ended rollout leaves the registry for S3: archived first, then its registry items expire, and
nothing that describes a layer version that exists expires with it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from layershift.controlplane import ControlPlane
from layershift.operator_data import layer_history, registry_items
from layershift_core import aws
from layershift_core.artifacts import read_json
from layershift_core.history import close_rollout, history_key
from layershift_core.registry import ABORT_KEPT_SECONDS, Registry
from layershift_core.settings import Settings
from layershift_core.usage import USAGE

from .registry_table import create_registry_table

LAYER = "shared"
ROLLOUT = "shared-0001"
NEXT = "shared-0002"
DAY = 86_400


@pytest.fixture
def settings() -> Iterator[Settings]:
    with mock_aws():
        aws.client.cache_clear()
        settings = Settings(bucket="artifacts", table="registry", registry_retention_days=30)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=settings.bucket)
        s3.put_bucket_versioning(Bucket=settings.bucket, VersioningConfiguration={"Status": "Enabled"})
        create_registry_table(settings.table)
        yield settings
        aws.client.cache_clear()


def _item(pk: str, sk: str) -> dict[str, Any] | None:
    item = boto3.client("dynamodb").get_item(TableName="registry", Key={"pk": {"S": pk}, "sk": {"S": sk}}).get("Item")
    return item


def _a_rollout_that_waited(settings: Settings, rollout_id: str = ROLLOUT, status: str = "shifting") -> Registry:
    """A rollout with a published version, the lock, a bake's wait gated by two alarms, an abort request,
    and usage counters."""
    registry = Registry(settings.table)
    registry.put_rollout(LAYER, rollout_id, status="validated", pushed_by="ops")
    registry.record_version(LAYER, 7, f"arn:aws:lambda:us-east-1:1:layer:{LAYER}:7", ["k" * 64], "m", "sha", rollout_id)
    registry.acquire_lock(LAYER, rollout_id, 3600)
    registry.put_wait(LAYER, rollout_id, "bake", "token", ["errors", "latency"])
    registry.request_abort(LAYER, rollout_id, "enough")
    registry.add_usage(LAYER, rollout_id, {"lambda:UpdateAlias": 4, "transitions_parent": 31})
    registry.put_rollout(LAYER, rollout_id, status=status, reason="RolloutAborted: enough")
    return registry


def test_an_ended_rollout_is_archived_whole_and_then_its_items_expire(settings: Settings) -> None:
    registry = _a_rollout_that_waited(settings, status="rolled_back")
    ended = registry.rollout(LAYER, ROLLOUT)
    lock_before = registry.lock_holder(LAYER)

    expires_at = close_rollout(settings, LAYER, ROLLOUT)

    # the whole record, usage counters and gating alarms included, is in S3 as it was when it ended
    assert read_json(settings.bucket, history_key(LAYER, ROLLOUT)) == ended
    assert (
        ended is not None and ended["usage:lambda:UpdateAlias"] == 4 and ended["gating_alarms"] == ["errors", "latency"]
    )
    # the record and the abort request expire after the retention
    now = time.time()
    assert expires_at is not None and now + 30 * DAY - 60 <= expires_at <= now + 30 * DAY
    assert registry.rollout(LAYER, ROLLOUT)["expires_at"] == expires_at  # type: ignore[index]
    assert registry.abort_request(LAYER, ROLLOUT)["expires_at"] == expires_at  # type: ignore[index]
    # the dead task token and the alarm index that led to it are gone
    assert registry.get_wait(LAYER) is None
    assert registry.layers_gated_by("errors") == [] and registry.layers_gated_by("latency") == []
    # the layer version and the build it serves never expire; the lock keeps its own lease
    assert "expires_at" not in _item(f"LAYER#{LAYER}", "VERSION#000007")  # type: ignore[operator]
    assert "expires_at" not in _item(f"LAYER#{LAYER}", f"BUILD#{'k' * 64}")  # type: ignore[operator]
    assert registry.lock_holder(LAYER) == lock_before


def test_a_rollout_that_has_not_ended_is_neither_archived_nor_expired(settings: Settings) -> None:
    registry = _a_rollout_that_waited(settings, status="shifting")

    assert close_rollout(settings, LAYER, ROLLOUT) is None
    assert close_rollout(settings, LAYER, "never-recorded") is None

    assert "expires_at" not in registry.rollout(LAYER, ROLLOUT)  # type: ignore[operator]
    assert registry.get_wait(LAYER) is not None and registry.layers_gated_by("errors")
    listed = boto3.client("s3").list_objects_v2(Bucket=settings.bucket, Prefix="history/")
    assert listed.get("KeyCount", 0) == 0


def test_closing_again_archives_the_fuller_record_and_keeps_the_first_expiry(settings: Settings) -> None:
    registry = _a_rollout_that_waited(settings, status="promoted")
    first = close_rollout(settings, LAYER, ROLLOUT)
    # the notification, later, on a control plane whose retention has since been changed
    registry.put_rollout(LAYER, ROLLOUT, notified_at="2026-12-07T12:00:00+00:00")
    registry.add_usage(LAYER, ROLLOUT, {"transitions_parent": 2})
    again = close_rollout(settings.model_copy(update={"registry_retention_days": 15}), LAYER, ROLLOUT)

    assert again == first
    final = registry.rollout(LAYER, ROLLOUT)
    assert final is not None and final["expires_at"] == first and final["usage:transitions_parent"] == 33
    assert read_json(settings.bucket, history_key(LAYER, ROLLOUT)) == final
    # the bucket is versioned: the first archive is kept beside the fuller one
    versions = boto3.client("s3").list_object_versions(Bucket=settings.bucket, Prefix=history_key(LAYER, ROLLOUT))
    assert len(versions["Versions"]) == 2


def test_nothing_expires_when_the_archive_cannot_be_written(settings: Settings) -> None:
    registry = _a_rollout_that_waited(settings, status="rolled_back")

    with pytest.raises(Exception, match="NoSuchBucket"):
        close_rollout(settings.model_copy(update={"bucket": "no-such-bucket"}), LAYER, ROLLOUT)

    assert "expires_at" not in registry.rollout(LAYER, ROLLOUT)  # type: ignore[operator]
    # the abort keeps the expiry it was written with, after the longest an execution can last
    assert registry.abort_request(LAYER, ROLLOUT)["expires_at"] > time.time() + 365 * DAY  # type: ignore[index]
    assert registry.get_wait(LAYER) is not None


def test_the_next_rollouts_wait_and_alarm_index_are_left_to_it(settings: Settings) -> None:
    registry = _a_rollout_that_waited(settings, status="rolled_back")
    registry.release_lock(LAYER, ROLLOUT)
    registry.put_rollout(LAYER, NEXT, status="shifting")
    registry.put_wait(LAYER, NEXT, "approval", "next-token", ["errors"])

    close_rollout(settings, LAYER, ROLLOUT)  # late: the reaper, after the next rollout started waiting

    assert registry.get_wait(LAYER)["rollout_id"] == NEXT  # type: ignore[index]
    assert registry.layers_gated_by("errors") == [{"layer": LAYER, "rollout_id": NEXT}]
    assert registry.layers_gated_by("latency") == []  # only the ended rollout's


def test_an_abort_requested_after_the_ending_still_expires(settings: Settings) -> None:
    registry = _a_rollout_that_waited(settings, status="rolled_back")
    closed = close_rollout(settings, LAYER, ROLLOUT)
    registry.request_abort(LAYER, ROLLOUT, "too late")  # the execution ended between the listing and this

    abort = registry.abort_request(LAYER, ROLLOUT)
    assert abort is not None and closed is not None
    assert abort["expires_at"] <= time.time() + ABORT_KEPT_SECONDS and abort["expires_at"] > closed


def test_closing_costs_the_rollout_nothing(settings: Settings) -> None:
    registry = _a_rollout_that_waited(settings, status="rolled_back")
    USAGE.take()

    close_rollout(settings, LAYER, ROLLOUT)

    assert USAGE.take() == {}
    closed = registry.rollout(LAYER, ROLLOUT)
    assert closed is not None
    # the record differs from its archive by its expiry alone: no usage counter of the closing itself
    assert read_json(settings.bucket, history_key(LAYER, ROLLOUT)) | {"expires_at": closed["expires_at"]} == closed


def test_history_lists_the_rollouts_whose_record_expired_from_their_archive(settings: Settings) -> None:
    registry = Registry(settings.table)
    ids = [f"{LAYER}-{n:04d}" for n in range(1, 5)]
    for rollout_id in ids:
        registry.put_rollout(LAYER, rollout_id, status="promoted", reason="", pushed_by=f"ops-{rollout_id}")
        close_rollout(settings, LAYER, rollout_id)
        time.sleep(1.1)  # S3's LastModified has whole seconds: the archives' order is the endings'
    ddb = boto3.client("dynamodb")
    for rollout_id in ids[:3]:  # the TTL deleted the three oldest records
        ddb.delete_item(
            TableName=settings.table, Key={"pk": {"S": f"LAYER#{LAYER}"}, "sk": {"S": f"ROLLOUT#{rollout_id}"}}
        )
    cp = ControlPlane(
        bucket=settings.bucket,
        table=settings.table,
        state_machine_arn="arn:aws:states:us-east-1:1:stateMachine:m",
        region="us-east-1",
    )
    items = registry_items(cp, LAYER)[LAYER]

    rows = layer_history(cp, LAYER, items, executions={})

    assert sorted(row["rollout_id"] for row in rows) == ids
    assert all(row["outcome"] == "promoted" and row["pushed_by"] == f"ops-{row['rollout_id']}" for row in rows)
    # with a limit, only the newest archives are read
    limited = layer_history(cp, LAYER, items, executions={}, limit=2)
    assert {row["rollout_id"] for row in limited} == {ids[3], ids[2]}
