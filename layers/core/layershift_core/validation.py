"""Step 1 of a rollout: police the pushed requirements file and layer.toml, before anything is built."""

from __future__ import annotations

import json
import re

from pydantic import BaseModel, Field

from .aborts import ensure_not_aborted
from .artifacts import read_bytes, rollout_prefix, write_bytes, write_json
from .aws import client
from .builder import compute_build_key
from .builder.platforms import ARCHITECTURES, RUNTIMES, target_for
from .errors import InvalidLayerSpec, InvalidRequest
from .models import (
    LAYER_NAME_PATTERN,
    LayerSpec,
    RolloutRequest,
    RolloutState,
    ValidatedRollout,
    platform_label,
)
from .notify import publish
from .planner import find_candidates
from .registry import Registry
from .requirements import RequirementSet, check_markers, parse_requirements
from .settings import Settings
from .spec import SpecDefaults, parse_layer_spec


class CheckedFiles(BaseModel):
    """A requirements file and layer.toml that passed every offline check."""

    spec: LayerSpec
    requirements: RequirementSet
    build_keys: dict[str, str] = Field(
        default_factory=dict, description="platform label -> build key, when layer.toml names the whole matrix"
    )


def spec_keys(layer: str) -> tuple[str, str]:
    return f"layers/{layer}/requirements.txt", f"layers/{layer}/layer.toml"


def check_layer_name(layer: str) -> None:
    if not re.fullmatch(LAYER_NAME_PATTERN, layer):
        raise InvalidRequest(
            f"layer name {layer!a} is not valid: use 1-64 letters, digits, '-' or '_', starting with a letter or digit"
        )


def check_request(request: RolloutRequest, settings: Settings) -> None:
    """The layer name, and that the request names exactly that layer's keys in the artifact bucket."""
    check_layer_name(request.layer)
    if settings.own_layer_name and settings.published_name(request.layer) == settings.own_layer_name:
        raise InvalidRequest(
            f"layer name {request.layer!r} is reserved: it would publish as {settings.own_layer_name!r}, the "
            "control plane's own layer; choose another name"
        )
    requirements_key, config_key = spec_keys(request.layer)
    if request.bucket != settings.bucket:
        raise InvalidRequest(f"bucket {request.bucket!r} is not the artifact bucket {settings.bucket!r}")
    if request.requirements_key != requirements_key:
        raise InvalidRequest(f"requirements key {request.requirements_key!r} must be {requirements_key!r}")
    if request.config_key not in (None, config_key):
        raise InvalidRequest(f"config key {request.config_key!r} must be {config_key!r}")


def check_files(
    requirements: bytes,
    config: bytes | None,
    defaults: SpecDefaults,
    *,
    requirements_source: str = "requirements.txt",
    config_source: str = "layer.toml",
) -> CheckedFiles:
    """Every check that needs no AWS: layer.toml, the requirements policy, and, when layer.toml names
    the runtimes and the architectures, the markers against them (otherwise against every target it
    could get; FindReusableBuild checks them again against the targets the layer's functions give)."""
    spec = parse_layer_spec(config, defaults, source=config_source)
    reqs = parse_requirements(requirements, allow_ranges=spec.allow_ranges, source=requirements_source)
    named = [(runtime, architecture) for runtime in spec.runtimes for architecture in spec.architectures]
    possible = [(r, a) for r in spec.runtimes or RUNTIMES for a in spec.architectures or ARCHITECTURES]
    check_markers(reqs, {platform_label(r, a): target_for(r, a).marker_environment() for r, a in possible})
    return CheckedFiles(
        spec=spec,
        requirements=reqs,
        build_keys={
            platform_label(r, a): compute_build_key(reqs, r, a, spec.profile, audit_policy=spec.audit) for r, a in named
        },
    )


def check_alarms_exist(spec: LayerSpec, source: str = "layer.toml") -> None:
    if not spec.alarms:
        return
    found: set[str] = set()
    paginator = client("cloudwatch").get_paginator("describe_alarms")
    for page in paginator.paginate(AlarmNames=spec.alarms, AlarmTypes=["MetricAlarm", "CompositeAlarm"]):
        found.update(alarm["AlarmName"] for alarm in page.get("MetricAlarms", []))
        found.update(alarm["AlarmName"] for alarm in page.get("CompositeAlarms", []))
    for index, name in enumerate(spec.alarms):
        if name not in found:
            raise InvalidLayerSpec(f"{source}: rollout.alarms[{index}]: no CloudWatch alarm named {name!r}")


# Candidates whose alias ValidateRequest looks at, at most: the plan assesses every one of them.
ALIAS_SAMPLE = 25


def _has_alias(function: str, alias: str) -> bool:
    lam = client("lambda")
    try:
        lam.get_alias(FunctionName=function, Name=alias)
    except lam.exceptions.ResourceNotFoundException:
        return False
    return True


def check_targets_exist(layer: str, settings: Settings, spec: LayerSpec, source: str = "layer.toml") -> None:
    """Every function the spec names exists and has the alias; otherwise, when functions already use
    or are tagged for the layer, at least one of them has the alias, or the rollout would shift nothing
    (looked for among the first ALIAS_SAMPLE of them; a typo is refused when that covers them all).
    A layer that no function uses yet passes."""
    lam = client("lambda")
    named = [(f"targets.functions[{i}]", name) for i, name in enumerate(spec.functions)]
    named += [(f"rollout.pilots[{i}]", name) for i, name in enumerate(spec.pilots)]
    for field, name in named:
        try:
            lam.get_function(FunctionName=name)
        except lam.exceptions.ResourceNotFoundException:
            raise InvalidLayerSpec(f"{source}: {field}: no Lambda function named {name!r}") from None
        if not _has_alias(name, spec.alias):
            raise InvalidLayerSpec(f"{source}: targets.alias: function {name!r} ({field}) has no alias {spec.alias!r}")
    if named:
        return
    candidates = find_candidates(layer, settings, [])
    checkable = 0 < len(candidates) <= ALIAS_SAMPLE
    if checkable and not any(_has_alias(name, spec.alias) for name in candidates):
        shown = ", ".join(candidates[:5]) + (", ..." if len(candidates) > 5 else "")
        raise InvalidLayerSpec(
            f"{source}: targets.alias: none of the {len(candidates)} function(s) that use or are tagged for "
            f"layer {layer!r} has an alias {spec.alias!r} ({shown}), so the rollout would shift nothing"
        )


def validate_request(state: RolloutState, rollout_id: str, settings: Settings) -> RolloutState:
    request = state.request
    check_request(request, settings)
    requirements_key, config_key = spec_keys(request.layer)
    config = read_bytes(request.bucket, config_key, request.config_version) if request.config_key else None
    body = read_bytes(request.bucket, requirements_key, request.requirements_version)
    checked = check_files(
        body, config, settings.spec_defaults, requirements_source=requirements_key, config_source=config_key
    )
    spec, requirements = checked.spec, checked.requirements
    check_alarms_exist(spec, config_key)
    check_targets_exist(request.layer, settings, spec, config_key)
    ensure_not_aborted(settings, request.layer, rollout_id, holding_lock=False)  # before the lock

    prefix = rollout_prefix(request.layer, rollout_id)
    write_bytes(request.bucket, prefix + "requirements.txt", requirements.normalised_text().encode(), "text/plain")
    write_json(request.bucket, prefix + "spec.json", json.loads(spec.model_dump_json()))
    Registry(settings.table).put_rollout(
        request.layer,
        rollout_id,
        status="validated",
        requirements_version=request.requirements_version or "",
        source=request.source,
        commit_id=request.commit_id or "",
        pushed_by=request.pushed_by or "",
        attempt=str(request.attempt),
    )
    state.rollout = ValidatedRollout(
        rollout_id=rollout_id,
        layer=request.layer,
        spec=spec,
        requirements_uri=f"s3://{request.bucket}/{prefix}requirements.txt",
        fanout=settings.fanout,
    )
    steps = [f"{step.weight}% for {step.bake_seconds}s" for step in spec.steps]
    publish(
        settings,
        request.layer,
        "accepted",
        "info",
        f"layershift: {request.layer} push accepted",
        f"Rollout {rollout_id} of {request.layer}: {len(requirements.requirements)} requirement(s), "
        f"steps {', '.join(steps) or 'none'} then 100%" + (", approval before 100%" if spec.approval else ""),
        {
            "requirements": len(requirements.requirements),
            "steps": steps,
            "source": request.source,
            "commit_id": request.commit_id,
            "requirements_version": request.requirements_version,
        },
        rollout_id=rollout_id,
    )
    return state
