"""build_layer: requirements text in, a deterministic layer zip and its manifest out."""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from layershift_core.builder import audit as audit_module
from layershift_core.builder import cache, distributions, install, sbom, strip, zipper
from layershift_core.builder.bytecode import BytecodeReport, compile_site, restore_sources
from layershift_core.builder.key import (
    BUILDER_VERSION,
    SLIM_RUNTIME_PROFILE,
    SOURCELESS_PROFILE,
    check_profile,
    compute_build_key,
)
from layershift_core.builder.manifest import (
    AuditSummary,
    BytecodeSummary,
    Manifest,
    PackageEntry,
    PruneCategory,
    PruneSummary,
    RuntimePackage,
    SmokeTestSummary,
    StripSummary,
)
from layershift_core.builder.platforms import (
    ARCHITECTURES,
    RUNTIME_PROVIDED_PACKAGES,
    Target,
    find_interpreter,
    host_can_run,
    strip_tool,
    target_for,
)
from layershift_core.builder.prune import RUNTIME_PACKAGES, prune, remove_distributions
from layershift_core.builder.smoke import SmokeReport, run_smoke_test
from layershift_core.errors import SizeBudgetExceeded
from layershift_core.requirements import parse_requirements

# Lambda's limit on a function's unzipped code plus layers.
UNZIPPED_BUDGET_BYTES = 262_144_000
LAYER_ZIP = "layer.zip"
MANIFEST_JSON = "manifest.json"
BUILD_FAILURE_JSON = "build-failure.json"
SBOM_JSON = sbom.SBOM_JSON
NO_BYTECODE_COST = (
    "the layer ships no bytecode: on Lambda's read-only /opt every cold start compiles each imported module "
    "from source again (about 4x the import time for a pandas and numpy set)"
)
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
    verb = "reused (cache hit)" if manifest.cache_hit else "built"
    lines = [
        f"layershift: {verb} a {manifest.runtime} {manifest.architecture} layer, profile {manifest.profile}, "
        f"in {manifest.timings['total']:.1f} s",
        f"  layout     {manifest.layout}/ ({arch})",
        f"  packages   {len(manifest.packages)}: "
        + ", ".join(f"{p.name}=={p.version}" for p in manifest.packages[:12])
        + (" ..." if len(manifest.packages) > 12 else ""),
        f"  size       {_mb(manifest.unzipped_bytes)} unzipped, {_mb(manifest.zipped_bytes)} zipped",
        f"  sha256     {manifest.sha256}",
        f"  pruned     {_mb(manifest.pruned.bytes)} in {manifest.pruned.files} files: "
        + (
            ", ".join(f"{name} {_mb(c.bytes)}" for name, c in manifest.pruned.categories.items() if c.files or c.bytes)
            or "nothing"
        ),
    ]
    if manifest.runtime_packages_removed:
        lines.append(
            "  runtime    left out (the runtime ships them): "
            + ", ".join(f"{p.name}=={p.version}" for p in manifest.runtime_packages_removed)
        )
    strip_summary = manifest.stripped
    if strip_summary.ran and strip_summary.files and not strip_summary.restored:
        lines.append(
            f"  stripped   {strip_summary.files} extension modules ({strip_summary.option}), "
            f"{_mb(strip_summary.bytes_saved)} saved"
        )
    elif strip_summary.note:
        lines.append(f"  stripped   no: {strip_summary.note}")
    if manifest.bytecode.compiled:
        layout = "in place, sources removed" if manifest.bytecode.layout == "sourceless" else "in __pycache__"
        lines.append(
            f"  bytecode   {manifest.bytecode.files} files, {manifest.bytecode.invalidation_mode}, "
            f"python{manifest.bytecode.python_version}, {layout}"
        )
        if manifest.bytecode.sources_kept:
            lines.append(f"             sources kept for: {', '.join(manifest.bytecode.sources_kept)}")
    else:
        lines.append(f"  bytecode   none: {manifest.bytecode.cold_start_cost or NO_BYTECODE_COST}")
    if manifest.smoke_test.ran:
        lines.append(
            f"  smoke test {manifest.smoke_test.modules} modules imported, "
            f"{len(manifest.smoke_test.recompiled)} compiled from source"
        )
    else:
        lines.append("  smoke test not run")
    audit_line = f"  audit      {manifest.audit.status}"
    if manifest.audit.findings:
        audit_line += ": " + ", ".join(f"{f['package']} {f['id']}" for f in manifest.audit.findings[:6])
    elif manifest.audit.note:
        audit_line += f" ({manifest.audit.note})"
    lines.append(audit_line)
    if manifest.sbom:
        lines.append(f"  sbom       {manifest.sbom} (CycloneDX {sbom.SPEC_VERSION})")
    timing = ", ".join(f"{k} {v:.1f}" for k, v in manifest.timings.items() if k != "total")
    lines.append(f"  timings    {timing} (s)")
    lines += [f"  WARNING    {w}" for w in manifest.warnings]
    lines += [f"  note       {n}" for n in manifest.notes]
    return "\n".join(lines)


def _from_cache(cache_dir: Path, build_key: str, out_dir: Path, started: float) -> Manifest | None:
    """The cached manifest copied to ``out_dir`` with its zip and SBOM, or None when there is no valid entry."""
    folder = cache.entry(cache_dir, build_key)
    zip_path = folder / LAYER_ZIP
    manifest_path = folder / MANIFEST_JSON
    if not (zip_path.is_file() and manifest_path.is_file()):
        return None
    try:
        cached = Manifest.read(manifest_path)
    except (OSError, ValueError):
        return None
    if cached.build_key != build_key or zipper.sha256_file(zip_path) != cached.sha256:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(zip_path, out_dir / LAYER_ZIP)
    if cached.sbom and (folder / cached.sbom).is_file():
        shutil.copyfile(folder / cached.sbom, out_dir / cached.sbom)
    elapsed = round(time.monotonic() - started, 3)
    manifest = cached.model_copy(update={"cache_hit": True, "timings": {"cache": elapsed, "total": elapsed}})
    manifest.write(out_dir / MANIFEST_JSON)
    return manifest


def _runtime_conflicts(site: Path, dists: list, provided: dict[str, str], target: Target) -> list[str]:
    """Warnings for kept distributions whose requirements the runtime's versions do not satisfy."""
    env = {**target.marker_environment(), "extra": ""}
    found: list[str] = []
    for dist in dists:
        requires = importlib.metadata.PathDistribution(site / dist.dist_info).requires or []
        for text in requires:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                continue
            name = canonicalize_name(req.name)
            if name not in provided or (req.marker is not None and not req.marker.evaluate(env)):
                continue
            if req.specifier and not req.specifier.contains(provided[name], prereleases=True):
                found.append(
                    f"{dist.name} {dist.version} requires {name}{req.specifier}, but the {target.runtime} runtime "
                    f"ships {name} {provided[name]}: the slim-runtime profile may break it"
                )
    return found


def _slim_runtime(
    site: Path, dists: list, target: Target, warnings: list[str]
) -> tuple[list, list[RuntimePackage], int, int]:
    """Remove the distributions the runtime ships; returns (kept dists, removed, files, bytes)."""
    provided = RUNTIME_PROVIDED_PACKAGES[target.runtime]
    removed = remove_distributions(site, dists, provided)
    kept = [d for d in dists if d.name not in provided]
    entries: list[RuntimePackage] = []
    for item in removed:
        entries.append(
            RuntimePackage(name=item.name, version=item.version, runtime_version=item.runtime_version, bytes=item.bytes)
        )
        if item.runtime_version != item.version:
            warnings.append(
                f"slim-runtime left out {item.name} {item.version}, but the {target.runtime} runtime ships "
                f"{item.name} {item.runtime_version}: functions will import the runtime's version"
            )
    warnings += _runtime_conflicts(site, kept, provided, target)
    return kept, entries, sum(r.files for r in removed), sum(r.bytes for r in removed)


def _check_budget(unzipped: int, sizes: dict[str, int], versions: dict[str, str]) -> None:
    if unzipped > UNZIPPED_BUDGET_BYTES:
        raise SizeBudgetExceeded(
            f"the layer is {_mb(unzipped)} ({unzipped:,} bytes) unzipped, over Lambda's budget of "
            f"{UNZIPPED_BUDGET_BYTES:,} bytes (250 MB) for a function and its layers. Size by package:\n"
            + size_table(sizes, versions)
        )


def build_layer(
    requirements_text: str | bytes,
    *,
    runtime: str,
    architecture: str,
    out_dir: Path,
    allow_ranges: bool = False,
    profile: str = "default",
    echo: Callable[[str], None] | None = None,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    audit: bool = True,
    fail_on_vulnerability: bool = False,
) -> Manifest:
    """Build a Lambda layer zip for ``runtime``/``architecture`` from a requirements file.

    Writes ``out_dir/layer.zip``, ``out_dir/manifest.json`` and ``out_dir/sbom.cdx.json`` (only
    when every check passed) and returns the manifest.

    With ``use_cache`` (the default), a build whose build key is already in ``cache_dir`` (default
    ``$LAYERSHIFT_BUILD_CACHE`` or ``~/.cache/layershift/builds``) is not run again: the cached
    artifacts are copied and the manifest says ``cache_hit``. Every build with bytecode is stored
    in the cache, also with ``use_cache=False`` (which only skips the lookup). ``audit`` runs pip-audit where it is
    installed; ``fail_on_vulnerability`` fails the build when it reports a known vulnerability.

    Raises InvalidRequirements / InvalidLayerSpec for bad input, and BuildFailed or one of its
    subclasses (SdistOnlyPackage, SizeBudgetExceeded, ImportSmokeTestFailed) when the layer cannot
    be built.
    """
    say = echo if echo is not None else (lambda line: print(line, file=sys.stdout, flush=True))
    started = time.monotonic()
    timings: dict[str, float] = {}
    reqs = parse_requirements(requirements_text, allow_ranges=allow_ranges)
    target = target_for(runtime, architecture)
    check_profile(profile)
    build_key = compute_build_key(reqs, runtime, architecture, profile)
    out_dir = Path(out_dir)
    cache_root = Path(cache_dir) if cache_dir is not None else cache.default_cache_dir()
    if use_cache:
        hit = _from_cache(cache_root, build_key, out_dir, started)
        if hit is not None:
            say(f"layershift: cache hit for build key {build_key}: reused {cache.entry(cache_root, build_key)}")
            say(_summary(hit))
            return hit
    warnings: list[str] = []
    notes: list[str] = []
    sourceless = profile == SOURCELESS_PROFILE

    with tempfile.TemporaryDirectory(prefix="layershift-build-") as tmp, ThreadPoolExecutor(1) as background:
        work = Path(tmp)
        staging = work / "install"
        say(f"layershift: installing {len(reqs.requirements)} requirement(s) for {runtime} {architecture}")
        mark = time.monotonic()
        installed = install.install(reqs, target, staging, work)
        timings["install"] = time.monotonic() - mark
        warnings += installed.warnings

        dists = distributions.scan(staging)
        runtime_removed: list[RuntimePackage] = []
        runtime_files = runtime_bytes = 0
        if profile == SLIM_RUNTIME_PROFILE:
            dists, runtime_removed, runtime_files, runtime_bytes = _slim_runtime(staging, dists, target, warnings)
        versions = {d.name: d.version for d in dists}
        pending_audit = background.submit(audit_module.run_audit, versions) if audit else None

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
        sources_backup = work / "sources"
        runtime_path = f"/opt/{prefix}"
        bytecode = compile_site(
            site, interpreter, target.python_version, runtime_path, sourceless=sourceless, sources_backup=sources_backup
        )
        timings["compile"] = time.monotonic() - mark
        if bytecode.warning:
            warnings.append(bytecode.warning)
        if sourceless and not bytecode.compiled:
            warnings.append("the sourceless profile needs the target interpreter: the layer ships its sources")

        can_smoke = interpreter is not None and (pure or host_can_run(target))
        mark = time.monotonic()
        strip_backup = work / "unstripped"
        strip_report = _strip(site, target, can_smoke, strip_backup)
        timings["strip"] = time.monotonic() - mark

        sizes = package_sizes(site, dists)
        _check_budget(zipper.tree_size(layer_root), sizes, versions)

        zip_path = work / LAYER_ZIP
        timings["zip"] = 0.0
        timings["smoke_test"] = 0.0
        modules = sorted({m for d in dists for m in d.top_level})

        def zip_and_smoke() -> SmokeReport:
            """Write the zip and run the smoke test on the same tree at the same time."""

            def write() -> None:
                mark = time.monotonic()
                zipper.write_zip(layer_root, zip_path)
                timings["zip"] += time.monotonic() - mark

            with ThreadPoolExecutor(1) as zipping:
                written = zipping.submit(write)
                mark = time.monotonic()
                if can_smoke:
                    report = run_smoke_test(layer_root, prefix, modules, interpreter, raise_on_failure=False)
                else:
                    why = (
                        "no interpreter of the target Python version was found"
                        if interpreter is None
                        else f"{target.machine} shared objects cannot load on this {platform.machine()} build host"
                    )
                    report = SmokeReport(ran=False, modules=modules, notes=[f"import smoke test skipped: {why}"])
                timings["smoke_test"] += time.monotonic() - mark
                written.result()
            return report

        smoke = zip_and_smoke()
        if smoke.failures:
            smoke = _remedy(
                smoke, zip_and_smoke, site, dists, strip_report, strip_backup, bytecode, sources_backup, runtime_path
            )
            if smoke.failures:
                raise smoke.error()
            sizes = package_sizes(site, dists)
            _check_budget(zipper.tree_size(layer_root), sizes, versions)
        unzipped = zipper.tree_size(layer_root)
        sha256 = zipper.sha256_file(zip_path)

        notes += smoke.notes
        if smoke.recompiled and bytecode.compiled:
            warnings.append(
                f"{len(smoke.recompiled)} module(s) compiled from source at import, on every cold start: "
                f"{smoke.recompiled[:5]}"
            )
        if installed.skipped:
            notes.append("requirements skipped because their markers do not hold: " + ", ".join(installed.skipped))
        if strip_report.note and not strip_report.restored and not strip_report.files:
            notes.append(f"extension modules not stripped: {strip_report.note}")
        if pruned.kept:
            notes.append(f"pruning kept {', '.join(pruned.kept)}")

        created_at = datetime.now(UTC)
        mark = time.monotonic()
        sbom_document = sbom.build_sbom(
            site,
            dists,
            installed.wheels,
            layer_name=f"layer-{runtime}-{architecture}-{profile}",
            build_key=build_key,
            sha256=sha256,
            builder_version=BUILDER_VERSION,
            timestamp=created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        sbom.write_sbom(work / SBOM_JSON, sbom_document)
        timings["sbom"] = time.monotonic() - mark

        mark = time.monotonic()
        if pending_audit is not None:
            audit_report = pending_audit.result()
        else:
            audit_report = audit_module.AuditReport(audit_module.UNAVAILABLE, note="audit turned off")
        timings["audit_wait"] = time.monotonic() - mark
        if fail_on_vulnerability:
            audit_module.gate(audit_report)
        if audit_report.status == audit_module.VULNERABLE:
            warnings.append(
                "pip-audit found known vulnerabilities: "
                + ", ".join(f"{f['package']} {f['version']} {f['id']}" for f in audit_report.findings)
            )
        timings["total"] = time.monotonic() - started

        categories = {name: PruneCategory(files=c.files, bytes=c.bytes) for name, c in pruned.categories.items()}
        if profile == SLIM_RUNTIME_PROFILE:
            categories[RUNTIME_PACKAGES] = PruneCategory(files=runtime_files, bytes=runtime_bytes)
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
            pruned=PruneSummary(
                folders=pruned.folders,
                files=pruned.files + runtime_files,
                bytes=pruned.bytes + runtime_bytes,
                categories=categories,
                kept=pruned.kept,
            ),
            runtime_packages_removed=runtime_removed,
            stripped=StripSummary(
                ran=strip_report.ran,
                tool=strip_report.tool,
                option=strip_report.option,
                files=0 if strip_report.restored else strip_report.files,
                bytes_saved=0 if strip_report.restored else strip_report.bytes_saved,
                restored=strip_report.restored,
                note=strip_report.note,
            ),
            bytecode=BytecodeSummary(
                compiled=bytecode.compiled,
                python_version=target.python_version,
                invalidation_mode=bytecode.invalidation_mode,
                files=bytecode.files,
                interpreter=bytecode.interpreter,
                layout=("sourceless" if bytecode.sourceless else "__pycache__") if bytecode.compiled else None,
                sources_kept=bytecode.sources_kept,
                cold_start_cost=None if bytecode.compiled else NO_BYTECODE_COST,
            ),
            smoke_test=SmokeTestSummary(
                ran=smoke.ran,
                modules=len(smoke.modules) if smoke.ran else 0,
                recompiled=smoke.recompiled,
                import_seconds=smoke.import_seconds,
            ),
            sbom=SBOM_JSON,
            audit=AuditSummary(status=audit_report.status, findings=audit_report.findings, note=audit_report.note),
            cache_hit=False,
            pip_version=installed.pip_version,
            builder_version=BUILDER_VERSION,
            timings={k: round(v, 3) for k, v in timings.items()},
            warnings=warnings,
            notes=notes,
            created_at=created_at,
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(str(zip_path), str(out_dir / LAYER_ZIP))
        shutil.move(str(work / SBOM_JSON), str(out_dir / SBOM_JSON))
        manifest.write(out_dir / MANIFEST_JSON)
    if bytecode.compiled:
        cache.store(cache_root, build_key, [out_dir / LAYER_ZIP, out_dir / MANIFEST_JSON, out_dir / SBOM_JSON])
    say(_summary(manifest))
    return manifest


def _strip(site: Path, target: Target, can_smoke: bool, backup: Path) -> strip.StripReport:
    """Strip the extension modules when the result can be checked by the smoke test."""
    if not can_smoke:
        return strip.StripReport(
            ran=False,
            note="the import smoke test cannot run for this target here, and stripped files ship only after it passes",
        )
    tool, why_not = strip_tool(target)
    if tool is None:
        return strip.StripReport(ran=False, note=why_not)
    return strip.strip_extensions(site, tool, backup)


def _remedy(
    smoke: SmokeReport,
    zip_and_smoke: Callable[[], SmokeReport],
    site: Path,
    dists: list,
    strip_report: strip.StripReport,
    strip_backup: Path,
    bytecode: BytecodeReport,
    sources_backup: Path,
    runtime_path: str,
) -> SmokeReport:
    """Undo what may have broken an import (stripping, removed sources) and test again.

    A crash of the test points at stripping first; an import error in a sourceless build points at
    the failing modules' missing sources first.
    """
    crashed = any(f.startswith("the import smoke test crashed") for f in smoke.failures)

    def unstrip(current: SmokeReport) -> SmokeReport:
        if not strip_report.files or strip_report.restored:
            return current
        strip.restore(site, strip_backup, strip_report, "; ".join(current.failures)[:300])
        return zip_and_smoke()

    def resource(current: SmokeReport) -> SmokeReport:
        if not bytecode.sourceless or bytecode.interpreter is None:
            return current
        owners = {m: d for d in dists for m in d.top_level}
        failed = sorted(set(current.failed_modules) & set(owners))
        # a module may fail through another package it imports: restore its distribution's modules
        names = sorted({m for name in failed for m in owners[name].top_level})
        if not restore_sources(site, sources_backup, names, bytecode.interpreter, runtime_path, bytecode):
            return current
        return zip_and_smoke()

    steps = [unstrip, resource] if crashed else [resource, unstrip]
    for step in steps:
        if not smoke.failures:
            break
        smoke = step(smoke)
    return smoke
