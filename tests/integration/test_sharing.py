"""[share] on the local AWS: after every rollout, built or reused, every version of the layer (old ones
included) carries exactly the grants of the spec it validated, and nothing else; a grant that cannot
be made stops the rollout before any function moves; a public layer is refused by default."""

from __future__ import annotations

from pathlib import Path

import pytest

from layershift.controlplane import ControlPlane
from layershift.invariants import check_invariants, layer_grants

from .support import create_consumer, publish_bootstrap_layer, run_rollout, session_function, set_fault

pytestmark = [pytest.mark.integration, pytest.mark.network]

A, B = "111122223333", "444455556666"
ORG = "o-a1b2c3d4e5"


def _config(share: str) -> str:
    return f'[rollout]\nstrategy = "AllAtOnce"\npoll_seconds = 1\n[analysis]\nenabled = false\n[share]\n{share}\n'


def _grants(cp: ControlPlane, layer: str) -> dict[int, set[tuple[str, str | None]]]:
    """Each version of the layer: whom its policy lets use it, as (principal, organization)."""
    return {
        version: {(grant.principal, grant.organization_id) for grant in grants}
        for version, grants in layer_grants(cp, layer).items()
    }


def test_every_version_carries_exactly_the_share_of_the_last_rollout_built_or_reused(
    control_plane: ControlPlane,
) -> None:
    cp = control_plane
    layer = "shared"
    first = publish_bootstrap_layer(cp, layer)  # a version from before layershift: it is the layer's too
    create_consumer(cp, f"{layer}-fn", [first])

    built = run_rollout(cp, layer, "six==1.16.0\n", _config(f'accounts = ["{A}", "{B}"]'))

    assert built.status == "SUCCEEDED", built.lines
    assert "BuildLayer" in built.states_entered()
    assert _grants(cp, layer) == {1: {(A, None), (B, None)}, 2: {(A, None), (B, None)}}

    # Someone makes the old version public by hand; the next push changes [share] and reuses the build.
    cp.client("lambda").add_layer_version_permission(
        LayerName=cp.published_name(layer),
        VersionNumber=1,
        StatementId="by-hand",
        Action="lambda:GetLayerVersion",
        Principal="*",
    )
    # ... which the invariants (checked after every rollout of the suite) see as a violation.
    (problem,) = check_invariants(cp, built.execution_arn, settle_seconds=0)
    assert problem.startswith(f"{cp.published_name(layer)}:1 grants ['by-hand', ") and "exactly" in problem
    reused = run_rollout(cp, layer, "six==1.16.0\n", _config(f'accounts = ["{B}"]\norganization = "{ORG}"'))

    assert reused.status == "SUCCEEDED", reused.lines
    entered = reused.states_entered()
    assert "BuildLayer" not in entered and "PublishLayerVersion" not in entered
    assert entered.index("ShareLayerVersions") < entered.index("PromoteLayer")
    assert _grants(cp, layer) == {1: {(B, None), ("*", ORG)}, 2: {(B, None), ("*", ORG)}}
    assert any(
        line.startswith("shared: 2 layer version(s) carry exactly [share]'s 2 grant(s)") for line in reused.lines
    )


def test_a_grant_that_cannot_be_made_stops_the_rollout_before_any_function_moves(
    control_plane: ControlPlane, fault_plan: Path
) -> None:
    cp = control_plane
    layer = "share-denied"
    old = create_consumer(cp, f"{layer}-fn", [publish_bootstrap_layer(cp, layer)])
    sharer = session_function(cp, "ShareLayerVersionsFunction")
    fault = {"function": sharer, "service": "lambda", "operation": "AddLayerVersionPermission", "fault": "denied"}
    set_fault(fault_plan, layer, fault)
    try:
        rollout = run_rollout(cp, layer, "six==1.16.0\n", _config(f'accounts = ["{A}"]'))
    finally:
        set_fault(fault_plan, layer, None)

    assert rollout.status == "FAILED"
    assert rollout.error == "LayerShareFailed"
    assert f"could not grant account {A}" in (rollout.cause or "") and "AccessDenied" in (rollout.cause or "")
    assert "PrepareFunctionVersions" not in rollout.states_entered()
    assert cp.client("lambda").get_alias(FunctionName=f"{layer}-fn", Name="live")["FunctionVersion"] == old


def test_a_public_layer_is_refused_at_validation_by_default(control_plane: ControlPlane) -> None:
    cp = control_plane
    rollout = run_rollout(cp, "share-public", "six==1.16.0\n", _config("public = true"))
    assert rollout.status == "FAILED"
    assert rollout.error == "InvalidLayerSpec"
    assert "share.public" in (rollout.cause or "") and "AllowPublicLayers" in (rollout.cause or "")
    assert cp.client("lambda").list_layer_versions(LayerName=cp.published_name("share-public"))["LayerVersions"] == []
