"""The lock file: `lock check` names every template pin of a locked layer at a version other than the
promoted one (SAM YAML with !Sub and Globals, plain CloudFormation JSON), passes the promoted version,
other layers and `{{resolve:ssm:...}}`; the document's round trip and its precise errors; what
`export` refuses to lock; the CLI's exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from layershift.cli import main
from layershift_core import aws, lockfile
from layershift_core.builder.manifest import BytecodeSummary, Manifest, PackageEntry, SmokeTestSummary
from layershift_core.errors import LockExportFailed, LockFileInvalid, TemplateUnreadable
from layershift_core.inventory import AliasUse, FunctionUse, FunctionVersionUse, Inventory
from layershift_core.lockfile import LockedLayer, LockedPackage, LockedVariant, LockFile, UsedBy
from layershift_core.registry import Registry
from layershift_core.settings import Settings

from .registry_table import create_registry_table

ACCOUNT, REGION = "123456789012", "us-east-1"
LAYER_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:team-six"
PROMOTED = f"{LAYER_ARN}:9"


def _variant(arn: str, variant: str, promoted_for: list[str], layer: str = "six") -> LockedVariant:
    runtime, architecture = promoted_for[0].split("/")
    return LockedVariant(
        variant=variant,
        arn=arn,
        version=int(arn.rsplit(":", 1)[1]),
        build_key="k" * 64,
        build_keys=["k" * 64],
        sha256="a" * 64,
        compatible_runtimes=[runtime],
        compatible_architectures=[architecture],
        promoted_for=promoted_for,
        parameters=[f"/layershift/{layer}/{label}/arn" for label in promoted_for],
        packages=[LockedPackage(name="six", version="1.16.0", hashes=["sha256:" + "b" * 64])],
        used_by=UsedBy(functions=3, latest=3, aliases=2),
    )


@pytest.fixture
def lock() -> LockFile:
    """One layer, `six`, published as team-six (the stack's prefix is `team-`), version 9 promoted."""
    return LockFile(
        generated_at="2026-12-07T12:00:00+00:00",
        layers={
            "six": LockedLayer(
                layer_name="team-six",
                layer_arn=LAYER_ARN,
                parameter="/layershift/six/arn",
                promoted_arn=PROMOTED,
                variants=[_variant(PROMOTED, "python3.13-any", ["python3.13/x86_64"])],
            )
        },
    )


SAM_TEMPLATE = """\
AWSTemplateFormatVersion: '2010-09-09'
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Runtime: python3.13
    Layers:
      - !Sub arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:layer:team-six:7
Resources:
  Orders:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.handler
      Layers:
        - arn:aws:lambda:us-east-1:123456789012:layer:team-six:9
        - arn:aws:lambda:us-east-1:999999999999:layer:someone-elses:3
  Billing:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.handler
      Layers: [arn:aws:lambda:us-east-1:123456789012:layer:team-six:8]
  Reports:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.handler
      Layers:
        - '{{resolve:ssm:/layershift/six/arn}}'
        - !Sub arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:layer:team-six:9
  Elsewhere:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.handler
      Layers:
        - arn:aws:lambda:eu-west-1:123456789012:layer:team-six:2
"""

CFN_TEMPLATE = {
    "AWSTemplateFormatVersion": "2010-09-09",
    "Resources": {
        "Old": {
            "Type": "AWS::Lambda::Function",
            "Properties": {
                "Runtime": "python3.13",
                "Handler": "app.handler",
                "Layers": [f"{LAYER_ARN}:4", "arn:aws:lambda:us-east-1:123456789012:layer:team-sixty:1"],
            },
        },
        "Current": {
            "Type": "AWS::Lambda::Function",
            "Properties": {
                "Runtime": "python3.13",
                "Handler": "app.handler",
                "Layers": [
                    {"Fn::Sub": "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:layer:team-six:9"}
                ],
            },
        },
        "Resolved": {
            "Type": "AWS::Lambda::Function",
            "Properties": {"Layers": ["{{resolve:ssm:/layershift/six/arn}}"]},
        },
    },
}


def _line_of(text: str, needle: str) -> int:
    (number,) = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    return number


def test_a_sam_template_s_old_pins_are_named_with_their_lines(lock: LockFile) -> None:
    findings = lockfile.check_text(SAM_TEMPLATE, "template.yaml", lock)
    assert [(f.line, f.pinned) for f in findings] == [
        (
            _line_of(SAM_TEMPLATE, "layer:team-six:7"),
            "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:layer:team-six:7",
        ),
        (_line_of(SAM_TEMPLATE, "layer:team-six:8"), f"{LAYER_ARN}:8"),
    ]
    # the Globals pin is line 7: the message is what CI prints
    assert findings[0].message() == (
        "template.yaml:7: pins arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:layer:team-six:7; "
        f"promoted is {PROMOTED}; use {{{{resolve:ssm:/layershift/six/arn}}}}"
    )
    assert {f.layer for f in findings} == {"six"}
    assert {f.hint for f in findings} == {"{{resolve:ssm:/layershift/six/arn}}"}


def test_a_cloudformation_json_template_s_old_pin_is_named(lock: LockFile) -> None:
    text = json.dumps(CFN_TEMPLATE, indent=2)
    (finding,) = lockfile.check_text(text, "stack.json", lock)
    assert (finding.line, finding.pinned) == (_line_of(text, f"{LAYER_ARN}:4"), f"{LAYER_ARN}:4")
    assert finding.message().startswith(f"stack.json:{finding.line}: pins {LAYER_ARN}:4; promoted is {PROMOTED}; ")


def test_the_promoted_version_other_layers_and_resolved_parameters_pass(lock: LockFile) -> None:
    text = "\n".join(
        [
            f"Layers: [{PROMOTED}]",  # the promoted version, literal
            "- !Sub arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:layer:team-six:9",
            "- arn:aws:lambda:us-east-1:123456789012:layer:team-sixty:1",  # a layer whose name only starts alike
            "- arn:aws:lambda:us-east-1:999999999999:layer:team-six:1",  # the same name in another account
            "- arn:aws:lambda:us-east-1:017000801446:layer:AWSLambdaPowertoolsPythonV3-python313-x86_64:7",
            "- '{{resolve:ssm:/layershift/six/arn}}'",
        ]
    )
    assert lockfile.check_text(text, "t.yaml", lock) == []
    assert lockfile.check_text(SAM_TEMPLATE, "t.yaml", LockFile()) == [], "an empty lock locks nothing"


def test_a_layer_with_several_variants_passes_each_promoted_one_and_names_them(lock: LockFile) -> None:
    arm = f"{LAYER_ARN}:10"
    lock.layers["six"].variants.append(_variant(arm, "python3.13-arm64", ["python3.13/arm64"]))
    assert lockfile.check_text(f"Layers: [{arm}, {PROMOTED}]", "t.yaml", lock) == []
    (finding,) = lockfile.check_text(f"Layers: [{LAYER_ARN}:5]", "t.yaml", lock)
    assert finding.promoted_arn == PROMOTED
    assert finding.other_variants == {
        "python3.13/arm64": "/layershift/six/python3.13/arm64/arn",
        "python3.13/x86_64": "/layershift/six/python3.13/x86_64/arn",
    }
    assert "{{resolve:ssm:/layershift/six/python3.13/arm64/arn}} for python3.13/arm64" in finding.message()


def test_check_reads_every_template_and_names_an_unreadable_one(tmp_path: Path, lock: LockFile) -> None:
    good = tmp_path / "template.yaml"
    good.write_text(SAM_TEMPLATE)
    stack = tmp_path / "stack.json"
    stack.write_text(json.dumps(CFN_TEMPLATE))
    findings = lockfile.check([good, stack], lock)
    assert [(Path(f.source).name, f.pinned.rsplit(":", 1)[1]) for f in findings] == [
        ("template.yaml", "7"),
        ("template.yaml", "8"),
        ("stack.json", "4"),
    ]
    with pytest.raises(TemplateUnreadable, match=r"missing\.yaml: no such template"):
        lockfile.check([good, tmp_path / "missing.yaml"], lock)
    with pytest.raises(TemplateUnreadable, match="is a folder"):
        lockfile.check([tmp_path], lock)
    binary = tmp_path / "template.zip"
    binary.write_bytes(b"PK\x03\x04\xff\xfe")
    with pytest.raises(TemplateUnreadable, match=r"template\.zip: not UTF-8 text \(byte 4\)"):
        lockfile.check([binary], lock)


# -- the document ------------------------------------------------------------------------------------


def test_the_document_round_trips_with_sorted_keys(lock: LockFile) -> None:
    text = lockfile.dumps(lock)
    assert lockfile.loads(text) == lock
    assert text == lockfile.dumps(lockfile.loads(text)), "the same lock is the same bytes"

    def keys_sorted(value: object) -> bool:
        if isinstance(value, dict):
            return list(value) == sorted(value) and all(keys_sorted(v) for v in value.values())
        if isinstance(value, list):
            return all(keys_sorted(v) for v in value)
        return True

    data = json.loads(text)
    assert keys_sorted(data)
    assert data["format"] == lockfile.FORMAT
    variant = data["layers"]["six"]["variants"][0]
    assert variant["packages"] == [{"hashes": ["sha256:" + "b" * 64], "name": "six", "version": "1.16.0"}]
    assert variant["used_by"] == {"aliases": 2, "functions": 3, "latest": 3}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", r"lock\.json: not JSON \(Expecting property name"),
        ("[]", r"lock\.json: not a layershift lock file \(no 'format' field\)"),
        ('{"layers": {}}', r"no 'format' field"),
        ('{"format": "1"}', r"'format' is '1', not a number"),
        ('{"format": 2, "layers": {}}', r"lock file format 2 is newer than this layershift reads \(1\): upgrade"),
        ('{"format": 1, "layers": {"six": {"layer_name": "team-six"}}}', r"not a valid lock file: layers\.six\."),
        ('{"format": 1, "layers": {"six": 3}}', r"layers\.six: Input should be a valid dictionary"),
    ],
)
def test_a_broken_lock_is_named_precisely(text: str, message: str) -> None:
    with pytest.raises(LockFileInvalid, match=message):
        lockfile.loads(text, "lock.json")


def test_a_missing_lock_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(LockFileInvalid, match=r"no such lock file \(write one with `layershift lock export`\)"):
        lockfile.load(tmp_path / "layershift.lock.json")


def test_usage_counts_are_those_of_the_inventory() -> None:
    """$LATEST on the version, and each alias that sends it traffic (primary or weighted), are counted."""
    new, old = f"{LAYER_ARN}:9", f"{LAYER_ARN}:8"

    def function(name: str, latest: list[str], versions: dict[str, list[str]], aliases: list[AliasUse]) -> FunctionUse:
        uses = [FunctionVersionUse(qualifier="$LATEST", layers=latest)]
        uses += [FunctionVersionUse(qualifier=q, layers=layers) for q, layers in versions.items()]
        return FunctionUse(
            name=name, arn=f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}", versions=uses, aliases=aliases
        )

    inventory = Inventory(
        functions=[
            # promoted: $LATEST and live on the new version
            function("a", [new], {"1": [old], "2": [new]}, [AliasUse(name="live", version="2")]),
            # mid-rollout: live on the old version with 10% on the new one; beta on the new one
            function(
                "b",
                [new],
                {"1": [old], "2": [new]},
                [AliasUse(name="live", version="1", routing={"2": 0.1}), AliasUse(name="beta", version="2")],
            ),
            # its $LATEST moved on, its alias did not
            function("c", [new], {"1": [old]}, [AliasUse(name="live", version="1")]),
            # only an unaliased published version runs the old one: no use
            function("d", [], {"1": [old]}, []),
        ],
    )
    assert lockfile.count_users(inventory, new) == UsedBy(functions=3, latest=3, aliases=3)
    assert lockfile.count_users(inventory, old) == UsedBy(functions=2, latest=0, aliases=2)
    assert {name for name, _ in inventory.users(old)} == {"b", "c"}


# -- export: what it refuses to lock -------------------------------------------------------------------

SETTINGS = Settings(
    bucket="lock-artifacts",
    table="lock-registry",
    layer_name_prefix="team-",
    own_lambda_arn=f"arn:aws:lambda:{REGION}:{ACCOUNT}",
)


def _manifest(packages: list[PackageEntry], sbom: str | None = "sbom.cdx.json") -> dict:
    manifest = Manifest(
        build_key="k" * 64,
        sha256="a" * 64,
        zipped_bytes=1,
        unzipped_bytes=1,
        runtime="python3.13",
        architecture="x86_64",
        compatible_runtimes=["python3.13"],
        compatible_architectures=["arm64", "x86_64"],
        layout="python",
        variant_id="python3.13-any",
        pure_python=True,
        requirements="six==1.16.0\n",
        packages=packages,
        top_level_modules=["six"],
        wheel_tags=["py2.py3-none-any"],
        bytecode=BytecodeSummary(compiled=True, python_version="3.13"),
        smoke_test=SmokeTestSummary(ran=True),
        sbom=sbom,
        pip_version="25.0",
        builder_version="test",
        timings={},
        created_at=datetime(2026, 12, 7, tzinfo=UTC),
    )
    return manifest.model_dump(mode="json")


@pytest.fixture
def account() -> Iterator[None]:
    with mock_aws():
        aws.client.cache_clear()
        boto3.client("s3").create_bucket(Bucket=SETTINGS.bucket)
        create_registry_table(SETTINGS.table)
        yield
    aws.client.cache_clear()


def _promote(layer: str, version: int, manifest: dict | None, *, record: bool = True) -> str:
    arn = f"{LAYER_ARN.replace('team-six', 'team-' + layer)}:{version}"
    key = f"artifacts/{layer}/{'k' * 64}/python3.13-any/manifest.json"
    if manifest is not None:
        boto3.client("s3").put_object(Bucket=SETTINGS.bucket, Key=key, Body=json.dumps(manifest).encode())
    if record:
        Registry(SETTINGS.table).record_version(layer, version, arn, ["k" * 64], key, "a" * 64, "r1", "python3.13-any")
    ssm = boto3.client("ssm")
    for name in (f"/layershift/{layer}/arn", f"/layershift/{layer}/python3.13/x86_64/arn"):
        ssm.put_parameter(Name=name, Value=arn, Type="String", Overwrite=True)
    return arn


def test_export_locks_the_manifest_s_packages_and_falls_back_on_the_sbom_for_hashes(account: None) -> None:
    digest = "c" * 64
    manifest = _manifest(
        [
            PackageEntry(name="six", version="1.16.0"),
            PackageEntry(name="zz", version="1", hashes=["sha256:" + "d" * 64]),
        ]
    )
    arn = _promote("six", 3, manifest)
    sbom = {"components": [{"name": "six", "version": "1.16.0", "hashes": [{"alg": "SHA-256", "content": digest}]}]}
    key = f"artifacts/six/{'k' * 64}/python3.13-any/sbom.cdx.json"
    boto3.client("s3").put_object(Bucket=SETTINGS.bucket, Key=key, Body=json.dumps(sbom).encode())
    boto3.client("ssm").put_parameter(Name="/layershift/six/ttl/days", Value="30", Type="String")  # not a promotion

    lock = lockfile.export(SETTINGS, usage=False)
    layer = lock.layers["six"]
    assert (layer.layer_name, layer.layer_arn, layer.promoted_arn) == ("team-six", LAYER_ARN, arn)
    (variant,) = layer.variants
    assert variant.parameters == ["/layershift/six/arn", "/layershift/six/python3.13/x86_64/arn"]
    assert variant.promoted_for == ["python3.13/x86_64"]
    assert (variant.version, variant.variant, variant.sha256) == (3, "python3.13-any", "a" * 64)
    assert variant.compatible_architectures == ["arm64", "x86_64"]
    assert variant.packages == [
        LockedPackage(name="six", version="1.16.0", hashes=[f"sha256:{digest}"]),
        LockedPackage(name="zz", version="1", hashes=["sha256:" + "d" * 64]),
    ]
    assert variant.used_by is None


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda: _promote("six", 3, _manifest([]), record=False), "the registry has no record of that version"),
        (lambda: _promote("six", 3, None), r"its build manifest s3://lock-artifacts/artifacts/six/k+/python3\.13-any/"),
        (
            lambda: boto3.client("ssm").put_parameter(
                Name="/layershift/six/arn",
                Value="arn:aws:lambda:us-east-1:123456789012:layer:other-six:1",
                Type="String",
            ),
            "no version of this control plane's layer team-six",
        ),
    ],
    ids=["unrecorded", "no-manifest", "another-prefix"],
)
def test_export_refuses_what_the_sources_disagree_on(account: None, setup, message: str) -> None:
    setup()
    with pytest.raises(LockExportFailed, match=message):
        lockfile.export(SETTINGS, ["six"], usage=False)


def test_export_of_a_layer_never_promoted_is_an_error(account: None) -> None:
    with pytest.raises(
        LockExportFailed, match=r"layer 'nine' has no promoted version \(no SSM parameter /layershift/nine/arn\)"
    ):
        lockfile.export(SETTINGS, ["nine"], usage=False)
    assert lockfile.export(SETTINGS, usage=False).layers == {}


# -- the CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path, lock: LockFile, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "layershift.lock.json").write_text(lockfile.dumps(lock))
    (tmp_path / "template.yaml").write_text(SAM_TEMPLATE)
    (tmp_path / "ok.json").write_text(json.dumps({"Resources": {"F": {"Properties": {"Layers": [PROMOTED]}}}}))
    return tmp_path


def test_cli_check_fails_naming_each_pin_on_stderr(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lock", "check", "template.yaml", "ok.json", "--lock", "layershift.lock.json"]) == 1
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    hint = "use {{resolve:ssm:/layershift/six/arn}}"
    assert lines[:2] == [
        "template.yaml:7: pins arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:layer:team-six:7; "
        f"promoted is {PROMOTED}; {hint}",
        f"template.yaml:20: pins {LAYER_ARN}:8; promoted is {PROMOTED}; {hint}",
    ]
    assert "2 pin(s)" in lines[2] and "1 template(s)" in lines[2]
    assert captured.out == ""


def test_cli_check_passes_with_a_short_ok_line(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lock", "check", "ok.json", "--lock", "layershift.lock.json"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("OK: 1 template(s)") and captured.err == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["missing.yaml", "--lock", "layershift.lock.json"], "layershift: missing.yaml: no such template"),
        (["template.yaml", "--lock", "absent.json"], "layershift: absent.json: no such lock file"),
        (["template.yaml", "--lock", "template.yaml"], "layershift: template.yaml: not JSON"),
        (["template.yaml", "--lock", "layershift.lock.json", "--local"], "layershift: --lock checks offline"),
    ],
    ids=["missing-template", "missing-lock", "broken-lock", "lock-and-local"],
)
def test_cli_check_bad_input_exits_2(
    files: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["lock", "check", *argv]) == 2
    assert capsys.readouterr().err.startswith(message)


def test_cli_check_without_a_lock_or_a_control_plane_says_both_ways(
    files: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LAYERSHIFT_LOCAL_STATE", str(files / "no-such-state.json"))
    assert main(["lock", "check", "template.yaml", "--local"]) == 2
    err = capsys.readouterr().err
    assert "start one with `layershift local`" in err and "--lock FILE" in err


@pytest.mark.parametrize("command", ["export", "check"])
def test_lock_subcommand_help_exits_0(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["lock", command, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: layershift lock {command}")
