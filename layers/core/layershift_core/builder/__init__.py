"""The layer builder: wheel-only cross builds of a requirements file into a Lambda layer zip.

Public API: :func:`build_layer`, :func:`compute_build_key`, :class:`Manifest`, ``BUILDER_VERSION``,
``PROFILES`` (default, sourceless, slim-runtime), :func:`default_cache_dir`.
The CodeBuild entry is :mod:`layershift_core.builder.build_job`; the CLI entry is
:mod:`layershift_core.builder.command`.
"""

from layershift_core.builder.build import LAYER_ZIP, MANIFEST_JSON, SBOM_JSON, UNZIPPED_BUDGET_BYTES, build_layer
from layershift_core.builder.cache import default_cache_dir
from layershift_core.builder.key import BUILDER_VERSION, PROFILES, compute_build_key
from layershift_core.builder.manifest import Manifest, PackageEntry
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
    "Manifest",
    "PackageEntry",
    "build_layer",
    "compute_build_key",
    "default_cache_dir",
]
