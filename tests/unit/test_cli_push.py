"""What `layershift push` says when the pushed bytes already have an execution (the trigger starts
nothing for them): it follows one still running, and never reports one that ended before the push."""

from pathlib import Path
from typing import Any

import pytest

from layershift import cli, controlplane
from layershift.controlplane import PushResult

ARN = "arn:aws:states:us-east-1:123456789012:execution:rollout:deps-0123456789abcde"


@pytest.fixture
def pushed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    seen: dict[str, Any] = {"followed": []}

    def push(cp: object, layer: str, requirements: bytes, config: bytes | None) -> PushResult:
        return PushResult(layer, "v2", "deps-0123456789abcde", ARN, seen["existing"])

    def follow(cp: object, arn: str, emit: Any = print) -> dict[str, str]:
        seen["followed"].append(arn)
        return {"status": "SUCCEEDED"}

    monkeypatch.setattr(cli, "_control_plane", lambda args: object())
    monkeypatch.setattr(controlplane, "push", push)
    monkeypatch.setattr(controlplane, "wait_for_execution", lambda cp, arn: None)
    monkeypatch.setattr(controlplane, "follow", follow)
    (tmp_path / "requirements.txt").write_text("six==1.16.0\n")
    seen["argv"] = ["push", str(tmp_path / "requirements.txt"), "--layer", "deps", "--local", "--wait"]
    return seen


def test_bytes_whose_execution_ended_start_nothing_and_wait_reports_no_old_result(
    pushed: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    pushed["existing"] = "SUCCEEDED"
    assert cli.main(pushed["argv"]) == 1
    out = capsys.readouterr().out
    assert "nothing new started: these bytes already rolled out as deps-0123456789abcde (SUCCEEDED)" in out
    assert "layershift retry deps" in out
    assert pushed["followed"] == []
    assert cli.main(pushed["argv"][:-1]) == 0  # without --wait the upload itself succeeded


def test_bytes_still_rolling_out_are_followed(pushed: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    pushed["existing"] = "RUNNING"
    assert cli.main(pushed["argv"]) == 0
    assert "these bytes are already rolling out" in capsys.readouterr().out
    assert pushed["followed"] == [ARN]
