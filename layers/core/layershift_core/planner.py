"""Step 5: find every function that should move to the new layer version, and say why not where not.

The plan is written to S3 (the full record) and its counts to the execution state; Step
Functions' payload and history limits never see the target list.
"""

from __future__ import annotations

from typing import Any

from .aborts import ensure_rollout_not_aborted
from .artifacts import read_json, rollout_prefix, write_json
from .aws import client
from .codedeploy import codedeploy_manager
from .models import LayerSpec, LayerVersionRef, PlanSummary, RolloutPlan, RolloutState, TargetPlan, Verdict, Wave
from .registry import Registry
from .schedule import shift_schedule
from .settings import Settings

MAX_LAYERS = 5
UNZIPPED_LIMIT_BYTES = 262_144_000
TARGET_TAG = "layershift:layer"
MANAGED_TAG = "layershift:managed"
WAVE_TAG = "layershift:wave"


def layer_name_of(arn: str) -> str:
    """`arn:aws:lambda:r:a:layer:NAME:7` → `NAME`."""
    parts = arn.split(":")
    return parts[6] if len(parts) >= 8 and parts[5] == "layer" else ""


def replace_layer(layers: list[str], new_arn: str) -> list[str]:
    """The function's layer list with the same layer's position replaced (order kept), or appended."""
    name = layer_name_of(new_arn)
    replaced = [new_arn if layer_name_of(arn) == name else arn for arn in layers]
    return replaced if new_arn in replaced else [*layers, new_arn]


def plan_key(layer: str, rollout_id: str) -> str:
    return rollout_prefix(layer, rollout_id) + "plan.json"


def load_plan(bucket: str, key: str) -> RolloutPlan:
    return RolloutPlan.model_validate(read_json(bucket, key))


def save_plan(bucket: str, key: str, plan: RolloutPlan) -> None:
    write_json(bucket, key, plan.model_dump(mode="json"))


def plan_summary(plan: RolloutPlan, key: str, spec: LayerSpec) -> PlanSummary:
    """The plan's counts and traffic schedule, for the execution state; recomputed whenever a
    target drops out, so the schedule has steps only for waves that still have targets."""
    active = plan.active
    return PlanSummary(
        plan_key=key,
        target_count=len(active),
        skipped_count=len(plan.targets) - len(active),
        pilot_count=sum(1 for t in active if t.wave is Wave.PILOT),
        steps=spec.steps,
        shift_steps=shift_schedule(spec, sorted({t.wave for t in active})),
    )


def tagged_for(layer: str) -> set[str]:
    """Functions tagged `layershift:layer=<layer>`: one Resource Groups Tagging query, not a
    ListTags call per function in the account."""
    names: set[str] = set()
    paginator = client("resourcegroupstaggingapi").get_paginator("get_resources")
    for page in paginator.paginate(
        TagFilters=[{"Key": TARGET_TAG, "Values": [layer]}], ResourceTypeFilters=["lambda:function"]
    ):
        names.update(item["ResourceARN"].split(":")[6] for item in page["ResourceTagMappingList"])
    return names


def find_candidates(layer: str, extra: list[str]) -> dict[str, tuple[dict[str, Any], dict[str, str]]]:
    """Functions whose $LATEST uses any version of `layer`, tagged for it, or named in the spec,
    each with its tags."""
    lam = client("lambda")
    wanted = tagged_for(layer) | set(extra)
    configs: dict[str, dict[str, Any]] = {}
    for page in lam.get_paginator("list_functions").paginate():
        for config in page["Functions"]:
            uses = any(layer_name_of(entry["Arn"]) == layer for entry in config.get("Layers", []))
            if uses or config["FunctionName"] in wanted:
                configs[config["FunctionName"]] = config
    for name in sorted(wanted - set(configs)):
        configs[name] = lam.get_function_configuration(FunctionName=name)
    return {
        name: (config, lam.list_tags(Resource=config["FunctionArn"]).get("Tags", {}))
        for name, config in configs.items()
    }


def _layer_size(arn: str, cache: dict[str, int]) -> int:
    if arn not in cache:
        layer_arn, _, version = arn.rpartition(":")
        response = client("lambda").get_layer_version(LayerName=layer_arn, VersionNumber=int(version))
        cache[arn] = int(response["Content"].get("CodeSize", 0))
    return cache[arn]


def assess(
    config: dict[str, Any],
    tags: dict[str, str],
    alias_name: str,
    new_layer: LayerVersionRef,
    layer_sizes: dict[str, int],
) -> TargetPlan:
    """One function's verdict: a target with its before/after, or skipped with the reason."""
    name = config["FunctionName"]
    current = [entry["Arn"] for entry in config.get("Layers", [])]
    plan = TargetPlan(function_name=name, alias=alias_name, verdict=Verdict.SKIPPED, current_layers=current)

    def skip(reason: str) -> TargetPlan:
        plan.reason = reason
        return plan

    if config.get("PackageType") == "Image":
        return skip("container image functions cannot use layers")
    if tags.get(MANAGED_TAG) != "true" and TARGET_TAG not in tags:
        return skip(
            f"not opted in: tag it {MANAGED_TAG}=true (or {TARGET_TAG}=<layer>) to let layershift change it; "
            "the control plane's IAM policy allows changes only to functions that carry one of these tags"
        )
    runtime = config.get("Runtime")
    if new_layer.compatible_runtimes and runtime not in new_layer.compatible_runtimes:
        return skip(f"runtime {runtime} is not one the layer supports ({', '.join(new_layer.compatible_runtimes)})")
    arch = (config.get("Architectures") or ["x86_64"])[0]
    if new_layer.compatible_architectures and arch not in new_layer.compatible_architectures:
        return skip(
            f"architecture {arch} is not one the layer supports ({', '.join(new_layer.compatible_architectures)})"
        )
    if new_layer.arn in current:
        return skip(f"already uses {new_layer.arn}")
    new_layers = replace_layer(current, new_layer.arn)
    if len(new_layers) > MAX_LAYERS:
        return skip(
            f"already has {len(current)} layers and adding {layer_name_of(new_layer.arn)} would make "
            f"{len(new_layers)}; Lambda allows {MAX_LAYERS}"
        )
    others = sum(_layer_size(arn, layer_sizes) for arn in new_layers if arn != new_layer.arn)
    total = int(config.get("CodeSize", 0)) + others + new_layer.unzipped_bytes
    if total > UNZIPPED_LIMIT_BYTES:
        return skip(
            f"code and layers would come to at least {total:,} bytes unzipped, over Lambda's 250 MB limit "
            f"({UNZIPPED_LIMIT_BYTES:,} bytes)"
        )

    lam = client("lambda")
    try:
        alias = lam.get_alias(FunctionName=name, Name=alias_name)
    except lam.exceptions.ResourceNotFoundException:
        return skip(f"has no alias {alias_name!r}")
    if alias["FunctionVersion"] == "$LATEST":
        return skip(f"alias {alias_name!r} points at $LATEST; weighted routing needs a published version")
    if (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights"):
        return skip(f"alias {alias_name!r} is already routing traffic to two versions")
    managed_by = codedeploy_manager(name, alias_name, alias.get("AliasArn"))
    if managed_by:
        return skip(f"{managed_by}; layershift leaves aliases that CodeDeploy manages alone")

    latest = lam.get_function_configuration(FunctionName=name)
    if [entry["Arn"] for entry in latest.get("Layers", [])] != current:
        return skip("its layers changed while the plan was made; push again to include it")
    plan.verdict = Verdict.TARGET
    plan.old_version = alias["FunctionVersion"]
    plan.new_layers = new_layers
    plan.revision_id = latest.get("RevisionId")
    return plan


def plan_rollout(state: RolloutState, settings: Settings) -> RolloutState:
    ensure_rollout_not_aborted(state, settings)
    if state.rollout is None or state.layer_version is None:
        raise ValueError("planning needs a validated rollout and a layer version")
    rollout, layer_version = state.rollout, state.layer_version
    spec = rollout.spec
    sizes: dict[str, int] = {}
    candidates = find_candidates(rollout.layer, [*spec.functions, *spec.pilots])
    targets = []
    for name, (config, tags) in sorted(candidates.items()):
        target = assess(config, tags, spec.alias, layer_version, sizes)
        if name in spec.pilots or tags.get(WAVE_TAG) == Wave.PILOT:
            target.wave = Wave.PILOT
        targets.append(target)
    plan = RolloutPlan(
        rollout_id=rollout.rollout_id,
        layer=rollout.layer,
        layer_version_arn=layer_version.arn,
        alias=spec.alias,
        steps=spec.steps,
        targets=targets,
    )
    key = plan_key(rollout.layer, rollout.rollout_id)
    save_plan(settings.bucket, key, plan)
    registry = Registry(settings.table)
    registry.put_rollout(rollout.layer, rollout.rollout_id, status="planned", plan_key=key)
    registry.set_version_status(rollout.layer, layer_version.version, "rolling_out")
    state.plan = plan_summary(plan, key, spec)
    return state
