"""The rollout workflow end to end: S3 push → EventBridge → StartRollout → the real ASL → handlers.

Every test ends by checking DESIGN.md's invariants (in `run_rollout`): no alias left split, the
lock released, the registry agreeing with Lambda, the pushed spec and the artifacts kept.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest

from layershift.controlplane import ControlPlane

from .support import create_alarm, create_consumer, publish_bootstrap_layer, run_rollout, spec

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
    start_rollout = next(
        f["FunctionName"] for f in lam.list_functions()["Functions"] if "StartRollout" in f["FunctionName"]
    )
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
    assert "locked by rollout busy-other-rollout" in (rollout.cause or "")
    assert "BuildLayer" not in rollout.states_entered()
    lock = ddb.get_item(TableName=cp.table, Key={"pk": {"S": "LAYER#busy"}, "sk": {"S": "LOCK"}})["Item"]
    assert lock["owner"]["S"] == "busy-other-rollout"
    name = rollout.execution_arn.rsplit(":", 1)[-1]
    record = ddb.get_item(TableName=cp.table, Key={"pk": {"S": "LAYER#busy"}, "sk": {"S": f"ROLLOUT#{name}"}})["Item"]
    assert record["status"]["S"] == "rejected"
