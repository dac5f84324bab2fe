"""build_layer: requirements text in, a deterministic layer zip and its manifest out."""

from __future__ import annotations

import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from layershift_core.builder import distributions, install, zipper
from layershift_core.builder.bytecode import compile_site
from layershift_core.builder.key import BUILDER_VERSION, check_profile, compute_build_key
from layershift_core.builder.manifest import (
    BytecodeSummary,
    Manifest,
    PackageEntry,
    PruneSummary,
    SmokeTestSummary,
)
from layershift_core.builder.platforms import ARCHITECTURES, find_interpreter, host_can_run, target_for
from layershift_core.builder.prune import prune
from layershift_core.builder.smoke import SmokeReport, run_smoke_test
from layershift_core.errors import SizeBudgetExceeded
from layershift_core.requirements import parse_requirements

# Lambda's limit on a function's unzipped code plus layers.
UNZIPPED_BUDGET_BYTES = 262_144_000
LAYER_ZIP = "layer.zip"
MANIFEST_JSON = "manifest.json"
BUILD_FAILURE_JSON = "build-failure.json"
_OTHER = "(not in any RECORD)"


def _mb(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


def package_sizes(site: Path, dists: list[distributions.InstalledDistribution]) -> dict[str, int]:
    """Unzipped bytes per distribution (bytecode counted with its source's distribution)."""
    owned = distributions.owners(dists)
    sizes: dict[str, int] = {d.name: 0 for d in dists}
    for path in sorted(site.rglob("*")):
        if not path.is_file():
            continue
        owner = distributions.owner_of(path.relative_to(site).as_posix(), owned) or _OTHER
        sizes[owner] = sizes.get(owner, 0) + path.stat().st_size
    return sizes


def size_table(sizes: dict[str, int], versions: dict[str, str], limit: int = 25) -> str:
    """A per-package size table, largest first."""
    rows = sorted(sizes.items(), key=lambda item: (-item[1], item[0]))
    labels = [f"{name} {versions.get(name, '')}".strip() for name, _ in rows]
    width = max((len(label) for label in labels[:limit]), default=10)
    shown = zip(labels[:limit], rows[:limit], strict=True)
    lines = [f"  {label:<{width}}  {_mb(size):>10}" for label, (_, size) in shown]
    if len(rows) > limit:
        rest = sum(size for _, size in rows[limit:])
        lines.append(f"  {f'{len(rows) - limit} more':<{width}}  {_mb(rest):>10}")
    return "\n".join(lines)


def _summary(manifest: Manifest) -> str:
    arch = (
        "pure Python, serves both architectures"
        if len(manifest.compatible_architectures) > 1
        else f"for {manifest.architecture}"
    )
    lines = [
        f"layershift: built a {manifest.runtime} {manifest.architecture} layer in {manifest.timings['total']:.1f} s",
        f"  layout     {manifest.layout}/ ({arch})",
        f"  packages   {len(manifest.packages)}: "
        + ", ".join(f"{p.name}=={p.version}" for p in manifest.packages[:12])
        + (" ..." if len(manifest.packages) > 12 else ""),
        f"  size       {_mb(manifest.unzipped_bytes)} unzipped, {_mb(manifest.zipped_bytes)} zipped",
        f"  sha256     {manifest.sha256}",
        f"  pruned     {len(manifest.pruned.folders)} folders, {manifest.pruned.files} files, "
        f"{_mb(manifest.pruned.bytes)} (package tests folders, caches)",
    ]
    if manifest.bytecode.compiled:
        lines.append(
            f"  bytecode   {manifest.bytecode.files} files, {manifest.bytecode.invalidation_mode}, "
            f"python{manifest.bytecode.python_version}"
        )
    else:
        lines.append("  bytecode   none")
    if manifest.smoke_test.ran:
        lines.append(
            f"  smoke test {manifest.smoke_test.modules} modules imported, "
            f"{len(manifest.smoke_test.recompiled)} compiled from source"
        )
    lines += [f"  WARNING    {w}" for w in manifest.warnings]
    lines += [f"  note       {n}" for n in manifest.notes]
    return "\n".join(lines)


def build_layer(
    requirements_text: str | bytes,
    *,
    runtime: str,
    architecture: str,
    out_dir: Path,
    allow_ranges: bool = False,
    profile: str = "default",
    echo: Callable[[str], None] | None = None,
) -> Manifest:
    """Build a Lambda layer zip for ``runtime``/``architecture`` from a requirements file.

    Writes ``out_dir/layer.zip`` and ``out_dir/manifest.json`` (only when every check passed) and
    returns the manifest. Raises InvalidRequirements / InvalidLayerSpec for bad input, and
    BuildFailed or one of its subclasses (SdistOnlyPackage, SizeBudgetExceeded,
    ImportSmokeTestFailed) when the layer cannot be built.
    """
    say = echo if echo is not None else (lambda line: print(line, file=sys.stdout, flush=True))
    started = time.monotonic()
    timings: dict[str, float] = {}
    reqs = parse_requirements(requirements_text, allow_ranges=allow_ranges)
    target = target_for(runtime, architecture)
    check_profile(profile)
    build_key = compute_build_key(reqs, runtime, architecture, profile)
    out_dir = Path(out_dir)
    warnings: list[str] = []
    notes: list[str] = []

    with tempfile.TemporaryDirectory(prefix="layershift-build-") as tmp:
        work = Path(tmp)
        staging = work / "install"
        say(f"layershift: installing {len(reqs.requirements)} requirement(s) for {runtime} {architecture}")
        mark = time.monotonic()
        installed = install.install(reqs, target, staging, work)
        timings["install"] = time.monotonic() - mark
        warnings += installed.warnings

        dists = distributions.scan(staging)
        pure = bool(dists) and all(d.is_pure_python for d in dists)
        prefix = target.site_prefix(pure)
        layer_root = work / "layer"
        site = layer_root / prefix
        site.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(site))

        mark = time.monotonic()
        pruned = prune(site)
        timings["prune"] = time.monotonic() - mark

        mark = time.monotonic()
        interpreter = find_interpreter(target.python_version)
        bytecode = compile_site(site, interpreter, target.python_version, f"/opt/{prefix}")
        timings["compile"] = time.monotonic() - mark
        if bytecode.warning:
            warnings.append(bytecode.warning)

        sizes = package_sizes(site, dists)
        unzipped = zipper.tree_size(layer_root)
        versions = {d.name: d.version for d in dists}
        if unzipped > UNZIPPED_BUDGET_BYTES:
            raise SizeBudgetExceeded(
                f"the layer is {_mb(unzipped)} ({unzipped:,} bytes) unzipped, over Lambda's budget of "
                f"{UNZIPPED_BUDGET_BYTES:,} bytes (250 MB) for a function and its layers. Size by package:\n"
                + size_table(sizes, versions)
            )

        mark = time.monotonic()
        zip_path = work / LAYER_ZIP
        zipper.write_zip(layer_root, zip_path)
        sha256 = zipper.sha256_file(zip_path)
        timings["zip"] = time.monotonic() - mark

        mark = time.monotonic()
        modules = sorted({m for d in dists for m in d.top_level})
        if pure or host_can_run(target):
            smoke = run_smoke_test(zip_path, prefix, modules, interpreter)
        else:
            smoke = SmokeReport(
                ran=False,
                modules=modules,
                notes=[
                    f"import smoke test skipped: {target.machine} shared objects cannot load on this "
                    f"{platform.machine()} build host"
                ],
            )
        timings["smoke_test"] = time.monotonic() - mark
        notes += smoke.notes
        if smoke.recompiled and bytecode.compiled:
            notes.append(f"{len(smoke.recompiled)} module(s) compiled from source at import: {smoke.recompiled[:5]}")
        if installed.skipped:
            notes.append("requirements skipped because their markers do not hold: " + ", ".join(installed.skipped))
        timings["total"] = time.monotonic() - started

        manifest = Manifest(
            build_key=build_key,
            sha256=sha256,
            zipped_bytes=zip_path.stat().st_size,
            unzipped_bytes=unzipped,
            runtime=runtime,
            architecture=architecture,
            profile=profile,
            compatible_runtimes=[runtime],
            compatible_architectures=sorted(ARCHITECTURES) if pure else [architecture],
            layout=prefix,
            pure_python=pure,
            requirements=reqs.normalised_text(),
            packages=[
                PackageEntry(
                    name=d.name,
                    version=d.version,
                    unzipped_bytes=sizes.get(d.name, 0),
                    wheel_tags=d.tags,
                    top_level_modules=d.top_level,
                )
                for d in dists
            ],
            top_level_modules=modules,
            wheel_tags=sorted({t for d in dists for t in d.tags}),
            skipped_requirements=installed.skipped,
            pruned=PruneSummary(folders=pruned.folders, files=pruned.files, bytes=pruned.bytes),
            bytecode=BytecodeSummary(
                compiled=bytecode.compiled,
                python_version=target.python_version,
                invalidation_mode=bytecode.invalidation_mode,
                files=bytecode.files,
            ),
            smoke_test=SmokeTestSummary(
                ran=smoke.ran,
                modules=len(smoke.modules) if smoke.ran else 0,
                recompiled=smoke.recompiled,
                import_seconds=smoke.import_seconds,
            ),
            pip_version=installed.pip_version,
            builder_version=BUILDER_VERSION,
            timings={k: round(v, 3) for k, v in timings.items()},
            warnings=warnings,
            notes=notes,
            created_at=datetime.now(UTC),
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(str(zip_path), str(out_dir / LAYER_ZIP))
        manifest.write(out_dir / MANIFEST_JSON)
    say(_summary(manifest))
    return manifest
