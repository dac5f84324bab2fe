"""``codebuild:startBuild.sync`` on the local Step Functions runs the real layer build job.

The project is created the way template.yaml declares it (its inline buildspec, its environment
variables), and the CoreLayer is the project's own ``layers/core`` (dependencies cached in
``.layershift/cache``; the first run fetches them from PyPI).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from layershift.local import codebuild
from layershift.local.deploy import build_python_layer, layer_cache_dir
from layershift.local.server import LocalAws
from layershift.local.template import load_template
from layershift_core.builder.manifest import VariantIndex

from .support import wait_for

ROOT = Path(__file__).resolve().parents[2]
BUILD_TASK = "arn:aws:states:::codebuild:startBuild.sync"


@pytest.fixture(scope="module")
def build_project(aws: LocalAws) -> dict[str, str]:
    """A bucket, the CoreLayer and the layer build project as the template defines it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAYERSHIFT_CACHE_DIR", str(ROOT / ".layershift" / "cache"))
        layer_zip = build_python_layer(
            ROOT / "layers" / "core",
            runtime="python3.13",
            architecture="x86_64",
            cache_dir=layer_cache_dir(aws.state_dir),
        )
    template = load_template(ROOT / "template.yaml")
    project_props = template["Resources"]["LayerBuildProject"]["Properties"]
    lam, s3, iam = aws.client("lambda"), aws.client("s3"), aws.client("iam")
    layer_arn = lam.publish_layer_version(
        LayerName="codebuild-tests-core", Content={"ZipFile": layer_zip}, CompatibleRuntimes=["python3.13"]
    )["LayerVersionArn"]
    bucket = "codebuild-tests-artifacts"
    s3.create_bucket(Bucket=bucket)
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "codebuild.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    role = iam.create_role(RoleName="codebuild-tests", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    aws.client("logs").create_log_group(logGroupName="/aws/codebuild/codebuild-tests")
    aws.client("codebuild").create_project(
        name="codebuild-tests",
        source={"type": "NO_SOURCE", "buildspec": project_props["Source"]["BuildSpec"]},
        artifacts={"type": "NO_ARTIFACTS"},
        environment={
            "type": "LINUX_CONTAINER",
            "image": project_props["Environment"]["Image"],
            "computeType": "BUILD_GENERAL1_MEDIUM",
            "environmentVariables": [
                {"name": "LAYERSHIFT_CORE_LAYER_ARN", "value": layer_arn, "type": "PLAINTEXT"},
                {"name": "LAYERSHIFT_BUCKET", "value": bucket, "type": "PLAINTEXT"},
            ],
        },
        serviceRole=role,
        timeoutInMinutes=20,
        logsConfig={"cloudWatchLogs": {"status": "ENABLED", "groupName": "/aws/codebuild/codebuild-tests"}},
    )
    states_role = iam.create_role(
        RoleName="codebuild-tests-states",
        AssumeRolePolicyDocument=json.dumps(
            {**trust, "Statement": [{**trust["Statement"][0], "Principal": {"Service": "states.amazonaws.com"}}]}
        ),
    )["Role"]["Arn"]
    return {"bucket": bucket, "project": "codebuild-tests", "layer": layer_arn, "states_role": states_role}


def _machine(aws: LocalAws, build_project: dict[str, str], states: dict[str, Any], start: str) -> str:
    definition = {"StartAt": start, "States": states}
    return aws.client("stepfunctions").create_state_machine(
        name=f"codebuild-{uuid.uuid4().hex[:8]}",
        definition=json.dumps(definition),
        roleArn=build_project["states_role"],
    )["stateMachineArn"]


def _build_state(project: str, **extra: Any) -> dict[str, Any]:
    return {
        "Type": "Task",
        "Resource": BUILD_TASK,
        "Parameters": {"ProjectName": project, "EnvironmentVariablesOverride.$": "$.environment"},
        **extra,
    }


def _job_environment(
    bucket: str, layer: str, requirements: str, aws: LocalAws, targets: str = "python3.13/x86_64"
) -> list[dict[str, str]]:
    aws.client("s3").put_object(Bucket=bucket, Key=f"rollouts/{layer}/r1/requirements.txt", Body=requirements.encode())
    values = {
        "LAYERSHIFT_REQUIREMENTS_URI": f"s3://{bucket}/rollouts/{layer}/r1/requirements.txt",
        "LAYERSHIFT_TARGETS": targets,
        "LAYERSHIFT_LAYER": layer,
        "LAYERSHIFT_STAGING_URI": f"s3://{bucket}/staging/",
        "LAYERSHIFT_ALLOW_RANGES": "false",
    }
    return [{"Name": name, "Value": value, "Type": "PLAINTEXT"} for name, value in values.items()]


def _run(aws: LocalAws, machine: str, payload: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    sfn = aws.client("stepfunctions")
    arn = sfn.start_execution(stateMachineArn=machine, name=uuid.uuid4().hex, input=json.dumps(payload))["executionArn"]

    def finished() -> dict[str, Any] | None:
        execution = sfn.describe_execution(executionArn=arn)
        return execution if execution["status"] != "RUNNING" else None

    return wait_for(finished, timeout=timeout, interval=0.25)


def _build_phase(build: dict[str, Any]) -> dict[str, Any]:
    (phase,) = [phase for phase in build["Phases"] if phase["PhaseType"] == "BUILD"]
    return phase


def test_a_failing_build_fails_the_task_with_the_build_and_its_last_lines(
    aws: LocalAws, build_project: dict[str, str]
) -> None:
    machine = _machine(
        aws, build_project, {"BuildLayer": _build_state(build_project["project"], End=True)}, "BuildLayer"
    )
    environment = _job_environment(build_project["bucket"], "unpinned", "requests>=2.0\n", aws)

    execution = _run(aws, machine, {"environment": environment})

    assert execution["status"] == "FAILED"
    assert execution["error"] == "States.TaskFailed"
    build = json.loads(execution["cause"])["Build"]
    assert build["BuildStatus"] == "FAILED"
    assert build["ProjectName"] == build_project["project"]
    phase = _build_phase(build)
    assert phase["PhaseStatus"] == "FAILED"
    (context,) = phase["Contexts"]
    assert context["StatusCode"] == "COMMAND_EXECUTION_ERROR"
    assert "python3 -m layershift_core.builder.build_job" in context["Message"]
    assert "exit status" in context["Message"]
    assert "requests" in context["Message"], "the cause carries the build's own last lines"
    overrides = {v["Name"]: v["Value"] for v in build["Environment"]["EnvironmentVariables"]}
    assert overrides["LAYERSHIFT_CORE_LAYER_ARN"] == build_project["layer"]
    assert overrides["LAYERSHIFT_ALLOW_RANGES"] == "false"

    # The emulated CodeBuild reports the real outcome, and the log exists in both places.
    (recorded,) = aws.client("codebuild").batch_get_builds(ids=[build["Id"]])["builds"]
    assert recorded["buildStatus"] == "FAILED"
    log_file = Path(build["Logs"]["DeepLink"].removeprefix("file://"))
    assert log_file.is_file() and log_file.is_relative_to(aws.state_dir)
    assert "requests" in log_file.read_text(encoding="utf-8")
    events = aws.client("logs").get_log_events(
        logGroupName="/aws/codebuild/codebuild-tests", logStreamName=build["Logs"]["StreamName"]
    )["events"]
    assert any("Phase complete: BUILD State: FAILED" in event["message"] for event in events)


def test_a_catch_on_states_task_failed_handles_a_failed_build(aws: LocalAws, build_project: dict[str, str]) -> None:
    states = {
        "BuildLayer": _build_state(
            build_project["project"],
            Catch=[{"ErrorEquals": ["States.TaskFailed"], "ResultPath": "$.error", "Next": "BuildFailed"}],
            Next="Built",
        ),
        "Built": {"Type": "Succeed"},
        "BuildFailed": {"Type": "Pass", "End": True},
    }
    machine = _machine(aws, build_project, states, "BuildLayer")
    environment = _job_environment(build_project["bucket"], "caught", "-e ./local-package\n", aws)

    execution = _run(aws, machine, {"environment": environment})

    assert execution["status"] == "SUCCEEDED"
    error = json.loads(execution["output"])["error"]
    assert error["Error"] == "States.TaskFailed"
    assert json.loads(error["Cause"])["Build"]["BuildStatus"] == "FAILED"


def test_an_unknown_project_fails_with_the_codebuild_error(aws: LocalAws, build_project: dict[str, str]) -> None:
    machine = _machine(aws, build_project, {"BuildLayer": _build_state("no-such-project", End=True)}, "BuildLayer")

    execution = _run(aws, machine, {"environment": []}, timeout=30)

    assert execution["status"] == "FAILED"
    assert execution["error"] == "CodeBuild.AWSCodeBuildException"
    assert "ResourceNotFoundException" in execution["cause"]


def test_request_response_start_build_returns_while_the_build_runs(
    aws: LocalAws, build_project: dict[str, str]
) -> None:
    state = _build_state(build_project["project"], End=True)
    state["Resource"] = "arn:aws:states:::codebuild:startBuild"
    machine = _machine(aws, build_project, {"StartBuild": state}, "StartBuild")
    environment = _job_environment(build_project["bucket"], "async", "requests>=2.0\n", aws)

    execution = _run(aws, machine, {"environment": environment}, timeout=30)

    assert execution["status"] == "SUCCEEDED"
    build = json.loads(execution["output"])["Build"]
    assert build["BuildStatus"] == "IN_PROGRESS"
    codebuild = aws.client("codebuild")

    def finished() -> dict[str, Any] | None:
        (current,) = codebuild.batch_get_builds(ids=[build["Id"]])["builds"]
        return current if current["buildComplete"] else None

    assert wait_for(finished, timeout=120, interval=0.25)["buildStatus"] == "FAILED"


@pytest.mark.network
def test_the_build_script_runs_the_build_commands_and_reads_the_exported_variables(tmp_path: Path) -> None:
    spec = {
        "env": {"exported-variables": ["FIRST", "UNSET", "SECOND"]},
        "phases": {
            "build": {
                "commands": [
                    "PYTHONPATH=/x python3 -m layershift_core.builder.build_job",
                    'export FIRST="$(cat out.txt)"',
                    "SECOND='two words'",
                ]
            }
        },
    }
    exports = tmp_path / "exports"
    script = codebuild.build_script(spec, "echo one > out.txt", exports)
    subprocess.run(["bash", "-c", script], cwd=tmp_path, check=True)
    assert codebuild.read_exports(exports) == [
        {"name": "FIRST", "value": "one"},
        {"name": "SECOND", "value": "two words"},
    ]
    # a failing command fails the phase, as in CodeBuild, and nothing after it runs
    commands = ["python3 -m layershift_core.builder.build_job", "false", "touch later"]
    failing = codebuild.build_script({**spec, "phases": {"build": {"commands": commands}}}, "true", exports)
    assert subprocess.run(["bash", "-c", failing], cwd=tmp_path, check=False).returncode == 1
    assert not (tmp_path / "later").exists()
    with pytest.raises(codebuild.BuildSetupError, match="not variable names"):
        codebuild.build_script({"env": {"exported-variables": ["A; rm -rf /"]}}, "true", exports)


def test_a_good_build_succeeds_and_uploads_every_variant(aws: LocalAws, build_project: dict[str, str]) -> None:
    machine = _machine(
        aws, build_project, {"BuildLayer": _build_state(build_project["project"], End=True)}, "BuildLayer"
    )
    environment = _job_environment(
        build_project["bucket"], "six", "six==1.16.0\n", aws, targets="python3.13/x86_64,python3.13/arm64"
    )

    execution = _run(aws, machine, {"environment": environment}, timeout=600)

    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    build = json.loads(execution["output"])["Build"]
    assert build["BuildStatus"] == "SUCCEEDED"
    assert build["BuildComplete"] is True
    assert [phase["PhaseType"] for phase in build["Phases"]][-1] == "COMPLETED"
    assert _build_phase(build)["PhaseStatus"] == "SUCCEEDED"
    s3 = aws.client("s3")
    # the build job stages under staging/<its build ARN>/, the one prefix its role may write
    prefix = f"staging/{build['Arn']}/"
    listing = s3.get_object(Bucket=build_project["bucket"], Key=prefix + "variants.json")["Body"].read()
    index = VariantIndex.model_validate_json(listing)
    # the buildspec's exported variable is in the result, as CodeBuild's ExportedEnvironmentVariables
    assert build["ExportedEnvironmentVariables"] == [
        {"Name": "LAYERSHIFT_VARIANTS_SHA256", "Value": hashlib.sha256(listing).hexdigest()}
    ]
    # six is pure Python: one layer serves python3.13 on both architectures
    (variant,) = index.variants
    assert variant.id == "python3.13-any"
    assert variant.compatible_architectures == ["arm64", "x86_64"]
    listed = s3.list_objects_v2(Bucket=build_project["bucket"], Prefix=prefix)
    keys = {item["Key"].removeprefix(prefix) for item in listed.get("Contents", [])}
    assert keys == {"variants.json", variant.zip, variant.manifest, f"{variant.id}/sbom.cdx.json"}
    zipped = s3.get_object(Bucket=build_project["bucket"], Key=prefix + variant.zip)
    assert variant.files[variant.zip] == variant.sha256 == hashlib.sha256(zipped["Body"].read()).hexdigest()
    assert zipped["Metadata"] == {}
    # nothing outside the build's staging folder was written
    everything = s3.list_objects_v2(Bucket=build_project["bucket"]).get("Contents", [])
    assert all(o["Key"].startswith(("staging/", "rollouts/")) for o in everything)
