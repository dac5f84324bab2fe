"""`layershift push` and `layershift status` against the local control plane, as a user runs them."""

from pathlib import Path

import pytest

from layershift.cli import main
from layershift.controlplane import ControlPlane

pytestmark = [pytest.mark.integration, pytest.mark.network]


def test_push_wait_and_status(
    control_plane: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "control-plane.json"
    control_plane.save_local(state)
    monkeypatch.setenv("LAYERSHIFT_LOCAL_STATE", str(state))
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
    assert "promoted: arn:aws:lambda:us-east-1:123456789012:layer:cli-layer:1" in status
    assert "version 1: promoted" in status

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
    assert main(args) == 0
    assert "cache hit" in capsys.readouterr().out.lower()
    requirements.write_text("six\n")
    assert main(args) == 1
    assert '"six" is not pinned' in capsys.readouterr().err
