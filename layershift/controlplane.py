"""Finding a layershift control plane (a deployed stack, or the local emulation) and talking to it.

The CLI does nothing a user with the aws cli could not: it uploads to the artifact bucket, and it
reads Step Functions, DynamoDB and Lambda.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from layershift_core.trigger import (
    ATTEMPT_METADATA,
    CONFIG_VERSION_METADATA,
    NO_CONFIG,
    PUSHED_BY_METADATA,
    attempt_of,
    execution_name,
)
from layershift_core.usage import from_record

LOCAL_STATE_FILE = Path(".layershift/local/control-plane.json")

# Stack outputs that locate the control plane (template.yaml Outputs).
OUTPUT_KEYS = {
    "bucket": "ArtifactBucketName",
    "table": "RegistryTableName",
    "state_machine_arn": "RolloutStateMachineArn",
    "topic_arn": "NotificationTopicArn",
    "layer_name_prefix": "LayerNamePrefix",
    "approve_function": "ApproveRolloutFunctionName",
    "dead_letter_queue_url": "TriggerDeadLetterQueueUrl",
    "lambda_budget": "LambdaRequestsPerSecond",
}


# What a local control plane's state file keeps (`layershift local` writes it, --local reads it).
_LOCAL_FIELDS = (*OUTPUT_KEYS, "region", "endpoint_url")


class ControlPlaneNotFound(RuntimeError):
    pass


@dataclass
class ControlPlane:
    bucket: str
    table: str
    state_machine_arn: str
    topic_arn: str | None = None
    layer_name_prefix: str = ""
    approve_function: str | None = None
    dead_letter_queue_url: str | None = None
    lambda_budget: str | None = None
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

    def settings(self) -> Any:
        """The control plane's settings, as its functions see them."""
        from layershift_core.settings import Settings

        return Settings(
            bucket=self.bucket,
            table=self.table,
            topic_arn=self.topic_arn,
            state_machine_arn=self.state_machine_arn,
            layer_name_prefix=self.layer_name_prefix,
        )

    def published_name(self, layer: str) -> str:
        """The Lambda layer name the control plane publishes ``layer`` under."""
        return self.layer_name_prefix + layer

    @contextlib.contextmanager
    def domain_clients(self) -> Iterator[None]:
        """Point the domain package's AWS clients at this control plane for the block. Their Lambda
        requests take slots of the control plane's shared budget (its LambdaRequestsPerSecond output),
        so a scan from the command line does not starve the rollouts."""
        from layershift_core import aws, pacing

        wanted = {"AWS_DEFAULT_REGION": self.region, "LAYERSHIFT_TABLE": self.table}
        if self.lambda_budget:
            wanted["LAYERSHIFT_LAMBDA_BUDGET"] = self.lambda_budget
        if self.endpoint_url:
            wanted.update(
                AWS_ENDPOINT_URL=self.endpoint_url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing"
            )
        saved = {key: os.environ.get(key) for key in wanted}
        os.environ.update({key: value for key, value in wanted.items() if value})
        aws.client.cache_clear()
        pacing.reset()
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            aws.client.cache_clear()
            pacing.reset()

    def save_local(self, path: Path = LOCAL_STATE_FILE) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = {k: getattr(self, k) for k in _LOCAL_FIELDS}
        path.write_text(json.dumps(fields, indent=2))


def from_outputs(outputs: dict[str, str], region: str | None, endpoint_url: str | None = None) -> ControlPlane:
    missing = [key for key in ("bucket", "table", "state_machine_arn") if OUTPUT_KEYS[key] not in outputs]
    if missing:
        raise ControlPlaneNotFound(f"the stack has no outputs {[OUTPUT_KEYS[k] for k in missing]}")
    return ControlPlane(
        **{name: outputs.get(key) for name, key in OUTPUT_KEYS.items() if key in outputs},  # type: ignore[arg-type]
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
    # The status of an execution of that name that existed before the upload (None: the push starts one).
    # The trigger starts nothing for bytes that already have an execution, so --wait must not report it.
    existing_status: str | None = None


def caller_identity(cp: ControlPlane) -> str | None:
    """The pusher's IAM identity, recorded on the upload (`layershift-pushed-by`)."""
    try:
        return str(cp.client("sts").get_caller_identity()["Arn"])
    except (BotoCoreError, ClientError):  # no STS permission or no credentials: the event's requester is recorded
        return None


def execution_arn(cp: ControlPlane, name: str) -> str:
    return cp.state_machine_arn.replace(":stateMachine:", ":execution:") + f":{name}"


def execution_status(cp: ControlPlane, name: str) -> str | None:
    """The status of the execution called ``name``, or None when there is none."""
    sfn = cp.client("stepfunctions")
    try:
        return str(sfn.describe_execution(executionArn=execution_arn(cp, name))["status"])
    except sfn.exceptions.ExecutionDoesNotExist:
        return None


def _current_config(cp: ControlPlane, layer: str, pinned: str | None = None) -> bytes | None:
    """The layer.toml a push of the layer's requirements rolls out with: the version its upload pins
    (a CodeCommit copy's own commit's, or none), else the current one, as the trigger reads it."""
    if pinned == NO_CONFIG:
        return None
    s3 = cp.client("s3")
    version = {"VersionId": pinned} if pinned else {}
    try:
        return bytes(s3.get_object(Bucket=cp.bucket, Key=f"layers/{layer}/layer.toml", **version)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def _upload(cp: ControlPlane, layer: str, requirements: bytes, metadata: dict[str, str]) -> str | None:
    response = cp.client("s3").put_object(
        Bucket=cp.bucket,
        Key=f"layers/{layer}/requirements.txt",
        Body=requirements,
        ContentType="text/plain",
        Metadata=metadata,
    )
    return response.get("VersionId")


def push(cp: ControlPlane, layer: str, requirements: bytes, config: bytes | None = None) -> PushResult:
    """Upload layer.toml (when given) then requirements.txt; the upload of the latter starts the rollout."""
    if config is not None:
        cp.client("s3").put_object(
            Bucket=cp.bucket, Key=f"layers/{layer}/layer.toml", Body=config, ContentType="application/toml"
        )
    else:
        config = _current_config(cp, layer)
    name = execution_name(layer, requirements, config)
    existing = execution_status(cp, name)  # read before the upload: what was there is not this push's
    pusher = caller_identity(cp)
    version = _upload(cp, layer, requirements, {PUSHED_BY_METADATA: pusher} if pusher else {})
    return PushResult(layer, version, name, execution_arn(cp, name), existing)


class NothingToRetry(RuntimeError):
    pass


def retry(cp: ControlPlane, layer: str) -> PushResult:
    """Start a new rollout of the layer's current bytes: upload them again with the next attempt
    number that has no execution yet (it goes into the execution name's hash)."""
    s3 = cp.client("s3")
    key = f"layers/{layer}/requirements.txt"
    try:
        current = s3.get_object(Bucket=cp.bucket, Key=key)
    except s3.exceptions.NoSuchKey:
        raise NothingToRetry(f"layer {layer!r} has never been pushed: push it with `layershift push`") from None
    requirements = current["Body"].read()
    config = _current_config(cp, layer, current.get("Metadata", {}).get(CONFIG_VERSION_METADATA))
    attempt = attempt_of(current.get("Metadata", {}))
    while (status := execution_status(cp, execution_name(layer, requirements, config, attempt))) is not None:
        if status == "RUNNING":
            raise NothingToRetry(
                f"rollout {execution_name(layer, requirements, config, attempt)} of these bytes is still running: "
                f"follow it with `layershift get {layer} --watch`, or stop it with `layershift abort {layer}`"
            )
        attempt += 1
    name = execution_name(layer, requirements, config, attempt)
    # The upload keeps where the bytes came from (a CodeCommit copy's source and commit id); who
    # pushed is now who retries.
    metadata = {**current.get("Metadata", {}), ATTEMPT_METADATA: str(attempt)}
    metadata.pop(PUSHED_BY_METADATA, None)
    if pusher := caller_identity(cp):
        metadata[PUSHED_BY_METADATA] = pusher
    version = _upload(cp, layer, requirements, metadata)
    return PushResult(layer, version, name, execution_arn(cp, name))


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


class HistoryTail:
    """An execution's history as it grows: ``new_events`` fetches only the events after the last
    one it returned, newest first in small pages, so following a long rollout stays cheap."""

    FIRST_PAGE = 100  # Step Functions' default page
    NEXT_PAGE = 10  # a poll usually finds a few new events

    def __init__(self, cp: ControlPlane, execution_arn: str) -> None:
        self._sfn = cp.client("stepfunctions")
        self._arn = execution_arn
        self.last_id = 0

    def new_events(self) -> list[dict[str, Any]]:
        fresh: list[dict[str, Any]] = []
        page_size = self.NEXT_PAGE if self.last_id else self.FIRST_PAGE
        kwargs: dict[str, Any] = {"executionArn": self._arn, "reverseOrder": True, "maxResults": page_size}
        while True:
            page = self._sfn.get_execution_history(**kwargs)
            for event in page["events"]:
                if event["id"] <= self.last_id:
                    break
                fresh.append(event)
            else:
                if page.get("nextToken"):
                    kwargs["nextToken"] = page["nextToken"]
                    continue
            break
        # A page token that counts from the newest event (as the local emulation's does) shifts when
        # events arrive between two pages of one call, and shows some events twice: keep each once.
        fresh = sorted({event["id"]: event for event in fresh}.values(), key=lambda event: event["id"])
        if fresh:
            self.last_id = fresh[-1]["id"]
        return fresh


def _output(event: dict[str, Any], key: str) -> dict[str, Any]:
    details = event.get(key) or {}
    try:
        return json.loads(details.get("output") or details.get("input") or "{}")
    except ValueError:
        return {}


def promoted_parameters(cp: ControlPlane, layer: str) -> dict[str, str]:
    """``/layershift/<layer>/arn`` and each ``/layershift/<layer>/<runtime>/<architecture>/arn``: name -> ARN."""
    ssm = cp.client("ssm")
    names = []
    filters = [{"Key": "Name", "Option": "BeginsWith", "Values": [f"/layershift/{layer}/"]}]
    for page in ssm.get_paginator("describe_parameters").paginate(ParameterFilters=filters):
        names += [p["Name"] for p in page["Parameters"]]
    found = {}
    for start in range(0, len(names), 10):  # GetParameters takes 10 names at a time
        for parameter in ssm.get_parameters(Names=names[start : start + 10])["Parameters"]:
            found[parameter["Name"]] = parameter["Value"]
    return dict(sorted(found.items()))


def describe_event(event: dict[str, Any]) -> str | None:
    """One line for an operator, for the history events worth a line."""
    kind = event["type"]
    if kind == "TaskStateEntered" or kind == "MapStateEntered":
        name = event["stateEnteredEventDetails"]["name"]
        return {
            "ValidateRequest": "validating requirements.txt and layer.toml",
            "BuildLayer": "building the layer in CodeBuild",
            "PublishLayerVersion": "publishing the layer version",
            "AssessCandidates": "assessing the candidates (a Map Run)",
            "PrepareFunctionVersions": "preparing function versions with the new layer (a Map Run)",
            "AwaitApproval": "WAITING FOR APPROVAL before 100%: layershift approve|reject <layer>",
            "PromoteAliases": "promoting every alias to 100% (a Map Run)",
            "RestoreAliases": "ROLLING BACK: restoring every target (the restore state machine's Map Run)",
        }.get(name)
    if kind in ("TaskStateExited", "MapStateExited"):
        details = event["stateExitedEventDetails"]
        name = details["name"]
        output = _output(event, "stateExitedEventDetails")
        if "error" in output:  # left through a Catch: its TaskFailed line said what happened
            return None
        if name == "ValidateRequest" and "rollout" in output:
            rollout = output["rollout"]
            steps = ", ".join(
                f"{s['weight']}% for {s['bake_seconds']}s" for s in rollout.get("spec", {}).get("steps", [])
            )
            return f"valid: steps [{steps}] then 100%"
        if name == "AcquireLayerLock" and output.get("lock_wait"):
            wait = output["lock_wait"]
            since = f" since {wait['holder_since']}" if wait.get("holder_since") else ""
            return (
                f"waiting for the layer lock: rollout {wait.get('holder')} holds it{since}; "
                f"asking again in {wait.get('retry_seconds')}s (attempt {wait.get('attempts', 1)})"
            )
        if name == "FindCandidates":
            candidates = output.get("candidates") or {}
            platforms = ", ".join(f"{label} {n}" for label, n in (candidates.get("platforms") or {}).items())
            return f"candidates: {candidates.get('count', 0)} function(s)" + (f" ({platforms})" if platforms else "")
        if name == "FindReusableBuild" and output.get("matrix"):
            matrix = output["matrix"]
            targets = ", ".join(t["runtime"] + "/" + t["architecture"] for t in matrix.get("targets", []))
            line = f"targets ({matrix.get('source')}): {targets}"
            reused = [f"{v['arn']} for {', '.join(v.get('targets', []))}" for v in output.get("layer_versions", [])]
            if reused:
                line += "; reusing " + "; ".join(reused)
            building = ", ".join(t["runtime"] + "/" + t["architecture"] for t in matrix.get("to_build", []))
            return line + (f"; building {building}" if building else "; nothing to build")
        if name == "BuildLayer":
            build = output.get("matrix", {}).get("codebuild", {})
            return f"build {build.get('status', '?')} ({build.get('id', '')})"
        if name == "PublishLayerVersion":
            versions = [v for v in output.get("layer_versions", []) if not v.get("reused")]
            return "published " + "; ".join(f"{v['arn']} ({v.get('variant')})" for v in versions)
        if name == "ShareLayerVersions" and output.get("sharing"):
            sharing = output["sharing"]
            return (
                f"shared: {sharing.get('layer_versions', 0)} layer version(s) carry exactly [share]'s "
                f"{sharing.get('grants', 0)} grant(s) ({sharing.get('added', 0)} added, "
                f"{sharing.get('removed', 0)} removed)"
            )
        if name in ("PlanRollout", "RecordPreparedVersions"):
            plan = output.get("plan", {})
            if name == "RecordPreparedVersions":
                return f"prepared: {plan.get('target_count', 0)} target(s), {plan.get('skipped_count', 0)} skipped"
            line = f"plan: {plan.get('target_count', 0)} target(s)"
            if plan.get("pilot_count"):
                line += f" ({plan['pilot_count']} pilot(s) first)"
            line += f", {plan.get('skipped_count', 0)} skipped"
            firing = (output.get("preflight") or {}).get("alarms_in_alarm")
            if firing:
                line += f"; pre-flight: already in ALARM (gate again only after a state change): {', '.join(firing)}"
            return line
        if name == "StartBake":
            step = (output.get("bake") or {}).get("step", {})
            return f"traffic step: {step.get('wave', 'main')} wave at {step.get('weight')}% on the new version"
        if name == "CheckHealth":
            bake = output.get("bake") or {}
            verdict = bake.get("verdict") or "healthy"
            detail = bake.get("verdict_detail") or "no gating alarm fired"
            return f"  check {bake.get('checks')}: {verdict}: {detail}"
        if name == "PromoteLayer":
            return "PROMOTED: every target alias is 100% on the new version"
        if name == "RollBack":
            summary = (output.get("restore") or {}).get("summary") or {}
            restored = summary.get("restored", 0)
            return f"rolled back: {restored} target(s) restored" if restored else "rolled back (nothing was shifted)"
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


def wait_for_end(cp: ControlPlane, execution_arn: str, poll: float = 0.5, timeout: float = 1800) -> dict[str, Any]:
    """Wait, quietly, until the execution ends; return describe_execution's answer."""
    sfn = cp.client("stepfunctions")
    deadline = time.monotonic() + timeout
    while (described := sfn.describe_execution(executionArn=execution_arn))["status"] == "RUNNING":
        if time.monotonic() > deadline:
            raise TimeoutError(f"{execution_arn} still running after {timeout:.0f}s")
        time.sleep(poll)
    return described


def follow(
    cp: ControlPlane, execution_arn: str, emit: Callable[[str], None] = print, poll: float = 0.5, timeout: float = 1800
) -> dict[str, Any]:
    """Print the execution's progress until it ends; return describe_execution's answer."""
    sfn = cp.client("stepfunctions")
    history = HistoryTail(cp, execution_arn)
    deadline = time.monotonic() + timeout
    while True:
        described = sfn.describe_execution(executionArn=execution_arn)
        for event in history.new_events():
            line = describe_event(event)
            if line:
                emit(line)
        if described["status"] != "RUNNING":
            return described
        if time.monotonic() > deadline:
            raise TimeoutError(f"{execution_arn} still running after {timeout:.0f}s")
        time.sleep(poll)


def rollout_usage(cp: ControlPlane, layer: str, rollout_id: str) -> dict[str, float]:
    """What rollout ``rollout_id`` of ``layer`` has spent so far, from its registry record (``usage:<counter>``)."""
    item = cp.client("dynamodb").get_item(
        TableName=cp.table,
        Key={"pk": {"S": f"LAYER#{layer}"}, "sk": {"S": f"ROLLOUT#{rollout_id}"}},
        ConsistentRead=True,
    )["Item"]
    return from_record({name: float(value["N"]) for name, value in item.items() if "N" in value})


def executions(cp: ControlPlane, limit: int = 20) -> Iterator[dict[str, Any]]:
    sfn = cp.client("stepfunctions")
    response = sfn.list_executions(stateMachineArn=cp.state_machine_arn, maxResults=limit)
    yield from response["executions"]


def running_rollouts(cp: ControlPlane, layer: str) -> list[dict[str, Any]]:
    """The RUNNING executions that roll out ``layer`` (their name is the rollout id)."""
    sfn = cp.client("stepfunctions")
    found: list[dict[str, Any]] = []
    paginator = sfn.get_paginator("list_executions")
    for page in paginator.paginate(stateMachineArn=cp.state_machine_arn, statusFilter="RUNNING"):
        for execution in page["executions"]:
            described = sfn.describe_execution(executionArn=execution["executionArn"])
            with contextlib.suppress(ValueError, AttributeError):
                if json.loads(described.get("input") or "{}").get("request", {}).get("layer") == layer:
                    found.append(execution)
    return found


def abort(cp: ControlPlane, layer: str, reason: str) -> list[dict[str, Any]]:
    """Ask every running rollout of ``layer`` to stop and roll back. Returns those executions."""
    from layershift_core import control

    running = running_rollouts(cp, layer)
    with cp.domain_clients():
        for execution in running:
            control.abort(cp.settings(), layer, execution["name"], reason)
    return running


def _decide(cp: ControlPlane, decision: str, layer: str, reason: str = "") -> str:
    """Approve or reject through the stack's ApproveRolloutFunction: invoking it is the approval, so
    IAM (the approver role) decides who may. Returns the rollout id."""
    from layershift_core.errors import NothingWaiting

    if not cp.approve_function:
        raise ControlPlaneNotFound("the stack has no ApproveRolloutFunctionName output: deploy this version first")
    answer = cp.client("lambda").invoke(
        FunctionName=cp.approve_function,
        Payload=json.dumps({"decision": decision, "layer": layer, "reason": reason}).encode(),
    )
    payload = json.loads(answer["Payload"].read() or b"null")
    if answer.get("FunctionError"):
        error = payload if isinstance(payload, dict) else {}
        if error.get("errorType") == NothingWaiting.__name__:
            raise NothingWaiting(str(error.get("errorMessage")))
        raise RuntimeError(f"ApproveRollout failed: {error.get('errorType')}: {error.get('errorMessage')}")
    return str(payload["rollout_id"])


def approve(cp: ControlPlane, layer: str) -> str:
    return _decide(cp, "approve", layer)


def reject(cp: ControlPlane, layer: str, reason: str) -> str:
    return _decide(cp, "reject", layer, reason)
