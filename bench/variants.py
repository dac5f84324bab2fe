"""The layer variants the benchmark compares: the documented baselines and layershift's own builder.

The baselines are re-implementations, in this project, of documented rule sets: the AWS
documentation recipe (``pip install --target`` then ``zip -r``), serverless-python-requirements
with ``slim: true``, and the rules of the Powertools public layer's Dockerfile.
"""

from __future__ import annotations

import contextlib
import fnmatch
import inspect
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.measure import plain_zip, tree_bytes, zip_unzipped_bytes
from layershift_core.builder.zipper import sha256_file

PIP_TIMEOUT_SECONDS = 1800
NAIVE_PLATFORM = "manylinux2014_x86_64"

# Top-level entries the Powertools layer removes because the Lambda runtime ships them.
POWERTOOLS_REMOVED = ("boto*", "s3transfer*", "*dateutil*", "urllib3*", "six*", "jmespath*")


@dataclass
class Build:
    """One build of one variant."""

    variant: str
    seconds: float | None = None
    zip_path: Path | None = None
    sha256: str | None = None
    unzipped_bytes: int | None = None
    zipped_bytes: int | None = None
    site: Path | None = None  # the folder used in place (in-place floor) or kept for derived variants
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    extra: dict = field(default_factory=dict)

    def finish(self) -> Build:
        if self.zip_path is not None and self.zip_path.exists():
            self.sha256 = sha256_file(self.zip_path)
            self.zipped_bytes = self.zip_path.stat().st_size
            self.unzipped_bytes = zip_unzipped_bytes(self.zip_path)
        return self


@contextlib.contextmanager
def patched_environ(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of the block (the builder's pip inherits them)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def pip_env(pip_cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PIP_CACHE_DIR=str(pip_cache),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        PIP_ROOT_USER_ACTION="ignore",
    )
    env.pop("PIP_TARGET", None)
    env.pop("PIP_PREFIX", None)
    return env


def naive_pip_command(interpreter: str, requirements: Path, dest: Path, python_version: str) -> list[str]:
    """The AWS documentation recipe's install command."""
    return [
        interpreter,
        "-m",
        "pip",
        "install",
        "--platform",
        NAIVE_PLATFORM,
        "--implementation",
        "cp",
        "--python-version",
        python_version,
        "--only-binary=:all:",
        "--target",
        str(dest),
        "-r",
        str(requirements),
    ]


def run_pip(cmd: list[str], pip_cache: Path, log: Path) -> float:
    """Run a pip command, its output appended to ``log``; returns seconds. Raises on failure."""
    started = time.monotonic()
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=pip_env(pip_cache), timeout=PIP_TIMEOUT_SECONDS, check=False
        )
    if proc.returncode != 0:
        raise RuntimeError(f"pip failed (exit {proc.returncode}); see {log}")
    return time.monotonic() - started


def pip_zip_build(
    variant: str, interpreter: str, requirements: Path, root: Path, pip_cache: Path, log: Path, python_version: str
) -> Build:
    """``pip install --target root/python`` then a plain zip of ``root``: the naive recipes."""
    if root.exists():
        shutil.rmtree(root)
    site = root / "python"
    site.mkdir(parents=True)
    started = time.monotonic()
    install_seconds = run_pip(naive_pip_command(interpreter, requirements, site, python_version), pip_cache, log)
    zip_path = root.parent / f"{root.name}.zip"
    zip_started = time.monotonic()
    plain_zip(root, zip_path)
    build = Build(variant=variant, zip_path=zip_path, site=site)
    build.seconds = time.monotonic() - started
    zip_seconds = time.monotonic() - zip_started
    build.extra = {"install_seconds": round(install_seconds, 3), "zip_seconds": round(zip_seconds, 3)}
    return build.finish()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def strip_shared_objects(site: Path, log: Path) -> int:
    """``find site -name '*.so' -exec strip {} ;``; returns how many files strip accepted."""
    stripped = 0
    with log.open("a", encoding="utf-8") as fh:
        for path in sorted(site.rglob("*.so")):
            if not path.is_file() or path.is_symlink():
                continue
            proc = subprocess.run(["strip", str(path)], stdout=fh, stderr=subprocess.STDOUT, check=False)
            stripped += proc.returncode == 0
    return stripped


def apply_slim(site: Path, log: Path) -> dict[str, int]:
    """serverless-python-requirements ``slim: true``: delete ``**/*.py[c|o]``, ``**/__pycache__*``,
    ``**/*.dist-info*``, then strip every ``*.so``."""
    removed = 0
    for pattern in ("*.py[c|o]", "__pycache__*", "*.dist-info*"):
        for path in sorted(site.rglob(pattern), key=lambda p: len(p.parts)):
            if path.exists() or path.is_symlink():
                _remove(path)
                removed += 1
    return {"removed": removed, "stripped": strip_shared_objects(site, log)}


def apply_powertools(site: Path, log: Path) -> dict[str, int]:
    """The Powertools public layer's rules: remove the runtime's packages, strip ``*.so``, delete
    ``*/tests/*`` files, ``__pycache__`` and ``*.py[co]``."""
    removed = 0
    for entry in sorted(site.iterdir()):
        if any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in POWERTOOLS_REMOVED):
            _remove(entry)
            removed += 1
    stripped = strip_shared_objects(site, log)
    for current, _dirs, files in os.walk(site):
        rel = "/" + Path(current).relative_to(site).as_posix() + "/"
        if "/tests/" in rel:
            for name in files:
                (Path(current) / name).unlink()
                removed += 1
    for path in sorted(site.rglob("*"), key=lambda p: -len(p.parts)):
        if path.name == "__pycache__" or path.suffix in (".pyc", ".pyo"):
            _remove(path)
            removed += 1
    return {"removed": removed, "stripped": stripped}


RULES = {"slim": apply_slim, "powertools": apply_powertools}


def derived_build(variant: str, base: Build, root: Path, log: Path) -> Build:
    """Apply ``variant``'s rules to a copy of the naive-matching install, then a plain zip.

    Build time = the base's pip install time + the rules + the zip (the copy is not counted).
    """
    if base.site is None or base.seconds is None:
        return Build(variant=variant, error="no naive-matching install to start from")
    if root.exists():
        shutil.rmtree(root)
    site = root / "python"
    shutil.copytree(base.site, site, symlinks=True)
    started = time.monotonic()
    counts = RULES[variant](site, log)
    zip_path = root.parent / f"{root.name}.zip"
    plain_zip(root, zip_path)
    post = time.monotonic() - started
    shutil.rmtree(root)
    build = Build(variant=variant, zip_path=zip_path)
    build.seconds = base.extra.get("install_seconds", base.seconds) + post
    build.extra = {**counts, "rules_and_zip_seconds": round(post, 3)}
    return build.finish()


def in_place_build(base: Build) -> Build:
    """The naive-matching install folder itself, used in place: the import-time floor, not a layer."""
    if base.site is None:
        return Build(variant="in-place floor", error="no naive-matching install")
    build = Build(variant="in-place floor", site=base.site)
    build.unzipped_bytes = tree_bytes(base.site)
    return build


# --- layershift ------------------------------------------------------------------------------------


def builder_capabilities() -> dict[str, bool]:
    """Which optional parameters the installed builder's ``build_layer`` accepts."""
    from layershift_core.builder import build_layer

    params = inspect.signature(build_layer).parameters
    return {name: name in params for name in ("cache_dir", "use_cache", "no_cache", "echo")}


def known_profiles() -> set[str]:
    from layershift_core.builder import PROFILES

    return set(PROFILES)


def cache_flags(manifest: object) -> dict[str, object]:
    """Whatever the manifest says about the build cache (fields whose name mentions a cache)."""
    try:
        data = manifest.model_dump(mode="json")  # type: ignore[attr-defined]
    except AttributeError:
        data = dict(vars(manifest))
    found = {k: v for k, v in data.items() if "cache" in k.lower()}
    timings = data.get("timings") or {}
    found.update({f"timings.{k}": v for k, v in timings.items() if "cache" in k.lower()})
    return found


def layershift_build(
    variant: str,
    requirements_text: str,
    profile: str,
    out_dir: Path,
    pip_cache: Path,
    builder_cache: Path | None,
    log: Path,
    runtime: str,
    architecture: str,
) -> Build:
    """One ``build_layer`` call with ``pip_cache`` as pip's cache.

    ``builder_cache`` is the builder's artifact cache: pass a fresh empty folder to force a real
    build. When the builder has no ``cache_dir`` parameter, its cache is turned off if it can be.
    """
    from layershift_core.builder import build_layer

    caps = builder_capabilities()
    kwargs: dict[str, object] = {
        "runtime": runtime,
        "architecture": architecture,
        "out_dir": out_dir,
        "profile": profile,
    }
    lines: list[str] = []
    if caps["echo"]:
        kwargs["echo"] = lines.append
    if caps["cache_dir"] and builder_cache is not None:
        kwargs["cache_dir"] = builder_cache
    elif caps["use_cache"]:
        kwargs["use_cache"] = False
    elif caps["no_cache"]:
        kwargs["no_cache"] = True
    if out_dir.exists():
        shutil.rmtree(out_dir)
    build = Build(variant=variant)
    started = time.monotonic()
    try:
        with patched_environ(PIP_CACHE_DIR=str(pip_cache), PIP_DISABLE_PIP_VERSION_CHECK="1"):
            manifest = build_layer(requirements_text, **kwargs)
    except Exception as exc:
        build.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        lines.append(f"{type(exc).__name__}: {exc}")
        return build
    finally:
        build.seconds = time.monotonic() - started
        with log.open("a", encoding="utf-8") as fh:
            fh.write(f"\n# build_layer(profile={profile!r}, cache_dir={kwargs.get('cache_dir')})\n")
            fh.write("\n".join(lines) + "\n")
    build.zip_path = out_dir / "layer.zip"
    build.extra = {
        "manifest_unzipped_bytes": manifest.unzipped_bytes,
        "manifest_sha256": manifest.sha256,
        "smoke_recompiled": len(manifest.smoke_test.recompiled),
        "timings": dict(manifest.timings),
        "cache": cache_flags(manifest),
        "warnings": list(manifest.warnings),
    }
    return build.finish()
