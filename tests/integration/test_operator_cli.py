"""The operator's commands against the local control plane: ls, history, get [--watch], retry, and a
push of bytes whose execution already ended. One layer's rollouts serve every assertion: a
promotion, a rollout rejected at its approval (rolled back), a retry of the rejected bytes, and a
push refused at validation."""

import json
import threading
import time
from pathlib import Path

import pytest

from layershift import controlplane
from layershift.cli import main
from layershift.controlplane import ControlPlane, wait_for_execution
from layershift_core.artifacts import read_json
from layershift_core.errors import NothingWaiting
from layershift_core.history import history_key
from layershift_core.registry import Registry
from layershift_core.trigger import COMMIT_METADATA, SOURCE_METADATA, execution_name

from .support import create_consumer, finish_rollout, publish_bootstrap_layer, spec, use_local_state, wait_for_state

pytestmark = [pytest.mark.integration, pytest.mark.network]

LAYER = "ops-view"
FUNCTIONS = ("ops-view-a", "ops-view-b")


def _out(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().out


def _json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> object:
    assert main([*argv, "--local", "--output", "json"]) == 0
    return json.loads(_out(capsys))


def _ended_rollouts_are_archived_then_expire(cp: ControlPlane, rollout_ids: list[str]) -> None:
    ddb = cp.client("dynamodb")
    pages = ddb.get_paginator("query").paginate(
        TableName=cp.table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": f"LAYER#{LAYER}"}},
        ConsistentRead=True,
    )
    items = {item["sk"]["S"]: item for page in pages for item in page["Items"]}
    with cp.domain_clients():
        registry = Registry(cp.table)
        for rollout_id in rollout_ids:
            record = registry.rollout(LAYER, rollout_id)
            assert record is not None and record["status"] in {"promoted", "rolled_back"}
            assert abs(record["expires_at"] - (time.time() + 90 * 86_400)) < 3600, record
            assert read_json(cp.bucket, history_key(LAYER, rollout_id)) == record  # usage counters and all
            assert any(name.startswith("usage:lambda:") for name in record)
    kept = [sk for sk in items if sk.startswith(("VERSION#", "BUILD#", "LOCK"))]
    assert [sk for sk in kept if sk.startswith("VERSION#")] and [sk for sk in kept if sk.startswith("BUILD#")]
    assert all("expires_at" not in items[sk] for sk in kept if sk != "LOCK"), kept
    assert "LOCK" not in items and "WAIT" not in items  # released, and the approval's wait deleted


def test_ls_history_get_retry_on_one_layer(
    control_plane: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cp = control_plane
    use_local_state(cp, tmp_path, monkeypatch)
    assert main(["retry", "ops-never-pushed", "--local"]) == 1
    assert "layer 'ops-never-pushed' has never been pushed" in capsys.readouterr().err
    bootstrap = publish_bootstrap_layer(cp, LAYER)
    for name in FUNCTIONS:
        create_consumer(cp, name, [bootstrap])
    requirements = tmp_path / "requirements.txt"
    config = tmp_path / "layer.toml"

    # 1. A promotion (version 2: the bootstrap layer is version 1).
    requirements.write_text("six==1.16.0\n")
    config.write_text(spec())
    assert main(["push", str(requirements), "--layer", LAYER, "--config", str(config), "--local", "--wait"]) == 0
    promoted_id = _out(capsys).split("execution: ")[1].split()[0].rsplit(":", 1)[-1]

    # 2. A rollout that stops at its approval, after its 50% step: the tree shows the live weights.
    # It comes from a CodeCommit push: the files copied into the bucket with the commit id, as
    # mirror_codecommit_push copies them.
    requirements.write_text("six==1.17.0\n")
    config.write_text(spec(extra="approval = true"))
    s3 = cp.client("s3")
    s3.put_object(Bucket=cp.bucket, Key=f"layers/{LAYER}/layer.toml", Body=config.read_bytes())
    s3.put_object(
        Bucket=cp.bucket,
        Key=f"layers/{LAYER}/requirements.txt",
        Body=requirements.read_bytes(),
        Metadata={SOURCE_METADATA: "codecommit", COMMIT_METADATA: "c0ffee42"},
    )
    rejected_id = execution_name(LAYER, requirements.read_bytes(), config.read_bytes())
    rejected_arn = controlplane.execution_arn(cp, rejected_id)
    wait_for_execution(cp, rejected_arn)
    wait_for_state(cp, rejected_arn, "AwaitApproval")
    tree = _json(["get", LAYER], capsys)
    assert isinstance(tree, dict)
    assert (tree["rollout_id"], tree["status"], tree["outcome"]) == (rejected_id, "RUNNING", "running")
    assert [phase["name"] for phase in tree["phases"]] == ["validate", "build", "plan", "traffic", "promote"]
    validate, build, plan, traffic, _ = tree["phases"]
    assert (validate["state"], build["state"], plan["state"]) == ("done", "done", "done")
    assert [v["version"] for v in build["layer_versions"]] == [3]
    assert plan["detail"] == "2 target(s), 0 skipped"
    step, final = traffic["steps"]
    assert (step["wave"], step["weight"], step["state"]) == ("main", 50, "done")
    assert (final["weight"], final["state"], final["approval"]) == (100, "pending", "waiting")
    functions = {f["function"]: f for f in step["functions"]}
    assert sorted(functions) == sorted(FUNCTIONS)
    assert all(f["weight"] == 50 and f["new_version"] != f["old_version"] for f in functions.values())
    assert main(["get", LAYER, "--local"]) == 0
    text = _out(capsys)
    assert f"rollout {rejected_id} of layer {LAYER}: RUNNING (RUNNING)" in text
    assert "step 1: main wave at 50% for 1s" in text and "50% on v" in text

    assert main(["reject", LAYER, "--local", "--reason", "not this week", "--wait"]) == 0
    _out(capsys)
    tree = _json(["get", LAYER, "--rollout", rejected_id], capsys)
    assert isinstance(tree, dict)
    assert (tree["status"], tree["outcome"], tree["error"]) == ("FAILED", "rolled back", "ApprovalRejected")
    rollback = tree["phases"][-1]
    assert (rollback["name"], rollback["state"]) == ("roll back", "done")
    assert rollback["detail"] == "2 target(s) restored to their old version"
    assert {(f["function"], f["version"]) for f in rollback["functions"]} == {
        (f["function"], f["old_version"]) for f in functions.values()
    }

    # status: the last versions and the last rollouts, apart.
    status = _json(["status", "--layer", LAYER], capsys)
    assert isinstance(status, dict)
    (layer_status,) = status["layers"]
    assert [(v["version"], v["status"]) for v in layer_status["versions"]] == [(3, "rolled_back"), (2, "promoted")]
    assert [(r["rollout_id"], r["status"]) for r in layer_status["rollouts"]] == [
        (rejected_id, "rolled_back"),
        (promoted_id, "promoted"),
    ]
    assert layer_status["promoted_arn"].endswith(f":{cp.published_name(LAYER)}:2")

    # 3. ls: the promoted version, no lock, the last rollout rolled back.
    rows = _json(["ls"], capsys)
    assert isinstance(rows, list)
    row = next(r for r in rows if r["layer"] == LAYER)
    assert row["promoted"] == {"python3.13-x86_64": 2} or list(row["promoted"].values()) == [2]
    assert row["lock"] is None
    assert (row["last_rollout"]["rollout_id"], row["last_rollout"]["outcome"]) == (rejected_id, "rolled_back")
    assert main(["ls", "--local"]) == 0
    listing = _out(capsys)
    assert listing.splitlines()[0].split() == ["LAYER", "PROMOTED", "LOCK", "LAST", "ROLLOUT", "OUTCOME", "STARTED"]
    line = next(line for line in listing.splitlines() if line.startswith(LAYER + " "))
    assert f" {rejected_id} " in line and "rolled_back" in line

    # 4. history: newest first, with the outcome, the pusher, the S3 version and the reason.
    history = _json(["history", LAYER], capsys)
    assert isinstance(history, list)
    assert [(h["rollout_id"], h["outcome"]) for h in history] == [
        (rejected_id, "rolled_back"),
        (promoted_id, "promoted"),
    ]
    newest, oldest = history
    assert "not this week" in newest["reason"] and newest["duration_seconds"] > 0
    assert (newest["source"], newest["commit_id"]) == ("codecommit", "c0ffee42")
    assert newest["pushed_by"] == "123456789012"  # no pusher metadata: the account S3's event names
    assert oldest["pushed_by"] == controlplane.caller_identity(cp) and oldest["source"] == "s3"
    assert oldest["requirements_version"] and oldest["commit_id"] is None

    # 4b. Both ended rollouts left the registry for S3: each record archived whole, then set to expire
    # after RegistryRetentionDays (90, the default); the versions they published, their builds and the
    # lock never expire, and the rejected approval's wait is gone with its rollout.
    _ended_rollouts_are_archived_then_expire(cp, [promoted_id, rejected_id])
    # the registry's TTL deletes the promotion's record: history still shows it, from its archive
    cp.client("dynamodb").delete_item(
        TableName=cp.table, Key={"pk": {"S": f"LAYER#{LAYER}"}, "sk": {"S": f"ROLLOUT#{promoted_id}"}}
    )
    assert _json(["history", LAYER], capsys) == history

    # 5. The rejected bytes pushed again: nothing new starts, and --wait does not report the old execution.
    assert main(["push", str(requirements), "--layer", LAYER, "--local", "--wait"]) == 1
    again = _out(capsys)
    assert f"nothing new started: these bytes already rolled out as {rejected_id} (FAILED)" in again
    assert f"layershift retry {LAYER}" in again
    assert "execution FAILED" not in again and "execution SUCCEEDED" not in again

    # 6. retry starts a new rollout of them; get --watch follows it until it ends (approved meanwhile).
    assert main(["retry", LAYER, "--local"]) == 0
    retry_arn = _out(capsys).split("execution: ")[1].split()[0]
    assert retry_arn != rejected_arn
    wait_for_execution(cp, retry_arn)

    def approve_when_asked() -> None:
        wait_for_state(cp, retry_arn, "AwaitApproval")
        for _ in range(120):
            try:
                controlplane.approve(cp, LAYER)
                return
            except NothingWaiting:  # the task has not registered its token yet
                time.sleep(0.5)

    approver = threading.Thread(target=approve_when_asked)
    approver.start()
    assert main(["get", LAYER, "--local", "--watch", "--interval", "0.5", "--timeout", "300"]) == 0
    approver.join()
    watched = _out(capsys)
    frames = watched.split("\n--\n")
    assert len(frames) >= 2, watched
    assert "(RUNNING)" in frames[0]
    assert "PROMOTED (SUCCEEDED)" in frames[-1]
    assert all(f"{name}:live  100% on v" in frames[-1] for name in FUNCTIONS)
    assert finish_rollout(cp, retry_arn).status == "SUCCEEDED"

    # 7. A push refused at validation has no rollout record: history shows its execution, rejected.
    requirements.write_text("six>=1\n")
    assert main(["push", str(requirements), "--layer", LAYER, "--local", "--wait"]) == 1
    invalid_id = _out(capsys).split("execution: ")[1].split()[0].rsplit(":", 1)[-1]
    history = _json(["history", LAYER, "--limit", "2"], capsys)
    assert isinstance(history, list)
    assert [(h["rollout_id"], h["outcome"], h["attempt"]) for h in history] == [
        (invalid_id, "rejected", 0),
        (retry_arn.rsplit(":", 1)[-1], "promoted", 1),
    ]
    retried = history[1]  # the retry re-uploaded step 5's push: who pushed is who retried
    assert (retried["source"], retried["pushed_by"]) == ("s3", controlplane.caller_identity(cp))
    assert history[0]["reason"].startswith("InvalidRequirements: ")
