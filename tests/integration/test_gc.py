"""`layershift gc` and CleanUpVersionsFunction on the local AWS, over a fleet in every awkward state.

The local Lambda deletes a function version an alias points at (real Lambda refuses) and a layer
version in use (real Lambda allows it too): what guards the invariant here is the assertions, which
read Lambda afterwards and find every version in use still there.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from layershift.cli import main
from layershift.controlplane import ControlPlane
from layershift.local.deploy import DeployedStack
from layershift.local.server import LocalAws
from layershift_core.cleanup import CleanupPolicy, apply, gather, plan_cleanup
from layershift_core.models import RolloutPlan
from layershift_core.planner import plan_key, save_plan
from layershift_core.registry import Registry
from tests.iam.deployed import DeployedAccount
from tests.iam.recorded_calls import iam_requests, load_calls
from tests.iam.simulator import evaluate, require_evaluator

from .support import create_consumer, session_function, use_local_state

pytestmark = [pytest.mark.integration]

LAYER = "gc-fleet"
SCHEDULED_LAYER = "gc-scheduled"
OTHER_ACCOUNT = "210987654321"
RUNNING = "gc-fleet-running-rollout"


def _zip(size: int, seed: int) -> bytes:
    """A layer zip of about ``size`` bytes that does not compress (so CodeSize is about ``size``)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("python/payload.bin", os.urandom(size))
        archive.writestr("python/marker.py", f"SEED = {seed}\n")
    return buffer.getvalue()


def _publish(cp: ControlPlane, layer: str, count: int) -> list[str]:
    """Versions 1..count of the layer, each of a different size; their ARNs in order."""
    lam = cp.client("lambda")
    arns = []
    for number in range(1, count + 1):
        answer = lam.publish_layer_version(
            LayerName=cp.published_name(layer),
            Content={"ZipFile": _zip(20_000 * number, number)},
            CompatibleRuntimes=["python3.13"],
        )
        assert answer["Version"] == number, "the test's layer must be new"
        arns.append(answer["LayerVersionArn"])
    return arns


def _publish_function_version(cp: ControlPlane, name: str, description: str, layers: list[str] | None = None) -> str:
    lam = cp.client("lambda")
    change: dict[str, Any] = {"Layers": layers} if layers is not None else {}
    # a change of configuration each time, so each publication is a new version
    change["Environment"] = {"Variables": {"PUBLICATION": description.replace(" ", "_")[:64] + str(time.time_ns())}}
    lam.update_function_configuration(FunctionName=name, **change)
    return str(lam.publish_version(FunctionName=name, Description=description)["Version"])


def _record(cp: ControlPlane, layer: str, version: int, arn: str, variant: str) -> None:
    with cp.domain_clients():
        Registry(cp.table).record_version(
            layer, version, arn, [f"bk-{layer}-{version}"], f"artifacts/{layer}/m.json", "00", "r1", variant=variant
        )


def _rollouts(cp: ControlPlane, layer: str, *ids: str) -> None:
    with cp.domain_clients():
        for rollout_id in ids:
            Registry(cp.table).put_rollout(layer, rollout_id, status="promoted")


def _layer_versions(cp: ControlPlane, layer: str) -> set[int]:
    pages = cp.client("lambda").get_paginator("list_layer_versions").paginate(LayerName=cp.published_name(layer))
    return {int(v["Version"]) for page in pages for v in page["LayerVersions"]}


def _function_versions(cp: ControlPlane, name: str) -> set[str]:
    pages = cp.client("lambda").get_paginator("list_versions_by_function").paginate(FunctionName=name)
    return {v["Version"] for page in pages for v in page["Versions"]}


def _registry_sort_keys(cp: ControlPlane, layer: str) -> set[str]:
    answer = cp.client("dynamodb").query(
        TableName=cp.table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": f"LAYER#{layer}"}},
    )
    return {item["sk"]["S"] for item in answer["Items"]}


def _gc(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["gc", "--local", "--layer", LAYER, "--keep", "1", "--output", "json", *args]) == 0
    return dict(json.loads(capsys.readouterr().out))


def _plan_of(document: dict[str, Any]) -> dict[str, Any]:
    """The plan without its clock: what is deleted and kept, and why."""
    plan = dict(document["plan"])
    return {key: plan[key] for key in ("policy", "refused", "deletions", "kept")}


@pytest.fixture
def awkward_fleet(control_plane: ControlPlane) -> dict[str, Any]:
    """Layer gc-fleet, keep 1 (per layer and per promoted variant), and functions using it in every way
    that must keep a version.

    Layer versions (variant groups: "" unrecorded, py313-x86_64, py313-arm64; the newest of each stays):
      1 ""  $LATEST of gc-old-latest                    kept: in use by $LATEST
      2 ""  gc-weighted:1, which live routes 10% to     kept: in use through weighted routing
      3 ""  gc-weighted:2, live's primary version       kept: in use through the alias
      4 ""  granted to another account                  kept: shared
      5 ""  /layershift/gc-fleet/arn                    kept: promoted
      6 ""  the running rollout's layer version         kept: in a running rollout
      7 x86 free, recorded (VERSION# and BUILD#)        deleted, its records too
      8 arm recorded; the running rollout's plan has it on a target's $LATEST before the rollout
                                                        kept: its rollback restores it
      9 ""  only gc-published:1 (no alias) runs it      deleted
      10 x86, 11 arm, 12 "": the newest of each group   no candidates (10 and 11 are promoted for their
                                                        platforms: their variants keep their newest)
    Function versions layershift published (keep 1 per function):
      gc-weighted 1 (weighted routing), 2 (primary)     kept / newest
      gc-published 1 (no alias)                         deleted
      gc-published 2 (alias stable), 3 (alias live)     kept / newest
      gc-published 4 (the team's own), 5 (an unknown rollout's description): never candidates
    """
    cp = control_plane
    lam = cp.client("lambda")
    arns = _publish(cp, LAYER, 12)
    for number, variant in ((7, "py313-x86_64"), (10, "py313-x86_64"), (8, "py313-arm64"), (11, "py313-arm64")):
        _record(cp, LAYER, number, arns[number - 1], variant)
    _rollouts(cp, LAYER, "r1", "r2", "r3")
    tags = {"layershift:layer": LAYER}

    create_consumer(cp, "gc-old-latest", [arns[0]], alias=None, tags=tags)

    create_consumer(cp, "gc-weighted", [arns[1]], alias=None, tags=tags)
    first = _publish_function_version(cp, "gc-weighted", f"layershift {LAYER} rollout r1")
    second = _publish_function_version(cp, "gc-weighted", f"layershift {LAYER} rollout r2", [arns[2]])
    lam.update_function_configuration(FunctionName="gc-weighted", Layers=[arns[9]])
    lam.create_alias(
        FunctionName="gc-weighted",
        Name="live",
        FunctionVersion=second,
        RoutingConfig={"AdditionalVersionWeights": {first: 0.1}},
    )

    create_consumer(cp, "gc-published", [arns[8]], alias=None, tags=tags)
    published = [
        _publish_function_version(cp, "gc-published", f"layershift {LAYER} rollout r1"),
        _publish_function_version(cp, "gc-published", f"layershift {LAYER} rollout r2", [arns[9]]),
        _publish_function_version(cp, "gc-published", f"layershift {LAYER} rollout r3"),
        _publish_function_version(cp, "gc-published", "deployed by the team's pipeline"),
        _publish_function_version(cp, "gc-published", f"layershift {LAYER} rollout not-in-the-registry"),
    ]
    assert published == ["1", "2", "3", "4", "5"]
    lam.create_alias(FunctionName="gc-published", Name="stable", FunctionVersion="2")
    lam.create_alias(FunctionName="gc-published", Name="live", FunctionVersion="3")

    lam.add_layer_version_permission(
        LayerName=cp.published_name(LAYER),
        VersionNumber=4,
        StatementId="other-account",
        Action="lambda:GetLayerVersion",
        Principal=OTHER_ACCOUNT,
    )
    ssm = cp.client("ssm")
    ssm.put_parameter(Name=f"/layershift/{LAYER}/arn", Value=arns[4], Type="String", Overwrite=True)
    for platform, number in (("python3.13/x86_64", 10), ("python3.13/arm64", 11)):  # each variant's promoted
        ssm.put_parameter(Name=f"/layershift/{LAYER}/{platform}/arn", Value=arns[number - 1], Type="String")
    with cp.domain_clients():
        registry = Registry(cp.table)
        registry.acquire_lock(LAYER, RUNNING, 3600)
        registry.put_rollout(LAYER, RUNNING, status="shifting", layer_version_arns=arns[5])
        target = {"function_name": "gc-moved", "alias": "live", "verdict": "target", "current_layers": [arns[7]]}
        plan = {"rollout_id": RUNNING, "layer": LAYER, "layer_versions": [], "alias": "live", "steps": []}
        save_plan(cp.bucket, plan_key(LAYER, RUNNING), RolloutPlan.model_validate(plan | {"targets": [target]}))
    return {"arns": arns}


def test_gc_deletes_exactly_what_nothing_runs_and_the_dry_run_is_the_plan(
    control_plane: ControlPlane,
    awkward_fleet: dict[str, Any],
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    record_property: Callable[[str, object], None],
) -> None:
    cp = control_plane
    arns = awkward_fleet["arns"]
    use_local_state(cp, tmp_path, monkeypatch)
    lam = cp.client("lambda")
    published_arn = lam.get_function(FunctionName="gc-published")["Configuration"]["FunctionArn"]

    # Within the grace period everything stays, each candidate saying so.
    young = _gc(capsys, "--dry-run", "--grace-hours", "1")
    assert young["plan"]["deletions"] == []
    assert all(any("grace period" in r for r in k["reasons"]) for k in young["plan"]["kept"])

    assert main(["gc", "--local", "--layer", LAYER, "--keep", "1", "--grace-hours", "0", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert f"  delete {arns[6]} (" in text and f"  keep   {arns[3]}: shared with" in text
    assert "layer versions: 2 to delete, 7 kept beyond the newest 1" in text
    assert "function versions: 1 to delete, 2 kept beyond the newest 1" in text
    assert "frees " in text and text.rstrip().endswith("dry run: nothing deleted")

    dry = _gc(capsys, "--dry-run", "--grace-hours", "0")
    assert _layer_versions(cp, LAYER) == set(range(1, 13)), "the dry run deleted nothing"
    real = _gc(capsys, "--grace-hours", "0")
    assert _plan_of(dry) == _plan_of(real)

    deleted = {(d["kind"], d["arn"]) for d in real["plan"]["deletions"]}
    assert deleted == {
        ("layer_version", arns[6]),
        ("layer_version", arns[8]),
        ("function_version", f"{published_arn}:1"),
    }
    kept = {k["arn"]: " / ".join(k["reasons"]) for k in real["plan"]["kept"]}
    assert "gc-old-latest $LATEST" in kept[arns[0]]
    assert "gc-weighted alias live -> 1 (10%)" in kept[arns[1]]
    assert "gc-weighted alias live -> 2" in kept[arns[2]]
    assert kept[arns[3]].startswith("shared with") and OTHER_ACCOUNT in kept[arns[3]]
    assert f"promoted (/layershift/{LAYER}/arn)" in kept[arns[4]]
    assert f"in running rollout {RUNNING}" in kept[arns[5]]
    assert kept[arns[7]] == f"running rollout {RUNNING} restores it on $LATEST if it rolls back"
    weighted_arn = lam.get_function(FunctionName="gc-weighted")["Configuration"]["FunctionArn"]
    assert kept[f"{weighted_arn}:1"] == "alias live routes to it"
    assert kept[f"{published_arn}:2"] == "alias stable routes to it"
    assert not {arn for arn in kept if arn.endswith((":4", ":5")) and arn.startswith(published_arn)}
    assert all(outcome["status"] == "deleted" for outcome in real["outcomes"]), real["outcomes"]

    # Lambda afterwards: exactly the planned versions are gone; every version in use is there.
    assert _layer_versions(cp, LAYER) == {1, 2, 3, 4, 5, 6, 8, 10, 11, 12}
    assert _function_versions(cp, "gc-published") == {"$LATEST", "2", "3", "4", "5"}
    assert _function_versions(cp, "gc-weighted") == {"$LATEST", "1", "2"}
    assert lam.get_alias(FunctionName="gc-weighted", Name="live")["RoutingConfig"]["AdditionalVersionWeights"] == {
        "1": 0.1
    }
    # The registry forgets what was deleted (FindReusableBuild can never offer it) and keeps the rest.
    keys = _registry_sort_keys(cp, LAYER)
    assert not {"VERSION#000007", f"BUILD#bk-{LAYER}-7"} & keys
    assert {"VERSION#000008", "VERSION#000010", f"BUILD#bk-{LAYER}-8", f"BUILD#bk-{LAYER}-10"} <= keys

    # The record: the plan and what was done, with the bytes freed.
    record = json.loads(cp.client("s3").get_object(Bucket=cp.bucket, Key=real["record_key"])["Body"].read())
    assert _plan_of(record) == _plan_of(real)
    assert {o["arn"] for o in record["outcomes"] if o["status"] == "deleted"} == {arn for _, arn in deleted}
    layer_bytes = sum(d["code_size"] for d in real["plan"]["deletions"] if d["kind"] == "layer_version")
    function_bytes = sum(d["code_size"] for d in real["plan"]["deletions"] if d["kind"] == "function_version")
    assert layer_bytes > 20_000 * (7 + 9) and function_bytes > 0
    assert record["bytes_freed"] == real["bytes_freed"] == layer_bytes + function_bytes
    record_property("freed", f"{layer_bytes} bytes of layer versions, {function_bytes} bytes of function versions")

    # A second run finds nothing more to delete.
    assert main(["gc", "--local", "--layer", LAYER, "--keep", "1", "--grace-hours", "0"]) == 0
    again = capsys.readouterr().out
    assert "layer versions: 0 to delete" in again and "function versions: 0 to delete" in again
    assert "deleted 0 of 0, freed 0.0 MiB (0 bytes)" in again and f"recorded in s3://{cp.bucket}/gc/" in again
    with cp.domain_clients():
        Registry(cp.table).release_lock(LAYER, RUNNING)


def test_apply_checks_again_what_changed_since_the_plan(control_plane: ControlPlane) -> None:
    """A version promoted, an alias created or a rollout started between the plan and the deletion
    keeps what it needs: apply re-reads the promoted parameters, the lock and the aliases."""
    cp = control_plane
    layer = "gc-recheck"
    lam = cp.client("lambda")
    arns = _publish(cp, layer, 4)
    _rollouts(cp, layer, "q1")
    create_consumer(cp, "gc-recheck", [arns[3]], alias=None, tags={"layershift:layer": layer})
    _publish_function_version(cp, "gc-recheck", f"layershift {layer} rollout q1")
    _publish_function_version(cp, "gc-recheck", f"layershift {layer} rollout q1", [arns[3]])
    lam.create_alias(FunctionName="gc-recheck", Name="live", FunctionVersion="2")
    policy = CleanupPolicy(keep=1, grace_hours=0, layer=layer)
    with cp.domain_clients():
        settings = cp.settings()
        facts = gather(settings, policy)
        plan = plan_cleanup(facts, policy)
        function_arn = lam.get_function(FunctionName="gc-recheck")["Configuration"]["FunctionArn"]
        assert {d.arn for d in plan.deletions} == {arns[0], arns[1], arns[2], f"{function_arn}:1"}

        cp.client("ssm").put_parameter(Name=f"/layershift/{layer}/arn", Value=arns[0], Type="String", Overwrite=True)
        lam.create_alias(FunctionName="gc-recheck", Name="pinned", FunctionVersion="1")
        outcomes = {o.arn: (o.status, o.detail) for o in apply(settings, plan, facts).outcomes}
        assert outcomes[arns[0]] == ("skipped", f"promoted since the plan (/layershift/{layer}/arn)")
        assert outcomes[f"{function_arn}:1"] == ("skipped", "alias pinned routes to it now")
        assert outcomes[arns[1]][0] == outcomes[arns[2]][0] == "deleted"
        assert _layer_versions(cp, layer) == {1, 4} and _function_versions(cp, "gc-recheck") == {"$LATEST", "1", "2"}

        for seed in (5, 6):
            content = {"ZipFile": _zip(1000, seed)}
            arns.append(
                lam.publish_layer_version(LayerName=cp.published_name(layer), Content=content)["LayerVersionArn"]
            )
        facts = gather(settings, policy)
        plan = plan_cleanup(facts, policy)
        assert [d.arn for d in plan.deletions] == [arns[4]]
        registry = Registry(cp.table)
        registry.acquire_lock(layer, "q2", 3600)
        try:
            (outcome,) = apply(settings, plan, facts).outcomes
        finally:
            registry.release_lock(layer, "q2")
        assert outcome.status == "skipped" and "started since the plan" in outcome.detail
        assert _layer_versions(cp, layer) == {1, 4, 5, 6}


def test_the_scheduled_function_applies_the_same_rules_with_only_the_permissions_it_has(
    control_plane: ControlPlane,
    deployed_stack: DeployedStack,
    local_aws: LocalAws,
    call_log: Path,
) -> None:
    """CleanUpVersionsFunction as its schedule rule invokes it (the rule's Input: keep and grace, here
    for one layer), and every AWS call it made allowed by its deployed IAM policies (tests/iam)."""
    require_evaluator()
    cp = control_plane
    lam = cp.client("lambda")
    arns = _publish(cp, SCHEDULED_LAYER, 4)
    _rollouts(cp, SCHEDULED_LAYER, "s1")
    tags = {"layershift:layer": SCHEDULED_LAYER}
    create_consumer(cp, "gc-scheduled", [arns[0]], alias=None, tags=tags)
    for layer_arn in (arns[1], arns[2], arns[3]):
        _publish_function_version(cp, "gc-scheduled", f"layershift {SCHEDULED_LAYER} rollout s1", [layer_arn])
    lam.update_function_configuration(FunctionName="gc-scheduled", Layers=[arns[0]])
    lam.create_alias(
        FunctionName="gc-scheduled",
        Name="live",
        FunctionVersion="3",
        RoutingConfig={"AdditionalVersionWeights": {"1": 0.2}},
    )
    # The session's stack has the default CleanupSchedule (""): the function is there, no schedule rule.
    function = session_function(cp, "CleanUpVersionsFunction")
    events = cp.client("events")
    rules = events.list_rules()["Rules"]
    targets = [t["Arn"] for rule in rules for t in events.list_targets_by_rule(Rule=rule["Name"])["Targets"]]
    assert not [rule for rule in rules if "CleanupSchedule" in rule["Name"]]
    assert not [arn for arn in targets if arn.endswith(f":function:{function}")]

    started = time.time()
    payload = {"keep": 1, "grace_hours": 0, "layer": SCHEDULED_LAYER}
    answer = lam.invoke(FunctionName=function, Payload=json.dumps(payload).encode())
    assert "FunctionError" not in answer, answer["Payload"].read()
    summary = json.loads(answer["Payload"].read())
    # layer versions: 1 ($LATEST), 2 (version 1, weighted), 4 (live's primary, newest) stay; 3 (only
    # the unaliased version 2) goes. Function versions: 2 goes; 1 (weighted) and 3 (newest) stay.
    assert summary["refused"] is None and summary["planned"] == 2 and summary["outcomes"] == {"deleted": 2}
    assert _layer_versions(cp, SCHEDULED_LAYER) == {1, 2, 4}
    assert _function_versions(cp, "gc-scheduled") == {"$LATEST", "1", "3"}
    record = json.loads(cp.client("s3").get_object(Bucket=cp.bucket, Key=summary["record_key"])["Body"].read())
    assert summary["bytes_freed"] == record["bytes_freed"] > 0

    account = DeployedAccount(cp.client, local_aws.account_id, local_aws.region, deployed_stack.bucket_policies)
    calls = [call for call in load_calls(call_log, since=started) if "CleanUpVersionsFunction" in call["function"]]
    translated = [item for call in calls for item in iam_requests(call, account)]
    made = {item.request.action for item in translated}
    assert made >= {
        "lambda:ListFunctions",
        "lambda:ListAliases",
        "lambda:ListLayerVersions",
        "lambda:GetLayerVersion",
        "lambda:GetLayerVersionPolicy",
        "lambda:DeleteLayerVersion",
        "lambda:DeleteFunction",
        "ssm:GetParametersByPath",
        "dynamodb:DeleteItem",
        "s3:PutObject",
    }, made
    distinct = list(dict.fromkeys(item.request for item in translated))
    denied = [
        request.describe() + "\n    " + decision.explain()
        for request, decision in zip(distinct, evaluate(distinct), strict=True)
        if not decision.allowed
    ]
    assert not denied, "calls of CleanUpVersions its deployed policies deny:\n" + "\n".join(denied)
    # And what its policies refuse: a whole function (unqualified), or a version of a function not opted in.
    (deleted,) = [item.request for item in translated if item.request.action == "lambda:DeleteFunction"]
    whole = dataclasses.replace(deleted, resource=deleted.resource.rsplit(":", 1)[0])
    untagged = dataclasses.replace(deleted, resource=account.arn("lambda", "function:not-opted-in:2"), context=())
    assert [decision.allowed for decision in evaluate([whole, untagged])] == [False, False]
