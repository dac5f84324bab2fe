"""Finding a layershift control plane (a deployed stack, or the local emulation) and talking to it.

The CLI does nothing a user with the aws cli could not: it uploads to the artifact bucket, and it
reads Step Functions, DynamoDB and Lambda.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from layershift_core.trigger import execution_name

LOCAL_STATE_FILE = Path(".layershift/local/control-plane.json")

# Stack outputs that locate the control plane (template.yaml Outputs).
OUTPUT_KEYS = {
    "bucket": "ArtifactBucketName",
    "table": "RegistryTableName",
    "state_machine_arn": "RolloutStateMachineArn",
    "topic_arn": "NotificationTopicArn",
}


class ControlPlaneNotFound(RuntimeError):
    pass


@dataclass
class ControlPlane:
    bucket: str
    table: str
    state_machine_arn: str
    topic_arn: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    def client(self, service: str) -> Any:
        if service not in self._clients:
            kwargs: dict[str, Any] = {"region_name": self.region}
            if self.endpoint_url:
                kwargs.update(
                    endpoint_url=self.endpoint_url, aws_access_key_id="testing", aws_secret_access_key="testing"
                )
            self._clients[service] = boto3.client(service, **kwargs)
        return self._clients[service]

    def save_local(self, path: Path = LOCAL_STATE_FILE) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = {
            k: getattr(self, k) for k in ("bucket", "table", "state_machine_arn", "topic_arn", "region", "endpoint_url")
        }
        path.write_text(json.dumps(fields, indent=2))


def from_outputs(outputs: dict[str, str], region: str | None, endpoint_url: str | None = None) -> ControlPlane:
    missing = [key for key in ("bucket", "table", "state_machine_arn") if OUTPUT_KEYS[key] not in outputs]
    if missing:
        raise ControlPlaneNotFound(f"the stack has no outputs {[OUTPUT_KEYS[k] for k in missing]}")
    return ControlPlane(
        **{name: outputs.get(key) for name, key in OUTPUT_KEYS.items()},  # type: ignore[arg-type]
        region=region,
        endpoint_url=endpoint_url,
    )


def from_stack(stack_name: str, region: str | None = None) -> ControlPlane:
    cfn = boto3.client("cloudformation", region_name=region)
    try:
        stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
    except Exception as exc:
        raise ControlPlaneNotFound(f"no stack {stack_name!r} ({exc})") from None
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    return from_outputs(outputs, region or cfn.meta.region_name)


def from_local(path: Path = LOCAL_STATE_FILE) -> ControlPlane:
    if not path.exists():
        raise ControlPlaneNotFound(
            f"no local control plane ({path} is missing): start one with `layershift local` in another terminal"
        )
    data = json.loads(path.read_text())
    return ControlPlane(**data)


def stack_name_from_samconfig(path: Path = Path("samconfig.toml")) -> str | None:
    import tomllib

    if not path.exists():
        return None
    config = tomllib.loads(path.read_text())
    return config.get("default", {}).get("deploy", {}).get("parameters", {}).get("stack_name") or config.get(
        "default", {}
    ).get("global", {}).get("parameters", {}).get("stack_name")


# -- push ---------------------------------------------------------------------------------------
@dataclass
class PushResult:
    layer: str
    requirements_version: str | None
    execution_name: str
    execution_arn: str


def push(cp: ControlPlane, layer: str, requirements: bytes, config: bytes | None = None) -> PushResult:
    """Upload layer.toml (when given) then requirements.txt; the upload of the latter starts the rollout."""
    s3 = cp.client("s3")
    if config is not None:
        s3.put_object(Bucket=cp.bucket, Key=f"layers/{layer}/layer.toml", Body=config, ContentType="application/toml")
    response = s3.put_object(
        Bucket=cp.bucket, Key=f"layers/{layer}/requirements.txt", Body=requirements, ContentType="text/plain"
    )
    if config is None:
        try:
            body = s3.get_object(Bucket=cp.bucket, Key=f"layers/{layer}/layer.toml")["Body"].read()
        except s3.exceptions.NoSuchKey:
            body = None
        config = body
    name = execution_name(layer, requirements, config)
    arn = cp.state_machine_arn.replace(":stateMachine:", ":execution:") + f":{name}"
    return PushResult(layer, response.get("VersionId"), name, arn)


def wait_for_execution(cp: ControlPlane, execution_arn: str, appear_timeout: float = 60) -> None:
    """Wait until the execution that a push starts exists (EventBridge delivers asynchronously)."""
    sfn = cp.client("stepfunctions")
    deadline = time.monotonic() + appear_timeout
    while True:
        try:
            sfn.describe_execution(executionArn=execution_arn)
            return
        except sfn.exceptions.ExecutionDoesNotExist:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no execution {execution_arn} started within {appear_timeout:.0f}s of the push; "
                    "check the EventBridge rule and the StartRollout function's logs"
                ) from None
            time.sleep(0.5)


# -- watching an execution ------------------------------------------------------------------------
def history_events(cp: ControlPlane, execution_arn: str) -> list[dict[str, Any]]:
    sfn = cp.client("stepfunctions")
    events: list[dict[str, Any]] = []
    for page in sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn):
        events.extend(page["events"])
    return events


def _output(event: dict[str, Any], key: str) -> dict[str, Any]:
    details = event.get(key) or {}
    try:
        return json.loads(details.get("output") or details.get("input") or "{}")
    except ValueError:
        return {}


def describe_event(event: dict[str, Any]) -> str | None:
    """One line for an operator, for the history events worth a line."""
    kind = event["type"]
    if kind == "TaskStateEntered" or kind == "MapStateEntered":
        name = event["stateEnteredEventDetails"]["name"]
        return {
            "ValidateRequest": "validating requirements.txt and layer.toml",
            "BuildLayer": "building the layer in CodeBuild",
            "PublishLayerVersion": "publishing the layer version",
            "PlanRollout": "planning the targets",
            "PrepareFunctionVersions": "preparing function versions with the new layer",
            "RollBack": "ROLLING BACK",
        }.get(name)
    if kind in ("TaskStateExited", "MapStateExited"):
        details = event["stateExitedEventDetails"]
        name = details["name"]
        output = _output(event, "stateExitedEventDetails")
        if name == "ValidateRequest" and "rollout" in output:
            rollout = output["rollout"]
            steps = ", ".join(
                f"{s['weight']}% for {s['bake_seconds']}s" for s in rollout.get("spec", {}).get("steps", [])
            )
            return f"valid: build key {rollout.get('build_key', '?')[:12]}, steps [{steps}] then 100%"
        if name == "FindReusableBuild" and output.get("build", {}).get("reused"):
            return f"reusing published {output['layer_version']['arn']} (same build key)"
        if name == "BuildLayer":
            build = output.get("build", {}).get("codebuild", {})
            return f"build {build.get('status', '?')} ({build.get('id', '')})"
        if name == "PublishLayerVersion":
            return f"published {output.get('layer_version', {}).get('arn')}"
        if name == "PlanRollout":
            plan = output.get("plan", {})
            return f"plan: {plan.get('target_count', 0)} target(s), {plan.get('skipped_count', 0)} skipped"
        if name == "SetTrafficWeight":
            return f"traffic step: {output.get('step', {}).get('weight')}% of each alias on the new version"
        if name == "CheckHealth":
            return f"  health check {output.get('checks')}: healthy"
        if name == "PromoteLayer":
            return "PROMOTED: every target alias is 100% on the new version"
        if name == "RollBack":
            outcome = output.get("outcome", {})
            return f"rolled back {', '.join(outcome.get('restored', [])) or '(nothing was shifted)'}"
    if kind in ("TaskFailed", "LambdaFunctionFailed"):
        details = event.get("taskFailedEventDetails") or event.get("lambdaFunctionFailedEventDetails") or {}
        cause = details.get("cause", "")
        with contextlib.suppress(ValueError, AttributeError):
            cause = json.loads(cause).get("errorMessage", cause)
        return f"  ! {details.get('error')}: {str(cause)[:300]}"
    if kind == "ExecutionSucceeded":
        return "execution SUCCEEDED"
    if kind == "ExecutionFailed":
        details = event.get("executionFailedEventDetails", {})
        return f"execution FAILED: {details.get('error')}: {details.get('cause', '')[:400]}"
    return None


def follow(
    cp: ControlPlane, execution_arn: str, emit: Callable[[str], None] = print, poll: float = 0.5, timeout: float = 1800
) -> dict[str, Any]:
    """Print the execution's progress until it ends; return describe_execution's answer."""
    sfn = cp.client("stepfunctions")
    seen = 0
    deadline = time.monotonic() + timeout
    while True:
        described = sfn.describe_execution(executionArn=execution_arn)
        events = history_events(cp, execution_arn)
        for event in events[seen:]:
            line = describe_event(event)
            if line:
                emit(line)
        seen = len(events)
        if described["status"] != "RUNNING":
            return described
        if time.monotonic() > deadline:
            raise TimeoutError(f"{execution_arn} still running after {timeout:.0f}s")
        time.sleep(poll)


def executions(cp: ControlPlane, limit: int = 20) -> Iterator[dict[str, Any]]:
    sfn = cp.client("stepfunctions")
    response = sfn.list_executions(stateMachineArn=cp.state_machine_arn, maxResults=limit)
    yield from response["executions"]
