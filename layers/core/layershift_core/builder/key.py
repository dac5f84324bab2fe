"""The build key: what identifies a build's inputs, so an identical build can be reused."""

from __future__ import annotations

import hashlib
import json

from layershift_core.builder.audit import AuditPolicy, effective_policy
from layershift_core.errors import InvalidLayerSpec
from layershift_core.requirements import RequirementSet

# Bump whenever a change to the builder changes what a layer zip or its manifest contains.
BUILDER_VERSION = "5"

DEFAULT_PROFILE = "default"
SOURCELESS_PROFILE = "sourceless"
SLIM_RUNTIME_PROFILE = "slim-runtime"

PROFILES: dict[str, str] = {
    DEFAULT_PROFILE: (
        "wheels only; safe pruning (package tests folders, caches, type stubs, Cython and C sources and "
        "headers); extension modules stripped when they still import; unchecked-hash bytecode beside the sources"
    ),
    SOURCELESS_PROFILE: (
        "as default, but ships bytecode only: each module compiled in place (mod.pyc), its source removed, "
        "except modules that do not import without their sources"
    ),
    SLIM_RUNTIME_PROFILE: (
        "as default, plus the packages the Lambda runtime ships are left out (boto3, botocore, s3transfer, "
        "jmespath, python-dateutil, urllib3, six), with a warning when a pin differs from the runtime's version"
    ),
}


def check_profile(profile: str) -> str:
    """``profile`` if the builder knows it, else :class:`InvalidLayerSpec`."""
    if profile not in PROFILES:
        raise InvalidLayerSpec(f"build profile {profile!r} is unknown; choose one of {', '.join(PROFILES)}")
    return profile


def compute_build_key(
    reqs: RequirementSet,
    runtime: str,
    architecture: str,
    profile: str = "default",
    audit_policy: AuditPolicy | None = None,
) -> str:
    """Hex sha256 over the normalised requirements, runtime, architecture, profile, audit policy and
    builder version.

    The audit policy is part of the key, so a build that passed a lenient gate is never reused
    under a stricter one. ``None`` is the policy a build without one applies (audit, never fail).
    """
    policy = effective_policy(audit_policy)
    payload = {
        "builder_version": BUILDER_VERSION,
        "requirements": reqs.normalised_text(),
        "runtime": runtime,
        "architecture": architecture,
        "profile": profile,
        "audit": {"fail_on": policy.fail_on, "unavailable": policy.unavailable},
    }
    return _digest(payload)


def compute_matrix_key(target_keys: list[str]) -> str:
    """The key of a build matrix: hex sha256 over its targets' build keys, sorted, one a line.

    The same set of target keys gives the same key, in any order. (Each build key already covers
    the builder version.)
    """
    unique = sorted(set(target_keys))
    if not unique:
        raise ValueError("a build matrix needs at least one target")
    return hashlib.sha256("\n".join(unique).encode()).hexdigest()


def compute_variant_key(target_keys: list[str]) -> str:
    """The key of one variant (its manifest's ``build_key`` and its cache entry): its one target's
    build key, or the matrix key of its targets."""
    unique = sorted(set(target_keys))
    return unique[0] if len(unique) == 1 else compute_matrix_key(unique)


def _digest(payload: dict) -> str:
    encoded = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(encoded).hexdigest()
