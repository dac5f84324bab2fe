"""The integration tier: the real template, ASL file and handlers on the local emulated AWS.

One local AWS and one deployed control plane serve the whole session; each test works on its own
layer and functions, so tests cannot see each other's state.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from layershift.controlplane import ControlPlane, from_outputs
from layershift.local.deploy import DeployedStack, deploy_control_plane
from layershift.local.server import LocalAws

from .support import ROOT, STACK_PARAMETERS


@pytest.fixture(scope="session")
def fault_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fault harness's plan: no faults unless a test plans some for its own layers. Every AWS
    call a control-plane function makes is recorded beside it (`calls.jsonl`)."""
    folder = tmp_path_factory.mktemp("faults")
    plan = folder / "plan.json"
    plan.write_text(json.dumps({"record": str(folder / "calls.jsonl"), "faults": {}}))
    return plan


@pytest.fixture(scope="session")
def call_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every AWS call a function makes, with its parameters and who signed it (`call_recorder.py`):
    what the IAM evaluation of the happy path reads."""
    return tmp_path_factory.mktemp("calls") / "calls.jsonl"


@pytest.fixture(scope="session")
def local_aws(tmp_path_factory: pytest.TempPathFactory, fault_plan: Path, call_log: Path) -> Iterator[LocalAws]:
    """The session's local AWS (one per xdist worker); a test may model AWS's limits on it for a while."""
    state_dir = tmp_path_factory.mktemp("local-aws")
    with LocalAws(ROOT, state_dir=state_dir, fault_plan=fault_plan, call_log=call_log) as aws:
        yield aws


@pytest.fixture(scope="session")
def deployed_stack(local_aws: LocalAws) -> DeployedStack:
    """The session's control plane as the local deploy created it (names, ARNs, bucket policies)."""
    return deploy_control_plane(local_aws, ROOT, parameters=STACK_PARAMETERS)


@pytest.fixture(scope="session")
def control_plane(local_aws: LocalAws, deployed_stack: DeployedStack) -> ControlPlane:
    return from_outputs(deployed_stack.outputs, local_aws.region, local_aws.endpoint_url)
