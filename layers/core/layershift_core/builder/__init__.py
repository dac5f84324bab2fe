"""The layer builder: wheel-only cross builds of a requirements file into Lambda layer zips.

Public API: :func:`build_layer` (one target), :func:`build_matrix` (every variant a rollout needs),
:func:`compute_build_key`, :func:`compute_matrix_key`, :class:`Manifest`, :class:`VariantIndex`,
:class:`AuditPolicy`, ``BUILDER_VERSION``, ``PROFILES`` (default, sourceless, slim-runtime),
:func:`default_cache_dir`. The CodeBuild entry is :mod:`layershift_core.builder.build_job`; the
CLI entry is :mod:`layershift_core.builder.command`.
"""

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
