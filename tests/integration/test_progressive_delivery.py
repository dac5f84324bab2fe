"""Progressive delivery on the local AWS: canary analysis, instant abort, waves, approval and abort.

Each test ends with DESIGN.md's invariants (`finish_rollout` checks them): every target alias 100%
on its old or new version with no routing left, the lock released, the registry agreeing with
Lambda, the pushed spec and the artifacts kept.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from layershift import controlplane
from layershift.controlplane import ControlPlane
from layershift_core.errors import NothingWaiting

from .support import (
    create_alarm,
    create_consumer,
    finish_rollout,
    publish_bootstrap_layer,
    run_rollout,
    spec,
    start_rollout,
    wait_for_state,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.network]

# The bootstrap layer's six has legacy_answer(); the real six from PyPI does not.
BREAKS_ON_REAL_SIX = "import six\n\ndef handler(event, context):\n    return {'answer': six.legacy_answer()}\n"
# The old version fails (the bug the new layer fixes); the new one serves.
FIXED_BY_REAL_SIX = (
    "import six\n\ndef handler(event, context):\n"
    "    if six.__version__ == 'bootstrap':\n        raise RuntimeError('the bug the new layer fixes')\n"
    "    return {'six': six.__version__}\n"
)
CANARY = "min_invocations = 5\nmax_error_rate_delta = 0.05\nmax_p99_duration_ratio = 50\nmax_extension_seconds = 2"


def _alias(cp: ControlPlane, function: str, alias: str = "live") -> dict:
    return cp.client("lambda").get_alias(FunctionName=function, Name=alias)


def _routing(alias: dict) -> dict:
    return (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}


class Traffic(Counter[tuple[str, str, bool]]):
    """Invocation counts by (function, executed version, failed), with the failures' payloads."""

    def __init__(self) -> None:
        super().__init__()
        self.failures: dict[tuple[str, str], list[str]] = {}

    def failed(self, function: str, version: str | None) -> int:
        return self[(function, str(version), True)]

    def why(self, function: str, version: str | None) -> str:
        payloads = self.failures.get((function, str(version)), [])
        return f"{len(payloads)} failed invocations of {function}:{version}, the first: {payloads[:3]}"


@contextmanager
def traffic(cp: ControlPlane, *functions: str, pause: float = 0.02) -> Iterator[Traffic]:
    """Invoke each function's `live` alias in a loop, counting what ran and what failed."""
    counts = Traffic()
    stop = threading.Event()

    def drive() -> None:
        lam = cp.client("lambda")
        while not stop.is_set():
            for name in functions:
                answer = lam.invoke(FunctionName=name, Qualifier="live", Payload=b"{}")
                version, failed = answer["ExecutedVersion"], "FunctionError" in answer
                counts[(name, version, failed)] += 1
                if failed:
                    counts.failures.setdefault((name, version), []).append(answer["Payload"].read().decode()[:300])
            stop.wait(pause)

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    try:
        yield counts
    finally:
        stop.set()
        driver.join(timeout=30)


def _checks(rollout) -> list[dict]:
    """The bake as every CheckHealth that completed left it."""
    return [
        json.loads(e["stateExitedEventDetails"]["output"])["bake"]
        for e in rollout.history
        if e["type"] == "TaskStateExited" and e["stateExitedEventDetails"]["name"] == "CheckHealth"
    ]


def test_new_version_errors_roll_back_at_the_first_check(control_plane: ControlPlane) -> None:
    cp = control_plane
    first = publish_bootstrap_layer(cp, "canary-bad")
    old = create_consumer(cp, "canary-bad-fn", [first], source=BREAKS_ON_REAL_SIX)
    with traffic(cp, "canary-bad-fn") as counts:
        started = time.monotonic()
        rollout = run_rollout(
            cp, "canary-bad", "six==1.16.0\n", spec("[{weight = 50, bake_seconds = 120}]", analysis=CANARY)
        )
        elapsed = time.monotonic() - started

    assert rollout.status == "FAILED", rollout.lines
    assert rollout.error == "RolloutUnhealthy"
    assert "canary analysis at 50%" in (rollout.cause or "")
    assert "canary-bad-fn" in (rollout.cause or "")
    assert rollout.states_entered().count("CheckHealth") == 1, "the verdict came later than the first check"
    assert elapsed < 120
    assert counts.failed("canary-bad-fn", old) == 0, counts.why("canary-bad-fn", old)
    assert _alias(cp, "canary-bad-fn")["FunctionVersion"] == old


def test_old_version_errors_never_block_the_fix(control_plane: ControlPlane) -> None:
    """The CodeDeploy pain: an alarm already in ALARM because of the old version must not block
    the rollout that fixes it, and the old version's errors must not fail the canary analysis."""
    cp = control_plane
    first = publish_bootstrap_layer(cp, "canary-fix")
    old = create_consumer(cp, "canary-fix-fn", [first], source=FIXED_BY_REAL_SIX)
    create_alarm(cp, "canary-fix-fn-errors", "canary-fix-fn")
    cloudwatch = cp.client("cloudwatch")
    with traffic(cp, "canary-fix-fn") as counts:
        wait_until(
            lambda: (
                cloudwatch.describe_alarms(AlarmNames=["canary-fix-fn-errors"])["MetricAlarms"][0]["StateValue"]
                == "ALARM"
            ),
            timeout=30,
        )
        rollout = run_rollout(
            cp,
            "canary-fix",
            "six==1.16.0\n",
            spec("[{weight = 50, bake_seconds = 2}]", '["canary-fix-fn-errors"]', analysis=CANARY),
        )

    assert rollout.status == "SUCCEEDED", (rollout.error, rollout.cause)
    assert any("already in ALARM" in line and "canary-fix-fn-errors" in line for line in rollout.lines)
    assert counts.failed("canary-fix-fn", old) > 0, "the old version should have kept failing"
    new = _alias(cp, "canary-fix-fn")["FunctionVersion"]
    assert new != old and counts.failed("canary-fix-fn", new) == 0, counts.why("canary-fix-fn", new)
    assert _checks(rollout)[-1]["verdict"] == "healthy"


@pytest.mark.parametrize("policy", ["promote", "rollback"])
def test_low_traffic_is_inconclusive_then_follows_the_spec(control_plane: ControlPlane, policy: str) -> None:
    cp = control_plane
    layer = f"quiet-{policy}"
    first = publish_bootstrap_layer(cp, layer)
    old = create_consumer(cp, f"{layer}-fn", [first])
    analysis = f'min_invocations = 5\nmax_extension_seconds = 2\ninconclusive = "{policy}"'
    rollout = run_rollout(cp, layer, "six==1.16.0\n", spec("[{weight = 50, bake_seconds = 1}]", analysis=analysis))

    checks = _checks(rollout)
    assert all(check["verdict"] == "inconclusive" for check in checks)
    assert checks[-1]["extended_seconds"] == 2, "the bake was not extended before the policy applied"
    assert "too little traffic" in checks[-1]["verdict_detail"]
    if policy == "promote":
        assert rollout.status == "SUCCEEDED", rollout.lines
        assert _alias(cp, f"{layer}-fn")["FunctionVersion"] != old
    else:
        assert rollout.status == "FAILED"
        assert rollout.error == "RolloutInconclusive"
        assert _alias(cp, f"{layer}-fn")["FunctionVersion"] == old


def test_an_alarm_ends_the_bake_at_once(control_plane: ControlPlane) -> None:
    """The bake is 10 minutes and the next poll 5 minutes away: only the alarm's state-change event,
    through EventBridge, can end it in seconds. Measures alarm change → every alias restored."""
    cp = control_plane
    first = publish_bootstrap_layer(cp, "instant")
    old = create_consumer(cp, "instant-fn", [first], source=BREAKS_ON_REAL_SIX)
    create_alarm(cp, "instant-fn-errors", "instant-fn")
    restored_at: list[float] = []

    def watch_alias() -> None:
        lam = cp.client("lambda")
        shifted = False
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            alias = lam.get_alias(FunctionName="instant-fn", Name="live")
            if _routing(alias):
                shifted = True
            elif shifted and alias["FunctionVersion"] == old:
                restored_at.append(time.time())
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch_alias, daemon=True)
    watcher.start()
    with traffic(cp, "instant-fn"):
        started = time.monotonic()
        rollout = run_rollout(
            cp,
            "instant",
            "six==1.16.0\n",
            spec("[{weight = 50, bake_seconds = 600}]", '["instant-fn-errors"]', poll_seconds=300),
        )
        elapsed = time.monotonic() - started
    watcher.join(timeout=10)

    assert rollout.status == "FAILED"
    assert rollout.error == "RolloutUnhealthy"
    assert "instant-fn-errors went into ALARM" in (rollout.cause or "")
    assert "CheckHealth" not in rollout.states_entered(), "a poll, not the alarm, ended the bake"
    assert elapsed < 120
    alarm = cp.client("cloudwatch").describe_alarms(AlarmNames=["instant-fn-errors"])["MetricAlarms"][0]
    changed = alarm["StateUpdatedTimestamp"].timestamp()
    assert restored_at, "the alias was never seen restored"
    seconds = restored_at[0] - changed
    print(f"\nalarm state change -> every alias restored: {seconds:.2f} s")
    assert 0 <= seconds < 15


def test_a_failing_pilot_keeps_the_rest_untouched(control_plane: ControlPlane) -> None:
    cp = control_plane
    first = publish_bootstrap_layer(cp, "waves")
    pilot_old = create_consumer(
        cp,
        "waves-pilot",
        [first],
        source=BREAKS_ON_REAL_SIX,
        tags={"layershift:layer": "waves", "layershift:wave": "pilot"},
    )
    rest = {name: create_consumer(cp, name, [first]) for name in ("waves-rest-a", "waves-rest-b")}
    before = {name: _alias(cp, name)["RevisionId"] for name in rest}
    with traffic(cp, "waves-pilot", "waves-rest-a"):
        rollout = run_rollout(
            cp,
            "waves",
            "six==1.16.0\n",
            spec("[{weight = 20, bake_seconds = 60}, {weight = 60, bake_seconds = 60}]", analysis=CANARY),
        )

    assert rollout.status == "FAILED", rollout.lines
    assert "waves-pilot" in (rollout.cause or "")
    shifts = [
        json.loads(e["stateExitedEventDetails"]["output"])["bake"]["step"]
        for e in rollout.history
        if e["type"] == "TaskStateExited" and e["stateExitedEventDetails"]["name"] == "StartBake"
    ]
    assert shifts and all(step["wave"] == "pilot" for step in shifts)
    for name, old in rest.items():
        alias = _alias(cp, name)
        assert alias["RevisionId"] == before[name], f"{name}'s alias was changed"
        assert alias["FunctionVersion"] == old and not _routing(alias)
    assert _alias(cp, "waves-pilot")["FunctionVersion"] == pilot_old


@pytest.mark.parametrize("answer", ["approve", "reject"])
def test_approval_before_full_traffic(control_plane: ControlPlane, answer: str) -> None:
    cp = control_plane
    layer = f"gated-{answer}"
    first = publish_bootstrap_layer(cp, layer)
    old = create_consumer(cp, f"{layer}-fn", [first])
    arn = start_rollout(cp, layer, "six==1.16.0\n", spec(extra="approval = true"))
    wait_for_state(cp, arn, "AwaitApproval")
    wait_until(
        lambda: (
            (
                cp.client("dynamodb")
                .get_item(TableName=cp.table, Key={"pk": {"S": f"LAYER#{layer}"}, "sk": {"S": "WAIT"}})
                .get("Item")
                or {}
            )
            .get("kind", {})
            .get("S")
            == "approval"
        )
    )
    alias = _alias(cp, f"{layer}-fn")
    assert alias["FunctionVersion"] == old and list(_routing(alias).values()) == [0.5], "not held before 100%"
    if answer == "approve":
        controlplane.approve(cp, layer)
    else:
        controlplane.reject(cp, layer, "not tonight")
    rollout = finish_rollout(cp, arn)

    with pytest.raises(NothingWaiting, match=f"no rollout of layer '{layer}' is waiting for approval"):
        controlplane.approve(cp, layer)  # the decision went through ApproveRolloutFunction, once
    if answer == "approve":
        assert rollout.status == "SUCCEEDED", rollout.lines
        assert _alias(cp, f"{layer}-fn")["FunctionVersion"] != old
    else:
        assert rollout.status == "FAILED"
        assert rollout.error == "ApprovalRejected"
        assert "not tonight" in (rollout.cause or "")
        assert _alias(cp, f"{layer}-fn")["FunctionVersion"] == old


ABORT_STATES = [
    "ValidateRequest",
    "AcquireLayerLock",
    "FindReusableBuild",
    "BuildLayer",
    "PublishLayerVersion",
    "ShareLayerVersions",
    "PlanRollout",
    "PrepareFunctionVersions",
    "SetTrafficWeight",
    "BakeAndWatch",
    "CheckHealth",
    "AwaitApproval",
    "PromoteLayer",
]


@pytest.mark.parametrize("state", ABORT_STATES)
def test_abort_in_any_state_leaves_no_alias_split(control_plane: ControlPlane, state: str) -> None:
    cp = control_plane
    # States up to the publish need a build of their own; later ones reuse the layer's published build.
    own_build = ABORT_STATES.index(state) <= ABORT_STATES.index("PublishLayerVersion")
    layer = f"abort-{state.lower()}" if own_build else "abort-late"
    names = {f["FunctionName"] for f in cp.client("lambda").list_functions()["Functions"]}
    if f"{layer}-fn" not in names:
        create_consumer(cp, f"{layer}-fn", [publish_bootstrap_layer(cp, layer)])
    old = _alias(cp, f"{layer}-fn")["FunctionVersion"]
    approval = "true" if state == "AwaitApproval" else "false"
    config = spec("[{weight = 50, bake_seconds = 2}]", extra=f"approval = {approval}\n# aborted at {state}")
    arn = start_rollout(cp, layer, "six==1.16.0\n", config)
    wait_for_state(cp, arn, state)
    running = controlplane.abort(cp, layer, f"abort test at {state}")
    rollout = finish_rollout(cp, arn)

    alias = _alias(cp, f"{layer}-fn")
    assert not _routing(alias)
    if state == "PromoteLayer" and rollout.status == "SUCCEEDED":
        return  # the abort came after promotion began: too late, and the layer is whole on the new version
    assert running, f"the rollout had already ended when it was aborted at {state}"
    assert rollout.status == "FAILED"
    assert rollout.error == "RolloutAborted", (rollout.error, rollout.cause)
    assert f"abort test at {state}" in (rollout.cause or "")
    assert alias["FunctionVersion"] == old
