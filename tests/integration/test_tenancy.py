"""A pusher of one layer, on the local AWS, tries to reach the functions of another: every attempt is
skipped with its reason or refused, and nothing of the other layer changes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from layershift.controlplane import ControlPlane, from_outputs
from layershift.local.server import LocalAws

from .support import ROOT, STACK_PARAMETERS, create_consumer, publish_bootstrap_layer, run_rollout, spec

pytestmark = [pytest.mark.integration, pytest.mark.network]


def _snapshot(cp: ControlPlane, name: str) -> dict[str, Any]:
    lam = cp.client("lambda")
    config = lam.get_function_configuration(FunctionName=name)
    alias = lam.get_alias(FunctionName=name, Name="live")
    versions = lam.list_versions_by_function(FunctionName=name)["Versions"]
    return {
        "layers": [entry["Arn"] for entry in config.get("Layers", [])],
        "revision": config["RevisionId"],
        "alias": (alias["FunctionVersion"], alias.get("RoutingConfig")),
        "versions": len(versions),
    }


def test_a_push_reaches_only_the_functions_opted_in_for_its_layer(control_plane: ControlPlane) -> None:
    cp = control_plane
    mine, theirs = "tenant-a", "tenant-b"
    a, b = publish_bootstrap_layer(cp, mine), publish_bootstrap_layer(cp, theirs)
    create_consumer(cp, "ta-own", [a])
    create_consumer(cp, "ta-shared", [b, a], tags={"layershift:layer": f"{theirs} {mine}"})
    attempts = {
        "tb-uses-a": ([a], {"layershift:layer": theirs}, f"opted in for '{theirs}', not for '{mine}'"),
        "tb-named": ([b], {"layershift:layer": theirs}, f"opted in for '{theirs}', not for '{mine}'"),
        "tb-pilot": ([b], {"layershift:layer": theirs}, f"opted in for '{theirs}', not for '{mine}'"),
        "managed-only": ([a], {"layershift:managed": "true"}, "AllowManagedOptIn is false"),
        "untagged-named": ([], {}, f"not opted in: tag it layershift:layer={mine}"),
    }
    for name, (layers, tags, _) in attempts.items():
        create_consumer(cp, name, layers, tags=tags)
    before = {name: _snapshot(cp, name) for name in attempts}

    rollout = run_rollout(
        cp,
        mine,
        "six==1.16.0\n",
        spec(extra='pilots = ["tb-pilot"]\n[targets]\nfunctions = ["tb-named", "untagged-named"]'),
    )

    assert rollout.status == "SUCCEEDED", rollout.lines
    plan = rollout_plan(cp, mine, rollout.execution_arn)
    verdicts = {t["function_name"]: t for t in plan["targets"]}
    assert {n for n, t in verdicts.items() if t["verdict"] == "target"} == {"ta-own", "ta-shared"}
    for name, (_, _, reason) in attempts.items():
        assert verdicts[name]["verdict"] == "skipped" and reason in verdicts[name]["reason"], verdicts[name]
        assert _snapshot(cp, name) == before[name], f"{name} changed"
    shared = cp.client("lambda").get_function_configuration(FunctionName="ta-shared")["Layers"]
    assert shared[0]["Arn"] == b  # the other layer kept, in its place


def rollout_plan(cp: ControlPlane, layer: str, execution_arn: str) -> dict[str, Any]:
    name = execution_arn.rsplit(":", 1)[-1]
    body = cp.client("s3").get_object(Bucket=cp.bucket, Key=f"rollouts/{layer}/{name}/plan.json")["Body"].read()
    return json.loads(body)


@pytest.fixture(scope="module")
def floored(local_aws: LocalAws) -> ControlPlane:
    """A second control plane on the same local AWS, whose template sets every floor."""
    from layershift.local.deploy import deploy_control_plane

    floors = {
        "FloorMinSteps": "2",
        "FloorMinBakeSeconds": "60",
        "FloorRequireAnalysis": "true",
        "FloorRequireApproval": "true",
    }
    stack = deploy_control_plane(local_aws, ROOT, stack_name="floored", parameters={**STACK_PARAMETERS, **floors})
    return from_outputs(stack.outputs, local_aws.region, local_aws.endpoint_url)


# Each spec is below exactly one floor.
STEPS = "steps = [{weight = 10, bake_seconds = 60}, {weight = 50, bake_seconds = 60}]"
BELOW_THE_FLOORS = {
    "FloorMinSteps": '[rollout]\nstrategy = "Canary10Percent5Minutes"\n',
    "FloorMinBakeSeconds": "[rollout]\nsteps = [{weight = 10, bake_seconds = 60}, {weight = 50, bake_seconds = 5}]\n",
    "FloorRequireAnalysis": f"[rollout]\n{STEPS}\n[analysis]\nenabled = false\n",
    "FloorRequireApproval": f"[rollout]\n{STEPS}\napproval = false\n",
}


def test_a_spec_below_a_floor_is_refused_naming_the_floor(floored: ControlPlane) -> None:
    """Before anything is built or any function is looked at: the execution fails at validation."""
    mine = publish_bootstrap_layer(floored, "floor-a")
    create_consumer(floored, "floor-a-consumer", [mine], tags={"layershift:layer": "floor-a"})
    before = _snapshot(floored, "floor-a-consumer")
    for floor, config in BELOW_THE_FLOORS.items():
        rollout = run_rollout(floored, "floor-a", f"six==1.16.0\n# {floor}\n", config)
        assert rollout.status == "FAILED" and rollout.error == "InvalidLayerSpec", rollout.lines
        assert f"template parameter {floor}" in (rollout.cause or ""), rollout.cause
        assert "BuildLayer" not in " ".join(rollout.states_entered())
    assert _snapshot(floored, "floor-a-consumer") == before
