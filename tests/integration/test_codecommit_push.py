"""A real `git push` to the local CodeCommit starts rollouts through the template's own rule and
StartRollout: one per changed layers/<layer>/ folder, each with its commit's own layer.toml."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from layershift.controlplane import ControlPlane, from_outputs
from layershift.local.server import LocalAws

from .support import ROOT, STACK_PARAMETERS, finish_rollout, spec

pytestmark = [pytest.mark.integration, pytest.mark.network]

REPOSITORY = "layer-specs"


def _git(work: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(work), *args], capture_output=True, text=True, check=True).stdout.strip()


def _push(work: Path, files: dict[str, str | None], message: str) -> str:
    """Commit the files (None deletes one) and push them to main; returns the commit id."""
    for path, content in files.items():
        if content is None:
            (work / path).unlink()
            continue
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(content)
    _git(work, "add", "-A")
    _git(work, "-c", "user.name=Team A", "-c", "user.email=a@example.com", "commit", "-q", "-m", message)
    _git(work, "push", "-q", "origin", "main")
    return _git(work, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def gitops(local_aws: LocalAws, tmp_path_factory: pytest.TempPathFactory) -> tuple[ControlPlane, Path]:
    """A control plane that watches the main branch of a local CodeCommit repository, and a clone of it."""
    from layershift.local.deploy import deploy_control_plane

    clone_url = local_aws.client("codecommit").create_repository(repositoryName=REPOSITORY)["repositoryMetadata"][
        "cloneUrlHttp"
    ]
    parameters = {**STACK_PARAMETERS, "CodeCommitRepositoryName": REPOSITORY, "CodeCommitBranch": "main"}
    stack = deploy_control_plane(local_aws, ROOT, stack_name="gitops", parameters=parameters)
    work = tmp_path_factory.mktemp("layer-specs")
    subprocess.run(["git", "clone", "-q", clone_url, str(work)], check=True, capture_output=True)
    _git(work, "checkout", "-q", "-b", "main")
    return from_outputs(stack.outputs, local_aws.region, local_aws.endpoint_url), work


def _executions(cp: ControlPlane, layer: str) -> list[dict[str, Any]]:
    listed = cp.client("stepfunctions").list_executions(stateMachineArn=cp.state_machine_arn)["executions"]
    return sorted((e for e in listed if e["name"].startswith(f"{layer}-")), key=lambda e: e["startDate"])


def _wait_for(found: Callable[[], list[dict[str, Any]]], count: int, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(current := found()) >= count:
            return current
        time.sleep(0.5)
    raise AssertionError(f"expected {count} execution(s), found {found()}")


def _request(cp: ControlPlane, execution_arn: str) -> dict[str, Any]:
    described = cp.client("stepfunctions").describe_execution(executionArn=execution_arn)
    return dict(json.loads(described["input"])["request"])


def _config(cp: ControlPlane, request: dict[str, Any]) -> bytes | None:
    if not request.get("config_key"):
        return None
    kwargs = {"Bucket": cp.bucket, "Key": request["config_key"], "VersionId": request["config_version"]}
    return bytes(cp.client("s3").get_object(**kwargs)["Body"].read())


def test_a_push_of_two_layers_starts_two_rollouts_that_end_promoted(gitops: tuple[ControlPlane, Path]) -> None:
    cp, work = gitops
    config = spec()
    commit = _push(
        work,
        {
            "layers/git-a/requirements.txt": "six==1.16.0\n",
            "layers/git-a/layer.toml": config,
            "layers/git-b/requirements.txt": "six==1.16.0\n",
            "README.md": "specs\n",
        },
        "two layers",
    )
    for layer, expected_config in (("git-a", config.encode()), ("git-b", None)):
        (execution,) = _wait_for(lambda layer=layer: _executions(cp, layer), 1)
        request = _request(cp, execution["executionArn"])
        assert (request["source"], request["commit_id"]) == ("codecommit", commit)
        assert _config(cp, request) == expected_config
        rollout = finish_rollout(cp, execution["executionArn"])
        assert rollout.status == "SUCCEEDED", rollout.lines

    # Deleting a layer folder starts nothing; the other layer's change starts its own rollout only.
    _push(work, {"layers/git-b/requirements.txt": None, "layers/git-a/requirements.txt": "six==1.17.0\n"}, "drop b")
    (_, again) = _wait_for(lambda: _executions(cp, "git-a"), 2)
    finish_rollout(cp, again["executionArn"])
    assert len(_executions(cp, "git-b")) == 1


def test_each_rollout_uses_its_own_commits_layer_toml(gitops: tuple[ControlPlane, Path]) -> None:
    """Two pushes in a row, each with another layer.toml: whether or not the second push mirrors its
    layer.toml before the first push's rollout is read, each rollout uses its own commit's (the unit
    test in test_trigger.py forces that order)."""
    cp, work = gitops
    first_config, second_config = spec(extra="# first"), spec(extra="# second")
    first = _push(
        work, {"layers/git-c/requirements.txt": "six==1.16.0\n", "layers/git-c/layer.toml": first_config}, "c one"
    )
    second = _push(
        work, {"layers/git-c/requirements.txt": "six==1.17.0\n", "layers/git-c/layer.toml": second_config}, "c two"
    )
    executions = _wait_for(lambda: _executions(cp, "git-c"), 2)
    by_commit = {_request(cp, e["executionArn"])["commit_id"]: e["executionArn"] for e in executions}
    assert _config(cp, _request(cp, by_commit[first])) == first_config.encode()
    assert _config(cp, _request(cp, by_commit[second])) == second_config.encode()
    for arn in by_commit.values():
        finish_rollout(cp, arn)
