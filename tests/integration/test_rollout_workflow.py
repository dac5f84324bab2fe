"""The rollout workflow end to end: S3 push → EventBridge → StartRollout → the real ASL → handlers.

Every test ends by checking DESIGN.md's invariants (in `run_rollout`): no alias left split, the
lock released, the registry agreeing with Lambda, the pushed spec and the artifacts kept.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from datetime import datetime

import pytest

from layershift.controlplane import ControlPlane

from .support import (
    LOCK_WAIT_SECONDS,
    Rollout,
    create_alarm,
    create_consumer,
    finish_rollout,
    publish_bootstrap_layer,
    run_rollout,
    session_function,
    spec,
    start_rollout,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.network]


def _alias(cp: ControlPlane, function: str, alias: str = "live") -> dict:
    return cp.client("lambda").get_alias(FunctionName=function, Name=alias)


def _plan(cp: ControlPlane, layer: str, execution_arn: str) -> dict:
    name = execution_arn.rsplit(":", 1)[-1]
    body = cp.client("s3").get_object(Bucket=cp.bucket, Key=f"rollouts/{layer}/{name}/plan.json")["Body"].read()
    return json.loads(body)


def test_happy_path_is_promoted(control_plane: ControlPlane) -> None:
    cp = control_plane
    first = publish_bootstrap_layer(cp, "happy")
    old = create_consumer(cp, "happy-fn", [first])
    create_alarm(cp, "happy-fn-errors", "happy-fn")

    rollout = run_rollout(
        cp,
        "happy",
        "six==1.16.0\n",
        spec("[{weight = 10, bake_seconds = 1}, {weight = 50, bake_seconds = 1}]", '["happy-fn-errors"]'),
    )

    assert rollout.status == "SUCCEEDED", rollout.lines
    alias = _alias(cp, "happy-fn")
    assert alias["FunctionVersion"] != old
    promoted = cp.client("ssm").get_parameter(Name="/layershift/happy/arn")["Parameter"]["Value"]
    assert promoted.endswith(":2") and promoted != first
    config = cp.client("lambda").get_function_configuration(FunctionName="happy-fn", Qualifier=alias["FunctionVersion"])
    assert [entry["Arn"] for entry in config["Layers"]] == [promoted]
    # Each traffic step was applied and checked, in order, and the new version really serves.
    entered = rollout.states_entered()
    assert entered.count("SetTrafficWeight") == 2 and "CheckHealth" in entered
    assert entered.index("BuildLayer") < entered.index("PublishLayerVersion") < entered.index("PromoteLayer")
    invoked = cp.client("lambda").invoke(FunctionName="happy-fn", Qualifier="live", Payload=b"{}")
    assert json.loads(invoked["Payload"].read()) == {"six": "1.16.0"}


def test_a_duplicated_push_event_starts_nothing_new(control_plane: ControlPlane) -> None:
    cp = control_plane
    first = run_rollout(cp, "dedupe", "six==1.16.0\n", spec())
    assert first.status == "SUCCEEDED"
    lam = cp.client("lambda")
    start_rollout = session_function(cp, "StartRolloutFunction")
    head = cp.client("s3").head_object(Bucket=cp.bucket, Key="layers/dedupe/requirements.txt")
    event = {
        "version": "0",
        "source": "aws.s3",
        "detail-type": "Object Created",
        "time": "2026-11-23T00:00:00Z",
        "detail": {
            "bucket": {"name": cp.bucket},
            "object": {"key": "layers/dedupe/requirements.txt", "version-id": head.get("VersionId")},
        },
    }
    answer = json.loads(lam.invoke(FunctionName=start_rollout, Payload=json.dumps(event).encode())["Payload"].read())
    assert answer["started"] is False
    assert answer["execution_name"] == first.execution_arn.rsplit(":", 1)[-1]


BREAKS_ON_REAL_SIX = "import six\n\ndef handler(event, context):\n    return {'answer': six.legacy_answer()}\n"


def test_errors_from_the_new_layer_reach_the_alarm_and_roll_back(control_plane: ControlPlane) -> None:
    """No scripted alarm state: the new layer really breaks the function, the invokes that the
    weighted alias sends to the new version really fail, and the alarm's own definition fires."""
    cp = control_plane
    first = publish_bootstrap_layer(cp, "alarmed")
    old = create_consumer(cp, "alarmed-fn", [first], source=BREAKS_ON_REAL_SIX)
    create_alarm(cp, "alarmed-fn-errors", "alarmed-fn")
    outcomes: Counter[tuple[str, bool]] = Counter()
    stop = threading.Event()

    def traffic() -> None:
        lam = cp.client("lambda")
        while not stop.is_set():
            answer = lam.invoke(FunctionName="alarmed-fn", Qualifier="live", Payload=b"{}")
            outcomes[(answer["ExecutedVersion"], "FunctionError" in answer)] += 1
            stop.wait(0.05)

    driver = threading.Thread(target=traffic)
    driver.start()
    try:
        started = time.monotonic()
        rollout = run_rollout(
            cp, "alarmed", "six==1.16.0\n", spec("[{weight = 50, bake_seconds = 120}]", '["alarmed-fn-errors"]')
        )
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        driver.join()

    assert rollout.status == "FAILED"
    assert rollout.error == "RolloutUnhealthy"
    assert "alarmed-fn-errors" in (rollout.cause or "") and "ALARM" in (rollout.cause or "")
    assert elapsed < 120, "the rollout waited for the whole bake instead of acting on the alarm"
    # Only the new version failed; the old one served cleanly throughout.
    assert outcomes[(old, True)] == 0 and outcomes[(old, False)] > 0
    assert sum(count for (version, failed), count in outcomes.items() if version != old and failed) > 0
    alias = _alias(cp, "alarmed-fn")
    assert alias["FunctionVersion"] == old and not (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights")
    latest = cp.client("lambda").get_function_configuration(FunctionName="alarmed-fn")
    assert [entry["Arn"] for entry in latest["Layers"]] == [first]
    with pytest.raises(cp.client("ssm").exceptions.ParameterNotFound):
        cp.client("ssm").get_parameter(Name="/layershift/alarmed/arn")


def test_build_failure_publishes_nothing_and_releases_the_lock(control_plane: ControlPlane) -> None:
    cp = control_plane
    rollout = run_rollout(cp, "unbuildable", "layershift-no-such-package-anywhere==1.0.0\n", spec())
    assert rollout.status == "FAILED"
    assert rollout.error == "BuildFailed"
    assert "layershift-no-such-package-anywhere" in (rollout.cause or "")
    assert cp.client("lambda").list_layer_versions(LayerName="unbuildable")["LayerVersions"] == []
    assert "PublishLayerVersion" not in rollout.states_entered()


@pytest.mark.parametrize(
    ("requirements", "config", "error", "fragment"),
    [
        ("requests>=2\n", None, "InvalidRequirements", 'line 1: "requests>=2" is not pinned'),
        ("six==1.16.0\n--index-url http://evil.example/simple\n", None, "InvalidRequirements", "line 2"),
        ("six==1.16.0\n", "[rollout]\nsteps = [{weight = 150, bake_seconds = 1}]\n", "InvalidLayerSpec", "weight"),
        ("six==1.16.0\n", '[rollout]\nalarms = ["no-such-alarm"]\n', "InvalidLayerSpec", "no-such-alarm"),
    ],
)
def test_bad_input_is_rejected_before_any_build(
    control_plane: ControlPlane, requirements: str, config: str | None, error: str, fragment: str
) -> None:
    cp = control_plane
    layer = f"rejected-{abs(hash((requirements, config))) % 10_000}"
    rollout = run_rollout(cp, layer, requirements, config)
    assert rollout.status == "FAILED"
    assert rollout.error == error
    assert fragment in (rollout.cause or "")
    entered = rollout.states_entered()
    assert "BuildLayer" not in entered and "AcquireLayerLock" not in entered
    artifacts = cp.client("s3").list_objects_v2(Bucket=cp.bucket, Prefix=f"artifacts/{layer}/")
    assert artifacts.get("KeyCount", 0) == 0


def test_functions_that_cannot_take_part_are_skipped_with_a_reason(control_plane: ControlPlane) -> None:
    cp = control_plane
    first = publish_bootstrap_layer(cp, "mixed")
    good_old = create_consumer(cp, "mixed-good", [first])
    create_consumer(cp, "mixed-no-alias", [first], alias=None)
    cp.client("lambda").create_function(
        FunctionName="mixed-image",
        Role=cp.client("iam").get_role(RoleName="consumer-role")["Role"]["Arn"],
        PackageType="Image",
        Code={"ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/app:1"},
        Tags={"layershift:layer": "mixed"},
    )
    before_no_alias = cp.client("lambda").get_function_configuration(FunctionName="mixed-no-alias")["Layers"]

    rollout = run_rollout(cp, "mixed", "six==1.16.0\n", spec())

    assert rollout.status == "SUCCEEDED", rollout.lines
    plan = {t["function_name"]: t for t in _plan(cp, "mixed", rollout.execution_arn)["targets"]}
    assert plan["mixed-good"]["verdict"] == "target"
    assert plan["mixed-no-alias"]["verdict"] == "skipped"
    assert "no alias 'live'" in plan["mixed-no-alias"]["reason"]
    assert plan["mixed-image"]["verdict"] == "skipped"
    assert "container image" in plan["mixed-image"]["reason"]
    assert _alias(cp, "mixed-good")["FunctionVersion"] != good_old
    after_no_alias = cp.client("lambda").get_function_configuration(FunctionName="mixed-no-alias")["Layers"]
    assert after_no_alias == before_no_alias


def test_a_layer_locked_by_another_rollout_is_refused_and_the_lock_left_alone(control_plane: ControlPlane) -> None:
    """A lock whose holder never ends (a stale owner, lease not run out): the push waits for it,
    LockWaitSeconds at most (the session deploys a short one), then is refused and says what to do."""
    cp = control_plane
    ddb = cp.client("dynamodb")
    ddb.put_item(
        TableName=cp.table,
        Item={
            "pk": {"S": "LAYER#busy"},
            "sk": {"S": "LOCK"},
            "owner": {"S": "busy-other-rollout"},
            "acquired_at": {"S": "2026-11-23T00:00:00+00:00"},
            "expires_at": {"N": str(int(time.time()) + 3600)},
        },
    )
    rollout = run_rollout(cp, "busy", "six==1.16.0\n", spec())
    assert rollout.status == "FAILED"
    assert rollout.error == "LayerLocked"
    cause = rollout.cause or ""
    assert "still locked by rollout busy-other-rollout (holding it since 2026-11-23T00:00:00+00:00" in cause
    assert f"the most LockWaitSeconds ({LOCK_WAIT_SECONDS} s) allows" in cause
    assert "`layershift abort busy`" in cause and "`layershift unlock busy`" in cause
    entered = rollout.states_entered()
    assert entered.count("WaitForLayerLock") >= 2 and entered.count("AcquireLayerLock") >= 3
    # `push --wait` and the demo say whom the push waits for
    waiting = [line for line in rollout.lines if line.startswith("waiting for the layer lock")]
    assert len(waiting) == entered.count("WaitForLayerLock")
    assert waiting[0].startswith(
        "waiting for the layer lock: rollout busy-other-rollout holds it since 2026-11-23T00:00:00+00:00; "
        "asking again in "
    )
    assert waiting[0].endswith("(attempt 1)") and waiting[1].endswith("(attempt 2)")
    assert "FindReusableBuild" not in entered and "BuildLayer" not in entered
    attempts = [e["timestamp"] for e in rollout.history if _entered(e) == "AcquireLayerLock"]
    assert (attempts[-1] - attempts[0]).total_seconds() >= LOCK_WAIT_SECONDS - 1
    lock = ddb.get_item(TableName=cp.table, Key={"pk": {"S": "LAYER#busy"}, "sk": {"S": "LOCK"}})["Item"]
    assert lock["owner"]["S"] == "busy-other-rollout"
    name = rollout.execution_arn.rsplit(":", 1)[-1]
    record = ddb.get_item(TableName=cp.table, Key={"pk": {"S": "LAYER#busy"}, "sk": {"S": f"ROLLOUT#{name}"}})["Item"]
    assert record["status"]["S"] == "rejected"


def _entered(event: dict) -> str | None:
    return (event.get("stateEnteredEventDetails") or {}).get("name")


def _exits(rollout: Rollout, state: str) -> list[tuple[datetime, dict]]:
    """(timestamp, output) of every exit from ``state``."""
    return [
        (e["timestamp"], json.loads(e["stateExitedEventDetails"].get("output") or "{}"))
        for e in rollout.history
        if (e.get("stateExitedEventDetails") or {}).get("name") == state
    ]


def _lock_owner(cp: ControlPlane, layer: str) -> str | None:
    item = (
        cp.client("dynamodb")
        .get_item(TableName=cp.table, Key={"pk": {"S": f"LAYER#{layer}"}, "sk": {"S": "LOCK"}}, ConsistentRead=True)
        .get("Item")
    )
    return item["owner"]["S"] if item else None


def test_a_second_push_waits_for_the_first_and_rolls_out_after_it(control_plane: ControlPlane) -> None:
    """Two different pushes of one layer in quick succession: the first takes the lock, the second
    waits, and rolls out once the first has ended; their locked spans never overlap."""
    cp = control_plane
    create_consumer(cp, "queue-fn", [publish_bootstrap_layer(cp, "queue")])
    first_arn = start_rollout(cp, "queue", "six==1.16.0\n", spec())
    first_name = first_arn.rsplit(":", 1)[-1]
    # The second push must come after the first took the lock: before that, the first would be
    # superseded by it (a newer push of the layer) and only the second would roll out.
    wait_until(lambda: _lock_owner(cp, "queue") == first_name, timeout=120, interval=0.05)
    second_arn = start_rollout(cp, "queue", "six==1.17.0\n", spec())

    first = finish_rollout(cp, first_arn)
    second = finish_rollout(cp, second_arn)
    assert first.status == "SUCCEEDED", first.lines
    assert second.status == "SUCCEEDED", second.lines

    # The second one waited for the first, by name.
    attempts = _exits(second, "AcquireLayerLock")
    assert attempts[0][1]["lock_wait"]["holder"] == first_name
    assert "WaitForLayerLock" in second.states_entered()
    assert "lock_wait" not in attempts[-1][1]
    # Their locked spans never overlap: the second took the lock only after the first let it go.
    first_locked = _exits(first, "AcquireLayerLock")[-1][0]
    (first_release,) = [e["timestamp"] for e in first.history if _entered(e) == "ReleaseLayerLock"]
    second_locked = attempts[-1][0]
    first_work = [e["timestamp"] for e in first.history if _entered(e) in FORWARD_STATES]
    second_work = [e["timestamp"] for e in second.history if _entered(e) in FORWARD_STATES]
    assert first_locked <= min(first_work) and max(first_work) <= first_release
    assert first_release <= second_locked <= min(second_work)

    # The later push is what runs now.
    promoted = cp.client("ssm").get_parameter(Name="/layershift/queue/arn")["Parameter"]["Value"]
    assert promoted.endswith(":3")
    invoked = cp.client("lambda").invoke(FunctionName="queue-fn", Qualifier="live", Payload=b"{}")
    assert json.loads(invoked["Payload"].read()) == {"six": "1.17.0"}
    assert _lock_owner(cp, "queue") is None


FORWARD_STATES = frozenset(
    {
        "FindReusableBuild",
        "BuildLayer",
        "PublishLayerVersion",
        "PlanRollout",
        "PrepareFunctionVersions",
        "SetTrafficWeight",
        "CheckHealth",
        "PromoteLayer",
    }
)
