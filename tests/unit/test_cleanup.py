"""The cleanup planner over random fleets: it never plans the deletion of anything in use, and it
plans every deletion the rules allow (so it cannot pass by deleting nothing)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from layershift_core.cleanup import (
    FUNCTION_VERSION,
    LAYER_VERSION,
    CleanupFacts,
    CleanupPolicy,
    LayerVersionFact,
    RunningRollout,
    plan_cleanup,
)
from layershift_core.inventory import AliasUse, FunctionUse, FunctionVersionUse, Inventory

PREFIX = "arn:aws:lambda:us-east-1:123456789012:layer:ls-"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
FLEETS = 400


def lambda_time(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"


@dataclass
class Fleet:
    """A random account: the raw truth the oracle reads, and the facts the planner reads."""

    facts: CleanupFacts
    policy: CleanupPolicy
    aliased: dict[str, set[str]] = field(default_factory=dict)  # function -> versions an alias routes to
    latest: dict[str, list[str]] = field(default_factory=dict)  # function -> $LATEST's layers
    version_layers: dict[tuple[str, str], list[str]] = field(default_factory=dict)


def random_fleet(rng: random.Random) -> Fleet:
    layers = [f"lib{index}" for index in range(rng.randint(1, 3))]
    versions: list[LayerVersionFact] = []
    rollouts: dict[str, list[str]] = {}
    for layer in layers:
        variants = rng.choice([[""], ["py313-x86_64", "py313-arm64"], ["", "py312-x86_64"]])
        rollouts[layer] = [f"{layer}-r{index}" for index in range(rng.randint(0, 6))]
        for number in range(1, rng.randint(1, 12) + 1):
            shared = rng.random() < 0.15
            versions.append(
                LayerVersionFact(
                    layer=layer,
                    variant=rng.choice(variants),
                    version=number,
                    arn=f"{PREFIX}{layer}:{number}",
                    created=NOW - timedelta(hours=rng.choice([1, 10, 50, 100, 500])),
                    code_size=rng.randint(1_000, 5_000_000),
                    shared_with=(["arn:aws:iam::210987654321:root"] if shared else []) if rng.random() > 0.05 else None,
                    recorded=rng.random() < 0.8,
                )
            )
    arns = [v.arn for v in versions] + ["arn:aws:lambda:us-east-1:999999999999:layer:vendor:4"]
    functions: list[FunctionUse] = []
    fleet_aliased: dict[str, set[str]] = {}
    fleet_latest: dict[str, list[str]] = {}
    version_layers: dict[tuple[str, str], list[str]] = {}
    for index in range(rng.randint(0, 6)):
        name = f"fn{index}"
        latest_layers = rng.sample(arns, k=min(len(arns), rng.randint(0, 2)))
        published = []
        for number in range(1, rng.randint(0, 9) + 1):
            layer = rng.choice(layers)
            description = rng.choice(
                [
                    f"layershift {layer} rollout {rng.choice(rollouts[layer] or ['unknown'])}",
                    f"layershift {layer} rollout {rng.choice(rollouts[layer] or ['unknown'])}",
                    f"layershift {layer} rollout not-a-known-rollout",
                    "deployed by the team's pipeline",
                    "",
                ]
            )
            layers_of = rng.sample(arns, k=min(len(arns), rng.randint(0, 2)))
            version_layers[(name, str(number))] = layers_of
            published.append(
                FunctionVersionUse(
                    qualifier=str(number),
                    layers=layers_of,
                    description=description,
                    code_size=rng.randint(1_000, 100_000),
                    last_modified=lambda_time(NOW - timedelta(hours=rng.choice([2, 30, 80, 400]))),
                )
            )
        aliases = []
        qualifiers = [v.qualifier for v in published]
        for alias_index in range(rng.randint(0, 2) if qualifiers else 0):
            primary = rng.choice(qualifiers)
            routing = {rng.choice(qualifiers): 0.1} if rng.random() < 0.4 else {}
            routing.pop(primary, None)
            aliases.append(AliasUse(name=f"a{alias_index}", version=primary, routing=routing))
        listed = rng.random() > 0.05
        fleet_aliased[name] = {q for a in aliases for q in a.versions}
        fleet_latest[name] = latest_layers
        functions.append(
            FunctionUse(
                name=name,
                arn=FUNCTION_ARN + name,
                versions=[FunctionVersionUse(qualifier="$LATEST", layers=latest_layers), *published],
                aliases=aliases if listed else [],
                aliases_listed=listed,
            )
        )
    promoted = {
        f"/layershift/p{index}/arn": arn
        for index, arn in enumerate(rng.sample(arns, k=min(len(arns), rng.randint(0, 3))))
    }
    running = []
    for layer in layers:
        if rng.random() < 0.3:
            own = [v.arn for v in versions if v.layer == layer]
            chosen = rng.sample(own, k=min(len(own), rng.randint(0, 2)))
            previous = rng.sample(arns, k=rng.randint(0, 1))
            run = rng.choice(rollouts[layer] or [f"{layer}-running"])
            restores = rng.choice([None, [], rng.sample(arns, k=min(len(arns), 2))])
            running.append(
                RunningRollout(
                    layer=layer,
                    rollout_id=run,
                    layer_version_arns=chosen,
                    previous_promoted=previous,
                    restores=restores,
                )
            )
    inventory = Inventory(complete=rng.random() > 0.1, functions=functions)
    facts = CleanupFacts(
        inventory=inventory,
        layers=layers,
        layer_versions=versions,
        promoted=promoted,
        running=running,
        rollouts=rollouts,
        now=NOW,
    )
    policy = CleanupPolicy(
        keep=rng.randint(1, 4),
        grace_hours=rng.choice([0, 24, 72]),
        include_shared=rng.random() < 0.3,
        layer=rng.choice([None, None, layers[0]]),
    )
    return Fleet(facts, policy, fleet_aliased, fleet_latest, version_layers)


def _in_use(fleet: Fleet) -> set[str]:
    """What runs, from the raw fleet: every $LATEST's layers, and the layers of every aliased version.
    A function whose aliases were not listed counts every version as aliased."""
    used = {arn for layers in fleet.latest.values() for arn in layers}
    for function in fleet.facts.inventory.functions:
        qualifiers = (
            fleet.aliased[function.name] if function.aliases_listed else {v.qualifier for v in function.versions}
        )
        for qualifier in qualifiers:
            used |= set(fleet.version_layers.get((function.name, qualifier), []))
    return used


def expected_layer_deletions(fleet: Fleet) -> set[str]:
    facts, policy = fleet.facts, fleet.policy
    used = _in_use(fleet)
    protected = set(facts.promoted.values())
    locked_whole = set()
    for run in facts.running:
        protected |= set(run.layer_version_arns) | set(run.previous_promoted) | set(run.restores or [])
        if not run.layer_version_arns or run.restores is None:
            locked_whole.add(run.layer)
    free = set()
    layers: dict[str, list[LayerVersionFact]] = {}
    for version in facts.layer_versions:
        layers.setdefault(version.layer, []).append(version)
    promoted = set(facts.promoted.values())
    for layer, versions in layers.items():
        if policy.layer not in (None, layer):
            continue
        # The layer's newest N stay, and the newest N of each variant that has a promoted version.
        by_age = sorted(versions, key=lambda v: -v.version)
        newest = by_age[: policy.keep]
        for variant in {v.variant for v in versions if v.arn in promoted}:
            newest += [v for v in by_age if v.variant == variant][: policy.keep]
        for version in versions:
            if version in newest or version.arn in used or version.arn in protected or layer in locked_whole:
                continue
            if NOW - version.created < timedelta(hours=policy.grace_hours):
                continue
            if version.shared_with is None or (version.shared_with and not policy.include_shared):
                continue
            free.add(version.arn)
    return free


def expected_function_deletions(fleet: Fleet) -> set[str]:
    facts, policy = fleet.facts, fleet.policy
    running = {run.rollout_id for run in facts.running}
    free = set()
    for function in facts.inventory.functions:
        ours = []
        for version in function.versions:
            words = version.description.split(" ")
            if len(words) == 4 and words[0] == "layershift" and words[2] == "rollout":
                layer, rollout = words[1], words[3]
                if rollout in facts.rollouts.get(layer, []) and policy.layer in (None, layer):
                    ours.append((int(version.qualifier), version, rollout))
        ours.sort(key=lambda item: -item[0])
        for number, version, rollout in ours[policy.keep :]:
            modified = datetime.strptime(version.last_modified, "%Y-%m-%dT%H:%M:%S.%f%z")
            if not function.aliases_listed or version.qualifier in fleet.aliased[function.name]:
                continue
            if rollout in running or NOW - modified < timedelta(hours=policy.grace_hours):
                continue
            free.add(f"{function.arn}:{number}")
    return free


@pytest.mark.parametrize("seed", range(FLEETS))
def test_random_fleet_never_loses_a_version_in_use_and_frees_every_free_one(seed: int) -> None:
    fleet = random_fleet(random.Random(seed))
    plan = plan_cleanup(fleet.facts, fleet.policy)
    deleted_layers = {d.arn for d in plan.deletions if d.kind == LAYER_VERSION}
    deleted_functions = {d.arn for d in plan.deletions if d.kind == FUNCTION_VERSION}

    if not fleet.facts.inventory.complete:
        assert plan.refused and not plan.deletions
        return
    # Safety: nothing in use, promoted, in a running rollout, in grace or shared is deleted.
    in_use = _in_use(fleet)
    assert not deleted_layers & in_use
    assert not deleted_layers & set(fleet.facts.promoted.values())
    for run in fleet.facts.running:
        assert not deleted_layers & set(run.layer_version_arns + run.previous_promoted + (run.restores or []))
    for function in fleet.facts.inventory.functions:
        for qualifier in fleet.aliased[function.name]:
            assert f"{function.arn}:{qualifier}" not in deleted_functions
        assert f"{function.arn}:$LATEST" not in deleted_functions
    # Exactness: every free candidate is deleted, and nothing else.
    assert deleted_layers == expected_layer_deletions(fleet)
    assert deleted_functions == expected_function_deletions(fleet)
    # Every candidate beyond the newest N is either deleted with its reason or kept with why.
    assert all(d.reason for d in plan.deletions) and all(k.reasons for k in plan.kept)
    assert not {k.arn for k in plan.kept} & (deleted_layers | deleted_functions)
    assert plan.bytes_freed == sum(d.code_size for d in plan.deletions) >= 0


def test_the_random_fleets_exercise_every_rule() -> None:
    """The property above means something only if the fleets both delete and keep, for every reason."""
    deleted = {LAYER_VERSION: 0, FUNCTION_VERSION: 0}
    reasons: set[str] = set()
    for seed in range(FLEETS):
        fleet = random_fleet(random.Random(seed))
        plan = plan_cleanup(fleet.facts, fleet.policy)
        for deletion in plan.deletions:
            deleted[deletion.kind] += 1
        for kept in plan.kept:
            reasons |= {reason.split(" ")[0] + " " + reason.split(" ")[1] for reason in kept.reasons}
    assert deleted[LAYER_VERSION] > 100 and deleted[FUNCTION_VERSION] > 100
    expected_reasons = (
        "in use",
        "promoted (",
        "in running",
        "running rollout",
        "within the",
        "shared with",
        "alias a0",
    )
    for expected in expected_reasons:
        assert any(reason.startswith(expected.split(" (")[0]) for reason in reasons), expected


def _fact(version: int, hours_old: float = 500, **extra: object) -> LayerVersionFact:
    return LayerVersionFact.model_validate(
        {
            "layer": "lib",
            "version": version,
            "arn": f"{PREFIX}lib:{version}",
            "created": NOW - timedelta(hours=hours_old),
            "code_size": 1000 * version,
            "shared_with": [],
            **extra,
        }
    )


def test_keep_zero_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        CleanupPolicy(keep=0)


def test_an_incomplete_inventory_deletes_nothing_and_says_why() -> None:
    inventory = Inventory(complete=False, problems=["fn9: its aliases were not listed"])
    facts = CleanupFacts(inventory=inventory, layers=["lib"], layer_versions=[_fact(n) for n in range(1, 6)], now=NOW)
    plan = plan_cleanup(facts, CleanupPolicy(keep=1))
    assert plan.deletions == [] and plan.refused is not None and "fn9" in plan.refused


def test_each_kept_candidate_says_why_and_bytes_are_summed() -> None:
    latest_user = FunctionUse(
        name="api",
        arn=FUNCTION_ARN + "api",
        versions=[
            FunctionVersionUse(qualifier="$LATEST", layers=[f"{PREFIX}lib:1"]),
            FunctionVersionUse(qualifier="4", layers=[f"{PREFIX}lib:2"], last_modified=lambda_time(NOW)),
        ],
        aliases=[AliasUse(name="live", version="4")],
        aliases_listed=True,
    )
    facts = CleanupFacts(
        inventory=Inventory(functions=[latest_user]),
        layers=["lib"],
        layer_versions=[
            _fact(1),
            _fact(2),
            _fact(3),
            _fact(4, shared_with=["o-abc"]),
            _fact(5, hours_old=1),
            _fact(6),
            _fact(7),
            _fact(8),
            _fact(9),
        ],
        promoted={"/layershift/lib/arn": f"{PREFIX}lib:6"},
        running=[RunningRollout(layer="lib", rollout_id="r9", layer_version_arns=[f"{PREFIX}lib:7"], restores=[])],
        now=NOW,
    )
    plan = plan_cleanup(facts, CleanupPolicy(keep=2))
    kept = {k.version: k.reasons for k in plan.kept}
    assert [d.version for d in plan.deletions] == [3]
    assert plan.bytes_freed == 3000
    assert kept[1] == ["in use by api $LATEST"]
    assert kept[2] == ["in use by api alias live -> 4"]
    assert kept[4][0].startswith("shared with o-abc")
    assert kept[5][0].startswith("within the 72 h grace period")
    assert kept[6] == ["promoted (/layershift/lib/arn)"]
    assert kept[7] == ["in running rollout r9"]
    assert 8 not in kept and 9 not in kept  # the newest two are no candidates


def test_each_promoted_variant_keeps_its_newest_and_a_variant_no_longer_made_keeps_none_of_its_own() -> None:
    """The fleet moved from one Python to two: the old variant's versions are not kept for ever."""
    versions = [
        _fact(1, variant="py313-x86_64"),
        _fact(2, variant="py313-x86_64"),
        _fact(3, variant="py312-x86_64"),
        _fact(4, variant="py313-arm64"),
        _fact(5, variant="py312-x86_64"),
        _fact(6, variant="py313-arm64"),
    ]
    promoted = {
        "/layershift/lib/python3.12/x86_64/arn": f"{PREFIX}lib:5",
        "/layershift/lib/python3.13/arm64/arn": f"{PREFIX}lib:6",
    }
    facts = CleanupFacts(inventory=Inventory(), layers=["lib"], layer_versions=versions, promoted=promoted, now=NOW)
    plan = plan_cleanup(facts, CleanupPolicy(keep=1))
    assert sorted(d.version for d in plan.deletions) == [1, 2, 3, 4]
    assert plan.kept == []  # 5 and 6: each the newest of a promoted variant (and promoted)
    plan = plan_cleanup(facts, CleanupPolicy(keep=2))
    assert sorted(d.version for d in plan.deletions) == [1, 2]  # x86_64 3.13 is made no more
