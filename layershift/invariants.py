"""The invariants every rollout must leave behind, checked against the AWS APIs after an execution.

- Every target alias points 100% at its old or its new version, with no routing left.
- `$LATEST` layers agree with the ending: the new layer list if promoted, the old one if rolled back.
- The layer lock is released.
- The registry agrees with Lambda and SSM: `/layershift/<layer>/arn` names the layer version if and
  only if it was promoted.
- The pushed spec and the built artifact are kept.
- Once a rollout has planned (ShareLayerVersions comes before the plan), every version of its layer
  carries exactly the grants of its [share], whether it was promoted or rolled back.

Used by the demo and by the tests: one definition of "nothing was left half-done". The reaper
finishes what an execution could not (its lock, a stopped rollout) just after it ends, so the
check allows it a few seconds to settle before it reports.
"""

from __future__ import annotations

import json
import time
from typing import Any

from layershift_core.models import LayerSpec, RolloutPlan, RolloutState
from layershift_core.sharing import Grant, desired_grants, grants_of_policy

from .controlplane import ControlPlane


def _s3_has(cp: ControlPlane, key: str, version_id: str | None = None) -> bool:
    kwargs: dict[str, Any] = {"Bucket": cp.bucket, "Key": key}
    if version_id:
        kwargs["VersionId"] = version_id
    try:
        cp.client("s3").head_object(**kwargs)
    except Exception:
        return False
    return True


def _promoted_parameters(cp: ControlPlane, layer: str) -> dict[str, tuple[str | None, str]]:
    """Every ``/layershift/<layer>/...`` parameter: name -> (value, who put it there)."""
    ssm = cp.client("ssm")
    found: dict[str, tuple[str | None, str]] = {}
    filters = [{"Key": "Name", "Option": "BeginsWith", "Values": [f"/layershift/{layer}/"]}]
    for page in ssm.get_paginator("describe_parameters").paginate(ParameterFilters=filters):
        for described in page["Parameters"]:
            value = str(ssm.get_parameter(Name=described["Name"])["Parameter"]["Value"])
            found[described["Name"]] = (value, str(described.get("Description", "")))
    return found


def _routing(alias: dict[str, Any]) -> dict[str, float]:
    return (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}


def check_invariants(cp: ControlPlane, execution_arn: str, settle_seconds: float = 20.0) -> list[str]:
    """Every violated invariant, as a sentence. An empty list means the rollout left things whole."""
    deadline = time.monotonic() + settle_seconds
    while True:
        problems = _violations(cp, execution_arn)
        if not problems or time.monotonic() >= deadline:
            return problems
        time.sleep(0.5)


def _violations(cp: ControlPlane, execution_arn: str) -> list[str]:
    sfn, lam = cp.client("stepfunctions"), cp.client("lambda")
    described = sfn.describe_execution(executionArn=execution_arn)
    if described["status"] == "RUNNING":
        return ["the execution is still running"]
    name = execution_arn.rsplit(":", 1)[-1]
    state = RolloutState.model_validate(json.loads(described["input"]))
    layer = state.request.layer
    problems: list[str] = []
    promoted = described["status"] == "SUCCEEDED"

    if state.request.requirements_version and not _s3_has(
        cp, state.request.requirements_key, state.request.requirements_version
    ):
        problems.append(f"the pushed {state.request.requirements_key} version is gone")

    plan_key = f"rollouts/{layer}/{name}/plan.json"
    plan: RolloutPlan | None = None
    if _s3_has(cp, plan_key):
        body = cp.client("s3").get_object(Bucket=cp.bucket, Key=plan_key)["Body"].read()
        plan = RolloutPlan.model_validate_json(body)
    for target in plan.active if plan else []:
        label = f"{target.function_name}:{target.alias}"
        alias = lam.get_alias(FunctionName=target.function_name, Name=target.alias)
        if _routing(alias):
            problems.append(f"{label} is still split: {_routing(alias)}")
        expected = target.new_version if promoted else target.old_version
        if alias["FunctionVersion"] != expected:
            problems.append(f"{label} is on version {alias['FunctionVersion']}, expected {expected}")
        latest = lam.get_function_configuration(FunctionName=target.function_name)
        layers = [entry["Arn"] for entry in latest.get("Layers", [])]
        expected_layers = target.new_layers if promoted else target.current_layers
        if layers != expected_layers:
            problems.append(f"{target.function_name} $LATEST layers are {layers}, expected {expected_layers}")

    ddb = cp.client("dynamodb")
    lock = ddb.get_item(
        TableName=cp.table, Key={"pk": {"S": f"LAYER#{layer}"}, "sk": {"S": "LOCK"}}, ConsistentRead=True
    ).get("Item")
    if lock and lock.get("owner", {}).get("S") == name:
        problems.append(f"the lock on {layer} is still held by {name}")

    rollout = ddb.get_item(
        TableName=cp.table, Key={"pk": {"S": f"LAYER#{layer}"}, "sk": {"S": f"ROLLOUT#{name}"}}, ConsistentRead=True
    ).get("Item")
    status = rollout.get("status", {}).get("S") if rollout else None
    arns = [a for a in (rollout.get("layer_version_arns", {}).get("S", "") if rollout else "").split(",") if a]
    if promoted and status != "promoted":
        problems.append(f"the registry says rollout {name} is {status!r}, but the execution succeeded")
    if not promoted and status not in (None, "rejected", "rolled_back"):
        problems.append(f"the registry says rollout {name} is {status!r}, but the execution failed")
    for arn in arns:
        layer_arn, _, version = arn.rpartition(":")
        try:
            lam.get_layer_version(LayerName=layer_arn, VersionNumber=int(version))
        except Exception:
            problems.append(f"the registry names {arn}, which Lambda does not have")
        record = ddb.get_item(
            TableName=cp.table, Key={"pk": {"S": f"LAYER#{layer}"}, "sk": {"S": f"VERSION#{int(version):06d}"}}
        ).get("Item")
        if record is None:
            problems.append(f"the registry has no record of {arn}")
        else:
            folder = record["manifest_key"]["S"].rpartition("/")[0]
            for artifact in ("layer.zip", "manifest.json"):
                if not _s3_has(cp, f"{folder}/{artifact}"):
                    problems.append(f"the built {artifact} of {arn} is gone")
    parameters = _promoted_parameters(cp, layer)
    for parameter_name, (parameter, writer) in parameters.items():
        if promoted and writer.endswith(f" {name}") and parameter not in arns:
            problems.append(f"{parameter_name} is {parameter}, which rollout {name} did not publish or reuse")
        if not promoted and writer.endswith(f" {name}"):
            problems.append(f"{parameter_name} is {parameter}, put there by rollout {name}, which was not promoted")
    if promoted and arns and f"/layershift/{layer}/arn" not in parameters:
        problems.append(f"/layershift/{layer}/arn is not set, but rollout {name} was promoted")
    if plan is not None:
        problems += _grant_violations(cp, layer, name)
    return problems


def layer_grants(cp: ControlPlane, layer: str) -> dict[int, set[Grant]]:
    """Each version of the layer, with the grants its policy holds (none without a policy)."""
    lam, published = cp.client("lambda"), cp.published_name(layer)
    found: dict[int, set[Grant]] = {}
    for page in lam.get_paginator("list_layer_versions").paginate(LayerName=published):
        for entry in page["LayerVersions"]:
            version = int(entry["Version"])
            try:
                policy = json.loads(lam.get_layer_version_policy(LayerName=published, VersionNumber=version)["Policy"])
            except lam.exceptions.ResourceNotFoundException:
                policy = {}
            found[version] = set(grants_of_policy(policy))
    return found


def _grant_violations(cp: ControlPlane, layer: str, name: str) -> list[str]:
    """Every version of the layer whose grants are not exactly those of the rollout's validated [share]."""
    body = cp.client("s3").get_object(Bucket=cp.bucket, Key=f"rollouts/{layer}/{name}/spec.json")["Body"].read()
    share = LayerSpec.model_validate_json(body).share
    wanted = set(desired_grants(share, allow_public=True))  # validated: a public share was allowed
    published = cp.published_name(layer)
    return [
        f"{published}:{version} grants {sorted(g.sid for g in held)}, but the [share] of rollout {name} "
        f"grants exactly {sorted(g.sid for g in wanted)}"
        for version, held in layer_grants(cp, layer).items()
        if held != wanted
    ]
