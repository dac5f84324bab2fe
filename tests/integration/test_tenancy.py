"""A pusher of one layer, on the local AWS, tries to reach the functions of another: every attempt is
skipped with its reason or refused, and nothing of the other layer changes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from layershift.controlplane import ControlPlane

from .support import create_consumer, publish_bootstrap_layer, run_rollout, spec

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
