"""A rollout across a fleet: Distributed Map fan-out, per-function isolation, the pooled verdict, and
Lambda's shared request budget, on the real template, ASL and handlers.

The fleet's consumers are never invoked except where a test needs traffic: the control-plane path
(discovery, assessing, preparing, shifting, promoting, restoring) is the real one for each of them,
and every invariant is checked over every function.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from layershift.controlplane import ControlPlane, history_events, rollout_usage, wait_for_end
from layershift.local import lambda_limits
from layershift.local.lambda_limits import AwsLimits
from layershift.local.server import LocalAws

from .support import (
    FANOUT_BATCH_SIZE,
    create_consumer,
    finish_rollout,
    publish_bootstrap_layer,
    run_rollout,
    session_function,
    set_fault,
    spec,
    start_rollout,
    wait_for_state,
)
from .test_progressive_delivery import BREAKS_ON_REAL_SIX, traffic

pytestmark = [pytest.mark.integration, pytest.mark.network]

FLEET = 50


def _fleet(cp: ControlPlane, layer: str, count: int, source: str | None = None) -> dict[str, str]:
    """``count`` consumers of a first version of ``layer``, each behind ``live``: name -> version."""
    bootstrap = publish_bootstrap_layer(cp, layer)
    extra = {"source": source} if source else {}
    return {
        f"{layer}-{i:02d}": str(create_consumer(cp, f"{layer}-{i:02d}", [bootstrap], **extra)) for i in range(count)
    }


def _control_function(cp: ControlPlane, part: str) -> str:
    return session_function(cp, f"{part}Function")


def _updates_refused(cp: ControlPlane, names: list[str]) -> list[dict[str, str]]:
    """Faults that refuse (AccessDenied) PrepareVersions' layer update of these consumers only."""
    prepare = _control_function(cp, "PrepareVersions")
    operation = "UpdateFunctionConfiguration"
    return [
        {"function": prepare, "service": "lambda", "operation": operation, "fault": "denied", "resource": name}
        for name in names
    ]


def _plan(cp: ControlPlane, layer: str, execution_arn: str) -> dict[str, Any]:
    key = f"rollouts/{layer}/{execution_arn.rsplit(':', 1)[-1]}/plan.json"
    return json.loads(cp.client("s3").get_object(Bucket=cp.bucket, Key=key)["Body"].read())


def _map_runs(cp: ControlPlane, execution_arn: str) -> dict[str, list[dict[str, Any]]]:
    """The execution's Map Runs by label (the Map state), each described."""
    sfn = cp.client("stepfunctions")
    runs: dict[str, list[dict[str, Any]]] = {}
    for listed in sfn.list_map_runs(executionArn=execution_arn)["mapRuns"]:
        label = listed["mapRunArn"].split("/", 1)[1].split(":", 1)[0]
        runs.setdefault(label, []).append(sfn.describe_map_run(mapRunArn=listed["mapRunArn"]))
    return runs


def _alias(cp: ControlPlane, name: str) -> dict[str, Any]:
    return cp.client("lambda").get_alias(FunctionName=name, Name="live")


def _layers(cp: ControlPlane, name: str) -> list[str]:
    return [layer["Arn"] for layer in cp.client("lambda").get_function_configuration(FunctionName=name)["Layers"]]


def _alarm(cp: ControlPlane, name: str) -> None:
    """An alarm on a metric the test puts itself: it fires as soon as one datapoint arrives."""
    cp.client("cloudwatch").put_metric_alarm(
        AlarmName=name,
        Namespace="Layershift/FleetTests",
        MetricName="Broken",
        Dimensions=[{"Name": "Alarm", "Value": name}],
        Statistic="Sum",
        Period=10,
        EvaluationPeriods=1,
        Threshold=0,
        ComparisonOperator="GreaterThanThreshold",
        TreatMissingData="notBreaching",
    )


def test_a_fleet_is_promoted_then_a_bad_push_rolls_every_function_back(control_plane: ControlPlane, fault_plan) -> None:
    cp = control_plane
    layer = "fleet"
    versions = _fleet(cp, layer, FLEET)
    _alarm(cp, "fleet-broken")
    refused = [f"{layer}-07", f"{layer}-31"]  # AccessDenied on their update: a permanent error of their own
    faults = _updates_refused(cp, refused)
    config = spec(
        "[{weight = 10, bake_seconds = 1}, {weight = 50, bake_seconds = 1}]",
        '["fleet-broken"]',
        extra="tolerated_failure_percent = 10",
    )
    set_fault(fault_plan, layer, faults)
    try:
        promoted = run_rollout(cp, layer, "six==1.16.0\n", config)  # the invariants over every function, too
    finally:
        set_fault(fault_plan, layer, None)

    assert promoted.status == "SUCCEEDED", promoted.lines
    plan = _plan(cp, layer, promoted.execution_arn)
    skipped = {t["function_name"]: t["reason"] for t in plan["targets"] if t["verdict"] == "skipped"}
    assert set(skipped) == set(refused), skipped
    assert all("AccessDeniedException" in reason for reason in skipped.values())
    targets = [t for t in plan["targets"] if t["verdict"] == "target"]
    assert len(targets) == FLEET - len(refused)
    for name in refused:  # left exactly as they were
        assert _alias(cp, name)["FunctionVersion"] == versions[name]
    first_version = {t["function_name"]: t["new_version"] for t in targets}

    # Every phase was a Map Run over the fleet, in batches of child executions.
    runs = _map_runs(cp, promoted.execution_arn)
    items = {label: [run["itemCounts"]["total"] for run in described] for label, described in runs.items()}
    assert items == {
        "AssessCandidates": [FLEET],
        "PrepareFunctionVersions": [FLEET],
        "SetTrafficWeight": [len(targets), len(targets)],
        "PromoteAliases": [len(targets)],
    }
    batches = -(-FLEET // FANOUT_BATCH_SIZE)
    assert runs["AssessCandidates"][0]["executionCounts"]["total"] == batches
    assert all(run["status"] == "SUCCEEDED" for described in runs.values() for run in described)
    # The parent's history does not grow with the fleet: the children's events are in their own.
    assert len(promoted.history) < 250, len(promoted.history)

    # What the rollout spent is counted, children included.
    usage = rollout_usage(cp, layer, promoted.execution_arn.rsplit(":", 1)[-1])
    children = sum(run["executionCounts"]["total"] for described in runs.values() for run in described)
    assert usage["child_executions"] == children
    assert usage["lambda:UpdateAlias"] == 3 * len(targets)  # two steps and the promotion
    assert usage["lambda:PublishVersion"] == len(targets)
    assert usage["lambda:GetFunction"] >= FLEET  # one per candidate at least: GetFunction's own bucket
    assert "lambda:ListTags" not in usage and "lambda:GetFunctionConfiguration" not in usage
    assert usage["transitions_parent"] > 0 and usage["transitions_children"] >= 3 * children

    # A bad push: the gating alarm fires during the first bake, and every function goes back.
    arn = start_rollout(
        cp, layer, "six==1.15.0\n", spec("[{weight = 10, bake_seconds = 600}]", '["fleet-broken"]', poll_seconds=5)
    )
    wait_for_state(cp, arn, "BakeAndWatch")
    cp.client("cloudwatch").put_metric_data(
        Namespace="Layershift/FleetTests",
        MetricData=[{"MetricName": "Broken", "Dimensions": [{"Name": "Alarm", "Value": "fleet-broken"}], "Value": 1}],
    )
    rolled_back = finish_rollout(cp, arn)  # the invariants over every function

    assert rolled_back.status == "FAILED" and rolled_back.error == "RolloutUnhealthy", rolled_back.lines
    assert "fleet-broken" in (rolled_back.cause or "")
    for name, version in first_version.items():
        alias = _alias(cp, name)
        assert alias["FunctionVersion"] == version and not alias.get("RoutingConfig", {}).get(
            "AdditionalVersionWeights"
        )
    assert "RestoreAliases" in rolled_back.states_entered()


def test_more_unprepared_targets_than_tolerated_roll_every_target_back(control_plane: ControlPlane, fault_plan) -> None:
    cp = control_plane
    layer = "fleet-strict"
    versions = _fleet(cp, layer, 6)
    refused = [f"{layer}-01", f"{layer}-04"]
    faults = _updates_refused(cp, refused)
    set_fault(fault_plan, layer, faults)
    try:
        rollout = run_rollout(cp, layer, "six==1.16.0\n", spec(extra="tolerated_failure_percent = 20"))
    finally:
        set_fault(fault_plan, layer, None)

    assert rollout.status == "FAILED" and rollout.error == "TooManyTargetsFailed", rollout.lines
    assert "2 of 6 targets (33.3%) could not be prepared, more than the 20% rollout.tolerated_failure_percent" in (
        rollout.cause or ""
    )
    assert "SetTrafficWeight" not in rollout.states_entered()
    bootstrap = _layers(cp, f"{layer}-00")
    for name, version in versions.items():  # every alias, and $LATEST, as they were
        assert _alias(cp, name)["FunctionVersion"] == version
        assert _layers(cp, name) == bootstrap


POOL = 4
POOLED = 'min_invocations = 12\nmax_extension_seconds = 4\nmax_error_rate_delta = 0.05\ninconclusive = "rollback"'


@pytest.mark.parametrize("breaking", [False, True], ids=["healthy", "breaking"])
def test_functions_with_too_little_traffic_of_their_own_are_judged_as_a_pool(
    control_plane: ControlPlane, breaking: bool
) -> None:
    """Four functions see a few new-version calls each, fewer than a verdict of their own needs; as a
    pool they have enough. A healthy pool promotes without waiting out the extension; an erroring
    one rolls back, though no function fails on its own numbers."""
    cp = control_plane
    layer = f"pool-{'bad' if breaking else 'ok'}"
    versions = _fleet(cp, layer, POOL, source=BREAKS_ON_REAL_SIX if breaking else None)
    with traffic(cp, *versions, pause=0.5):
        rollout = run_rollout(
            cp, layer, "six==1.16.0\n", spec("[{weight = 50, bake_seconds = 6}]", analysis=POOLED, poll_seconds=3)
        )

    checks = [
        json.loads(e["stateExitedEventDetails"]["output"])["bake"]
        for e in rollout.history
        if e["type"] == "TaskStateExited" and e["stateExitedEventDetails"]["name"] == "CheckHealth"
    ]
    if breaking:
        assert rollout.status == "FAILED" and rollout.error == "RolloutUnhealthy", rollout.lines
        assert "too little traffic for a verdict of their own, and as a pool: new version error rate" in (
            rollout.cause or ""
        )
        for name, version in versions.items():
            assert _alias(cp, name)["FunctionVersion"] == version
    else:
        assert rollout.status == "SUCCEEDED", rollout.lines
        last = checks[-1]
        assert last["verdict"] == "healthy" and "judged as a pool" in last["verdict_detail"]
        assert last["extended_seconds"] == 0  # the pool decided: no extension was needed


def test_throttles_under_aws_limits_are_absorbed(control_plane: ControlPlane, local_aws: LocalAws) -> None:
    """Lambda's shared 15 requests/s, with a neighbour's pipeline deploying beside the rollout (which
    paces itself at 15): whenever the rollout starts a burst of Lambda requests, the neighbour takes
    every request the account has for a second and a half, then rests as long. Requests are refused
    (TooManyRequestsException), retried with backoff, and none fails the rollout."""
    cp = control_plane
    layer = "throttled"
    versions = _fleet(cp, layer, 8)
    stop = threading.Event()

    def rollout_requests() -> int:  # admitted control-plane requests but the neighbour's own
        admitted = lambda_limits.stats()["admitted"]
        return sum(count for operation, count in admitted.items() if operation != lambda_limits.NEIGHBOUR)

    def neighbour() -> None:
        seen = 0
        while not stop.wait(0.01):
            if rollout_requests() == seen:
                continue
            holding_until = time.monotonic() + 1.5
            while time.monotonic() < holding_until and not stop.is_set():  # a deploy, as fast as it is let
                lambda_limits.spend_as_neighbour()
                time.sleep(0.002)
            stop.wait(1.5)
            seen = rollout_requests()

    local_aws.set_aws_limits(AwsLimits(control_rate=15, settle_seconds=0.5))
    deploying = threading.Thread(target=neighbour, daemon=True)
    deploying.start()
    try:
        arn = start_rollout(cp, layer, "six==1.16.0\n", spec("[{weight = 50, bake_seconds = 1}]"))
        described = wait_for_end(cp, arn, poll=1.0, timeout=600)
        stats = lambda_limits.stats()
    finally:
        stop.set()
        deploying.join(timeout=10)
        local_aws.set_aws_limits(None)
    rollout = finish_rollout(cp, arn)

    assert described["status"] == "SUCCEEDED", rollout.lines
    assert sum(stats["refused"].values()) > 0, stats  # the limit bit
    usage = rollout_usage(cp, layer, arn.rsplit(":", 1)[-1])
    assert usage.get("throttles", 0) > 0, usage  # and the control plane absorbed its share of them
    assert not any(
        "TooManyRequests" in (e.get("taskFailedEventDetails") or {}).get("error", "") for e in history_events(cp, arn)
    )
    for name in versions:
        assert _alias(cp, name)["FunctionVersion"] != versions[name]
