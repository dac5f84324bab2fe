"""`layershift usage` and the scheduled ReportUsage against what Lambda itself says, for a fleet of 50
functions in mixed states after a real rollout: promoted, skipped by the plan, not opted in, changed
outside layershift after the promotion, an alias split by hand, and a consumer stack pinning the
old version."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from layershift import lifecycle_usage
from layershift.controlplane import ControlPlane
from layershift_core.layer_usage import UsageReport, usage_report
from layershift_core.usage import USAGE, lambda_calls

from .support import create_consumer, publish_bootstrap_layer, run_rollout, session_function

pytestmark = [pytest.mark.integration, pytest.mark.network]

LAYER = "usage-fleet"
ALL_AT_ONCE = '[rollout]\nstrategy = "AllAtOnce"\npoll_seconds = 1\n[analysis]\nenabled = false\n'


def _name(index: int) -> str:
    return f"{LAYER}-{index:02d}"


def _fleet(cp: ControlPlane, bootstrap: str) -> None:
    """50 functions: 0-34 opted in with ``live`` (35-39 of them get the layer added by the rollout), 40-44
    opted in without an alias (the plan skips them), 45-49 use the layer without opting in."""
    for index in range(50):
        if index < 35:
            create_consumer(cp, _name(index), [bootstrap])
        elif index < 40:
            create_consumer(cp, _name(index), [], tags={"layershift:layer": LAYER})
        elif index < 45:
            create_consumer(cp, _name(index), [bootstrap], alias=None)
        else:
            create_consumer(cp, _name(index), [bootstrap], tags={})


def _change_by_hand(cp: ControlPlane, bootstrap: str) -> None:
    """After the promotion: 30 loses the layer from $LATEST, 31 gets its old layer back there, 32-33 get
    10% of ``live`` routed back to the old version, 34's ``live`` is pointed back at it."""
    lam = cp.client("lambda")
    lam.update_function_configuration(FunctionName=_name(30), Layers=[])
    lam.update_function_configuration(FunctionName=_name(31), Layers=[bootstrap])
    for name in (_name(32), _name(33)):
        lam.update_alias(FunctionName=name, Name="live", RoutingConfig={"AdditionalVersionWeights": {"1": 0.1}})
    lam.update_alias(FunctionName=_name(34), Name="live", FunctionVersion="1")


def _pin_in_a_stack(cp: ControlPlane, bootstrap: str) -> None:
    """A consumer stack whose template names the old layer version literally."""
    template = {
        "Resources": {
            "Pinned": {
                "Type": "AWS::SSM::Parameter",
                "Properties": {"Type": "String", "Name": "/consumers/usage-fleet/layer", "Value": bootstrap},
            }
        }
    }
    cp.client("cloudformation").create_stack(StackName="usage-fleet-consumer", TemplateBody=json.dumps(template))


def _what_lambda_says(cp: ControlPlane, prefix: str) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Per layer version of the layer: the functions whose $LATEST runs it, and function:alias -> it,
    asked of Lambda one function at a time."""
    lam = cp.client("lambda")
    latest: dict[str, set[str]] = defaultdict(set)
    aliases: dict[str, set[str]] = defaultdict(set)
    for index in range(50):
        name = _name(index)
        for layer in lam.get_function_configuration(FunctionName=name).get("Layers", []):
            if layer["Arn"].startswith(prefix):
                latest[layer["Arn"]].add(name)
        for alias in lam.list_aliases(FunctionName=name)["Aliases"]:
            weights = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
            for version in [alias["FunctionVersion"], *weights]:
                config = lam.get_function_configuration(FunctionName=name, Qualifier=version)
                for layer in config.get("Layers", []):
                    if layer["Arn"].startswith(prefix):
                        aliases[layer["Arn"]].add(f"{name}:{alias['Name']}")
    return latest, aliases


def _report(cp: ControlPlane) -> tuple[UsageReport, dict[str, int]]:
    """The report, and the Lambda requests it took, by operation."""
    USAGE.take()
    with cp.domain_clients():
        report = usage_report(cp.settings(), LAYER)
    return report, lambda_calls(USAGE.take())


def test_usage_agrees_with_lambda_for_a_fleet_in_mixed_states(
    control_plane: ControlPlane, capsys: pytest.CaptureFixture[str], record_property: Callable[[str, Any], None]
) -> None:
    cp = control_plane
    bootstrap = publish_bootstrap_layer(cp, LAYER)
    _fleet(cp, bootstrap)
    promoted = run_rollout(cp, LAYER, "six==1.16.0\n", ALL_AT_ONCE)
    assert promoted.status == "SUCCEEDED", promoted.lines
    _change_by_hand(cp, bootstrap)
    cp.client("lambda").add_layer_version_permission(
        LayerName=cp.published_name(LAYER),
        VersionNumber=int(bootstrap.rsplit(":", 1)[1]),
        StatementId="by-hand",
        Action="lambda:GetLayerVersion",
        Principal="111122223333",
    )
    _pin_in_a_stack(cp, bootstrap)

    report, spent = _report(cp)
    assert report.complete and report.functions_seen >= 50
    # One ListFunctions page per 50 function versions of the account, one ListAliases per function that
    # uses the layer or is opted in for it: never a request per function version.
    versions = sum(
        len(page["Functions"])
        for page in cp.client("lambda").get_paginator("list_functions").paginate(FunctionVersion="ALL")
    )
    assert spent["ListFunctions"] <= -(-versions // 50) + 1, (spent, versions)
    assert set(spent) == {"ListFunctions", "ListAliases", "GetLayerVersionPolicy"}, spent
    assert spent["ListAliases"] == 50, spent  # the fleet; not the control plane's own functions
    assert spent["GetLayerVersionPolicy"] == len(report.layers[0].versions), spent  # its grants, once per version
    record_property("usage_scan", f"{versions} function versions: {spent}")
    (usage,) = report.layers
    new_arn = usage.promoted[f"/layershift/{LAYER}/arn"]
    layer_prefix = bootstrap.rpartition(":")[0] + ":"

    # Every version's users are exactly what Lambda says, function by function.
    latest, aliases = _what_lambda_says(cp, layer_prefix)
    ours = {_name(i) for i in range(50)}
    for version in usage.versions:
        assert set(version.latest) & ours == latest.get(version.arn, set()), version.arn
        reported_aliases = {entry.split(" ")[0] for entry in version.aliases}  # function:alias -> version (weight)
        assert {a for a in reported_aliases if a.split(":")[0] in ours} == aliases.get(version.arn, set()), version.arn
    assert {v.arn for v in usage.versions} >= {bootstrap, new_arn}
    assert [v.arn for v in usage.versions if v.promoted] == [new_arn]
    # ... and each version's standing is the registry's.
    records = cp.client("dynamodb").query(
        TableName=cp.table,
        KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
        ExpressionAttributeValues={":pk": {"S": f"LAYER#{LAYER}"}, ":prefix": {"S": "VERSION#"}},
    )["Items"]
    assert {r["arn"]["S"]: r["status"]["S"] for r in records} == {v.arn: v.status for v in usage.versions if v.status}
    assert {v.arn: v.variant for v in usage.versions if v.status} == {r["arn"]["S"]: r["variant"]["S"] for r in records}
    grants = {v.arn: v.grants for v in usage.versions}
    assert grants[bootstrap] == ["account 111122223333"] and grants[new_arn] == []

    # Drift: every function not wholly on the promoted version, each with its reason.
    reasons = {d.function: d.reason for d in usage.drift}
    expected = {_name(i) for i in range(30, 35)} | {_name(i) for i in range(40, 50)}
    assert set(reasons) == expected, sorted(reasons)
    for index in range(30, 35):
        assert reasons[_name(index)].startswith("changed outside layershift"), reasons[_name(index)]
    for index in range(40, 45):
        assert reasons[_name(index)].startswith("skipped by rollout") and "alias" in reasons[_name(index)]
    for index in range(45, 50):
        assert "not opted in" in reasons[_name(index)], reasons[_name(index)]

    # The consumer stack that pins the old version, with the hint that fixes it.
    (pin,) = usage.pinned_stacks
    assert (pin.stack, pin.pinned, pin.promoted) == ("usage-fleet-consumer", bootstrap, new_arn)
    assert pin.hint == f"{{{{resolve:ssm:/layershift/{LAYER}/arn}}}}"

    # The command prints the same document.
    args = argparse.Namespace(layer=LAYER, no_stacks=False, output="json")
    assert lifecycle_usage.cmd_usage(args, cp) == 0
    printed: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert {k: v for k, v in printed.items() if k != "taken_at"} == {
        k: v for k, v in report.model_dump(mode="json").items() if k != "taken_at"
    }

    # The scheduled ReportUsage writes the same report to S3.
    answer = cp.client("lambda").invoke(
        FunctionName=session_function(cp, "ReportUsageFunction"), Payload=json.dumps({"layer": LAYER}).encode()
    )
    assert "FunctionError" not in answer, answer["Payload"].read()
    result = json.loads(answer["Payload"].read())
    assert result["complete"] and result["drifted"] == len(expected) and result["pinned_stacks"] == 1
    written = json.loads(cp.client("s3").get_object(Bucket=cp.bucket, Key="reports/usage/latest.json")["Body"].read())
    assert written["layers"] == printed["layers"]
