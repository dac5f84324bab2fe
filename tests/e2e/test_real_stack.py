"""Against a deployed stack: set AWS_SAM_STACK_NAME (and AWS credentials) to run; skipped otherwise.

The test pushes a small pure-Python layer with no consumers and checks that the real CodeBuild
build, PublishLayerVersion, SSM parameter and registry line up, with every invariant holding.
"""

import os
import uuid

import pytest

from layershift.controlplane import follow, from_stack, push, wait_for_execution
from layershift.invariants import check_invariants

STACK = os.environ.get("AWS_SAM_STACK_NAME")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not STACK, reason="no deployed stack: set AWS_SAM_STACK_NAME to run the end-to-end tests"),
]


def test_a_push_is_built_published_and_promoted_on_aws() -> None:
    cp = from_stack(STACK or "", os.environ.get("AWS_REGION"))
    layer = f"layershift-e2e-{uuid.uuid4().hex[:8]}"
    result = push(cp, layer, b"six==1.16.0\n", b"[rollout]\nstrategy = 'AllAtOnce'\n")
    wait_for_execution(cp, result.execution_arn, appear_timeout=120)
    described = follow(cp, result.execution_arn, emit=print, poll=5, timeout=1800)
    assert described["status"] == "SUCCEEDED"
    assert check_invariants(cp, result.execution_arn) == []
    arn = cp.client("ssm").get_parameter(Name=f"/layershift/{layer}/arn")["Parameter"]["Value"]
    assert f":layer:{layer}:" in arn


def test_bad_input_is_rejected_on_aws() -> None:
    cp = from_stack(STACK or "", os.environ.get("AWS_REGION"))
    layer = f"layershift-e2e-{uuid.uuid4().hex[:8]}"
    result = push(cp, layer, b"requests>=2\n")
    wait_for_execution(cp, result.execution_arn, appear_timeout=120)
    described = follow(cp, result.execution_arn, emit=print, poll=5, timeout=600)
    assert described["status"] == "FAILED"
    assert check_invariants(cp, result.execution_arn) == []
