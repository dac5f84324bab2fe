"""The local build cache: one folder per key. A variant's zip, manifest and SBOM live under the
variant's key (its one target's build key, or the matrix key of its targets); a matrix's
variants.json lives under the matrix key.

A rebuild with unchanged keys copies the cached artifacts instead of building, after checking that
each cached zip still has the sha256 its manifest records.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CACHE_ENV = "LAYERSHIFT_BUILD_CACHE"


def default_cache_dir() -> Path:
    """``$LAYERSHIFT_BUILD_CACHE``, else ``~/.cache/layershift/builds``."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "layershift" / "builds"


def entry(cache_dir: Path, build_key: str) -> Path:
    """The cache folder of one build key."""
    return cache_dir / build_key


def store(cache_dir: Path, build_key: str, files: list[Path]) -> None:
    """Copy ``files`` into the cache entry of ``build_key`` (atomically: a partial entry is never seen)."""
    final = entry(cache_dir, build_key)
    partial = cache_dir / f".{build_key}.{os.getpid()}.partial"
    try:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for path in files:
            shutil.copyfile(path, partial / path.name)
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
