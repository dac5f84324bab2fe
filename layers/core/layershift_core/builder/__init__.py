"""The layer builder: wheel-only cross builds of a requirements file into Lambda layer zips.

Public API: :func:`build_layer` (one target), :func:`build_matrix` (every variant a rollout needs),
:func:`compute_build_key`, :func:`compute_matrix_key`, :class:`Manifest`, :class:`VariantIndex`,
:class:`AuditPolicy`, ``BUILDER_VERSION``, ``PROFILES`` (default, sourceless, slim-runtime),
:func:`default_cache_dir`. The CodeBuild entry is :mod:`layershift_core.builder.build_job`; the
CLI entry is :mod:`layershift_core.builder.command`.

The names load on first use: every control-plane function imports the models, which need only
:class:`AuditPolicy`, and should not pay for the whole builder at a cold start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from layershift_core.builder.audit import AuditPolicy
    from layershift_core.builder.build import (
        LAYER_ZIP,
        MANIFEST_JSON,
        SBOM_JSON,
        UNZIPPED_BUDGET_BYTES,
        VARIANTS_JSON,
        build_layer,
        build_matrix,
    )
    from layershift_core.builder.cache import default_cache_dir
    from layershift_core.builder.key import BUILDER_VERSION, PROFILES, compute_build_key, compute_matrix_key
    from layershift_core.builder.manifest import Manifest, PackageEntry, Variant, VariantIndex, VariantTarget
    from layershift_core.builder.platforms import ARCHITECTURES, RUNTIMES

_HOMES = {
    "audit": ["AuditPolicy"],
    "build": [
        "LAYER_ZIP",
        "MANIFEST_JSON",
        "SBOM_JSON",
        "UNZIPPED_BUDGET_BYTES",
        "VARIANTS_JSON",
        "build_layer",
        "build_matrix",
    ],
    "cache": ["default_cache_dir"],
    "key": ["BUILDER_VERSION", "PROFILES", "compute_build_key", "compute_matrix_key"],
    "manifest": ["Manifest", "PackageEntry", "Variant", "VariantIndex", "VariantTarget"],
    "platforms": ["ARCHITECTURES", "RUNTIMES"],
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "ARCHITECTURES",
    "BUILDER_VERSION",
    "LAYER_ZIP",
    "MANIFEST_JSON",
    "PROFILES",
    "RUNTIMES",
    "SBOM_JSON",
    "UNZIPPED_BUDGET_BYTES",
    "VARIANTS_JSON",
    "AuditPolicy",
    "Manifest",
    "PackageEntry",
    "Variant",
    "VariantIndex",
    "VariantTarget",
    "build_layer",
    "build_matrix",
    "compute_build_key",
    "compute_matrix_key",
    "default_cache_dir",
]
