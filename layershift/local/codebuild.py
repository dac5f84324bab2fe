"""``codebuild:startBuild`` and ``codebuild:startBuild.sync`` for the local Step Functions.

The emulated Step Functions interpreter has no CodeBuild integration, and the emulated CodeBuild
runs nothing (its builds always "succeed"). This adapter runs the layer build for real, the way
the project's inline buildspec does in AWS:

* ``startBuild`` records the build in the emulated CodeBuild (so ``BatchGetBuilds`` and
  ``ListBuildsForProject`` show it with its true status) and starts a local "build container": a
  subprocess running ``python3 -m layershift_core.builder.build_job`` with ``PYTHONPATH`` set to
  the unzipped ``python/`` folder of the layer named by the project's
  ``LAYERSHIFT_CORE_LAYER_ARN``, the project's environment variables plus the task's
  ``EnvironmentVariablesOverride``, and ``AWS_ENDPOINT_URL`` pointing at the local AWS;
* the BUILD phase runs the buildspec's ``build`` commands in one bash shell, as CodeBuild does, the
  build job's command replaced by the local build container's; at the end the values of the
  buildspec's ``env: exported-variables`` are read from that shell and returned as the build's
  ``exportedEnvironmentVariables`` (``Build.ExportedEnvironmentVariables`` of the ``.sync``
  result), as CodeBuild does. A buildspec without the build job's command runs only that command;
* the ``.sync`` pattern waits for the build. Success returns AWS's shape,
  ``{"Build": {"Id", "Arn", "BuildStatus": "SUCCEEDED", "Phases": [...], ...}}``. Failure fails
  the task with ``States.TaskFailed`` and the same ``{"Build": ...}`` JSON as Cause, as Step
  Functions does; the failed phase's context message carries the build's last log lines;
* stopping the execution stops the build; the project's ``TimeoutInMinutes`` times it out.

Each build writes a log file under ``<state_dir>/logs/codebuild/<project>/<build uuid>.log``
and, when the project's log group exists, the same lines to CloudWatch Logs.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from botocore.exceptions import ClientError
from moto.awslambda.models import lambda_backends
from moto.codebuild import models as codebuild_models
from moto.codebuild import responses as codebuild_responses
from moto.codebuild.models import codebuild_backends
from moto.stepfunctions.parser.api import HistoryEventType, TaskFailedEventDetails, TaskTimedOutEventDetails
from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import CustomErrorName
from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
    FailureEvent,
    FailureEventException,
)
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import StatesErrorName
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (
    StatesErrorNameType,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_task import state_task_factory
from moto.stepfunctions.parser.asl.component.state.exec.state_task.credentials import StateCredentials
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import state_task_service_factory
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.resource import (
    ResourceCondition,
    ResourceRuntimePart,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_callback import (
    StateTaskServiceCallback,
)
from moto.stepfunctions.parser.asl.eval.environment import Environment
from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails
from moto.stepfunctions.parser.asl.utils.boto_client import boto_client_for

LOG = logging.getLogger(__name__)

BUILD_COMMAND: Final[tuple[str, ...]] = ("-m", "layershift_core.builder.build_job")
BUILD_COMMAND_TEXT: Final[str] = "python3 -m layershift_core.builder.build_job"
CORE_LAYER_VARIABLE: Final[str] = "LAYERSHIFT_CORE_LAYER_ARN"
DEFAULT_PYTHON: Final[str] = "3.13"
LAST_LINES: Final[int] = 25
MAX_CAUSE_LOG_CHARS: Final[int] = 6000
MAX_CAUSE_CHARS: Final[int] = 32768
ERROR_PREFIX: Final[str] = "CodeBuild"
_SYNC_POLL_SECONDS: Final[float] = 0.5

# StartBuild request members a Task state may pass (PascalCase, as Step Functions documents them).
_START_BUILD_PARAMETERS: Final[set[str]] = {
    "ProjectName",
    "EnvironmentVariablesOverride",
    "SourceVersion",
    "ArtifactsOverride",
    "BuildspecOverride",
    "TimeoutInMinutesOverride",
    "QueuedTimeoutInMinutesOverride",
    "ComputeTypeOverride",
    "ImageOverride",
    "IdempotencyToken",
    "LogsConfigOverride",
    "PrivilegedModeOverride",
}
# Host variables a build needs to reach PyPI from this machine (proxies, certificates, pip).
_PASSTHROUGH_PREFIXES: Final[tuple[str, ...]] = ("PIP_", "UV_")
_PASSTHROUGH: Final[set[str]] = {
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "TZ",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
}
_PHASES_AFTER_BUILD: Final[tuple[str, ...]] = ("POST_BUILD", "UPLOAD_ARTIFACTS", "FINALIZING")


class BuildSetupError(RuntimeError):
    """The local build container could not be provisioned (INSTALL phase)."""


@dataclass
class _Settings:
    state_dir: Path | None = None
    endpoint_url: str | None = None
    fault_plan: Path | None = None

    def resolved_state_dir(self) -> Path:
        if self.state_dir is not None:
            return self.state_dir
        configured = os.environ.get("LAYERSHIFT_STATE_DIR")
        return Path(configured) if configured else Path(tempfile.gettempdir()) / "layershift-local"

    def resolved_endpoint(self) -> str:
        if self.endpoint_url:
            return self.endpoint_url
        port = os.environ.get("MOTO_PORT", "5000")
        return f"http://127.0.0.1:{port}"


_settings = _Settings()
_originals: dict[str, Any] = {}
_builds: dict[str, LocalBuild] = {}
_builds_lock = threading.Lock()
_layer_lock = threading.Lock()


# ---------------------------------------------------------------------------------------- the build


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat()


@dataclass
class LocalBuild:
    """One build run by the local build container, mirrored into the emulated CodeBuild."""

    build_id: str
    arn: str
    project_name: str
    account_id: str
    region: str
    metadata: dict[str, Any]
    environment: dict[str, str]
    python_version: str
    timeout_minutes: int
    log_path: Path
    log_group: str | None
    buildspec: dict[str, Any] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    stop_requested: threading.Event = field(default_factory=threading.Event)
    process: subprocess.Popen[bytes] | None = None
    lines: list[str] = field(default_factory=list)
    _phase_started: dt.datetime | None = None

    @property
    def status(self) -> str:
        return str(self.metadata["buildStatus"])

    # ---- log

    def log(self, line: str) -> None:
        self.lines.append(line)
        with self.log_path.open("a", encoding="utf-8") as stream:
            stream.write(line + "\n")

    def container_log(self, message: str) -> None:
        self.log(f"[Container] {_now():%Y/%m/%d %H:%M:%S.%f} {message}")

    def last_lines(self, count: int = LAST_LINES) -> list[str]:
        interesting = [line for line in self.lines if line.strip()]
        return interesting[-count:]

    # ---- phases

    def enter(self, phase: str) -> None:
        self._phase_started = _now()
        self.metadata["currentPhase"] = phase
        self.metadata["phases"].append({"phaseType": phase, "startTime": _iso(self._phase_started)})
        self.container_log(f"Entering phase {phase}")

    def finish_phase(self, status: str, context: tuple[str, str] | None = None) -> None:
        phase = self.metadata["phases"][-1]
        end = _now()
        started = self._phase_started or end
        phase.update(
            {
                "phaseStatus": status,
                "endTime": _iso(end),
                "durationInSeconds": int((end - started).total_seconds()),
            }
        )
        if context is not None:
            phase["contexts"] = [{"statusCode": context[0], "message": context[1]}]
        self.container_log(f"Phase complete: {phase['phaseType']} State: {status}")
        if context is not None:
            self.container_log(f"Phase context status code: {context[0]} Message: {context[1]}")

    def complete(self, status: str) -> None:
        end = _now()
        self.metadata["phases"].append({"phaseType": "COMPLETED", "startTime": _iso(end)})
        self.metadata.update(
            {"buildStatus": status, "currentPhase": "COMPLETED", "endTime": _iso(end), "buildComplete": True}
        )
        self.done.set()


_JOB_MODULE: Final[str] = "-m layershift_core.builder.build_job"
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def exported_names(spec: dict[str, Any]) -> list[str]:
    """The buildspec's ``env: exported-variables`` (each a shell variable name, as CodeBuild requires)."""
    names = [str(name) for name in (spec.get("env") or {}).get("exported-variables") or []]
    bad = [name for name in names if not _SHELL_NAME.fullmatch(name)]
    if bad:
        raise BuildSetupError(f"exported-variables holds names that are not variable names: {', '.join(bad)}")
    return names


def build_script(spec: dict[str, Any], build_command: str, exports_path: Path) -> str:
    """The bash script of the BUILD phase: the buildspec's build commands in one shell, each checked as
    CodeBuild checks them, the build job's command replaced by ``build_command``; then the exported
    variables written to ``exports_path`` (NUL-separated name, value pairs of those that are set)."""
    commands = [str(c) for c in ((spec.get("phases") or {}).get("build") or {}).get("commands") or []]
    if not any(_JOB_MODULE in command for command in commands):
        commands = [build_command]
    lines = [f"{build_command if _JOB_MODULE in command else command} || exit $?" for command in commands]
    target = shlex.quote(str(exports_path))
    lines.append(f": > {target}")
    for name in exported_names(spec):
        variable = shlex.quote(name)
        lines.append(f'if [ -n "${{{name}+set}}" ]; then printf "%s\\0%s\\0" {variable} "${name}" >> {target}; fi')
    return "\n".join(lines) + "\n"


def read_exports(path: Path) -> list[dict[str, str]]:
    """``[{"name", "value"}]`` from the file :func:`build_script` writes."""
    try:
        fields = path.read_bytes().decode("utf-8", errors="replace").split("\0")
    except OSError:
        return []
    return [{"name": fields[i], "value": fields[i + 1]} for i in range(0, len(fields) - 1, 2)]


def _find_interpreter(python_version: str) -> str | None:
    from layershift_core.builder.platforms import find_interpreter

    return find_interpreter(python_version)


def _buildspec(project: Any) -> dict[str, Any]:
    """The project's inline buildspec, parsed ({} when it has none or it is not YAML)."""
    buildspec = project.project_metadata.get("source", {}).get("buildspec")
    if not buildspec:
        return {}
    try:
        spec = yaml.safe_load(buildspec)
    except yaml.YAMLError:
        return {}
    return spec if isinstance(spec, dict) else {}


def _runtime_python(project: Any) -> str:
    """The python runtime-version the project's buildspec asks for (default 3.13)."""
    spec = _buildspec(project)
    versions = ((spec.get("phases") or {}).get("install") or {}).get("runtime-versions") or {}
    version = versions.get("python")
    return str(version) if version is not None else DEFAULT_PYTHON


def _core_layer_dir(account_id: str, region: str, layer_version_arn: str, state_dir: Path) -> Path:
    """The unzipped layer version (``.../python`` goes on PYTHONPATH), extracted once per CodeSha256."""
    layer = lambda_backends[account_id][region].layers_versions_by_arn(layer_version_arn)
    if layer is None:
        raise BuildSetupError(f"layer version {layer_version_arn} (from {CORE_LAYER_VARIABLE}) does not exist")
    target = state_dir / "codebuild" / "layers" / layer.code_sha_256.replace("/", "_").replace("+", "-")
    with _layer_lock:
        if not (target / ".complete").is_file():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            with zipfile.ZipFile(io.BytesIO(layer.code_bytes)) as archive:
                archive.extractall(target)
            (target / ".complete").write_text(layer_version_arn, encoding="utf-8")
    return target


def _resolve_variables(variables: list[dict[str, Any]], region: str) -> dict[str, str]:
    """Name -> value for CodeBuild environment variables (PLAINTEXT, PARAMETER_STORE, SECRETS_MANAGER)."""
    resolved: dict[str, str] = {}
    for variable in variables:
        name = variable.get("name") or variable.get("Name")
        value = variable.get("value", variable.get("Value", ""))
        kind = (variable.get("type") or variable.get("Type") or "PLAINTEXT").upper()
        if not name:
            raise BuildSetupError(f"environment variable without a name: {variable}")
        if kind == "PLAINTEXT":
            resolved[name] = str(value)
        elif kind == "PARAMETER_STORE":
            ssm = boto_client_for(region=region, service="ssm")
            resolved[name] = ssm.get_parameter(Name=str(value), WithDecryption=True)["Parameter"]["Value"]
        elif kind == "SECRETS_MANAGER":
            secrets = boto_client_for(region=region, service="secretsmanager")
            resolved[name] = secrets.get_secret_value(SecretId=str(value))["SecretString"]
        else:
            raise BuildSetupError(f"environment variable {name} has unknown type {kind}")
    return resolved


def _host_environment() -> dict[str, str]:
    env = {
        key: value for key, value in os.environ.items() if key in _PASSTHROUGH or key.startswith(_PASSTHROUGH_PREFIXES)
    }
    local_hosts = "127.0.0.1,localhost"
    for key in ("NO_PROXY", "no_proxy"):
        env[key] = f"{env[key]},{local_hosts}" if env.get(key) else local_hosts
    return env


def start_local_build(
    account_id: str, region: str, project_name: str, overrides: list[dict[str, Any]], *, initiator: str
) -> LocalBuild:
    """Record a build of ``project_name`` in the emulated CodeBuild and start running it."""
    backend = codebuild_backends[account_id][region]
    project = backend.codebuild_projects.get(project_name)
    if project is None:
        raise ClientError(
            {
                "Error": {
                    "Code": "ResourceNotFoundException",
                    "Message": f"Project cannot be found: {project_name}",
                },
                "ResponseMetadata": {"HTTPStatusCode": 400, "RequestId": ""},
            },
            "StartBuild",
        )
    client = boto_client_for(region=region, service="codebuild")
    response = client.start_build(projectName=project_name)
    build_id = response["build"]["id"]
    metadata = next(build for build in backend.build_metadata_history[project_name] if build["id"] == build_id)
    project_environment = dict(project.project_metadata.get("environment") or {})
    project_variables = list(project_environment.get("environmentVariables") or [])
    override_variables = [
        {"name": item.get("Name"), "value": item.get("Value", ""), "type": item.get("Type", "PLAINTEXT")}
        for item in overrides
    ]
    # An override replaces the project's variable of the same name, as in CodeBuild.
    by_name = {variable["name"]: variable for variable in project_variables}
    by_name.update({variable["name"]: variable for variable in override_variables})
    logs_config = (project.project_metadata.get("logsConfig") or {}).get("cloudWatchLogs") or {}
    log_group = logs_config.get("groupName") if logs_config.get("status", "ENABLED") == "ENABLED" else None
    build_uuid = build_id.split(":", 1)[1]
    state_dir = _settings.resolved_state_dir()
    log_path = state_dir / "logs" / "codebuild" / project_name / f"{build_uuid}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("", encoding="utf-8")
    metadata.update(
        {
            "buildNumber": len(backend.build_history.get(project_name, [])),
            "initiator": initiator,
            "source": project.project_metadata.get("source", {}),
            "artifacts": project.project_metadata.get("artifacts", {}),
            "environment": {**project_environment, "environmentVariables": list(by_name.values())},
            "timeoutInMinutes": project.project_metadata.get("timeoutInMinutes") or 60,
            "queuedTimeoutInMinutes": project.project_metadata.get("queuedTimeoutInMinutes") or 480,
            "encryptionKey": project.project_metadata.get("encryptionKey"),
            "serviceRole": project.project_metadata.get("serviceRole"),
            "logs": {
                "groupName": log_group,
                "streamName": build_uuid,
                "deepLink": f"file://{log_path}",
                "cloudWatchLogs": {"status": "ENABLED" if log_group else "DISABLED", "groupName": log_group},
            },
        }
    )
    metadata.pop("sourceVersion", None)
    build = LocalBuild(
        build_id=build_id,
        arn=metadata["arn"],
        project_name=project_name,
        account_id=account_id,
        region=region,
        metadata=metadata,
        environment={},
        python_version=_runtime_python(project),
        timeout_minutes=int(metadata["timeoutInMinutes"]),
        log_path=log_path,
        log_group=log_group,
        buildspec=_buildspec(project),
    )
    with _builds_lock:
        _builds[build_id] = build
    variables = list(by_name.values())
    thread = threading.Thread(target=_run_build, args=(build, variables), name=f"codebuild-{build_uuid}", daemon=True)
    thread.start()
    return build


def _run_build(build: LocalBuild, variables: list[dict[str, Any]]) -> None:
    try:
        _run_phases(build, variables)
    except Exception as exc:  # the container itself broke: the build fails, with the reason
        LOG.exception("local build %s failed unexpectedly", build.build_id)
        if not build.done.is_set():
            build.log(f"{type(exc).__name__}: {exc}")
            build.complete("FAULT")
    finally:
        _ship_logs(build)


def _run_phases(build: LocalBuild, variables: list[dict[str, Any]]) -> None:
    queued = build.metadata["phases"][-1]
    queued.update({"phaseStatus": "SUCCEEDED", "endTime": _iso(_now()), "durationInSeconds": 0})
    build.container_log(f"Running on local build container for project {build.project_name}")
    build.enter("PROVISIONING")
    build.finish_phase("SUCCEEDED")
    build.enter("DOWNLOAD_SOURCE")
    src_dir = _settings.resolved_state_dir() / "codebuild" / "src" / build.build_id.split(":", 1)[1]
    src_dir.mkdir(parents=True, exist_ok=True)
    build.finish_phase("SUCCEEDED")

    build.enter("INSTALL")
    try:
        environment = _resolve_variables(variables, build.region)
        layer_arn = environment.get(CORE_LAYER_VARIABLE)
        if not layer_arn:
            raise BuildSetupError(f"the project has no {CORE_LAYER_VARIABLE} environment variable")
        build.container_log(f"Running command: fetch and unzip {layer_arn}")
        core_dir = _core_layer_dir(build.account_id, build.region, layer_arn, _settings.resolved_state_dir())
        interpreter = _find_interpreter(build.python_version)
        if interpreter is None:
            raise BuildSetupError(
                f"python {build.python_version} (the buildspec's runtime-versions) was not found on PATH "
                "or under pyenv; install it to run layer builds locally"
            )
        build.container_log(f"Selected python {build.python_version}: {interpreter}")
    except (BuildSetupError, ClientError, OSError, zipfile.BadZipFile) as exc:
        build.log(str(exc))
        build.finish_phase("FAILED", ("COMMAND_EXECUTION_ERROR", _failure_message("install", str(exc), build)))
        _finish_after_failure(build, "FAILED")
        return
    build.finish_phase("SUCCEEDED")
    build.enter("PRE_BUILD")
    build.finish_phase("SUCCEEDED")

    build.enter("BUILD")
    env = _host_environment()
    env.update(environment)
    env.update(
        {
            "PYTHONPATH": str(core_dir / "python"),
            "PYTHONUNBUFFERED": "1",
            "AWS_ENDPOINT_URL": _settings.resolved_endpoint(),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": build.region,
            "AWS_DEFAULT_REGION": build.region,
            "CODEBUILD_BUILD_ID": build.build_id,
            "CODEBUILD_BUILD_ARN": build.arn,
            "CODEBUILD_BUILD_NUMBER": str(build.metadata.get("buildNumber", 1)),
            "CODEBUILD_BUILD_IMAGE": str(build.metadata["environment"].get("image", "")),
            "CODEBUILD_INITIATOR": str(build.metadata.get("initiator", "")),
            "CODEBUILD_SRC_DIR": str(src_dir),
            "CODEBUILD_START_TIME": str(int(time.time() * 1000)),
        }
    )
    env.pop("AWS_SESSION_TOKEN", None)
    env.pop("AWS_PROFILE", None)
    build.environment = env
    exports_path = src_dir.parent / f"{src_dir.name}.exported"
    try:
        script = build_script(build.buildspec, shlex.join([interpreter, "-s", *BUILD_COMMAND]), exports_path)
    except BuildSetupError as exc:
        build.log(str(exc))
        build.finish_phase("FAILED", ("COMMAND_EXECUTION_ERROR", _failure_message("build", str(exc), build)))
        _finish_after_failure(build, "FAILED")
        return
    build.container_log(f"Running command {BUILD_COMMAND_TEXT}")
    status, reason = _run_command(build, ["bash", "-c", script], env, src_dir)
    build.metadata["exportedEnvironmentVariables"] = read_exports(exports_path)
    if status == "SUCCEEDED":
        build.finish_phase("SUCCEEDED")
        for phase in _PHASES_AFTER_BUILD:
            build.enter(phase)
            build.finish_phase("SUCCEEDED")
        build.complete("SUCCEEDED")
        return
    code = {"TIMED_OUT": "BUILD_TIMED_OUT", "STOPPED": "BUILD_STOPPED"}.get(status, "COMMAND_EXECUTION_ERROR")
    build.finish_phase(status if status != "FAILED" else "FAILED", (code, _failure_message("build", reason, build)))
    _finish_after_failure(build, status)


def _failure_message(phase: str, reason: str, build: LocalBuild) -> str:
    if phase == "install":
        head = f"Error while executing command: install phase. Reason: {reason}"
    else:
        head = f"Error while executing command: {BUILD_COMMAND_TEXT}. Reason: {reason}"
    tail = "\n".join(line for line in build.last_lines() if not line.startswith("[Container]"))
    if len(tail) > MAX_CAUSE_LOG_CHARS:
        tail = "..." + tail[-MAX_CAUSE_LOG_CHARS:]
    return f"{head}\nLast build log lines:\n{tail}" if tail else head


def _finish_after_failure(build: LocalBuild, status: str) -> None:
    # CodeBuild still runs the later phases' bookkeeping after a failed phase.
    for phase in ("FINALIZING",):
        build.enter(phase)
        build.finish_phase("SUCCEEDED")
    build.complete(status)


def _run_command(build: LocalBuild, argv: list[str], env: dict[str, str], cwd: Path) -> tuple[str, str]:
    """Run the build command; returns (SUCCEEDED|FAILED|TIMED_OUT|STOPPED, reason)."""
    deadline = time.monotonic() + build.timeout_minutes * 60
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        build.process = process
        status = ""
        while process.poll() is None:
            if build.stop_requested.is_set():
                status = "STOPPED"
            elif time.monotonic() > deadline:
                status = "TIMED_OUT"
            if status:
                _terminate(process)
                break
            time.sleep(0.2)
        process.wait()
        output.seek(0)
        for line in output.read().decode("utf-8", errors="replace").splitlines():
            build.log(line)
    if status == "STOPPED":
        return status, "the build was stopped"
    if status == "TIMED_OUT":
        return status, f"the build timed out after {build.timeout_minutes} minutes"
    if process.returncode == 0:
        return "SUCCEEDED", ""
    return "FAILED", f"exit status {process.returncode}"


def _terminate(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, 15)
        process.wait(timeout=10)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)


def _ship_logs(build: LocalBuild) -> None:
    """Copy the build log to the project's CloudWatch log group, as CodeBuild does."""
    if not build.log_group or not build.lines:
        return
    logs = boto_client_for(region=build.region, service="logs")
    stream = build.build_id.split(":", 1)[1]
    try:
        logs.create_log_stream(logGroupName=build.log_group, logStreamName=stream)
        stamp = int(time.time() * 1000)
        events = [{"timestamp": stamp, "message": line or " "} for line in build.lines]
        for start in range(0, len(events), 5000):
            logs.put_log_events(
                logGroupName=build.log_group, logStreamName=stream, logEvents=events[start : start + 5000]
            )
    except ClientError as exc:
        LOG.warning("build %s: log group %s not written: %s", build.build_id, build.log_group, exc)


def stop_local_build(build_id: str) -> bool:
    """Ask a running local build to stop; False when the id is not a local build."""
    with _builds_lock:
        build = _builds.get(build_id)
    if build is None:
        return False
    build.stop_requested.set()
    return True


# ---------------------------------------------------------------------------------------- AWS shapes


def _pascal(value: Any) -> Any:
    if isinstance(value, list):
        return [_pascal(item) for item in value]
    if isinstance(value, dict):
        return {key[:1].upper() + key[1:]: _pascal(item) for key, item in value.items()}
    return value


def _epoch_millis(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return int(dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            return value
    return value


def build_output(build: LocalBuild) -> dict[str, Any]:
    """The Step Functions shape of a build: ``{"Build": {...}}`` with PascalCase members."""
    metadata = json.loads(json.dumps(build.metadata, default=str))
    for key in ("startTime", "endTime"):
        if key in metadata:
            metadata[key] = _epoch_millis(metadata[key])
    for phase in metadata.get("phases", []):
        for key in ("startTime", "endTime"):
            if key in phase:
                phase[key] = _epoch_millis(phase[key])
    return {"Build": _pascal(metadata)}


def _cause(output: dict[str, Any]) -> str:
    """The failed build as Cause JSON, within Step Functions' 32,768-character limit."""
    cause = json.dumps(output, separators=(",", ":"))
    if len(cause) <= MAX_CAUSE_CHARS:
        return cause
    slim = json.loads(cause)
    slim["Build"].pop("Source", None)
    for phase in slim["Build"].get("Phases", []):
        for context in phase.get("Contexts", []):
            context["Message"] = context.get("Message", "")[-4000:]
    return json.dumps(slim, separators=(",", ":"))[:MAX_CAUSE_CHARS]


# ---------------------------------------------------------------------------------------- the integration


class StateTaskServiceCodeBuild(StateTaskServiceCallback):
    """``arn:aws:states:::codebuild:startBuild`` (request-response) and ``...startBuild.sync``."""

    def __init__(self) -> None:
        super().__init__(supported_integration_patterns={ResourceCondition.Sync})

    def _get_supported_parameters(self) -> set[str] | None:
        if self.resource.api_action.lower() == "startbuild":
            return _START_BUILD_PARAMETERS
        return None

    def _from_error(self, env: Environment, ex: Exception) -> FailureEvent:
        if isinstance(ex, ClientError):
            error_name = f"{ERROR_PREFIX}.AWSCodeBuildException"
            metadata = ex.response.get("ResponseMetadata", {})
            cause = (
                f"{ex.response['Error'].get('Message', '')} (Service: AWSCodeBuild; "
                f"Status Code: {metadata.get('HTTPStatusCode', 400)}; "
                f"Error Code: {ex.response['Error'].get('Code', 'Unknown')}; "
                f"Request ID: {metadata.get('RequestId', '')}; Proxy: null)"
            )
            return self._failure(env, CustomErrorName(error_name), error_name, cause)
        if isinstance(ex, BuildSetupError):
            error_name = f"{ERROR_PREFIX}.AWSCodeBuildException"
            return self._failure(env, CustomErrorName(error_name), error_name, str(ex))
        return super()._from_error(env=env, ex=ex)

    def _failure(self, env: Environment, error_name: Any, error: str, cause: str) -> FailureEvent:
        return FailureEvent(
            env=env,
            error_name=error_name,
            event_type=HistoryEventType.TaskFailed,
            event_details=EventDetails(
                taskFailedEventDetails=TaskFailedEventDetails(
                    error=error,
                    cause=cause,
                    resource=self._get_sfn_resource(),
                    resourceType=self._get_sfn_resource_type(),
                )
            ),
        )

    def _eval_service_task(
        self,
        env: Environment,
        resource_runtime_part: ResourceRuntimePart,
        normalised_parameters: dict,
        state_credentials: StateCredentials,
    ) -> None:
        project_name = normalised_parameters.get("ProjectName")
        if not project_name:
            raise BuildSetupError("startBuild needs ProjectName")
        unsupported = set(normalised_parameters) - {"ProjectName", "EnvironmentVariablesOverride"}
        if unsupported:
            raise BuildSetupError(
                f"startBuild parameters not supported by the local build container: {', '.join(sorted(unsupported))}"
            )
        overrides = normalised_parameters.get("EnvironmentVariablesOverride") or []
        if not isinstance(overrides, list):
            raise BuildSetupError("EnvironmentVariablesOverride must be a list of {Name, Value, Type}")
        execution_name = env.states.context_object.context_object_data.get("Execution", {}).get("Name", "")
        project = str(project_name).rsplit("/", 1)[-1]
        fault = _planned_fault(project, overrides)
        if fault in _FAULT_ERRORS:
            status, code = _FAULT_ERRORS[fault]
            error = {"Error": {"Code": code, "Message": f"injected {fault} fault"}}
            raise ClientError({**error, "ResponseMetadata": {"HTTPStatusCode": status}}, "StartBuild")
        build = start_local_build(
            resource_runtime_part.account,
            resource_runtime_part.region,
            project,
            overrides,
            initiator=f"states/{execution_name}" if execution_name else "states",
        )
        if fault == "timeout":  # the build started; the task then timed out, and Step Functions stops it
            build.stop_requested.set()
            raise FailureEventException(
                FailureEvent(
                    env=env,
                    error_name=StatesErrorName(typ=StatesErrorNameType.StatesTimeout),
                    event_type=HistoryEventType.TaskTimedOut,
                    event_details=EventDetails(
                        taskTimedOutEventDetails=TaskTimedOutEventDetails(
                            error=StatesErrorNameType.StatesTimeout.to_name(),
                            resource=self._get_sfn_resource(),
                            resourceType=self._get_sfn_resource_type(),
                        )
                    ),
                )
            )
        env.stack.append(build_output(build))

    def _eval_integration_pattern(
        self,
        env: Environment,
        resource_runtime_part: ResourceRuntimePart,
        normalised_parameters: dict,
        state_credentials: StateCredentials,
    ) -> None:
        # The base class assumes a task-token endpoint exists, which only holds for integrations
        # that support .waitForTaskToken; startBuild supports .sync only, so poll here.
        submitted = env.stack.pop()
        self.timeout.eval(env=env)
        env.stack.pop()
        env.stack.append(submitted)
        resolver = self._build_sync_resolver(env, resource_runtime_part, normalised_parameters, state_credentials)
        assert resolver is not None
        result = None
        while env.is_running():
            result = resolver()
            if result is not None:
                break
            time.sleep(_SYNC_POLL_SECONDS)
        env.stack.append(result)

    def _build_sync_resolver(
        self,
        env: Environment,
        resource_runtime_part: ResourceRuntimePart,
        normalised_parameters: dict,
        state_credentials: StateCredentials,
    ) -> Callable[[], Any] | None:
        submitted = env.stack.pop()
        build_id = submitted["Build"]["Id"]
        with _builds_lock:
            build = _builds[build_id]

        def _watch_execution() -> None:
            # Step Functions stops a .sync build when the execution stops or the task times out.
            while not build.done.wait(0.5):
                if not env.is_running():
                    build.stop_requested.set()
                    return

        threading.Thread(target=_watch_execution, name=f"codebuild-watch-{build_id}", daemon=True).start()

        def _sync_resolver() -> Any | None:
            if not build.done.is_set():
                return None
            output = build_output(build)
            if build.status == "SUCCEEDED":
                return output
            raise FailureEventException(
                self._failure(
                    env,
                    StatesErrorName(typ=StatesErrorNameType.StatesTaskFailed),
                    StatesErrorNameType.StatesTaskFailed.to_name(),
                    _cause(output),
                )
            )

        return _sync_resolver


# ---------------------------------------------------------------------------------- fault injection

# fault -> the CodeBuild API's answer to StartBuild (status, error code); timeout is handled apart.
_FAULT_ERRORS: Final = {
    "throttle": (400, "ThrottlingException"),
    "server": (500, "InternalFailure"),
    "denied": (403, "AccessDeniedException"),
}


def _planned_fault(project: str, overrides: list[dict[str, Any]]) -> str | None:
    """The fault harness's fault for this build task, if its plan has one (integration_faults.py)."""
    from layershift.local import integration_faults

    layer = next((str(v.get("Value")) for v in overrides if v.get("Name") == "LAYERSHIFT_LAYER"), "") or None
    return integration_faults.fault_for(
        _settings.fault_plan, project, b"", operation="codebuild:startBuild.sync", layer=layer
    )


# ---------------------------------------------------------------------------------------- install


def _state_task_service_for(service_name: str) -> Any:
    if service_name == "codebuild":
        return StateTaskServiceCodeBuild()
    return _originals["state_task_service_for"](service_name)


def _validate_required_params_source(source: dict[str, Any]) -> None:
    # CodeBuild accepts a NO_SOURCE project without a location (the buildspec is inline).
    if source.get("type") == "NO_SOURCE" and source.get("buildspec"):
        return
    _originals["validate_source"](source)


def _batch_get_builds(self: Any, ids: list[str]) -> list[dict[str, Any]]:
    with _builds_lock:
        local = {build_id: _builds[build_id] for build_id in ids if build_id in _builds}
    others = [build_id for build_id in ids if build_id not in local]
    result = _originals["batch_get_builds"](self, others) if others else []
    return result + [build.metadata for build in local.values()]


def _stop_build(self: Any, build_id: str) -> dict[str, Any] | None:
    with _builds_lock:
        build = _builds.get(build_id)
    if build is None:
        return _originals["stop_build"](self, build_id)
    build.stop_requested.set()
    build.done.wait(30)
    return build.metadata


def install(aws: Any = None) -> None:
    """Add the CodeBuild integration to the emulated Step Functions and fix the CodeBuild gaps.

    ``aws`` (a ``LocalAws``) gives the state folder for build logs and the endpoint builds call;
    without it they come from ``LAYERSHIFT_STATE_DIR`` and ``MOTO_PORT``.
    """
    if _originals:
        return
    _settings.state_dir = Path(aws.state_dir) if aws is not None else None
    _settings.endpoint_url = aws.endpoint_url if aws is not None else None
    _settings.fault_plan = getattr(aws, "fault_plan", None)
    _originals["state_task_service_for"] = state_task_service_factory.state_task_service_for
    _originals["validate_source"] = codebuild_responses._validate_required_params_source
    _originals["batch_get_builds"] = codebuild_models.CodeBuildBackend.batch_get_builds
    _originals["stop_build"] = codebuild_models.CodeBuildBackend.stop_build
    state_task_factory.state_task_service_for = _state_task_service_for
    state_task_service_factory.state_task_service_for = _state_task_service_for
    codebuild_responses._validate_required_params_source = _validate_required_params_source
    codebuild_models.CodeBuildBackend.batch_get_builds = _batch_get_builds  # type: ignore[method-assign]
    codebuild_models.CodeBuildBackend.stop_build = _stop_build  # type: ignore[method-assign]


def uninstall() -> None:
    """Stop running local builds and restore the emulator's own behaviour."""
    with _builds_lock:
        running = [build for build in _builds.values() if not build.done.is_set()]
    for build in running:
        build.stop_requested.set()
    for build in running:
        build.done.wait(15)
    with _builds_lock:
        _builds.clear()
    if not _originals:
        return
    state_task_factory.state_task_service_for = _originals["state_task_service_for"]
    state_task_service_factory.state_task_service_for = _originals["state_task_service_for"]
    codebuild_responses._validate_required_params_source = _originals["validate_source"]
    codebuild_models.CodeBuildBackend.batch_get_builds = _originals["batch_get_builds"]  # type: ignore[method-assign]
    codebuild_models.CodeBuildBackend.stop_build = _originals["stop_build"]  # type: ignore[method-assign]
    _originals.clear()
    _settings.state_dir = None
    _settings.endpoint_url = None
