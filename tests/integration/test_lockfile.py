"""`layershift lock export` after a real rollout agrees with Lambda, the registry and SSM, its usage counts
with what the Lambda API says; `layershift lock check` fails on a template that pins the previous version,
offline against the lock file and against the control plane alike."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from layershift.cli import main
from layershift.controlplane import ControlPlane
from layershift_core import lockfile
from layershift_core.lockfile import UsedBy

from .support import create_consumer, publish_bootstrap_layer, run_rollout, use_local_state

pytestmark = [pytest.mark.integration, pytest.mark.network]

LAYER = "lockfile"
ALIASED = ("lockfile-a", "lockfile-b")
UNALIASED = "lockfile-latest-only"  # no alias: the plan skips it, so its $LATEST stays on the bootstrap version
# PyPI's sha256 of six-1.16.0-py2.py3-none-any.whl, the one wheel `six==1.16.0` installs (files on PyPI never change).
SIX_WHEEL_SHA256 = "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254"


def _uses_per_lambda(cp: ControlPlane, arn: str) -> UsedBy:
    """Who uses the layer version, asked of the Lambda API function by function: $LATEST's layers, and
    the layers of each version an alias sends traffic to."""
    lam = cp.client("lambda")
    functions = latest = aliases = 0
    for page in lam.get_paginator("list_functions").paginate():
        for config in page["Functions"]:
            name = config["FunctionName"]
            on_latest = arn in [layer["Arn"] for layer in config.get("Layers", [])]
            routed = 0
            for alias_page in lam.get_paginator("list_aliases").paginate(FunctionName=name):
                for alias in alias_page["Aliases"]:
                    weights = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
                    versions = [alias["FunctionVersion"], *weights]
                    layers = [
                        layer["Arn"]
                        for version in versions
                        for layer in lam.get_function_configuration(FunctionName=name, Qualifier=version).get(
                            "Layers", []
                        )
                    ]
                    routed += arn in layers
            functions += on_latest or routed > 0
            latest += on_latest
            aliases += routed
    return UsedBy(functions=functions, latest=latest, aliases=aliases)


def _registry_record(cp: ControlPlane, version: int) -> dict[str, object]:
    item = cp.client("dynamodb").get_item(
        TableName=cp.table, Key={"pk": {"S": f"LAYER#{LAYER}"}, "sk": {"S": f"VERSION#{version:06d}"}}
    )["Item"]
    return {name: next(iter(value.values())) for name, value in item.items()}


def _promoted_parameters(cp: ControlPlane) -> dict[str, str]:
    pages = (
        cp.client("ssm").get_paginator("get_parameters_by_path").paginate(Path=f"/layershift/{LAYER}", Recursive=True)
    )
    return {p["Name"]: p["Value"] for page in pages for p in page["Parameters"] if p["Name"].endswith("/arn")}


def test_lock_export_agrees_with_lambda_the_registry_and_ssm_and_check_names_the_old_pin(
    control_plane: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cp = control_plane
    use_local_state(cp, tmp_path, monkeypatch)
    previous = publish_bootstrap_layer(cp, LAYER)
    for name in ALIASED:
        create_consumer(cp, name, [previous])
    create_consumer(cp, UNALIASED, [previous], alias=None)

    rollout = run_rollout(cp, LAYER, "six==1.16.0\n", "[rollout]\nstrategy = 'AllAtOnce'\n")
    assert rollout.status == "SUCCEEDED", rollout.lines

    lock_path = tmp_path / "layershift.lock.json"
    assert main(["lock", "export", "--layer", LAYER, "--file", str(lock_path), "--local"]) == 0
    summary = capsys.readouterr().out
    lock = lockfile.load(lock_path)
    assert list(lock.layers) == [LAYER]
    layer = lock.layers[LAYER]

    # SSM: the default parameter is the layer's promoted ARN, and every promoted parameter is locked.
    parameters = _promoted_parameters(cp)
    assert layer.promoted_arn == parameters[f"/layershift/{LAYER}/arn"] != previous
    assert {name: variant.arn for variant in layer.variants for name in variant.parameters} == parameters
    assert layer.layer_name == cp.published_name(LAYER) == layer.promoted_arn.split(":")[6]

    for variant in layer.variants:
        # Lambda: the version exists, and its CodeSha256 is the base64 of the locked sha256.
        published = cp.client("lambda").get_layer_version(LayerName=layer.layer_arn, VersionNumber=variant.version)
        assert published["LayerVersionArn"] == variant.arn
        assert published["Content"]["CodeSha256"] == base64.b64encode(bytes.fromhex(variant.sha256)).decode()
        assert sorted(published["CompatibleRuntimes"]) == sorted(variant.compatible_runtimes)
        # The registry: the same build key(s) and sha256 for that version.
        record = _registry_record(cp, variant.version)
        assert (record["arn"], record["build_key"], record["sha256"]) == (
            variant.arn,
            variant.build_key,
            variant.sha256,
        )
        assert sorted(record["build_keys"]) == variant.build_keys  # type: ignore[call-overload]
        assert record["variant"] == variant.variant
        # The packages, each with the sha256 of the wheel pip installed: PyPI's own. (The manifest records it;
        # a build reused from a local build cache filled before it did has it from the SBOM beside it.)
        assert [(p.name, p.version, p.hashes) for p in variant.packages] == [
            ("six", "1.16.0", [f"sha256:{SIX_WHEEL_SHA256}"])
        ]
        # Usage: what the Lambda API says, function by function; here the two aliased consumers.
        assert variant.used_by == _uses_per_lambda(cp, variant.arn) == UsedBy(functions=2, latest=2, aliases=2)
        assert re.search(rf"{LAYER}: {re.escape(variant.arn)} .*used by 2 function\(s\): 2 \$LATEST, 2 alias", summary)
    assert _uses_per_lambda(cp, previous) == UsedBy(functions=1, latest=1, aliases=0), "the unaliased one stayed"

    # `--file -` writes the same document to stdout, and the summary to stderr.
    assert main(["lock", "export", "--layer", LAYER, "--file", "-", "--local"]) == 0
    printed = capsys.readouterr()
    again = lockfile.loads(printed.out, "stdout")
    assert again.model_copy(update={"generated_at": lock.generated_at}) == lock
    assert printed.err.startswith("locked 1 layer(s), 1 promoted version(s)")

    # A consumer template that still pins the previous version fails the check, which names it.
    template = tmp_path / "template.yaml"
    template.write_text(
        "Transform: AWS::Serverless-2016-10-31\n"
        "Resources:\n"
        "  Consumer:\n"
        "    Type: AWS::Serverless::Function\n"
        "    Properties:\n"
        "      Layers:\n"
        "        - !Sub arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:layer:"
        f"{layer.layer_name}:1\n"
        "  Current:\n"
        "    Type: AWS::Serverless::Function\n"
        "    Properties:\n"
        f"      Layers: [{layer.promoted_arn}]\n"
    )
    expected = (
        f"{template}:7: pins arn:${{AWS::Partition}}:lambda:${{AWS::Region}}:${{AWS::AccountId}}:layer:"
        f"{layer.layer_name}:1; promoted is {layer.promoted_arn}; use {{{{resolve:ssm:/layershift/{LAYER}/arn}}}}"
    )
    assert main(["lock", "check", str(template), "--lock", str(lock_path)]) == 1
    assert capsys.readouterr().err.splitlines()[0] == expected
    assert main(["lock", "check", str(template), "--local"]) == 1, "asking the control plane finds it too"
    assert capsys.readouterr().err.splitlines()[0] == expected

    template.write_text(
        template.read_text().replace(
            f"{layer.layer_name}:1\n", f"{layer.layer_name}:{layer.promoted_arn.rsplit(':', 1)[1]}\n"
        )
    )
    assert main(["lock", "check", str(template), "--lock", str(lock_path)]) == 0
    assert capsys.readouterr().out.startswith("OK: 1 template(s)")
