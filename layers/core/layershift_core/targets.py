"""FindReusableBuild: which (runtime, architecture) targets a rollout serves, and which of them need a build.

The targets come from, in this order:

1. ``layer.toml``: every runtime x architecture it lists. When it lists only one of the two, the
   other comes from the layer's functions (or the template's default);
2. the layer's functions, as FindCandidates found them (their runtime and architecture from
   ListFunctions, no call per function): every pair among them that the builder supports;
3. the template's DefaultRuntime x DefaultArchitecture, when no function uses the layer yet.

Each target has its own build key. A target whose build key the registry already holds, recorded
with the sha256 of the zip that was verified and published (and Lambda's CodeSha256 of that version
still agrees), is served by that published version (a pure-Python version serves every runtime and
both architectures, so it is recorded under each of their keys); S3 object metadata plays no part.
The others are built together by one CodeBuild job, which shares
the resolution and the downloads between them and writes one variant per layer zip it makes.
"""

from __future__ import annotations

from typing import Literal

from .aborts import ensure_rollout_not_aborted
from .artifacts import artifact_prefix, read_bytes, read_json
from .aws import client
from .builder.key import compute_build_key, compute_matrix_key
from .builder.platforms import ARCHITECTURES, RUNTIMES, target_for
from .models import (
    BuildEnvironmentVariable,
    BuildMatrix,
    BuildTarget,
    LayerSpec,
    LayerVersionRef,
    RolloutState,
    platform_label,
)
from .observability import logger
from .publish import code_sha256
from .registry import Registry
from .requirements import check_markers, parse_requirements
from .settings import Settings
from .staging import STAGING_ROOT

Pair = tuple[str, str]


def _newest_first(pairs: set[Pair]) -> list[Pair]:
    """Newest runtime first, x86_64 before arm64: the first target names ``/layershift/<layer>/arn``."""
    runtimes, architectures = list(RUNTIMES), list(ARCHITECTURES)
    return sorted(pairs, key=lambda pair: (-runtimes.index(pair[0]), architectures.index(pair[1])))


def choose_targets(
    spec: LayerSpec, platforms: list[str], default_runtime: str, default_architecture: str
) -> tuple[list[Pair], Literal["spec", "consumers", "defaults"]]:
    """The (runtime, architecture) pairs to build for, and where they come from.

    ``platforms`` are the candidates' ``runtime/architecture`` labels; those the builder cannot
    build for (another language, an old Python, a container image) do not count.
    """
    consumers = set()
    for label in platforms:
        runtime, _, architecture = label.partition("/")
        if runtime in RUNTIMES and architecture in ARCHITECTURES:
            consumers.add((runtime, architecture))
    if spec.runtimes and spec.architectures:
        return [(r, a) for r in spec.runtimes for a in spec.architectures], "spec"
    if spec.runtimes:
        wanted = [a for a in ARCHITECTURES if any(c[1] == a for c in consumers)] or [default_architecture]
        return [(r, a) for r in spec.runtimes for a in wanted], "spec"
    if spec.architectures:
        found = [p[0] for p in _newest_first({c for c in consumers if c[1] in spec.architectures})]
        wanted = list(dict.fromkeys(found)) or [default_runtime]
        return [(r, a) for r in wanted for a in spec.architectures], "spec"
    if consumers:
        return _newest_first(consumers), "consumers"
    return [(default_runtime, default_architecture)], "defaults"


def _reused_version(
    settings: Settings, layer: str, target: BuildTarget, known: dict[int, LayerVersionRef]
) -> LayerVersionRef | None:
    """The published version the registry holds for this target's build key, if Lambda still has it
    (looked up once per version: a pure-Python version serves several targets)."""
    registry = Registry(settings.table)
    record = registry.find_build(layer, target.build_key)
    if record is None:
        return None
    if int(record["version"]) in known:
        return known[int(record["version"])]
    lam = client("lambda")
    try:
        found = lam.get_layer_version(LayerName=settings.published_name(layer), VersionNumber=int(record["version"]))
    except lam.exceptions.ResourceNotFoundException:
        registry.forget_build(layer, target.build_key)
        return None
    recorded = str(record.get("sha256") or "")
    published = (found.get("Content") or {}).get("CodeSha256")
    if not recorded or published != code_sha256(recorded):
        logger.warning(
            "registry build record does not match the published layer version; building again",
            extra={"layer": layer, "build_key": target.build_key, "recorded": recorded, "published": published},
        )
        return None
    manifest = read_json(settings.bucket, record["manifest_key"])
    return LayerVersionRef(
        arn=found["LayerVersionArn"],
        version=found["Version"],
        build_key=target.build_key,
        compatible_runtimes=found.get("CompatibleRuntimes", []),
        compatible_architectures=found.get("CompatibleArchitectures", []),
        unzipped_bytes=int(manifest.get("unzipped_bytes", 0)),
        variant=str(record.get("variant") or manifest.get("variant") or target.label.replace("/", "-")),
        targets=[],
        reused=True,
        manifest_key=record["manifest_key"],
    )


def find_reusable_build(state: RolloutState, settings: Settings) -> RolloutState:
    """FindReusableBuild: the rollout's targets, the published versions that serve some of them, and
    the CodeBuild job's environment for the rest."""
    ensure_rollout_not_aborted(state, settings)
    if state.rollout is None:
        raise ValueError("choosing what to build needs a validated rollout")
    rollout, spec = state.rollout, state.rollout.spec
    platforms = list((state.candidates.platforms if state.candidates else {}).keys())
    pairs, source = choose_targets(spec, platforms, settings.default_runtime, settings.default_architecture)
    requirements_key = rollout.requirements_uri.removeprefix(f"s3://{settings.bucket}/")
    reqs = parse_requirements(read_bytes(settings.bucket, requirements_key), allow_ranges=spec.allow_ranges)
    check_markers(reqs, {platform_label(r, a): target_for(r, a).marker_environment() for r, a in pairs})
    targets = [
        BuildTarget.model_validate(
            {
                "runtime": r,
                "architecture": a,
                "build_key": compute_build_key(reqs, r, a, spec.profile, audit_policy=spec.audit),
            }
        )
        for r, a in pairs
    ]
    versions: dict[int, LayerVersionRef] = {}
    to_build: list[BuildTarget] = []
    for target in targets:
        reused = _reused_version(settings, rollout.layer, target, versions)
        if reused is None:
            to_build.append(target)
            continue
        version = versions.setdefault(reused.version, reused)
        version.targets.append(target.label)
    matrix_key = compute_matrix_key([t.build_key for t in to_build or targets])
    prefix = artifact_prefix(rollout.layer, matrix_key)
    environment = {
        "LAYERSHIFT_LAYER": rollout.layer,
        "LAYERSHIFT_REQUIREMENTS_URI": rollout.requirements_uri,
        "LAYERSHIFT_TARGETS": ",".join(t.label for t in to_build),
        "LAYERSHIFT_STAGING_URI": f"s3://{settings.bucket}/{STAGING_ROOT}",
        "LAYERSHIFT_BUILD_KEY": matrix_key,
        "LAYERSHIFT_ALLOW_RANGES": "true" if spec.allow_ranges else "false",
        "LAYERSHIFT_PROFILE": spec.profile,
        "LAYERSHIFT_AUDIT_FAIL_ON": spec.audit.fail_on,
        "LAYERSHIFT_AUDIT_UNAVAILABLE": spec.audit.unavailable,
    }
    state.matrix = BuildMatrix(
        source=source,
        targets=targets,
        to_build=to_build,
        build_needed=bool(to_build),
        matrix_key=matrix_key,
        artifact_prefix=prefix,
        build_environment=[BuildEnvironmentVariable(Name=k, Value=v) for k, v in environment.items()]
        if to_build
        else [],
    )
    state.layer_versions = list(versions.values())
    record = {"layer_version_arns": ",".join(v.arn for v in state.layer_versions)} if state.layer_versions else {}
    Registry(settings.table).put_rollout(
        rollout.layer,
        rollout.rollout_id,
        status="building" if to_build else "reusing",
        build_key=matrix_key,
        targets=",".join(t.label for t in targets),
        **record,
    )
    return state
