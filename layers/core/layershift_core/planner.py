"""FindCandidates, AssessTargets and PlanRollout: which functions move to the new layer version, and
why not where not.

- **FindCandidates** (one task): the functions whose ``$LATEST`` uses any version of the layer
  (paginated ListFunctions), those tagged ``layershift:layer=<layer>`` (one Resource Groups Tagging
  query), and those the spec names, written to S3 as the items of the AssessCandidates Map Run,
  sorted by name (CloudFormation names a stack's functions ``<stack>-<LogicalId>-<suffix>``, so a
  batch mostly holds one stack's functions).
- **AssessTargets** (each child batch): per function one GetFunction (GetFunction's own bucket:
  configuration, RevisionId and tags in one answer) and one GetAlias; the sizes of the other layers
  once per layer version, and whether CodeDeploy manages the alias once per CloudFormation stack.
- **PlanRollout** (one task): the plan from the children's verdicts, written to S3 once, and the
  targets as the items of every later Map Run. The execution state carries only keys and counts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from .aborts import ensure_not_aborted, ensure_rollout_not_aborted
from .artifacts import read_json, rollout_prefix, write_json
from .aws import client
from .codedeploy import StackTemplates
from .fanout import (
    BatchEvent,
    items_key,
    raise_first_failure,
    read_map_run,
    record_map_run,
    run_pass,
    until_out_of_time,
    write_items,
)
from .models import (
    CandidateList,
    LayerSpec,
    LayerVersionRef,
    PlanSummary,
    RolloutPlan,
    RolloutState,
    TargetPlan,
    Verdict,
    Wave,
    platform_label,
    variant_for,
)
from .registry import Registry
from .schedule import shift_schedule
from .settings import Settings

MAX_LAYERS = 5
UNZIPPED_LIMIT_BYTES = 262_144_000
TARGET_TAG = "layershift:layer"
MANAGED_TAG = "layershift:managed"
WAVE_TAG = "layershift:wave"
STACK_TAG = "aws:cloudformation:stack-id"


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


# -- FindCandidates -----------------------------------------------------------------------------------


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


def function_platform(config: dict[str, Any]) -> str:
    """A function's ``runtime/architecture`` (``Image`` for a container image)."""
    architecture = (config.get("Architectures") or ["x86_64"])[0]
    return platform_label(config.get("Runtime") or config.get("PackageType") or "unknown", architecture)


def discover(layer: str, extra: list[str]) -> dict[str, str | None]:
    """The functions whose $LATEST uses any version of `layer`, tagged for it, or named in the spec,
    each with its runtime/architecture (None when ListFunctions did not list it)."""
    wanted = tagged_for(layer) | set(extra)
    found: dict[str, str | None] = {}
    for page in client("lambda").get_paginator("list_functions").paginate():
        for config in page["Functions"]:
            name = config["FunctionName"]
            if name in wanted or any(layer_name_of(entry["Arn"]) == layer for entry in config.get("Layers", [])):
                found[name] = function_platform(config)
    return {name: found.get(name) for name in sorted(wanted | set(found))}


def find_candidates(layer: str, extra: list[str]) -> list[str]:
    """The names of the functions whose $LATEST uses any version of `layer`, tagged for it, or named
    in the spec, sorted."""
    return list(discover(layer, extra))


def find_candidates_task(state: RolloutState, settings: Settings) -> RolloutState:
    """FindCandidates: the AssessCandidates Map Run's items, and the platforms they run on."""
    ensure_rollout_not_aborted(state, settings)
    if state.rollout is None:
        raise ValueError("finding candidates needs a validated rollout")
    rollout, spec = state.rollout, state.rollout.spec
    found = discover(rollout.layer, [*spec.functions, *spec.pilots])
    key = items_key(rollout.layer, rollout.rollout_id, "candidates")
    write_items(settings.bucket, key, [{"function_name": name} for name in found])
    platforms = Counter(label for label in found.values() if label)
    state.candidates = CandidateList(key=key, count=len(found), platforms=dict(sorted(platforms.items())))
    return state


# -- AssessTargets ------------------------------------------------------------------------------------


@dataclass
class Assessment:
    """What the functions of one batch share: the new layer versions (one per variant), the alias,
    and what was looked up once."""

    layer_versions: list[LayerVersionRef]
    alias: str
    pilots: set[str]
    layer_sizes: dict[str, int] = field(default_factory=dict)
    stacks: StackTemplates = field(default_factory=StackTemplates)

    def layer_size(self, arn: str) -> int:
        if arn not in self.layer_sizes:
            layer_arn, _, version = arn.rpartition(":")
            response = client("lambda").get_layer_version(LayerName=layer_arn, VersionNumber=int(version))
            self.layer_sizes[arn] = int(response["Content"].get("CodeSize", 0))
        return self.layer_sizes[arn]


def _skip(plan: TargetPlan, reason: str) -> TargetPlan:
    plan.reason = reason
    return plan


def _static_problem(config: dict[str, Any], tags: dict[str, str], new_layer: LayerVersionRef | None) -> str | None:
    """Why the function cannot take part, from its configuration and tags alone (``new_layer``: the
    variant for its runtime and architecture, None when the rollout built none)."""
    if config.get("PackageType") == "Image":
        return "container image functions cannot use layers"
    if tags.get(MANAGED_TAG) != "true" and TARGET_TAG not in tags:
        return (
            f"not opted in: tag it {MANAGED_TAG}=true (or {TARGET_TAG}=<layer>) to let layershift change it; "
            "the control plane's IAM policy allows changes only to functions that carry one of these tags"
        )
    if new_layer is None:
        return f"{function_platform(config)} is not a runtime and architecture this rollout builds for"
    if new_layer.arn in [entry["Arn"] for entry in config.get("Layers", [])]:
        return f"already uses {new_layer.arn}"
    return None


def assess(name: str, context: Assessment) -> TargetPlan:
    """One function's verdict: a target with its before and after, or skipped with the reason."""
    lam = client("lambda")
    alias_name = context.alias
    plan = TargetPlan(function_name=name, alias=alias_name, verdict=Verdict.SKIPPED)
    try:
        function = lam.get_function(FunctionName=name)
    except lam.exceptions.ResourceNotFoundException:
        return _skip(plan, "the function does not exist (deleted since it was found, or a name in the spec)")
    config, tags = function["Configuration"], function.get("Tags") or {}
    current = [entry["Arn"] for entry in config.get("Layers", [])]
    plan.current_layers = current
    plan.platform = function_platform(config)
    if name in context.pilots or tags.get(WAVE_TAG) == Wave.PILOT:
        plan.wave = Wave.PILOT
    architecture = (config.get("Architectures") or ["x86_64"])[0]
    new_layer = variant_for(context.layer_versions, config.get("Runtime"), architecture)
    problem = _static_problem(config, tags, new_layer)
    if problem:
        if new_layer is None and context.layer_versions:
            served = sorted({label for version in context.layer_versions for label in version.targets})
            problem += (
                f" (it serves {', '.join(served)}; layer.toml's build.runtimes and build.architectures choose them, "
                "and without them a rollout builds for every function's)"
            )
        return _skip(plan, problem)
    assert new_layer is not None
    plan.variant = new_layer.variant
    new_layers = replace_layer(current, new_layer.arn)
    if len(new_layers) > MAX_LAYERS:
        return _skip(
            plan,
            f"already has {len(current)} layers and adding {layer_name_of(new_layer.arn)} would make "
            f"{len(new_layers)}; Lambda allows {MAX_LAYERS}",
        )
    others = sum(context.layer_size(arn) for arn in new_layers if arn != new_layer.arn)
    total = int(config.get("CodeSize", 0)) + others + new_layer.unzipped_bytes
    if total > UNZIPPED_LIMIT_BYTES:
        return _skip(
            plan,
            f"code and layers would come to at least {total:,} bytes unzipped, over Lambda's 250 MB limit "
            f"({UNZIPPED_LIMIT_BYTES:,} bytes)",
        )
    try:
        alias = lam.get_alias(FunctionName=name, Name=alias_name)
    except lam.exceptions.ResourceNotFoundException:
        return _skip(plan, f"has no alias {alias_name!r}")
    if alias["FunctionVersion"] == "$LATEST":
        return _skip(plan, f"alias {alias_name!r} points at $LATEST; weighted routing needs a published version")
    if (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights"):
        return _skip(plan, f"alias {alias_name!r} is already routing traffic to two versions")
    managed_by = context.stacks.codedeploy_manager(name, alias_name, alias.get("AliasArn"), tags.get(STACK_TAG))
    if managed_by:
        return _skip(plan, f"{managed_by}; layershift leaves aliases that CodeDeploy manages alone")
    plan.verdict = Verdict.TARGET
    plan.old_version = alias["FunctionVersion"]
    plan.new_layers = new_layers
    plan.revision_id = config.get("RevisionId")
    return plan


class AssessInput(BaseModel):
    """AssessCandidates' BatchInput."""

    rollout_id: str
    layer: str
    layer_versions: list[LayerVersionRef]
    alias: str
    pilots: list[str] = []


def assess_targets(event: BatchEvent, settings: Settings, seconds_left: float) -> Any:
    """AssessTargets: one pass over a batch of candidates."""

    def process(items: list[dict[str, Any]], head: dict[str, Any], _deadline: float) -> Any:
        given = AssessInput.model_validate(head)
        ensure_not_aborted(settings, given.layer, given.rollout_id)
        context = Assessment(layer_versions=given.layer_versions, alias=given.alias, pilots=set(given.pilots))
        return until_out_of_time(items, lambda item: assess(item["function_name"], context).model_dump(mode="json"))

    return run_pass(event, seconds_left, process)


# -- PlanRollout --------------------------------------------------------------------------------------


def plan_summary(plan: RolloutPlan, key: str, targets_key: str, spec: LayerSpec) -> PlanSummary:
    """The plan's counts and traffic schedule, for the execution state; recomputed whenever a
    target drops out, so the schedule has steps only for waves that still have targets."""
    active = plan.active
    waves = sorted({t.wave for t in active}, key=lambda wave: wave.rank)
    pilots_key = targets_key.replace(".json", "-pilot.json")
    steps = [
        step.model_copy(update={"targets_key": pilots_key if step.wave is Wave.PILOT else targets_key})
        for step in shift_schedule(spec, waves)
    ]
    return PlanSummary(
        plan_key=key,
        targets_key=targets_key,
        target_count=len(active),
        skipped_count=len(plan.targets) - len(active),
        pilot_count=sum(1 for t in active if t.wave is Wave.PILOT),
        steps=spec.steps,
        shift_steps=steps,
        step_count=len(steps),
        variant_counts=dict(sorted(Counter(t.variant or "" for t in active).items())),
    )


def write_targets(bucket: str, plan: RolloutPlan, key: str) -> None:
    """The active targets as Map Run items: all of them, and the pilot wave's alone."""
    active = [target.model_dump(mode="json") for target in plan.active]
    write_items(bucket, key, active)
    write_items(bucket, key.replace(".json", "-pilot.json"), [t for t in active if t["wave"] == Wave.PILOT])


def plan_rollout(state: RolloutState, settings: Settings) -> RolloutState:
    """PlanRollout: the plan from AssessCandidates' verdicts (none when no function was a candidate)."""
    ensure_rollout_not_aborted(state, settings)
    if state.rollout is None or not state.layer_versions:
        raise ValueError("planning needs a validated rollout and its layer versions")
    rollout, spec = state.rollout, state.rollout.spec
    targets: list[TargetPlan] = []
    if state.candidates is not None and state.candidates.count and state.map_run is not None:
        run = read_map_run(settings.bucket, state.map_run)
        record_map_run(run)
        raise_first_failure(run, "candidates")
        targets = sorted((TargetPlan.model_validate(result) for result in run.results), key=lambda t: t.function_name)
    plan = RolloutPlan(
        rollout_id=rollout.rollout_id,
        layer=rollout.layer,
        layer_versions=state.layer_versions,
        alias=spec.alias,
        steps=spec.steps,
        targets=targets,
    )
    key = plan_key(rollout.layer, rollout.rollout_id)
    save_plan(settings.bucket, key, plan)
    targets_key = items_key(rollout.layer, rollout.rollout_id, "targets")
    write_targets(settings.bucket, plan, targets_key)
    registry = Registry(settings.table)
    registry.put_rollout(rollout.layer, rollout.rollout_id, status="planned", plan_key=key)
    for version in state.layer_versions:
        registry.set_version_status(rollout.layer, version.version, "rolling_out")
    state.plan = plan_summary(plan, key, targets_key, spec)
    state.candidates = None
    state.map_run = None
    return state
