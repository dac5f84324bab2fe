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
from fnmatch import fnmatchcase
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


def unversioned(arn: str) -> str:
    """`arn:aws:lambda:r:a:layer:NAME:7` → `arn:aws:lambda:r:a:layer:NAME`: the layer itself, its
    account and region included, so a same-named layer of another account is another layer."""
    return arn.rpartition(":")[0] if layer_name_of(arn) else arn


def replace_layer(layers: list[str], new_arn: str) -> list[str]:
    """The function's layer list with the same layer's position replaced (order kept), or appended."""
    layer = unversioned(new_arn)
    replaced = [new_arn if unversioned(arn) == layer else arn for arn in layers]
    return replaced if new_arn in replaced else [*layers, new_arn]


def opted_in_layers(tags: dict[str, str]) -> list[str]:
    """The layers a function's ``layershift:layer`` tag names: one, or several separated by spaces."""
    return tags.get(TARGET_TAG, "").split()


def opt_in_problem(tags: dict[str, str], layer: str, allow_managed: bool) -> str | None:
    """Why a function is not a target of ``layer`` by its tags, or None when it is opted in for it.

    Only ``layershift:layer`` naming the layer opts a function in: a push of one layer must never reach
    the functions of another. ``layershift:managed=true`` alone counts only where the control plane
    allows it (template parameter AllowManagedOptIn, for single-team accounts). The tenant role's IAM
    policy enforces the same rule."""
    named = opted_in_layers(tags)
    if layer in named or (allow_managed and tags.get(MANAGED_TAG) == "true"):
        return None
    if named:
        return (
            f"opted in for {', '.join(repr(n) for n in named)}, not for {layer!r}: its {TARGET_TAG} tag must name "
            f"{layer!r} (several layers are separated by spaces) for a push of {layer!r} to change it"
        )
    if tags.get(MANAGED_TAG) == "true":
        return (
            f"tagged {MANAGED_TAG}=true but not {TARGET_TAG}={layer}; this control plane takes part only in the "
            f"layers a function's {TARGET_TAG} tag names (template parameter AllowManagedOptIn is false)"
        )
    return (
        f"not opted in: tag it {TARGET_TAG}={layer} to let layershift change it; the control plane's IAM policy "
        f"allows changes only to functions whose {TARGET_TAG} tag names the layer"
    )


def arn_like(pattern: str, arn: str) -> bool:
    """IAM's ArnLike: each of the six colon-separated parts matched on its own, ``*`` and ``?`` within it."""
    parts, wanted = arn.split(":", 5), pattern.split(":", 5)
    return len(parts) == len(wanted) == 6 and all(fnmatchcase(p, w) for p, w in zip(parts, wanted, strict=True))


def foreign_layer_problem(layers: list[str], own: str, allowed: list[str]) -> str | None:
    """Why the function's other layers cannot be kept, or None. The tenant role may attach layers of
    this account and region (``own``: ``arn:partition:lambda:region:account``) and those the
    template parameter ThirdPartyLayerArns allows; nothing else."""
    for arn in layers:
        if not arn.startswith(own + ":layer:") and not any(arn_like(pattern, arn) for pattern in allowed):
            return (
                f"keeps layer {arn}, which is not of this account and region and not allowed by the template "
                "parameter ThirdPartyLayerArns; layershift may attach only those, so it cannot update this function"
            )
    return None


def plan_key(layer: str, rollout_id: str) -> str:
    return rollout_prefix(layer, rollout_id) + "plan.json"


def load_plan(bucket: str, key: str) -> RolloutPlan:
    return RolloutPlan.model_validate(read_json(bucket, key))


def save_plan(bucket: str, key: str, plan: RolloutPlan) -> None:
    write_json(bucket, key, plan.model_dump(mode="json"))


# -- FindCandidates -----------------------------------------------------------------------------------


def opted_in_functions() -> dict[str, list[str]]:
    """Function name -> the layers its ``layershift:layer`` tag names: one Resource Groups Tagging query
    of the functions carrying the tag (paginated), not a ListTags call per function in the account."""
    found: dict[str, list[str]] = {}
    paginator = client("resourcegroupstaggingapi").get_paginator("get_resources")
    for page in paginator.paginate(TagFilters=[{"Key": TARGET_TAG}], ResourceTypeFilters=["lambda:function"]):
        for item in page["ResourceTagMappingList"]:
            tags = {tag["Key"]: tag["Value"] for tag in item.get("Tags", [])}
            found[item["ResourceARN"].split(":")[6]] = opted_in_layers(tags)
    return found


def tagged_for(layer: str) -> set[str]:
    """Functions whose `layershift:layer` tag names the layer (alone or in a list)."""
    return {name for name, layers in opted_in_functions().items() if layer in layers}


def own_lambda_arn(settings: Settings) -> str:
    """``arn:<partition>:lambda:<region>:<account>`` of the control plane itself: from the template
    (``LAYERSHIFT_OWN_LAMBDA_ARN``), else asked of STS."""
    if settings.own_lambda_arn:
        return settings.own_lambda_arn
    identity = client("sts").get_caller_identity()
    partition = str(identity["Arn"]).split(":")[1]
    return f"arn:{partition}:lambda:{client('lambda').meta.region_name}:{identity['Account']}"


def function_platform(config: dict[str, Any]) -> str:
    """A function's ``runtime/architecture`` (``Image`` for a container image)."""
    architecture = (config.get("Architectures") or ["x86_64"])[0]
    return platform_label(config.get("Runtime") or config.get("PackageType") or "unknown", architecture)


def discover(layer: str, ours: str, extra: list[str]) -> dict[str, str | None]:
    """The functions whose $LATEST uses any version of the layer (``ours``: its unversioned ARN, so
    another account's layer of the same name does not count), tagged for it, or named in the spec,
    each with its runtime/architecture (None when ListFunctions did not list it). Being found makes a
    candidate, not a target: AssessTargets applies the opt-in rule to each."""
    wanted = tagged_for(layer) | set(extra)
    found: dict[str, str | None] = {}
    for page in client("lambda").get_paginator("list_functions").paginate():
        for config in page["Functions"]:
            name = config["FunctionName"]
            if name in wanted or any(unversioned(entry["Arn"]) == ours for entry in config.get("Layers", [])):
                found[name] = function_platform(config)
    return {name: found.get(name) for name in sorted(wanted | set(found))}


def published_layer_arn(settings: Settings, layer: str) -> str:
    """The unversioned ARN of the Lambda layer this control plane publishes ``layer`` as."""
    return f"{own_lambda_arn(settings)}:layer:{settings.published_name(layer)}"


def find_candidates(layer: str, settings: Settings, extra: list[str]) -> list[str]:
    """The names of the functions whose $LATEST uses any version of the layer, tagged for it, or named
    in the spec, sorted."""
    return list(discover(layer, published_layer_arn(settings, layer), extra))


def find_candidates_task(state: RolloutState, settings: Settings) -> RolloutState:
    """FindCandidates: the AssessCandidates Map Run's items, and the platforms they run on."""
    ensure_rollout_not_aborted(state, settings)
    if state.rollout is None:
        raise ValueError("finding candidates needs a validated rollout")
    rollout, spec = state.rollout, state.rollout.spec
    found = discover(rollout.layer, published_layer_arn(settings, rollout.layer), [*spec.functions, *spec.pilots])
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

    layer: str
    layer_versions: list[LayerVersionRef]
    alias: str
    pilots: set[str]
    allow_managed: bool = False
    third_party_layers: list[str] = field(default_factory=list)
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


def _static_problem(
    config: dict[str, Any], tags: dict[str, str], new_layer: LayerVersionRef | None, context: Assessment
) -> str | None:
    """Why the function cannot take part, from its configuration and tags alone (``new_layer``: the
    variant for its runtime and architecture, None when the rollout built none)."""
    if config.get("PackageType") == "Image":
        return "container image functions cannot use layers"
    refused = opt_in_problem(tags, context.layer, context.allow_managed)
    if refused:
        return refused
    if new_layer is None:
        return f"{function_platform(config)} is not a runtime and architecture this rollout builds for"
    current = [entry["Arn"] for entry in config.get("Layers", [])]
    if new_layer.arn in current:
        return f"already uses {new_layer.arn}"
    mine = unversioned(new_layer.arn)
    return foreign_layer_problem(
        [arn for arn in current if unversioned(arn) != mine], mine.split(":layer:")[0], context.third_party_layers
    )


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
    if name in context.pilots or tags.get(WAVE_TAG) == Wave.PILOT:  # a pilot is opted in like any other target
        plan.wave = Wave.PILOT
    architecture = (config.get("Architectures") or ["x86_64"])[0]
    new_layer = variant_for(context.layer_versions, config.get("Runtime"), architecture)
    problem = _static_problem(config, tags, new_layer, context)
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
        context = Assessment(
            layer=given.layer,
            layer_versions=given.layer_versions,
            alias=given.alias,
            pilots=set(given.pilots),
            allow_managed=settings.allow_managed_opt_in,
            third_party_layers=settings.third_party_layers,
        )
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
