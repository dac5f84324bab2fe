"""Every AWS call the control plane's functions make in a rollout is allowed by the template's IAM
policies as deployed, evaluated for real (conditions, tags, policy variables, the bucket policy as
a resource policy, trust policies) by @cloud-copilot/iam-simulate (tests/iam).

Two rollouts on two functions each: one promoted through an approval, one rolled back by its
gating alarm, so the restore path runs too; then the scheduled usage report. The local functions
record each call, its parameters and who signed it (`layershift/local/call_recorder.py`): the
execution role, or the tenant role's session with its layershift:layer tag, which must be the one
to change every target.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from layershift import controlplane
from layershift.controlplane import ControlPlane
from layershift.local.deploy import DeployedStack
from layershift.local.server import LocalAws
from tests.iam.deployed import DeployedAccount
from tests.iam.recorded_calls import Translated, iam_requests, load_calls
from tests.iam.simulator import evaluate, require_evaluator

from .support import (
    create_alarm,
    create_consumer,
    finish_rollout,
    publish_bootstrap_layer,
    session_function,
    spec,
    start_rollout,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.network]

# Calls the two rollouts must have made (function logical id, IAM action): without them the
# evaluation would prove nothing about the rollout's mutations.
REQUIRED = {
    ("PublishLayerFunction", "lambda:PublishLayerVersion"),
    ("PublishLayerFunction", "s3:PutObject"),
    ("ShareLayerVersionsFunction", "lambda:ListLayerVersions"),
    ("ShareLayerVersionsFunction", "lambda:GetLayerVersionPolicy"),
    ("ShareLayerVersionsFunction", "lambda:AddLayerVersionPermission"),
    ("ShareLayerVersionsFunction", "lambda:RemoveLayerVersionPermission"),
    ("PrepareVersionsFunction", "sts:AssumeRole"),
    ("PrepareVersionsFunction", "sts:TagSession"),
    ("PrepareVersionsFunction", "lambda:UpdateFunctionConfiguration"),
    ("PrepareVersionsFunction", "lambda:PublishVersion"),
    ("ShiftAliasesFunction", "lambda:UpdateAlias"),
    ("ApproveRolloutFunction", "states:SendTaskSuccess"),
    ("PromoteLayerFunction", "ssm:PutParameter"),
    ("OnAlarmFunction", "states:SendTaskFailure"),
    ("RestoreTargetsFunction", "lambda:UpdateAlias"),
    ("RestoreTargetsFunction", "lambda:UpdateFunctionConfiguration"),
    ("ReportUsageFunction", "lambda:ListFunctions"),
    ("ReportUsageFunction", "lambda:ListAliases"),
    ("ReportUsageFunction", "lambda:GetLayerVersionPolicy"),
    ("ReportUsageFunction", "ssm:GetParametersByPath"),
    ("ReportUsageFunction", "cloudformation:ListStacks"),
    ("ReportUsageFunction", "s3:PutObject"),
    # after each ending, the rollout's record is archived in history/, then its registry items expire
    ("NotifyFunction", "s3:PutObject"),
    ("NotifyFunction", "dynamodb:DeleteItem"),
    ("ReleaseLockFunction", "s3:PutObject"),
}
MUTATIONS = {"lambda:UpdateFunctionConfiguration", "lambda:PublishVersion", "lambda:UpdateAlias"}
QUIET_SECONDS = 3.0


def _logical_id(function_name: str) -> str:
    match = re.search(r"-([A-Za-z]+Function)-", function_name)
    return match.group(1) if match else function_name


def _wait_for_the_signal_wait(cp: ControlPlane, layer: str, kind: str) -> None:
    """Until the rollout's task token is recorded (`WaitForSignal`): an approval or an alarm ends it then."""

    def recorded() -> bool:
        key = {"pk": {"S": f"LAYER#{layer}"}, "sk": {"S": "WAIT"}}
        item = cp.client("dynamodb").get_item(TableName=cp.table, Key=key).get("Item") or {}
        return item.get("kind", {}).get("S") == kind

    wait_until(recorded, timeout=300)


def _promoted_through_an_approval(cp: ControlPlane) -> None:
    """Shared with an account ([share]): the version made by hand carries a statement to remove."""
    layer = "iam-promoted"
    first = publish_bootstrap_layer(cp, layer)
    cp.client("lambda").add_layer_version_permission(
        LayerName=cp.published_name(layer),
        VersionNumber=1,
        StatementId="by-hand",
        Action="lambda:GetLayerVersion",
        Principal="*",
    )
    create_consumer(cp, f"{layer}-fn", [first])
    create_consumer(cp, f"{layer}-shared", [first], tags={"layershift:layer": f"other {layer}"})
    create_alarm(cp, f"{layer}-errors", f"{layer}-fn")
    config = spec(alarms=f'["{layer}-errors"]', extra="approval = true") + '[share]\naccounts = ["111122223333"]\n'
    arn = start_rollout(cp, layer, "six==1.16.0\n", config)
    _wait_for_the_signal_wait(cp, layer, "approval")
    controlplane.approve(cp, layer)
    rollout = finish_rollout(cp, arn)
    assert rollout.status == "SUCCEEDED", rollout.lines


def _rolled_back_by_its_alarm(cp: ControlPlane) -> None:
    layer = "iam-rolled-back"
    first = publish_bootstrap_layer(cp, layer)
    create_consumer(cp, f"{layer}-fn", [first])
    create_consumer(cp, f"{layer}-shared", [first], tags={"layershift:layer": f"{layer} other"})
    create_alarm(cp, f"{layer}-errors", f"{layer}-fn")
    arn = start_rollout(
        cp, layer, "six==1.16.0\n", spec("[{weight = 50, bake_seconds = 600}]", f'["{layer}-errors"]', poll_seconds=300)
    )
    _wait_for_the_signal_wait(cp, layer, "bake")
    cp.client("cloudwatch").set_alarm_state(AlarmName=f"{layer}-errors", StateValue="ALARM", StateReason="IAM test")
    rollout = finish_rollout(cp, arn)
    assert rollout.status == "FAILED" and rollout.error == "RolloutUnhealthy", rollout.lines


def _usage_reported(cp: ControlPlane) -> None:
    """The scheduled usage report of every layer, after both rollouts (invoked synchronously: a scan of
    a busy session's fleet can pause longer than the quiet that ends the recording)."""
    answer = cp.client("lambda").invoke(FunctionName=session_function(cp, "ReportUsageFunction"), Payload=b"{}")
    assert "FunctionError" not in answer, answer["Payload"].read()


def _wait_until_quiet(call_log: Path) -> None:
    """After the executions end, the reaper still runs (EventBridge): until no call for a while."""
    last = (-1, time.monotonic())

    def quiet() -> bool:
        nonlocal last
        size = call_log.stat().st_size if call_log.exists() else 0
        if size != last[0]:
            last = (size, time.monotonic())
        return time.monotonic() - last[1] >= QUIET_SECONDS

    wait_until(quiet, timeout=120, interval=0.5)


def _as_a_tenant(call: dict[str, Any], tenant_role: str) -> bool:
    signer = call["principal"]
    return signer.get("role_arn") == tenant_role and bool((signer.get("session_tags") or {}).get("layershift:layer"))


def _denials(translated: list[Translated]) -> list[str]:
    distinct = list(dict.fromkeys(t.request for t in translated))
    decisions = dict(zip(distinct, evaluate(distinct), strict=True))
    lines: dict[str, None] = {}
    for item in translated:
        decision = decisions[item.request]
        if not decision.allowed:
            lines[f"- {item.describe()}\n    {decision.explain()}"] = None
    return list(lines)


def test_every_call_of_a_rollout_is_allowed_by_the_deployed_policies(
    control_plane: ControlPlane,
    deployed_stack: DeployedStack,
    local_aws: LocalAws,
    call_log: Path,
    record_property: Callable[[str, Any], None],
) -> None:
    require_evaluator()
    cp = control_plane
    started, clock = time.time(), time.monotonic()
    _promoted_through_an_approval(cp)
    _rolled_back_by_its_alarm(cp)
    _usage_reported(cp)
    _wait_until_quiet(call_log)

    calls = load_calls(call_log, since=started)
    account = DeployedAccount(cp.client, local_aws.account_id, local_aws.region, deployed_stack.bucket_policies)
    translated = [item for call in calls for item in iam_requests(call, account)]
    made = {(_logical_id(item.call["function"]), item.request.action) for item in translated}
    assert made >= REQUIRED, f"the rollouts did not make {sorted(REQUIRED - made)}"
    # Every change to a target is made as the tenant role, in a session tagged with a layer (which
    # layer may change which function is the evaluation's to say).
    tenant = deployed_stack.arns["TenantRole"]
    strays = [
        item.describe()
        for item in translated
        if item.request.action in MUTATIONS and not _as_a_tenant(item.call, tenant)
    ]
    assert not strays, "Lambda changes not made as a tenant of a layer:\n" + "\n".join(strays)

    denied = _denials(translated)
    assert not denied, "calls of the rollout the deployed IAM policies deny:\n" + "\n".join(denied)
    record_property(
        "summary",
        f"IAM: {len(calls)} calls of two rollouts, {len({t.request for t in translated})} distinct IAM requests, "
        f"all allowed ({time.monotonic() - clock:.0f} s)",
    )
