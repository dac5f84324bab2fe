"""What a build reports: the manifest's sections from a variant's sites, and the lines it prints."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from layershift_core.builder import audit as audit_module
from layershift_core.builder import distributions, sbom
from layershift_core.builder.audit import AuditReport
from layershift_core.builder.key import SLIM_RUNTIME_PROFILE
from layershift_core.builder.manifest import (
    BinariesSummary,
    BytecodeSummary,
    Manifest,
    PackageEntry,
    PruneCategory,
    PruneSummary,
    SmokeRun,
    SmokeTestSummary,
    StripSummary,
)
from layershift_core.builder.prune import RUNTIME_PACKAGES

if TYPE_CHECKING:
    from layershift_core.builder.build import Job, VariantBuild

NO_BYTECODE_COST = (
    "the layer ships no bytecode: on Lambda's read-only /opt every cold start compiles each imported module "
    "from source again (about 4x the import time for a pandas and numpy set)"
)


def _mb(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


_OTHER = "(not in any RECORD)"


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


def packages_of(variant: VariantBuild) -> list[PackageEntry]:
    merged: dict[tuple[str, str], dict] = {}
    for site in variant.sites:
        sizes = package_sizes(site.path, site.dists)
        for dist in site.dists:
            entry = merged.setdefault(
                (dist.name, dist.version),
                {
                    "name": dist.name,
                    "version": dist.version,
                    "unzipped_bytes": 0,
                    "wheel_tags": set(),
                    "top_level_modules": set(),
                    "python_versions": set(),
                    "hashes": set(),
                },
            )
            wheel = (site.installed.wheels if site.installed else {}).get(dist.name) or {}
            if wheel.get("sha256"):
                entry["hashes"].add(f"sha256:{wheel['sha256']}")
            entry["unzipped_bytes"] += sizes.get(dist.name, 0)
            entry["wheel_tags"].update(dist.tags)
            entry["top_level_modules"].update(dist.top_level)
            entry["python_versions"].update(site.minors)
    return [
        PackageEntry(
            name=e["name"],
            version=e["version"],
            unzipped_bytes=e["unzipped_bytes"],
            wheel_tags=sorted(e["wheel_tags"]),
            top_level_modules=sorted(e["top_level_modules"]),
            python_versions=sorted(e["python_versions"], key=_version_key),
            hashes=sorted(e["hashes"]),
        )
        for _, e in sorted(merged.items())
    ]


def pruned_of(variant: VariantBuild, profile: str) -> PruneSummary:
    qualify = len(variant.sites) > 1
    folders: list[str] = []
    kept: list[str] = []
    categories: dict[str, PruneCategory] = {}
    files = size = runtime_files = runtime_bytes = 0
    for site in variant.sites:
        pruned = site.pruned
        prefix = f"{site.prefix}/" if qualify else ""
        folders += [prefix + f for f in pruned.folders]
        kept += [prefix + k for k in pruned.kept]
        for name, c in pruned.categories.items():
            total = categories.setdefault(name, PruneCategory())
            categories[name] = PruneCategory(files=total.files + c.files, bytes=total.bytes + c.bytes)
        files += pruned.files
        size += pruned.bytes
        runtime_files += site.runtime_files
        runtime_bytes += site.runtime_bytes
    if profile == SLIM_RUNTIME_PROFILE:
        categories[RUNTIME_PACKAGES] = PruneCategory(files=runtime_files, bytes=runtime_bytes)
    return PruneSummary(
        folders=folders, files=files + runtime_files, bytes=size + runtime_bytes, categories=categories, kept=kept
    )


def stripped_of(variant: VariantBuild) -> StripSummary:
    reports = [site.strip_report for site in variant.sites]
    first = next((r for r in reports if r.ran), reports[0])
    restored = any(r.restored for r in reports)
    return StripSummary(
        ran=any(r.ran for r in reports),
        tool=first.tool,
        option=first.option,
        files=sum(0 if r.restored else r.files for r in reports),
        bytes_saved=sum(0 if r.restored else r.bytes_saved for r in reports),
        restored=restored,
        note=next((r.note for r in reports if r.restored and r.note), first.note),
    )


def bytecode_of(variant: VariantBuild) -> BytecodeSummary:
    reports = [(minor, site, site.bytecode[minor]) for site in variant.sites for minor in site.minors]
    minor, _site, first = reports[0]
    compiled = all(r.compiled for _, _, r in reports)
    done = [m for m, _, r in reports if r.compiled]
    return BytecodeSummary(
        compiled=compiled,
        python_version=minor,
        invalidation_mode=first.invalidation_mode,
        # each compile of a site counts every pyc in it, its other minors' too
        files=sum(max(site.bytecode[m].files for m in site.minors) for site in variant.sites),
        interpreter=first.interpreter,
        layout=("sourceless" if first.sourceless else "__pycache__") if first.compiled else None,
        sources_kept=sorted({k for _, _, r in reports for k in r.sources_kept}),
        cold_start_cost=None if compiled else NO_BYTECODE_COST,
        python_versions=sorted(set(done), key=_version_key),
    )


def smoke_of(variant: VariantBuild) -> SmokeTestSummary:
    runs = [
        SmokeRun(
            python_version=minor,
            ran=report.ran,
            modules=len(report.modules) if report.ran else 0,
            recompiled=report.recompiled,
            import_seconds=report.import_seconds,
            note=None if report.ran else "; ".join(report.notes) or None,
            network=report.network or None,
            output=report.output,
        )
        for (_, minor), report in variant.smoke.items()
    ]
    first = next((r for r in runs if r.ran), runs[0])
    return SmokeTestSummary(
        ran=first.ran,
        modules=first.modules,
        recompiled=sorted({p for r in runs for p in r.recompiled}),
        import_seconds=first.import_seconds,
        runs=runs,
        network=first.network,
    )


def binaries_of(variant: VariantBuild) -> BinariesSummary:
    """The ELF check's figures, and which checks of the binaries ran (the import is one of them)."""
    reports = [(t, r) for site in variant.sites for t, r in site.elf]
    checks = ["elf"]
    notes: list[str] = []
    for (index, minor), smoke in variant.smoke.items():
        site = variant.sites[index]
        target = site.target_of(minor)
        label = "import (qemu)" if site.qemu.get(minor) else "import"
        if smoke.ran and label not in checks:
            checks.append(label)
        if not smoke.ran:
            notes += [
                f"{target.runtime} {target.architecture}: {n.removeprefix('import smoke test skipped: ')}"
                for n in smoke.notes
            ]
    glibcs = [r.max_glibc for _, r in reports if r.max_glibc]
    multi = len(reports) > 1
    machines = sorted({t.machine for t, _ in reports})
    return BinariesSummary(
        checks=checks,
        machine=machines[0] if len(machines) == 1 else ("any" if machines else None),
        failures=[f for _, r in reports for f in r.failures],
        checked=sum(r.checked for _, r in reports),
        needed=sum(r.needed for _, r in reports),
        resolved_in_layer=sum(r.resolved_in_layer for _, r in reports),
        resolved_system=sum(r.resolved_system for _, r in reports),
        max_glibc=max(glibcs, key=_version_key) if glibcs else None,
        import_note=("the import smoke test did not run for " + "; ".join(notes)) if notes else None,
        summary="; ".join(f"{t.runtime} {t.architecture}: {r.summary()}" if multi else r.summary() for t, r in reports)
        or None,
    )


def warnings_and_notes(job: Job, variant: VariantBuild, audit_report: AuditReport) -> tuple[list[str], list[str]]:
    """What the build warns about (cold-start compiles, vulnerabilities, ...) and what it notes."""
    warnings = [w for site in variant.sites for w in site.warnings]
    notes: list[str] = []
    multi = len(variant.smoke) > 1
    compiled = all(r.compiled for site in variant.sites for r in site.bytecode.values())
    for (_, minor), smoke in variant.smoke.items():
        notes += [f"python{minor}: {n}" if multi else n for n in smoke.notes]
        notes += [f"python{minor}: {n}" if multi else n for n in smoke.optional_extras]
        if smoke.recompiled and compiled:
            warnings.append(
                f"{len(smoke.recompiled)} module(s) compiled from source at import, on every cold start"
                + (f" with python{minor}" if multi else "")
                + f": {smoke.recompiled[:5]}"
            )
    skipped = sorted({s for site in variant.sites for s in (site.installed.skipped if site.installed else [])})
    if skipped:
        notes.append("requirements skipped because their markers do not hold: " + ", ".join(skipped))
    for site in variant.sites:
        report = site.strip_report
        if report.note and not report.restored and not report.files:
            notes.append(f"extension modules not stripped: {report.note}")
    kept = [k for site in variant.sites for k in site.pruned.kept]
    if kept:
        notes.append(f"pruning kept {', '.join(pruned_of(variant, job.profile).kept)}")
    if (text := audit_module.warning(audit_report, job.policy)) is not None:
        warnings.append(text)
    return list(dict.fromkeys(warnings)), list(dict.fromkeys(notes))


def report_text(manifest: Manifest) -> str:
    arch = (
        "pure Python, serves both architectures"
        if len(manifest.compatible_architectures) > 1
        else f"for {manifest.architecture}"
    )
    verb = "reused (cache hit)" if manifest.cache_hit else "built"
    runtimes, architecture = manifest.runtime, manifest.architecture
    if len(manifest.targets) > 1:
        runtimes = "+".join(manifest.compatible_runtimes)
        architecture = "+".join(manifest.compatible_architectures)
    lines = [
        f"layershift: {verb} a {runtimes} {architecture} layer, profile {manifest.profile}, "
        f"in {manifest.timings['total']:.1f} s",
        f"  layout     {', '.join(f'{p}/' for p in (manifest.layouts or [manifest.layout]))} ({arch})",
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
    if len(manifest.targets) > 1:
        lines.insert(
            1,
            f"  variant    {manifest.variant_id}: "
            + ", ".join(f"{t.runtime}/{t.architecture}" for t in manifest.targets),
        )
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
        versions = ", ".join(
            f"python{v}" for v in (manifest.bytecode.python_versions or [manifest.bytecode.python_version])
        )
        lines.append(
            f"  bytecode   {manifest.bytecode.files} files, {manifest.bytecode.invalidation_mode}, {versions}, {layout}"
        )
        if manifest.bytecode.sources_kept:
            lines.append(f"             sources kept for: {', '.join(manifest.bytecode.sources_kept)}")
    else:
        lines.append(f"  bytecode   none: {manifest.bytecode.cold_start_cost or NO_BYTECODE_COST}")
    runs = manifest.smoke_test.runs or []
    if len(runs) > 1:
        for run in runs:
            if run.ran:
                lines.append(
                    f"  smoke test python{run.python_version}: {run.modules} modules imported, "
                    f"{len(run.recompiled)} compiled from source"
                )
            else:
                lines.append(f"  smoke test python{run.python_version}: not run ({run.note})")
    elif manifest.smoke_test.ran:
        lines.append(
            f"  smoke test {manifest.smoke_test.modules} modules imported, "
            f"{len(manifest.smoke_test.recompiled)} compiled from source"
        )
    else:
        lines.append("  smoke test not run" + (f": {runs[0].note}" if runs and runs[0].note else ""))
    if manifest.smoke_test.ran:
        lines.append(f"             no AWS credentials; {manifest.smoke_test.network or 'network unknown'}")
    for run in runs:
        printed = run.output.strip().splitlines()
        if printed:
            lines.append(f"  smoke test python{run.python_version}: the imports printed {len(printed)} line(s):")
            lines += [f"    | {line}" for line in printed[-20:]]
    binaries = manifest.binaries
    if binaries.summary:
        lines.append(f"  binaries   {', '.join(binaries.checks)}: {binaries.summary}")
    if binaries.import_note:
        lines.append(f"  binaries   {binaries.import_note}")
    audit_line = f"  audit      {manifest.audit.status}"
    if manifest.audit.findings:
        audit_line += ": " + ", ".join(
            f"{f['package']} {f['id']} ({f.get('severity') or 'severity unknown'})" for f in manifest.audit.findings[:6]
        )
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
