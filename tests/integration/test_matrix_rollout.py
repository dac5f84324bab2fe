"""One push, a mixed fleet: python3.12 and python3.13 functions on x86_64 and arm64 each move to the
layer variant built for their runtime and architecture, under one verdict, and back together.

The builds are real (PyPI wheels cross-built for each target). The local Lambda runs every function
on this machine's x86_64 CPython, so the arm64 consumer does not import the native module: what this
proves for arm64 is the variant it is given and the static check of that variant's shared objects.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from layershift.controlplane import ControlPlane

from .support import create_alarm, create_consumer, publish_bootstrap_layer, run_rollout, spec

pytestmark = [pytest.mark.integration, pytest.mark.network]

FLEET = {"py312": ("python3.12", "x86_64"), "py313": ("python3.13", "x86_64"), "arm": ("python3.13", "arm64")}
NATIVE = (
    "import importlib.metadata, sys\n"
    "from markupsafe import _speedups\n\n"
    "def handler(event, context):\n"
    "    version = importlib.metadata.version('markupsafe')\n"
    "    assert version == '3.0.2', f'this function needs markupsafe 3.0.2, not {version}'\n"
    "    return {'markupsafe': version, 'python': '%d.%d' % sys.version_info[:2], 'native': _speedups.__file__}\n"
)
ARM = "import platform\n\ndef handler(event, context):\n    return {'machine': platform.machine()}\n"


def _consumers(cp: ControlPlane, layer: str, source: str) -> dict[str, str]:
    """One function per platform of FLEET on the layer's first version: name -> its alias's version."""
    first = publish_bootstrap_layer(cp, layer)
    versions = {}
    for suffix, (runtime, architecture) in FLEET.items():
        name = f"{layer}-{suffix}"
        code = ARM if architecture == "arm64" else source
        versions[name] = create_consumer(cp, name, [first], source=code, runtime=runtime, architecture=architecture)
    return versions


def _plan(cp: ControlPlane, layer: str, execution_arn: str) -> dict[str, Any]:
    name = execution_arn.rsplit(":", 1)[-1]
    body = cp.client("s3").get_object(Bucket=cp.bucket, Key=f"rollouts/{layer}/{name}/plan.json")["Body"].read()
    return json.loads(body)


def _on(cp: ControlPlane, function: str) -> tuple[str, list[str]]:
    """The version the alias serves (asserting it is not split) and that version's layers."""
    lam = cp.client("lambda")
    alias = lam.get_alias(FunctionName=function, Name="live")
    assert not (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights"), alias
    config = lam.get_function_configuration(FunctionName=function, Qualifier=alias["FunctionVersion"])
    return alias["FunctionVersion"], [entry["Arn"] for entry in config["Layers"]]


def _manifest(cp: ControlPlane, layer: str, version: int) -> dict[str, Any]:
    ddb = cp.client("dynamodb")
    record = ddb.get_item(
        TableName=cp.table, Key={"pk": {"S": f"LAYER#{layer}"}, "sk": {"S": f"VERSION#{version:06d}"}}
    )
    manifest_key = record["Item"]["manifest_key"]["S"]
    return json.loads(cp.client("s3").get_object(Bucket=cp.bucket, Key=manifest_key)["Body"].read())


def test_one_push_builds_every_variant_and_each_function_moves_to_its_own(control_plane: ControlPlane) -> None:
    cp = control_plane
    before = _consumers(cp, "mixed", NATIVE)
    rollout = run_rollout(cp, "mixed", "markupsafe==3.0.2\n", spec())
    assert rollout.status == "SUCCEEDED", rollout.lines
    assert rollout.states_entered().count("BuildLayer") == 1, "one CodeBuild job builds every variant"

    assert rollout.output is not None
    versions = {v["variant"]: v for v in rollout.output["layer_versions"]}
    served = sorted(label for v in versions.values() for label in v["targets"])
    assert served == ["python3.12/x86_64", "python3.13/arm64", "python3.13/x86_64"]
    plan = _plan(cp, "mixed", rollout.execution_arn)
    targets = {t["function_name"]: t for t in plan["targets"]}
    arns = {v["variant"]: v["arn"] for v in plan["layer_versions"]}
    lam = cp.client("lambda")
    for suffix, (runtime, architecture) in FLEET.items():
        name = f"mixed-{suffix}"
        assert targets[name]["verdict"] == "target", targets[name]["reason"]
        version, layers = _on(cp, name)
        assert version != before[name] and layers == [arns[targets[name]["variant"]]]
        layer = lam.get_layer_version(
            LayerName=cp.published_name("mixed"), VersionNumber=int(layers[0].rsplit(":", 1)[1])
        )
        assert runtime in layer["CompatibleRuntimes"] and layer["CompatibleArchitectures"] == [architecture]
        parameter = cp.client("ssm").get_parameter(Name=f"/layershift/mixed/{runtime}/{architecture}/arn")
        assert parameter["Parameter"]["Value"] == layers[0]
    # The x86_64 functions import the native module from their own variant on their own Python.
    for suffix in ("py312", "py313"):
        answer = json.loads(lam.invoke(FunctionName=f"mixed-{suffix}", Qualifier="live")["Payload"].read())
        assert answer["markupsafe"] == "3.0.2" and answer["python"] == FLEET[suffix][0].removeprefix("python")
    # The arm64 variant's shared objects were checked statically, with figures.
    arm = next(v for v in versions.values() if "python3.13/arm64" in v["targets"])
    binaries = _manifest(cp, "mixed", arm["version"])["binaries"]
    assert binaries["checks"] == ["elf"] and binaries["checked"] >= 1, binaries
    assert binaries["needed"] == binaries["resolved_in_layer"] + binaries["resolved_system"] > 0
    assert "import" in (binaries["import_note"] or ""), "the arm64 build says why its import check did not run"

    # A second push breaks one function: the whole mixed cohort goes back to what the first push gave it.
    promoted = {name: _on(cp, name) for name in before}
    create_alarm(cp, "mixed-py313-errors", "mixed-py313")
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            lam.invoke(FunctionName="mixed-py313", Qualifier="live", Payload=b"{}")
            stop.wait(0.05)

    driver = threading.Thread(target=traffic)
    driver.start()
    try:
        broken = run_rollout(
            cp, "mixed", "markupsafe==3.0.1\n", spec("[{weight = 50, bake_seconds = 120}]", '["mixed-py313-errors"]')
        )
    finally:
        stop.set()
        driver.join()
    assert broken.status == "FAILED" and broken.error == "RolloutUnhealthy", broken.lines
    moved = {t["function_name"] for t in _plan(cp, "mixed", broken.execution_arn)["targets"] if t["new_version"]}
    assert moved == set(before), "every function of the cohort took part"
    assert {name: _on(cp, name) for name in before} == promoted


def test_a_pure_python_layer_serves_every_runtime_and_architecture_from_one_build(
    control_plane: ControlPlane,
) -> None:
    cp = control_plane
    _consumers(cp, "mixedpure", "import six\n\ndef handler(event, context):\n    return {'six': six.__version__}\n")
    rollout = run_rollout(cp, "mixedpure", "six==1.16.0\n", spec())
    assert rollout.status == "SUCCEEDED", rollout.lines
    assert rollout.output is not None
    [version] = rollout.output["layer_versions"]
    assert sorted(version["targets"]) == ["python3.12/x86_64", "python3.13/arm64", "python3.13/x86_64"]
    assert sorted(version["compatible_architectures"]) == ["arm64", "x86_64"]
    for suffix in FLEET:
        assert _on(cp, f"mixedpure-{suffix}")[1] == [version["arn"]]
