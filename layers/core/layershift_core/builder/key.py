"""The build key: what identifies a build's inputs, so an identical build can be reused."""

from __future__ import annotations

import hashlib
import json

from layershift_core.builder.audit import AuditPolicy, effective_policy
from layershift_core.errors import InvalidLayerSpec
from layershift_core.requirements import RequirementSet

# Bump whenever a change to the builder changes what a layer zip or its manifest contains.
BUILDER_VERSION = "4"

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
    """The key of a build matrix: the same set of target build keys gives the same key, in any order.

    A matrix of one target has that target's build key, so a one-target job and ``build_layer``
    share their artifacts and their cache entry.
    """
    unique = sorted(set(target_keys))
    if not unique:
        raise ValueError("a build matrix needs at least one target")
    if len(unique) == 1:
        return unique[0]
    return _digest({"builder_version": BUILDER_VERSION, "matrix": unique})


def _digest(payload: dict) -> str:
    encoded = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(encoded).hexdigest()
