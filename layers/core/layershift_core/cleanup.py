"""`layershift gc` and CleanUpVersions: delete the layer versions and function versions nothing runs.

Lambda keeps every layer version and every published function version until someone deletes it, and
counts their code against the region's code storage (75 GB by default). A rollout publishes one layer
version per variant and one function version per target, so they pile up. Deleting one that runs is
worse than keeping it: a layer version in use can no longer be attached to a new function version,
and a version an alias routes to breaks the alias. So cleanup is three steps:

1. ``gather``: the facts, read from AWS: one inventory scan (``inventory.scan``), the layer versions
   of every layer this control plane published (ListLayerVersions; for the versions beyond the newest
   N (``newest_kept``), GetLayerVersion for the code size and GetLayerVersionPolicy for grants to other
   accounts), the promoted ARNs (the SSM parameters under ``/layershift/<layer>/``), the running
   rollouts (a LOCK whose lease has not run out, its ROLLOUT# record, and its plan: the layers its
   rollback puts back on ``$LATEST``) and the rollouts the registry knows (which tell a function
   version layershift published from another one). Only layers with a registry record are cleaned
   unless one is named, so the control plane's own layer (``<stack>-core``) is never touched;
2. ``plan_cleanup``: pure, no AWS call: every deletion with its reason, every candidate beyond the
   newest N that is kept with why; the dry run prints this plan and stops;
3. ``apply``: re-checks what may have changed since the scan right before deleting (a fresh
   ListAliases per function; per layer the promoted parameters and the lock: a rollout that started
   since the plan may reuse any version), forgets a layer version's BUILD# items, reads the lock once
   more (a rollout may have read a build record just before), deletes it and its VERSION# item, and
   records the plan and each outcome in S3 (``gc/<timestamp>.json``).

A rollout's new layer versions are not yet used by anything until its aliases move: the grace
period (``grace_hours``) is what keeps them, and the versions of a layer that is rolling out.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Final, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, Field

from .artifacts import write_json
from .aws import client, error_code
from .inventory import LATEST, Inventory, layer_arn_parts, list_aliases, scan
from .lockfile import promoted_parameters
from .observability import logger
from .pacing import OutOfTime, set_deadline
from .planner import load_plan, plan_key, published_layer_arn
from .registry import Registry
from .settings import Settings
from .sharing import current_grants
from .traffic import NONE_PROMOTED

# PrepareVersions' description of a version it publishes (versions.py).
PUBLISHED_BY_LAYERSHIFT = re.compile(r"^layershift (?P<layer>\S+) rollout (?P<rollout>\S+)$")
RECORD_PREFIX = "gc/"

LAYER_VERSION: Final = "layer_version"
FUNCTION_VERSION: Final = "function_version"
Kind = Literal["layer_version", "function_version"]


class CleanupPolicy(BaseModel):
    """What to clean: ``keep`` newest versions per group are never candidates."""

    keep: int = Field(
        default=3, ge=1, description="newest versions kept per layer, per promoted variant and per function"
    )
    grace_hours: float = Field(default=72, ge=0, description="versions younger than this are kept")
    include_shared: bool = Field(default=False, description="also delete layer versions granted to other accounts")
    layer: str | None = Field(default=None, description="only this layer (and the function versions of its rollouts)")


class LayerVersionFact(BaseModel):
    """One version of a layer this control plane published, as Lambda and the registry know it."""

    layer: str
    variant: str = ""  # the registry record's variant; "" without a record
    version: int
    arn: str
    created: datetime
    code_size: int | None = None  # read only for the versions beyond the newest N
    shared_with: list[str] | None = None  # principals of its grants; None: not read (within the newest N)
    recorded: bool = False  # a VERSION# item exists
    build_keys: list[str] = []


class RunningRollout(BaseModel):
    """A rollout that holds its layer's lock (a lease not run out): what it may still attach or restore."""

    layer: str
    rollout_id: str
    layer_version_arns: list[str] = []  # empty: it has not chosen its layer versions yet
    previous_promoted: list[str] = []  # what a failure after its promotion puts back
    # The layers its targets' $LATEST had before it, which its rollback puts back ([] before its plan
    # is written, when no $LATEST has changed yet); None: its plan could not be read.
    restores: list[str] | None = None


class CleanupFacts(BaseModel):
    inventory: Inventory
    layers: list[str]  # the layers considered
    layer_versions: list[LayerVersionFact] = []
    promoted: dict[str, str] = {}  # SSM parameter name -> layer version ARN
    running: list[RunningRollout] = []
    rollouts: dict[str, list[str]] = {}  # layer -> the rollout ids the registry knows
    now: datetime


class Deletion(BaseModel):
    kind: Kind
    arn: str  # the layer version ARN, or the function's ARN qualified with the version
    owner: str  # the layer (layer versions) or the function (function versions)
    group: str  # the layer's variant, or the function
    version: int
    code_size: int = 0
    reason: str


class Kept(BaseModel):
    """A candidate beyond the newest N that is not deleted, and every reason why."""

    kind: Kind
    arn: str
    owner: str
    group: str
    version: int
    reasons: list[str]


class CleanupPlan(BaseModel):
    policy: CleanupPolicy
    planned_at: str
    inventory_taken_at: str
    refused: str | None = None  # why nothing at all may be deleted
    deletions: list[Deletion] = []
    kept: list[Kept] = []

    @property
    def bytes_freed(self) -> int:
        return sum(deletion.code_size for deletion in self.deletions)

    def bytes_of(self, kind: Kind) -> int:
        return sum(deletion.code_size for deletion in self.deletions if deletion.kind == kind)


class Outcome(BaseModel):
    arn: str
    kind: Kind
    status: Literal["deleted", "skipped", "failed", "not_reached"]
    detail: str = ""
    code_size: int = 0


class CleanupResult(BaseModel):
    plan: CleanupPlan
    outcomes: list[Outcome] = []
    record_key: str | None = None

    @property
    def bytes_freed(self) -> int:
        return sum(outcome.code_size for outcome in self.outcomes if outcome.status == "deleted")


# -- the pure planner ------------------------------------------------------------------------------


def _younger(created: datetime, now: datetime, grace: timedelta) -> bool:
    return now - created < grace


def _layer_version_reasons(
    fact: LayerVersionFact,
    facts: CleanupFacts,
    policy: CleanupPolicy,
    users: dict[str, list[str]],
    promoted_by: dict[str, list[str]],
) -> list[str]:
    """Why one candidate beyond the newest N must stay (empty: it may go)."""
    reasons = [f"in use by {how}" for how in users.get(fact.arn, [])]
    reasons += [f"promoted ({name})" for name in promoted_by.get(fact.arn, [])]
    for rollout in facts.running:
        reasons += _running_rollout_reasons(fact.arn, fact.layer, rollout)
    grace = timedelta(hours=policy.grace_hours)
    if _younger(fact.created, facts.now, grace):
        reasons.append(f"within the {policy.grace_hours:g} h grace period (created {fact.created.isoformat()})")
    if fact.shared_with is None:
        reasons.append("its grants to other accounts were not read")
    elif fact.shared_with and not policy.include_shared:
        reasons.append(f"shared with {', '.join(fact.shared_with)} (their use cannot be seen from here)")
    return reasons


def _running_rollout_reasons(arn: str, layer: str, rollout: RunningRollout) -> list[str]:
    """Why a running rollout needs this layer version: it runs on it, or may attach or restore it."""
    reasons = []
    if rollout.layer == layer and not rollout.layer_version_arns:
        reasons.append(f"running rollout {rollout.rollout_id} has not chosen its layer versions yet (it may reuse any)")
    if rollout.layer == layer and rollout.restores is None:
        reasons.append(f"running rollout {rollout.rollout_id}: its plan could not be read (it may restore any)")
    if arn in rollout.layer_version_arns:
        reasons.append(f"in running rollout {rollout.rollout_id}")
    if arn in rollout.previous_promoted:
        reasons.append(f"running rollout {rollout.rollout_id} restores it if it fails after promotion")
    if arn in (rollout.restores or []):
        reasons.append(f"running rollout {rollout.rollout_id} restores it on $LATEST if it rolls back")
    return reasons


def newest_kept(versions: list[LayerVersionFact], keep: int, promoted: set[str]) -> set[str]:
    """The ARNs of one layer's versions that stay whatever else holds: its newest ``keep``, and the
    newest ``keep`` of each variant a version is promoted for now. A variant no rollout makes any more
    (the fleet moved to other runtimes) keeps no versions of its own beyond the layer's newest."""
    newest = sorted(versions, key=lambda v: v.version, reverse=True)
    kept = {fact.arn for fact in newest[:keep]}
    for variant in {fact.variant for fact in versions if fact.arn in promoted}:
        kept |= {fact.arn for fact in [f for f in newest if f.variant == variant][:keep]}
    return kept


def _plan_layer_versions(facts: CleanupFacts, policy: CleanupPolicy, plan: CleanupPlan) -> None:
    users: dict[str, list[str]] = defaultdict(list)
    for function in facts.inventory.functions:
        for arn, how in function.uses():
            users[arn].append(f"{function.name} {how}")
        if not function.aliases_listed:  # any of its versions may be behind an alias
            for version in function.versions:
                for arn in version.layers:
                    users[arn].append(f"{function.name}:{version.qualifier} (its aliases were not listed)")
    promoted_by: dict[str, list[str]] = defaultdict(list)
    for name, arn in facts.promoted.items():
        promoted_by[arn].append(name)
    by_layer: dict[str, list[LayerVersionFact]] = defaultdict(list)
    for fact in facts.layer_versions:
        if policy.layer is None or fact.layer == policy.layer:
            by_layer[fact.layer].append(fact)
    for layer, found in sorted(by_layer.items()):
        kept = newest_kept(found, policy.keep, set(promoted_by))
        for fact in sorted(found, key=lambda f: (f.variant, f.version)):
            if fact.arn in kept:
                continue
            reasons = _layer_version_reasons(fact, facts, policy, users, promoted_by)
            group = fact.variant or "(no variant)"
            if reasons:
                plan.kept.append(
                    Kept(
                        kind=LAYER_VERSION,
                        arn=fact.arn,
                        owner=layer,
                        group=group,
                        version=fact.version,
                        reasons=reasons,
                    )
                )
                continue
            shared = f"; shared with {', '.join(fact.shared_with or [])} (--include-shared)" if fact.shared_with else ""
            plan.deletions.append(
                Deletion(
                    kind=LAYER_VERSION,
                    arn=fact.arn,
                    owner=layer,
                    group=group,
                    version=fact.version,
                    code_size=fact.code_size or 0,
                    reason=f"beyond the newest {policy.keep} of {layer} and of each variant promoted now; "
                    "no $LATEST or alias uses it, "
                    f"not promoted, in no running rollout, older than {policy.grace_hours:g} h{shared}",
                )
            )


def published_by_layershift(description: str, rollouts: dict[str, list[str]]) -> tuple[str, str] | None:
    """(layer, rollout id) of a function version a rollout of this control plane published, else None."""
    match = PUBLISHED_BY_LAYERSHIFT.match(description)
    if match is None or match["rollout"] not in rollouts.get(match["layer"], []):
        return None
    return match["layer"], match["rollout"]


def _parse_time(text: str) -> datetime | None:
    """Lambda's ``2024-01-02T03:04:05.678+0000`` (LastModified, CreatedDate)."""
    for pattern in ("%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z"):
        try:
            return datetime.strptime(text, pattern)
        except ValueError:
            continue
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _plan_function_versions(facts: CleanupFacts, policy: CleanupPolicy, plan: CleanupPlan) -> None:
    running = {rollout.rollout_id for rollout in facts.running}
    grace = timedelta(hours=policy.grace_hours)
    for function in sorted(facts.inventory.functions, key=lambda f: f.name):
        ours = []
        for version in function.versions:
            if version.qualifier == LATEST:
                continue
            published = published_by_layershift(version.description, facts.rollouts)
            if published is not None and (policy.layer is None or published[0] == policy.layer):
                ours.append((version, published))
        aliases = {q: [a.name for a in function.aliases if q in a.versions] for q in function.aliased_versions}
        for version, (layer, rollout_id) in sorted(ours, key=lambda v: int(v[0].qualifier), reverse=True)[
            policy.keep :
        ]:
            reasons = [f"alias {name} routes to it" for name in aliases.get(version.qualifier, [])]
            if not function.aliases_listed:
                reasons.append("its aliases were not listed")
            if rollout_id in running:
                reasons.append(f"published by running rollout {rollout_id}")
            modified = _parse_time(version.last_modified)
            if modified is None:
                reasons.append(f"its age is unknown (LastModified {version.last_modified!r})")
            elif _younger(modified, facts.now, grace):
                reasons.append(f"within the {policy.grace_hours:g} h grace period (published {modified.isoformat()})")
            arn = f"{function.arn}:{version.qualifier}"
            number = int(version.qualifier)
            if reasons:
                plan.kept.append(
                    Kept(
                        kind=FUNCTION_VERSION,
                        arn=arn,
                        owner=function.name,
                        group=function.name,
                        version=number,
                        reasons=reasons,
                    )
                )
                continue
            plan.deletions.append(
                Deletion(
                    kind=FUNCTION_VERSION,
                    arn=arn,
                    owner=function.name,
                    group=function.name,
                    version=number,
                    code_size=version.code_size,
                    reason=f"published by layershift rollout {rollout_id} of {layer}; beyond the newest "
                    f"{policy.keep} such versions of {function.name}; no alias routes to it; older than "
                    f"{policy.grace_hours:g} h",
                )
            )


def plan_cleanup(facts: CleanupFacts, policy: CleanupPolicy) -> CleanupPlan:
    """Every deletion with its reason, and every candidate beyond the newest N kept with why. No AWS call."""
    plan = CleanupPlan(
        policy=policy,
        planned_at=facts.now.isoformat(timespec="seconds"),
        inventory_taken_at=facts.inventory.taken_at,
    )
    if not facts.inventory.complete:
        problems = "; ".join(facts.inventory.problems[:5]) or "the scan did not finish"
        plan.refused = f"the inventory of functions is incomplete ({problems}): nothing is deleted"
        return plan
    _plan_layer_versions(facts, policy, plan)
    _plan_function_versions(facts, policy, plan)
    return plan


# -- gathering the facts ---------------------------------------------------------------------------


def _restored_layers(bucket: str, layer: str, rollout_id: str) -> list[str] | None:
    """The layers the rollout's rollback puts back on its targets' ``$LATEST`` (its plan's
    ``current_layers``); [] when it has no plan yet; None when the plan cannot be read."""
    try:
        plan = load_plan(bucket, plan_key(layer, rollout_id))
    except ClientError as exc:
        return [] if error_code(exc) == "NoSuchKey" else None
    return sorted({arn for target in plan.targets for arn in target.current_layers})


def running_rollout(settings: Settings, registry: Registry, layer: str, now: float) -> RunningRollout | None:
    """The rollout holding ``layer``'s lock, when its lease has not run out, and what it may still
    attach or restore."""
    holder = registry.lock_holder(layer)
    if holder is None or float(holder.get("expires_at") or 0) < now:
        return None
    owner = str(holder.get("owner") or "?")
    record = registry.rollout(layer, owner) or {}
    arns = [arn for arn in str(record.get("layer_version_arns") or "").split(",") if arn]
    previous = json.loads(str(record.get("previous_promoted") or "{}"))
    return RunningRollout(
        layer=layer,
        rollout_id=owner,
        layer_version_arns=arns,
        previous_promoted=sorted(str(v) for v in previous.values() if v != NONE_PROMOTED),
        restores=_restored_layers(settings.bucket, layer, owner),
    )


def _layer_versions(
    settings: Settings, registry: Registry, layer: str, keep: int, promoted: set[str]
) -> list[LayerVersionFact]:
    lam = client("lambda")
    name = settings.published_name(layer)
    records = {int(item["version"]): item for item in registry.versions(layer)}
    builds: dict[str, set[str]] = defaultdict(set)  # layer version ARN -> the build keys that reuse it
    for item in registry.builds(layer):
        builds[str(item.get("arn"))].add(str(item["sk"]).removeprefix("BUILD#"))
    listed: list[dict[str, Any]] = []
    try:
        for page in lam.get_paginator("list_layer_versions").paginate(LayerName=name):
            listed += page["LayerVersions"]
    except lam.exceptions.ResourceNotFoundException:
        return []
    facts = []
    for entry in listed:
        version = int(entry["Version"])
        record = records.get(version, {})
        created = _parse_time(str(entry.get("CreatedDate") or ""))
        facts.append(
            LayerVersionFact(
                layer=layer,
                variant=str(record.get("variant") or ""),
                version=version,
                arn=str(entry["LayerVersionArn"]),
                created=created or datetime.now(UTC),  # unknown age: as young as can be, so kept
                recorded=bool(record),
                build_keys=sorted(builds[str(entry["LayerVersionArn"])] | set(record.get("build_keys") or [])),
            )
        )
    kept = newest_kept(facts, keep, promoted)
    for fact in facts:
        if fact.arn not in kept:
            # Only a candidate needs its size and grants: one GetLayerVersion and one GetLayerVersionPolicy.
            fact.code_size = int(
                lam.get_layer_version(LayerName=name, VersionNumber=fact.version)["Content"]["CodeSize"]
            )
            fact.shared_with = sorted(grant.describe() for grant in current_grants(name, fact.version))
    return sorted(facts, key=lambda f: (f.variant, f.version))


def gather(settings: Settings, policy: CleanupPolicy, scan_deadline: float | None = None) -> CleanupFacts:
    """The facts a plan needs, read from AWS (paced Lambda calls, like a rollout's)."""
    registry = Registry(settings.table)
    layers = [policy.layer] if policy.layer else registry.layers()
    inventory = scan([published_layer_arn(settings, layer) for layer in layers], deadline=scan_deadline)
    now = time.time()
    facts = CleanupFacts(inventory=inventory, layers=layers, now=datetime.fromtimestamp(now, UTC))
    for layer in layers:
        promoted = promoted_parameters(layer)
        facts.promoted.update(promoted)
        facts.layer_versions += _layer_versions(settings, registry, layer, policy.keep, set(promoted.values()))
        rollout = running_rollout(settings, registry, layer, now)
        if rollout is not None:
            facts.running.append(rollout)
        facts.rollouts[layer] = sorted(str(item["sk"]).removeprefix("ROLLOUT#") for item in registry.rollouts(layer))
    return facts


# -- applying a plan -------------------------------------------------------------------------------


def _rollout_blocks(deletion: Deletion, planned: RunningRollout | None, now: RunningRollout | None) -> str | None:
    """Why the rollout running now forbids deleting a planned layer version (None: it does not).

    A rollout the plan knew, which had chosen its layer versions then, attaches or restores no other
    existing version. Any other rollout of the layer may reuse any of them (FindReusableBuild)."""
    if now is None:
        return None
    if planned is None or planned.rollout_id != now.rollout_id:
        return f"rollout {now.rollout_id} of {deletion.owner} started since the plan (it may reuse any version)"
    reasons = _running_rollout_reasons(deletion.arn, deletion.owner, now)
    return "; ".join(reasons) if reasons else None


def _still_blocked(
    deletion: Deletion, planned: RunningRollout | None, now: RunningRollout | None, promoted: dict[str, str]
) -> str | None:
    """Why a planned layer version deletion must not happen after all, by what is true now."""
    names = [name for name, arn in promoted.items() if arn == deletion.arn]
    if names:
        return f"promoted since the plan ({', '.join(names)})"
    return _rollout_blocks(deletion, planned, now)


def _delete_layer_version(
    settings: Settings,
    registry: Registry,
    deletion: Deletion,
    *,
    fact: LayerVersionFact | None,
    planned: RunningRollout | None,
) -> str:
    """Forget the registry's builds of it first, so no rollout starting from now can pick it up; then
    check the lock again (a rollout may have read a build record just before) and delete."""
    for key in fact.build_keys if fact else []:
        registry.forget_build_of(deletion.owner, key, deletion.arn)
    blocked = _rollout_blocks(deletion, planned, running_rollout(settings, registry, deletion.owner, time.time()))
    if blocked:
        # The version stays; a later publication of its build key builds again instead of reusing it.
        return blocked
    parts = layer_arn_parts(deletion.arn)
    if parts is None:
        raise ValueError(f"{deletion.arn} is not a layer version ARN")
    client("lambda").delete_layer_version(LayerName=parts[0], VersionNumber=parts[1])
    registry.forget_version(deletion.owner, deletion.version)
    return ""


def _function_aliases(function: str) -> dict[str, list[str]]:
    """A fresh ListAliases: version -> the aliases that route to it."""
    routed: dict[str, list[str]] = defaultdict(list)
    for alias in list_aliases(client("lambda"), function):
        for version in alias.versions:
            routed[version].append(alias.name)
    return routed


def _by_owner(plan: CleanupPlan, kind: str) -> dict[str, list[Deletion]]:
    """The plan's deletions of one kind, by layer or function, in name order."""
    found: dict[str, list[Deletion]] = defaultdict(list)
    for deletion in plan.deletions:
        if deletion.kind == kind:
            found[deletion.owner].append(deletion)
    return dict(sorted(found.items()))


def _apply_layer_versions(
    settings: Settings, plan: CleanupPlan, facts: CleanupFacts, deadline: float | None, outcomes: list[Outcome]
) -> None:
    registry = Registry(settings.table)
    by_arn = {fact.arn: fact for fact in facts.layer_versions}
    for layer, deletions in _by_owner(plan, LAYER_VERSION).items():
        if _past(deadline):
            outcomes += [_not_reached(deletion) for deletion in deletions]
            continue
        planned = next((rollout for rollout in facts.running if rollout.layer == layer), None)
        now = running_rollout(settings, registry, layer, time.time())
        promoted = promoted_parameters(layer)
        for deletion in deletions:
            why = _still_blocked(deletion, planned, now, promoted)
            outcomes.append(
                _apply_one(
                    deletion,
                    deadline,
                    why,
                    partial(_delete_layer_version, settings, registry, fact=by_arn.get(deletion.arn), planned=planned),
                )
            )


def _delete_function_version(deletion: Deletion) -> str:
    client("lambda").delete_function(FunctionName=deletion.owner, Qualifier=str(deletion.version))
    return ""


def _apply_function_versions(plan: CleanupPlan, deadline: float | None, outcomes: list[Outcome]) -> None:
    for function, deletions in _by_owner(plan, FUNCTION_VERSION).items():
        if _past(deadline):
            outcomes += [_not_reached(deletion) for deletion in deletions]
            continue
        try:
            routed = _function_aliases(function)
        except client("lambda").exceptions.ResourceNotFoundException:
            gone = "the function is gone"
            outcomes += [Outcome(arn=d.arn, kind=d.kind, status="skipped", detail=gone) for d in deletions]
            continue
        for deletion in deletions:
            names = routed.get(str(deletion.version))
            why = f"alias {', '.join(names)} routes to it now" if names else None
            outcomes.append(_apply_one(deletion, deadline, why, _delete_function_version))


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.time() > deadline


def _not_reached(deletion: Deletion) -> Outcome:
    return Outcome(
        arn=deletion.arn, kind=deletion.kind, status="not_reached", detail="out of time; the next run goes on"
    )


def _apply_one(
    deletion: Deletion, deadline: float | None, blocked: str | None, delete: Callable[[Deletion], str]
) -> Outcome:
    """One deletion, unless it is out of time or blocked by what is true now; its outcome."""
    if _past(deadline):
        return _not_reached(deletion)
    if blocked:
        logger.info("kept after all", extra={"arn": deletion.arn, "reason": blocked})
        return Outcome(arn=deletion.arn, kind=deletion.kind, status="skipped", detail=blocked)
    try:
        skipped = delete(deletion)
    except OutOfTime:
        return _not_reached(deletion)
    except ClientError as exc:  # one version that cannot go does not stop the others; it is recorded
        logger.warning("deletion failed", extra={"arn": deletion.arn, "error": str(exc)})
        return Outcome(arn=deletion.arn, kind=deletion.kind, status="failed", detail=f"{error_code(exc)}: {exc}")
    if skipped:
        logger.info("kept after all", extra={"arn": deletion.arn, "reason": skipped})
        return Outcome(arn=deletion.arn, kind=deletion.kind, status="skipped", detail=skipped)
    logger.info(
        "deleted",
        extra={"arn": deletion.arn, "kind": deletion.kind, "reason": deletion.reason, "bytes": deletion.code_size},
    )
    return Outcome(
        arn=deletion.arn, kind=deletion.kind, status="deleted", detail=deletion.reason, code_size=deletion.code_size
    )


def record_key(at: datetime) -> str:
    return f"{RECORD_PREFIX}{at.strftime('%Y%m%dT%H%M%S.%fZ')}.json"


def apply(settings: Settings, plan: CleanupPlan, facts: CleanupFacts, deadline: float | None = None) -> CleanupResult:
    """Delete what the plan says, each re-checked right before; record the plan and the outcome in S3."""
    result = CleanupResult(plan=plan)
    if plan.refused is None:
        _apply_function_versions(plan, deadline, result.outcomes)
        _apply_layer_versions(settings, plan, facts, deadline, result.outcomes)
    key = record_key(datetime.now(UTC))
    write_json(settings.bucket, key, {**result.model_dump(mode="json"), "bytes_freed": result.bytes_freed})
    result.record_key = key
    return result


def clean_up(
    settings: Settings,
    policy: CleanupPolicy,
    *,
    dry_run: bool = False,
    deadline: float | None = None,
    scan_deadline: float | None = None,
) -> CleanupResult:
    """Gather, plan and (unless ``dry_run``) apply."""
    try:
        facts = gather(settings, policy, scan_deadline)
    except OutOfTime as exc:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        refused = CleanupPlan(
            policy=policy, planned_at=now, inventory_taken_at=now, refused=f"out of time gathering the facts: {exc}"
        )
        if dry_run:
            return CleanupResult(plan=refused)
        facts = CleanupFacts(inventory=Inventory(complete=False), layers=[], now=datetime.now(UTC))
        return apply(settings, refused, facts, deadline)
    plan = plan_cleanup(facts, policy)
    if dry_run:
        return CleanupResult(plan=plan)
    return apply(settings, plan, facts, deadline)


def summarise(outcomes: Iterable[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for outcome in outcomes:
        counts[outcome.status] += 1
    return dict(counts)


class CleanupSummary(BaseModel):
    """What CleanUpVersions did: the full plan and outcome are in the S3 record."""

    record_key: str | None
    refused: str | None
    planned: int
    kept: int
    outcomes: dict[str, int]
    planned_bytes: int
    bytes_freed: int


# CleanUpVersions stops listing aliases at this share of its time, and deleting this long before its
# timeout, so the record of what it did and what is left is always written.
_SCAN_SHARE = 0.5
_RECORD_SECONDS = 60


def scheduled_clean_up(policy: CleanupPolicy, settings: Settings, seconds_left: float) -> CleanupSummary:
    """CleanUpVersions: one paced cleanup run within the function's time."""
    started = time.time()
    set_deadline(started + seconds_left - _RECORD_SECONDS / 2)
    try:
        result = clean_up(
            settings,
            policy,
            scan_deadline=started + seconds_left * _SCAN_SHARE,
            deadline=started + seconds_left - _RECORD_SECONDS,
        )
    finally:
        set_deadline(None)
    return CleanupSummary(
        record_key=result.record_key,
        refused=result.plan.refused,
        planned=len(result.plan.deletions),
        kept=len(result.plan.kept),
        outcomes=summarise(result.outcomes),
        planned_bytes=result.plan.bytes_freed,
        bytes_freed=result.bytes_freed,
    )
