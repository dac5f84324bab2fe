"""Why a function is not on the promoted version, as the usage report says it."""

from layershift_core.inventory import AliasUse, FunctionUse, FunctionVersionUse
from layershift_core.layer_usage import drift_reason, promoted_for
from layershift_core.models import RolloutPlan, TargetPlan, Verdict

ARN = "arn:aws:lambda:us-east-1:123456789012:layer:ls-common:{}"


def _plan(*targets: TargetPlan) -> RolloutPlan:
    return RolloutPlan(
        rollout_id="r1", layer="common", layer_versions=[], alias="live", steps=[], targets=list(targets)
    )


def test_the_reason_comes_from_the_last_plan_and_its_ending() -> None:
    plan = _plan(
        TargetPlan(function_name="a", alias="live", verdict=Verdict.SKIPPED, reason="a: has no alias 'live'"),
        TargetPlan(function_name="b", alias="live", verdict=Verdict.TARGET),
    )
    promoted = ({"rollout_id": "r1", "status": "promoted"}, plan)
    rolled_back = ({"rollout_id": "r1", "status": "rolled_back", "reason": "RolloutUnhealthy: alarm"}, plan)
    assert drift_reason("common", "a", ["common"], promoted) == "skipped by rollout r1: a: has no alias 'live'"
    assert drift_reason("common", "b", ["common"], promoted).startswith("changed outside layershift")
    assert drift_reason("common", "b", ["common"], rolled_back) == (
        "rollout r1 did not promote it (rolled_back: RolloutUnhealthy: alarm)"
    )
    assert drift_reason("common", "c", ["common"], promoted).startswith("opted in after the last rollout (r1)")
    assert drift_reason("common", "c", ["other"], promoted) == (
        "not opted in: its layershift:layer tag names other, not common"
    )
    assert drift_reason("common", "c", [], None).startswith("not opted in: it has no layershift:layer tag")
    assert drift_reason("common", "c", ["common"], None) == "no rollout of this layer has planned it"


def test_the_promoted_version_is_the_one_for_the_functions_runtime_and_architecture() -> None:
    promoted = {
        "/layershift/common/arn": ARN.format(9),
        "/layershift/common/python3.12/arm64/arn": ARN.format(8),
    }
    arm = FunctionUse(name="f", arn="arn:f", runtime="python3.12", architecture="arm64")
    x86 = FunctionUse(name="g", arn="arn:g", runtime="python3.13", architecture="x86_64")
    assert promoted_for(promoted, "common", arm) == ARN.format(8)
    assert promoted_for(promoted, "common", x86) == ARN.format(9)


def test_a_function_uses_what_latest_runs_and_every_version_an_alias_routes_to() -> None:
    function = FunctionUse(
        name="f",
        arn="arn:f",
        versions=[
            FunctionVersionUse(qualifier="$LATEST", layers=[ARN.format(3)]),
            FunctionVersionUse(qualifier="1", layers=[ARN.format(1)]),
            FunctionVersionUse(qualifier="2", layers=[ARN.format(2)]),
            FunctionVersionUse(qualifier="3", layers=[ARN.format(3)]),
        ],
        aliases=[AliasUse(name="live", version="2", routing={"1": 0.1})],
    )
    assert dict(function.uses()) == {
        ARN.format(3): "$LATEST",
        ARN.format(2): "alias live -> 2",
        ARN.format(1): "alias live -> 1 (10%)",
    }
    assert function.aliased_versions == {"1", "2"}
