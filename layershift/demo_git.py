"""`layershift demo --git`: a rollout started by a `git push`, on the local emulated AWS.

The control plane is deployed watching the `main` branch of a CodeCommit repository (the local one
is a bare git repository, `layershift/local/codecommit.py`). The demo clones it, commits the demo's
layer spec under `layers/<layer>/`, pushes, and follows the rollout the push starts through the
template's CodeCommit rule and StartRollout.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from .controlplane import ControlPlane, follow, from_outputs
from .demo import LAYER, create_alarms, say
from .invariants import check_invariants

REPOSITORY = "layershift-demo-specs"


def _git(work: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(work), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _started_by(cp: ControlPlane, commit: str, timeout: float = 60) -> str:
    """The execution the push of ``commit`` started (the request records the commit id)."""
    sfn = cp.client("stepfunctions")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for execution in sfn.list_executions(stateMachineArn=cp.state_machine_arn)["executions"]:
            described = sfn.describe_execution(executionArn=execution["executionArn"])
            if json.loads(described["input"])["request"].get("commit_id") == commit:
                return str(execution["executionArn"])
        time.sleep(0.5)
    raise TimeoutError(f"no rollout started for commit {commit} within {timeout:.0f}s")


def run(project_root: Path) -> int:
    from .local.deploy import deploy_control_plane
    from .local.server import LocalAws

    examples = project_root / "examples" / "demo"
    state = project_root / ".layershift" / "local-git"
    started = time.monotonic()
    with LocalAws(state_dir=state) as aws:
        say(f"== local AWS on {aws.endpoint_url}; CodeCommit repository {REPOSITORY}")
        clone_url = aws.client("codecommit").create_repository(repositoryName=REPOSITORY)["repositoryMetadata"][
            "cloneUrlHttp"
        ]
        parameters = {"CodeCommitRepositoryName": REPOSITORY, "CodeCommitBranch": "main"}
        stack = deploy_control_plane(aws, project_root, parameters=parameters)
        cp = from_outputs(stack.outputs, aws.region, aws.endpoint_url)
        say(f"  control plane deployed, watching {REPOSITORY}@main")
        create_alarms(cp)  # the demo's layer.toml gates on them, and validation refuses unknown alarms

        work = state / "clone"
        subprocess.run(["rm", "-rf", str(work)], check=True)
        subprocess.run(["git", "clone", "-q", clone_url, str(work)], check=True, capture_output=True)
        _git(work, "checkout", "-q", "-b", "main")
        folder = work / "layers" / LAYER
        folder.mkdir(parents=True)
        (folder / "requirements.txt").write_bytes((examples / "requirements-v1.txt").read_bytes())
        (folder / "layer.toml").write_bytes((examples / "layer.toml").read_bytes())
        _git(work, "add", "-A")
        _git(work, "-c", "user.name=Demo", "-c", "user.email=demo@example.com", "commit", "-q", "-m", f"{LAYER} v1")
        commit = _git(work, "rev-parse", "HEAD")
        say(f"\n== git push origin main (commit {commit[:12]}: layers/{LAYER}/requirements.txt, layer.toml)")
        _git(work, "push", "-q", "origin", "main")

        arn = _started_by(cp, commit)
        say(f"  the push started {arn.rsplit(':', 1)[-1]}")
        described = follow(cp, arn, emit=lambda line: say(f"  {line}"))
        problems = check_invariants(cp, arn)
        say(f"  invariants: {'all hold' if not problems else '; '.join(problems)}")
        say(f"\n== git demo finished in {time.monotonic() - started:.0f}s: the rollout ended {described['status']}")
        return 0 if described["status"] == "SUCCEEDED" and not problems else 1
