"""The build key: what identifies a build's inputs, so an identical build can be reused."""

from __future__ import annotations

import hashlib
import json

from layershift_core.errors import InvalidLayerSpec
from layershift_core.requirements import RequirementSet

# Bump whenever a change to the builder changes what a layer zip contains.
BUILDER_VERSION = "3"

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


def compute_build_key(reqs: RequirementSet, runtime: str, architecture: str, profile: str = "default") -> str:
    """Hex sha256 over the normalised requirements, runtime, architecture, profile and builder version."""
    payload = {
        "builder_version": BUILDER_VERSION,
        "requirements": reqs.normalised_text(),
        "runtime": runtime,
        "architecture": architecture,
        "profile": profile,
    }
    encoded = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(encoded).hexdigest()
