"""The CLI against the local control plane, as a user runs it: push, status, approve, reject, abort, unlock."""

import json
import time
from pathlib import Path

import pytest

from layershift.cli import main
from layershift.controlplane import ControlPlane, wait_for_execution

from .support import (
    create_consumer,
    finish_rollout,
    publish_bootstrap_layer,
    spec,
    use_local_state,
    wait_for_state,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.network]


def test_push_wait_and_status(
    control_plane: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_local_state(control_plane, tmp_path, monkeypatch)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six==1.16.0\n")
    config = tmp_path / "layer.toml"
    config.write_text("[rollout]\nstrategy = 'AllAtOnce'\n")

    assert main(["push", str(requirements), "--layer", "cli-layer", "--config", str(config), "--local", "--wait"]) == 0
    pushed = capsys.readouterr().out
    assert "pushed layers/cli-layer/requirements.txt" in pushed
    assert "building the layer in CodeBuild" in pushed and "execution SUCCEEDED" in pushed

    assert main(["status", "--local", "--layer", "cli-layer"]) == 0
    status = capsys.readouterr().out
    assert "layer cli-layer" in status
    published = control_plane.published_name("cli-layer")
    assert f"promoted: arn:aws:lambda:us-east-1:123456789012:layer:{published}:1" in status
    assert "version 1: promoted" in status
    assert "spent: " in status and "Lambda requests (" in status and "child executions" in status

    requirements.write_text("six>=1\n")
    assert main(["push", str(requirements), "--layer", "cli-layer", "--local", "--wait"]) == 1
    assert 'InvalidRequirements: layers/cli-layer/requirements.txt line 1: "six>=1" is not pinned' in (
        capsys.readouterr().out
    )


def test_no_local_control_plane_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LAYERSHIFT_LOCAL_STATE", str(tmp_path / "missing.json"))
    assert main(["status", "--local"]) == 2
    assert "start one with `layershift local`" in capsys.readouterr().err


def test_layershift_build_writes_zip_manifest_and_sbom(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six==1.16.0\n")
    out = tmp_path / "out"
    args = ["build", "-r", str(requirements), "--runtime", "python3.13", "--arch", "x86_64", "-o", str(out)]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["layer.zip", "manifest.json", "sbom.cdx.json"]
    # Each package's hashes are the sha256 of the wheel pip installed: PyPI's, for six-1.16.0-py2.py3-none-any.whl.
    packages = json.loads((out / "manifest.json").read_text())["packages"]
    assert [(p["name"], p["hashes"]) for p in packages] == [
        ("six", ["sha256:8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254"])
    ]
    assert main(args) == 0
    assert "cache hit" in capsys.readouterr().out.lower()
    requirements.write_text("six\n")
    assert main(args) == 1
    assert '"six" is not pinned' in capsys.readouterr().err


def test_approve_and_abort_from_the_command_line(
    control_plane: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_local_state(control_plane, tmp_path, monkeypatch)
    assert main(["approve", "cli-gated", "--local"]) == 1
    assert "no rollout of layer 'cli-gated' is waiting for approval" in capsys.readouterr().err
    assert main(["abort", "cli-gated", "--local"]) == 1
    assert "no rollout of layer 'cli-gated' is running" in capsys.readouterr().err

    create_consumer(control_plane, "cli-gated-fn", [publish_bootstrap_layer(control_plane, "cli-gated")])
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six==1.16.0\n")
    config = tmp_path / "layer.toml"
    config.write_text(spec(extra="approval = true"))
    assert main(["push", str(requirements), "--layer", "cli-gated", "--config", str(config), "--local"]) == 0
    execution = capsys.readouterr().out.split("execution: ")[1].strip()
    wait_for_execution(control_plane, execution)
    wait_for_state(control_plane, execution, "AwaitApproval")

    def status_says_it_waits() -> bool:  # once the AwaitApproval task has registered its token
        assert main(["status", "--local", "--layer", "cli-gated"]) == 0
        return "waiting for approval: layershift approve|reject cli-gated" in capsys.readouterr().out

    wait_until(status_says_it_waits, timeout=60, interval=1)
    assert main(["approve", "cli-gated", "--local", "--wait"]) == 0
    approved = capsys.readouterr().out
    assert "approved rollout" in approved and "execution SUCCEEDED" in approved

    requirements.write_text("six==1.17.0\n")
    assert main(["push", str(requirements), "--layer", "cli-gated", "--local"]) == 0
    execution = capsys.readouterr().out.split("execution: ")[1].strip()
    wait_for_execution(control_plane, execution)
    wait_for_state(control_plane, execution, "AwaitApproval")
    assert main(["abort", "cli-gated", "--local", "--reason", "wrong day", "--wait"]) == 0
    aborted = capsys.readouterr().out
    assert "abort requested for rollout" in aborted
    assert "execution FAILED: RolloutAborted: aborted by an operator: wrong day" in aborted


def test_unlock_frees_a_dead_rollouts_lock_and_refuses_a_running_ones(
    control_plane: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cp = control_plane
    use_local_state(cp, tmp_path, monkeypatch)
    assert main(["unlock", "cli-unlock", "--local"]) == 1
    assert "layer 'cli-unlock' is not locked: there is nothing to unlock" in capsys.readouterr().err

    # A rollout that died without releasing its lock (no execution of that name exists).
    cp.client("dynamodb").put_item(
        TableName=cp.table,
        Item={
            "pk": {"S": "LAYER#cli-unlock"},
            "sk": {"S": "LOCK"},
            "owner": {"S": "cli-unlock-crashed"},
            "acquired_at": {"S": "2026-11-23T00:00:00+00:00"},
            "expires_at": {"N": str(int(time.time()) + 3600)},
        },
    )
    create_consumer(cp, "cli-unlock-fn", [publish_bootstrap_layer(cp, "cli-unlock")])
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six==1.16.0\n")
    config = tmp_path / "layer.toml"
    config.write_text(spec(extra="approval = true"))
    assert main(["push", str(requirements), "--layer", "cli-unlock", "--config", str(config), "--local"]) == 0
    execution = capsys.readouterr().out.split("execution: ")[1].strip()
    name = execution.rsplit(":", 1)[-1]
    wait_for_execution(cp, execution)
    wait_for_state(cp, execution, "WaitForLayerLock")  # the push waits for the dead rollout

    assert main(["unlock", "cli-unlock", "--local", "--reason", "its execution is gone"]) == 0
    unlocked = capsys.readouterr().out
    assert "layer cli-unlock was locked by rollout cli-unlock-crashed since 2026-11-23T00:00:00+00:00" in unlocked
    assert "not found (no execution of that name)" in unlocked
    assert "unlocked cli-unlock" in unlocked

    # The waiting push takes the lock at its next attempt; a running holder's lock is not freed.
    wait_for_state(cp, execution, "AwaitApproval")
    assert main(["unlock", "cli-unlock", "--local"]) == 1
    refused = capsys.readouterr().err
    assert f"locked by rollout {name} since" in refused and f"still RUNNING: {execution}" in refused
    assert "`layershift abort cli-unlock`" in refused
    lock = cp.client("dynamodb").get_item(
        TableName=cp.table, Key={"pk": {"S": "LAYER#cli-unlock"}, "sk": {"S": "LOCK"}}, ConsistentRead=True
    )["Item"]
    assert lock["owner"]["S"] == name

    assert main(["approve", "cli-unlock", "--local"]) == 0
    assert finish_rollout(cp, execution).status == "SUCCEEDED"
