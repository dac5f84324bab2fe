"""Step 1 of a rollout: police the pushed requirements file and layer.toml, before anything is built."""

from __future__ import annotations

import json
import re

from .aborts import ensure_not_aborted
from .artifacts import artifact_prefix, read_bytes, rollout_prefix, write_bytes, write_json
from .aws import client
from .builder import compute_build_key
from .errors import InvalidLayerSpec, InvalidRequest
from .models import LAYER_NAME_PATTERN, BuildEnvironmentVariable, LayerSpec, RolloutState, ValidatedRollout
from .registry import Registry
from .requirements import parse_requirements
from .settings import Settings
from .spec import parse_layer_spec


def spec_keys(layer: str) -> tuple[str, str]:
    return f"layers/{layer}/requirements.txt", f"layers/{layer}/layer.toml"


def check_alarms_exist(spec: LayerSpec) -> None:
    if not spec.alarms:
        return
    found: set[str] = set()
    paginator = client("cloudwatch").get_paginator("describe_alarms")
    for page in paginator.paginate(AlarmNames=spec.alarms, AlarmTypes=["MetricAlarm", "CompositeAlarm"]):
        found.update(alarm["AlarmName"] for alarm in page.get("MetricAlarms", []))
        found.update(alarm["AlarmName"] for alarm in page.get("CompositeAlarms", []))
    missing = [name for name in spec.alarms if name not in found]
    if missing:
        raise InvalidLayerSpec(f"layer.toml: rollout.alarms: no CloudWatch alarm named {', '.join(map(repr, missing))}")


def validate_request(state: RolloutState, rollout_id: str, settings: Settings) -> RolloutState:
    request = state.request
    if not re.match(LAYER_NAME_PATTERN, request.layer):
        raise InvalidRequest(
            f"layer name {request.layer!r} is not valid: use 1-64 letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    requirements_key, config_key = spec_keys(request.layer)
    if request.bucket != settings.bucket:
        raise InvalidRequest(f"bucket {request.bucket!r} is not the artifact bucket {settings.bucket!r}")
    if request.requirements_key != requirements_key:
        raise InvalidRequest(f"requirements key {request.requirements_key!r} must be {requirements_key!r}")
    if request.config_key not in (None, config_key):
        raise InvalidRequest(f"config key {request.config_key!r} must be {config_key!r}")

    config = read_bytes(request.bucket, config_key, request.config_version) if request.config_key else None
    spec = parse_layer_spec(config, settings.spec_defaults, source=config_key)
    body = read_bytes(request.bucket, requirements_key, request.requirements_version)
    requirements = parse_requirements(body, allow_ranges=spec.allow_ranges, source=requirements_key)
    check_alarms_exist(spec)
    ensure_not_aborted(settings, request.layer, rollout_id)

    runtime, architecture = spec.runtimes[0], spec.architectures[0]
    build_key = compute_build_key(requirements, runtime, architecture, spec.profile)
    prefix = rollout_prefix(request.layer, rollout_id)
    write_bytes(request.bucket, prefix + "requirements.txt", requirements.normalised_text().encode(), "text/plain")
    write_json(request.bucket, prefix + "spec.json", json.loads(spec.model_dump_json()))
    output_prefix = artifact_prefix(request.layer, build_key)
    requirements_uri = f"s3://{request.bucket}/{prefix}requirements.txt"
    environment = {
        "LAYERSHIFT_REQUIREMENTS_URI": requirements_uri,
        "LAYERSHIFT_RUNTIME": runtime,
        "LAYERSHIFT_ARCH": architecture,
        "LAYERSHIFT_OUTPUT_URI": f"s3://{request.bucket}/{output_prefix}",
        "LAYERSHIFT_BUILD_KEY": build_key,
        "LAYERSHIFT_ALLOW_RANGES": "true" if spec.allow_ranges else "false",
        "LAYERSHIFT_PROFILE": spec.profile,
    }
    Registry(settings.table).put_rollout(
        request.layer,
        rollout_id,
        status="validated",
        build_key=build_key,
        requirements_version=request.requirements_version or "",
        source=request.source,
    )
    state.rollout = ValidatedRollout(
        rollout_id=rollout_id,
        layer=request.layer,
        spec=spec,
        build_key=build_key,
        runtime=runtime,
        architecture=architecture,
        requirements_uri=requirements_uri,
        artifact_prefix=output_prefix,
        build_environment=[BuildEnvironmentVariable(Name=k, Value=v) for k, v in environment.items()],
    )
    return state
