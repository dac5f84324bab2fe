"""build_layer and build_matrix: requirements text in, deterministic layer zips and their manifests out.

A build runs as its stages, one function each, each timed into the manifest's ``timings`` by one
:class:`Stopwatch`:

1. resolve (a matrix of several targets only): pip's dry run per target, to group the targets
   (:mod:`layershift_core.builder.matrix`);
2. per package folder (a "site"): install, prune, compile, strip, check binaries (the ELF check);
3. per layer zip (a "variant"): assemble its sites, package (the zip written while the import
   smoke test runs with each target interpreter), then the SBOM, the audit and its gate, and the
   manifest.

Nothing is written to the output folder before every variant has passed every check.
"""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from layershift_core.builder import audit as audit_module
from layershift_core.builder import cache, distributions, install, matrix, sbom, strip, summaries, zipper
from layershift_core.builder.audit import AuditPolicy, AuditReport, effective_policy
from layershift_core.builder.bytecode import BytecodeReport, compile_site, restore_sources
from layershift_core.builder.elf_check import ElfReport, check_shared_objects, find_target_interpreter, owners_from
from layershift_core.builder.key import (
    BUILDER_VERSION,
    SLIM_RUNTIME_PROFILE,
    SOURCELESS_PROFILE,
    check_profile,
    compute_build_key,
    compute_matrix_key,
    compute_variant_key,
)
from layershift_core.builder.manifest import (
    AuditSummary,
    Manifest,
    RuntimePackage,
    Variant,
    VariantIndex,
    VariantTarget,
)
from layershift_core.builder.platforms import (
    ARCHITECTURES,
    RUNTIME_PROVIDED_PACKAGES,
    Target,
    find_interpreter,
    host_can_run,
    strip_tool,
)
from layershift_core.builder.prune import PruneReport, prune, remove_distributions
from layershift_core.builder.smoke import SmokeReport, run_smoke_test
from layershift_core.errors import ImportSmokeTestFailed, SizeBudgetExceeded
from layershift_core.requirements import RequirementSet, parse_requirements

# Lambda's limit on a function's unzipped code plus layers.
UNZIPPED_BUDGET_BYTES = 262_144_000
LAYER_ZIP = "layer.zip"
MANIFEST_JSON = "manifest.json"
VARIANTS_JSON = "variants.json"
BUILD_FAILURE_JSON = "build-failure.json"
SBOM_JSON = sbom.SBOM_JSON
NO_BYTECODE_COST = summaries.NO_BYTECODE_COST
package_sizes = summaries.package_sizes
size_table = summaries.size_table

Echo = Callable[[str], None]


def _mb(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


class Stopwatch:
    """The time each stage of a build took, in one place: ``with watch.timed("prune"): ...``.

    A stage timed twice (once per site, or again after a remedy) adds up.
    """

    def __init__(self, started: float | None = None) -> None:
        self.started = time.monotonic() if started is None else started
        self.timings: dict[str, float] = {}

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        self.timings.setdefault(stage, 0.0)
        mark = time.monotonic()
        try:
            yield
        finally:
            self.timings[stage] += time.monotonic() - mark

    def reserve(self, *stages: str) -> None:
        """List stages in this order, before parallel work times them."""
        for stage in stages:
            self.timings.setdefault(stage, 0.0)

    def merge(self, other: Stopwatch) -> None:
        for stage, seconds in other.timings.items():
            self.timings[stage] = self.timings.get(stage, 0.0) + seconds

    def result(self) -> dict[str, float]:
        """The timings rounded to milliseconds, with ``total`` since the build started."""
        timings = {**self.timings, "total": time.monotonic() - self.started}
        return {stage: round(seconds, 3) for stage, seconds in timings.items()}


# ---------------------------------------------------------------- what a build works on


@dataclass
class Job:
    """The inputs every stage of one build shares."""

    reqs: RequirementSet
    targets: list[Target]
    profile: str
    policy: AuditPolicy
    say: Echo
    cache_root: Path
    audit: bool
    keys: dict[tuple[str, str], str]
    matrix_key: str
    watch: Stopwatch
    work: Path = Path()
    background: ThreadPoolExecutor | None = None
    audits: dict[frozenset, Future[AuditReport]] = field(default_factory=dict)

    @property
    def sourceless(self) -> bool:
        return self.profile == SOURCELESS_PROFILE

    def key_of(self, target: Target) -> str:
        return self.keys[(target.runtime, target.architecture)]

    def start_audit(self, versions: dict[str, str]) -> Future[AuditReport] | None:
        """The audit of ``versions`` in the background, once per distinct set of packages."""
        if not self.audit or self.background is None:
            return None
        wanted = frozenset(versions.items())
        if wanted not in self.audits:
            self.audits[wanted] = self.background.submit(audit_module.run_audit, dict(versions))
        return self.audits[wanted]


@dataclass
class Site:
    """One package folder of a layer: installed for one target, compiled and imported by each of ``targets``."""

    name: str
    targets: list[Target]
    root: Path
    watch: Stopwatch = field(default_factory=lambda: Stopwatch(0.0))
    installed: install.InstallResult | None = None
    dists: list[distributions.InstalledDistribution] = field(default_factory=list)
    pure: bool = False
    prefix: str = ""
    runtime_removed: list[RuntimePackage] = field(default_factory=list)
    runtime_files: int = 0
    runtime_bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    pruned: PruneReport = field(default_factory=PruneReport)
    bytecode: dict[str, BytecodeReport] = field(default_factory=dict)
    strip_report: strip.StripReport = field(default_factory=lambda: strip.StripReport(ran=False))
    pending_audit: Future[AuditReport] | None = None
    scratch: Path = Path()
    elf: list[tuple[Target, ElfReport]] = field(default_factory=list)
    qemu: dict[str, list[str] | None] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.root / self.prefix

    @property
    def runtime_path(self) -> str:
        return f"/opt/{self.prefix}"

    @property
    def minors(self) -> list[str]:
        """The Python minors that compile and import this site (one per runtime, not per architecture)."""
        return list(dict.fromkeys(t.python_version for t in self.targets))

    @property
    def versions(self) -> dict[str, str]:
        return {d.name: d.version for d in self.dists}

    @property
    def modules(self) -> list[str]:
        return sorted({m for d in self.dists for m in d.top_level})

    def target_of(self, minor: str) -> Target:
        return next(t for t in self.targets if t.python_version == minor)

    def interpreter(self, minor: str) -> str | None:
        """The host's CPython of ``minor``: it compiles the bytecode (which is architecture-neutral)."""
        return find_interpreter(minor)

    def importer(self, minor: str) -> tuple[str | None, list[str] | None] | None:
        """What imports this site for ``minor``, as (interpreter, command prefix): the host's interpreter
        when the host can load the target's shared objects (or there are none), else the target's
        Python under qemu-user where there is one; None when neither exists here."""
        target = self.target_of(minor)
        if self.pure or host_can_run(target):
            interpreter = self.interpreter(minor)
            return (interpreter, None) if interpreter else None
        if minor not in self.qemu:
            self.qemu[minor] = find_target_interpreter(target)
        prefix = self.qemu[minor]
        return (None, prefix) if prefix else None

    def can_import(self, minor: str) -> bool:
        """Whether the smoke test can import this site with ``minor``'s interpreter on this host."""
        return self.importer(minor) is not None


@dataclass
class VariantBuild:
    """One layer zip being built: its sites in one layer root, and the targets it serves."""

    id: str
    targets: list[Target]
    architectures: list[str]
    sites: list[Site]
    root: Path
    watch: Stopwatch
    smoke: dict[tuple[int, str], SmokeReport] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def pure(self) -> bool:
        return all(site.pure for site in self.sites)

    @property
    def zip_path(self) -> Path:
        return self.root.parent / LAYER_ZIP


# ---------------------------------------------------------------- stages of a site


def install_stage(job: Job, site: Site, install_target: Target, layout: str) -> None:
    """pip installs the wheels; the slim-runtime profile drops what Lambda ships; the site takes its place.

    ``layout`` is ``pure`` or ``native`` (the matrix decided from pip's resolution) or ``auto``
    (decided here from what was installed, as for a single target).
    """
    staging = site.scratch / "install"
    serves = ""
    if len(site.targets) > 1:
        serves = ", for " + ", ".join(f"{t.runtime}/{t.architecture}" for t in site.targets)
    job.say(
        f"layershift: installing {len(job.reqs.requirements)} requirement(s) for {install_target.runtime} "
        f"{install_target.architecture}{serves}"
    )
    with site.watch.timed("install"):
        site.installed = install.install(job.reqs, install_target, staging, site.scratch)
    site.warnings += site.installed.warnings
    dists = distributions.scan(staging)
    if job.profile == SLIM_RUNTIME_PROFILE:
        dists = _slim_runtime(site, staging, dists, install_target)
    site.dists = dists
    site.pending_audit = job.start_audit(site.versions)
    scanned_pure = bool(dists) and all(d.is_pure_python for d in dists)
    site.pure = scanned_pure if layout == "auto" else (layout == "pure" and scanned_pure)
    site.prefix = install_target.site_prefix(site.pure)
    site.path.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging), str(site.path))


def prune_stage(site: Site) -> None:
    """Remove what no runtime reads (package tests, caches, stubs, C and Cython sources)."""
    with site.watch.timed("prune"):
        site.pruned = prune(site.path)


def compile_stage(job: Job, site: Site) -> None:
    """Unchecked-hash bytecode with each target minor's own interpreter, side by side in ``__pycache__``."""
    with site.watch.timed("compile"):
        for minor in site.minors:
            report = compile_site(
                site.path,
                site.interpreter(minor),
                minor,
                site.runtime_path,
                sourceless=job.sourceless,
                sources_backup=site.scratch / "sources",
            )
            site.bytecode[minor] = report
            if report.warning:
                site.warnings.append(report.warning)
            if job.sourceless and not report.compiled:
                site.warnings.append("the sourceless profile needs the target interpreter: the layer ships its sources")


def strip_stage(site: Site) -> None:
    """Strip the extension modules (never ``*.libs``) where a check can catch a broken result: the
    import smoke test, or for another architecture's objects the ELF check with its cross strip."""
    with site.watch.timed("strip"):
        site.strip_report = _strip(site)


def _strip(site: Site) -> strip.StripReport:
    target = site.targets[0]
    tool, why_not = strip_tool(target)
    if not site.can_import(target.python_version) and (tool is None or host_can_run(target)):
        reason = f" ({why_not})" if why_not else ""
        return strip.StripReport(
            ran=False,
            note="the import smoke test cannot run for this target here, and stripped files ship only after it "
            f"passes{reason}",
        )
    if tool is None:
        return strip.StripReport(ran=False, note=why_not)
    return strip.strip_extensions(site.path, tool, site.scratch / "unstripped")


def check_binaries_stage(site: Site) -> None:
    """The static ELF check of every shared object against each target's runtime image.

    Stripped files that fail it are put back unstripped and checked again; a failure that remains
    fails the build with the check's report.
    """
    with site.watch.timed("check_binaries"):
        site.elf = [(t, check_shared_objects(site.root, t, owners_from(site.dists, site.prefix))) for t in site.targets]
        failed = [r for _, r in site.elf if r.failures]
        report = site.strip_report
        if failed and report.files and not report.restored:
            strip.restore(
                site.path, site.scratch / "unstripped", report, f"the ELF check failed: {failed[0].failures[0]}"[:300]
            )
            site.elf = [
                (t, check_shared_objects(site.root, t, owners_from(site.dists, site.prefix))) for t in site.targets
            ]
            failed = [r for _, r in site.elf if r.failures]
    if failed:
        raise failed[0].error()


def build_site(job: Job, name: str, targets: list[Target], layout: str) -> Site:
    """One site through its stages: install, prune, compile, strip."""
    scratch = job.work / name
    site = Site(name=name, targets=targets, root=scratch / "layer", scratch=scratch)
    install_target = next((t for t in targets if find_interpreter(t.python_version)), targets[0])
    install_stage(job, site, install_target, layout)
    prune_stage(site)
    compile_stage(job, site)
    strip_stage(site)
    check_binaries_stage(site)
    return site


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


def _slim_runtime(site: Site, staging: Path, dists: list, target: Target) -> list:
    """Remove the distributions the runtime ships; returns the kept distributions."""
    provided = RUNTIME_PROVIDED_PACKAGES[target.runtime]
    removed = remove_distributions(staging, dists, provided)
    kept = [d for d in dists if d.name not in provided]
    for item in removed:
        site.runtime_removed.append(
            RuntimePackage(name=item.name, version=item.version, runtime_version=item.runtime_version, bytes=item.bytes)
        )
        if item.runtime_version != item.version:
            site.warnings.append(
                f"slim-runtime left out {item.name} {item.version}, but the {target.runtime} runtime ships "
                f"{item.name} {item.runtime_version}: functions will import the runtime's version"
            )
    site.warnings += _runtime_conflicts(staging, kept, provided, target)
    site.runtime_files = sum(r.files for r in removed)
    site.runtime_bytes = sum(r.bytes for r in removed)
    return kept


# ---------------------------------------------------------------- stages of a variant


def _check_budget(variant: VariantBuild) -> None:
    unzipped = zipper.tree_size(variant.root)
    if unzipped <= UNZIPPED_BUDGET_BYTES:
        return
    sizes: dict[str, int] = {}
    versions: dict[str, str] = {}
    for site in variant.sites:
        for name, size in package_sizes(site.path, site.dists).items():
            sizes[name] = sizes.get(name, 0) + size
        versions.update(site.versions)
    raise SizeBudgetExceeded(
        f"the layer is {_mb(unzipped)} ({unzipped:,} bytes) unzipped, over Lambda's budget of "
        f"{UNZIPPED_BUDGET_BYTES:,} bytes (250 MB) for a function and its layers. Size by package:\n"
        + size_table(sizes, versions)
    )


def assemble_stage(
    job: Job, vid: str, targets: list[Target], architectures: list[str], sites: list[Site]
) -> VariantBuild:
    """Put the variant's sites into one layer root (a single site stays where it was built)."""
    watch = Stopwatch(job.watch.started)
    watch.merge(job.watch)
    for site in sites:
        watch.merge(site.watch)
    if len(sites) == 1:
        root = sites[0].root
    else:
        root = job.work / f"variant-{vid}" / "layer"
        for site in sites:
            top = Path(site.prefix).parts[:3]  # python/lib/python3.X
            destination = root.joinpath(*top)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(site.root.joinpath(*top)), str(destination))
            site.root = root
    variant = VariantBuild(vid, targets, architectures, sites, root, watch)
    _check_budget(variant)
    return variant


def _smoke(variant: VariantBuild, site: Site, minor: str) -> SmokeReport:
    importer = site.importer(minor)
    if importer is not None:
        interpreter, prefix = importer
        return run_smoke_test(
            variant.root,
            site.prefix,
            site.modules,
            interpreter,
            raise_on_failure=False,
            distributions=site.dists,
            command_prefix=prefix,
        )
    target = site.target_of(minor)
    if site.interpreter(minor) is None and (site.pure or host_can_run(target)):
        why = "no interpreter of the target Python version was found"
    else:
        why = (
            f"{target.machine} shared objects cannot load on this {platform.machine()} build host, and no "
            f"qemu-{target.machine} with a python{minor} built for {target.machine} was found to run them"
        )
    return SmokeReport(ran=False, modules=site.modules, notes=[f"import smoke test skipped: {why}"])


def package_stage(variant: VariantBuild) -> None:
    """Write the zip and, on the same tree at the same time, import every module with each target minor."""

    def write() -> None:
        with variant.watch.timed("zip"):
            zipper.write_zip(variant.root, variant.zip_path)

    variant.watch.reserve("zip", "smoke_test")
    with ThreadPoolExecutor(1) as zipping:
        written = zipping.submit(write)
        with variant.watch.timed("smoke_test"):
            variant.smoke = {
                (index, minor): _smoke(variant, site, minor)
                for index, site in enumerate(variant.sites)
                for minor in site.minors
            }
        written.result()


def _failing(variant: VariantBuild, index: int) -> SmokeReport | None:
    return next((r for (i, _), r in variant.smoke.items() if i == index and r.failures), None)


def remedy_stage(job: Job, variant: VariantBuild) -> None:
    """Undo what may have broken an import (stripping, removed sources), package again, or fail.

    A crash of the test points at stripping first; an import error in a sourceless build points at
    the failing modules' missing sources first.
    """
    remedied = False
    for index, site in enumerate(variant.sites):
        smoke = _failing(variant, index)
        if smoke is None:
            continue
        crashed = any(f.startswith("the import smoke test crashed") for f in smoke.failures)
        steps = [_unstrip, _resource] if crashed else [_resource, _unstrip]
        for step in steps:
            if smoke is None:
                break
            if step(site, smoke):
                remedied = True
                package_stage(variant)
                smoke = _failing(variant, index)
    failed = [(variant.sites[i], minor, r) for (i, minor), r in variant.smoke.items() if r.failures]
    if failed:
        site, minor, report = failed[0]
        if len(variant.smoke) == 1:
            raise report.error()
        raise ImportSmokeTestFailed(
            f"top-level modules of the layer do not import with python{minor} ({site.prefix}):\n"
            + "\n".join(report.failures)
        )
    if remedied:
        _check_budget(variant)


def _unstrip(site: Site, current: SmokeReport) -> bool:
    report = site.strip_report
    if not report.files or report.restored:
        return False
    strip.restore(site.path, site.scratch / "unstripped", report, "; ".join(current.failures)[:300])
    return True


def _resource(site: Site, current: SmokeReport) -> bool:
    bytecode = next(iter(site.bytecode.values()), None)
    if bytecode is None or not bytecode.sourceless or bytecode.interpreter is None:
        return False
    owners = {m: d for d in site.dists for m in d.top_level}
    failed = sorted(set(current.failed_modules) & set(owners))
    # a module may fail through another package it imports: restore its distribution's modules
    names = sorted({m for name in failed for m in owners[name].top_level})
    return bool(
        restore_sources(site.path, site.scratch / "sources", names, bytecode.interpreter, site.runtime_path, bytecode)
    )


def _merge_audits(reports: list[AuditReport]) -> AuditReport:
    if len(reports) == 1:
        return reports[0]
    findings: dict[tuple, dict] = {}
    for report in reports:
        for finding in report.findings:
            findings.setdefault((finding["package"], finding["version"], finding["id"]), finding)
    unavailable = [r for r in reports if r.status == audit_module.UNAVAILABLE]
    if findings:
        status = audit_module.VULNERABLE
    elif unavailable:
        status = audit_module.UNAVAILABLE
    else:
        status = audit_module.OK
    notes = [r.note for r in reports if r.note]
    return AuditReport(
        status,
        list(findings.values()),
        sum(r.audited for r in reports),
        sum(r.skipped for r in reports),
        "; ".join(dict.fromkeys(notes)) or None,
    )


def audit_stage(job: Job, variant: VariantBuild) -> AuditReport:
    """Wait for the audit of the variant's packages and apply the gate: a failure stops the build here."""
    with variant.watch.timed("audit_wait"):
        reports = [
            site.pending_audit.result()
            if site.pending_audit is not None
            else AuditReport(audit_module.UNAVAILABLE, note="audit turned off")
            for site in variant.sites
        ]
    report = _merge_audits(reports)
    audit_module.gate(report, job.policy)
    return report


def sbom_stage(job: Job, variant: VariantBuild, sha256: str, created_at: datetime, build_key: str) -> Path:
    """The CycloneDX SBOM: the zip as subject, one component per distribution and version."""
    with variant.watch.timed("sbom"):
        first = variant.sites[0]
        target = variant.targets[0]
        name = (
            f"layer-{target.runtime}-{target.architecture}-{job.profile}"
            if len(variant.targets) == 1
            else f"layer-{variant.id}-{job.profile}"
        )
        document = sbom.build_sbom(
            first.path,
            first.dists,
            first.installed.wheels if first.installed else {},
            layer_name=name,
            build_key=build_key,
            sha256=sha256,
            builder_version=BUILDER_VERSION,
            timestamp=created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        refs = {c["bom-ref"] for c in document["components"]}
        for site in variant.sites[1:]:
            wheels = site.installed.wheels if site.installed else {}
            for dist in site.dists:
                entry = sbom.component(site.path, dist, wheels.get(dist.name))
                if entry["bom-ref"] not in refs:
                    refs.add(entry["bom-ref"])
                    document["components"].append(entry)
                    document["dependencies"][0]["dependsOn"].append(entry["bom-ref"])
        path = variant.root.parent / SBOM_JSON
        sbom.write_sbom(path, document)
    return path


def _variant_key(job: Job, targets: list[Target]) -> str:
    return compute_variant_key([job.key_of(t) for t in targets])


def manifest_stage(job: Job, variant: VariantBuild) -> tuple[Manifest, Path]:
    """The SBOM, the audit and its gate, then the manifest; returns it with the folder holding the files."""
    sha256 = zipper.sha256_file(variant.zip_path)
    unzipped = zipper.tree_size(variant.root)
    build_key = _variant_key(job, variant.targets)
    created_at = datetime.now(UTC)
    sbom_stage(job, variant, sha256, created_at, build_key)
    audit_report = audit_stage(job, variant)
    warnings, notes = summaries.warnings_and_notes(job, variant, audit_report)
    skipped = sorted({s for site in variant.sites for s in (site.installed.skipped if site.installed else [])})

    packages = summaries.packages_of(variant)
    dists = [d for site in variant.sites for d in site.dists]
    first = variant.targets[0]
    installed = variant.sites[0].installed
    manifest = Manifest(
        build_key=build_key,
        sha256=sha256,
        zipped_bytes=variant.zip_path.stat().st_size,
        unzipped_bytes=unzipped,
        runtime=first.runtime,
        architecture=first.architecture,
        profile=job.profile,
        compatible_runtimes=sorted({t.runtime for t in variant.targets}, key=matrix._runtime_order),
        compatible_architectures=variant.architectures,
        layout=variant.sites[0].prefix,
        layouts=[site.prefix for site in variant.sites],
        variant_id=variant.id,
        targets=[
            VariantTarget(runtime=t.runtime, architecture=t.architecture, build_key=job.key_of(t))
            for t in variant.targets
        ],
        pure_python=variant.pure,
        requirements=job.reqs.normalised_text(),
        packages=packages,
        top_level_modules=sorted({m for d in dists for m in d.top_level}),
        wheel_tags=sorted({t for d in dists for t in d.tags}),
        skipped_requirements=skipped,
        pruned=summaries.pruned_of(variant, job.profile),
        runtime_packages_removed=[r for site in variant.sites for r in site.runtime_removed],
        stripped=summaries.stripped_of(variant),
        bytecode=summaries.bytecode_of(variant),
        smoke_test=summaries.smoke_of(variant),
        binaries=summaries.binaries_of(variant),
        sbom=SBOM_JSON,
        audit=AuditSummary(status=audit_report.status, findings=audit_report.findings, note=audit_report.note),
        cache_hit=False,
        pip_version=installed.pip_version if installed else "unknown",
        builder_version=BUILDER_VERSION,
        timings=variant.watch.result(),
        warnings=warnings,
        notes=notes,
        created_at=created_at,
    )
    manifest.write(variant.root.parent / MANIFEST_JSON)
    return manifest, variant.root.parent


# ---------------------------------------------------------------- the matrix


def resolve_stage(job: Job) -> list[install.Resolution]:
    """pip's dry run for every target, two at a time: what each would install, and whether it is pure."""
    with job.watch.timed("resolve"), ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(install.resolve, job.reqs, t, job.work / f"resolve-{t.runtime}-{t.architecture}")
            for t in job.targets
        ]
        resolutions = [f.result() for f in futures]
    for r in resolutions:
        kind = "pure Python" if r.pure else "native"
        job.say(
            f"layershift: {r.target.runtime} {r.target.architecture} resolves to {len(r.packages)} "
            f"distribution(s), {kind}"
        )
    return resolutions


def _plan_and_build(job: Job) -> list[VariantBuild]:
    """Every variant of the matrix, built up to its zip: sites first, then grouped into layer roots."""
    if len(job.targets) == 1:
        target = job.targets[0]
        site = build_site(job, f"site-{target.runtime}-{target.architecture}", [target], "auto")
        architectures = sorted(ARCHITECTURES) if site.pure else [target.architecture]
        vid = matrix.variant_id([target], architectures)
        return [assemble_stage(job, vid, [target], architectures, [site])]

    groups, native = matrix.pure_groups(resolve_stage(job), job.sourceless)
    planned: list[tuple[list[Target], list[str], list[Site]]] = []
    for group in groups:
        name = "site-" + "-".join(f"{t.runtime}-{t.architecture}" for t in group)
        site = build_site(job, name, group, "pure")
        if not site.pure:  # a py3-none-any wheel that is not purelib: build each target natively
            job.say(f"layershift: {', '.join(t.runtime for t in group)}: not pure Python once installed")
            native = matrix.sort_targets([*native, *group])
            continue
        planned.append((group, matrix.pure_architectures(group, job.targets), [site]))
    for architecture, targets in matrix.by_architecture(native).items():
        sites = [build_site(job, f"site-{t.runtime}-{t.architecture}", [t], "native") for t in targets]
        together = sum(zipper.tree_size(site.root) for site in sites)
        if len(sites) > 1 and together <= UNZIPPED_BUDGET_BYTES:
            planned.append((targets, [architecture], sites))
            continue
        if len(sites) > 1:
            job.say(
                f"layershift: {architecture}: {_mb(together)} for {len(sites)} Python minors together is over "
                "the 250 MB budget: one layer per runtime"
            )
        planned += [([site.targets[0]], [architecture], [site]) for site in sites]
    ids = matrix.unique_ids([matrix.variant_id(targets, archs) for targets, archs, _ in planned])
    return [assemble_stage(job, vid, t, a, s) for vid, (t, a, s) in zip(ids, planned, strict=True)]


def _job(
    requirements_text: str | bytes,
    pairs: list[tuple[str, str]],
    *,
    allow_ranges: bool,
    profile: str,
    audit_policy: AuditPolicy | None,
    echo: Echo | None,
    cache_dir: Path | None,
    audit: bool = True,
) -> Job:
    reqs = parse_requirements(requirements_text, allow_ranges=allow_ranges)
    targets = matrix.targets_for(pairs)
    check_profile(profile)
    policy = effective_policy(audit_policy)
    keys = {
        (t.runtime, t.architecture): compute_build_key(reqs, t.runtime, t.architecture, profile, policy)
        for t in targets
    }
    return Job(
        reqs=reqs,
        targets=targets,
        profile=profile,
        policy=policy,
        say=echo if echo is not None else (lambda line: print(line, file=sys.stdout, flush=True)),
        cache_root=Path(cache_dir) if cache_dir is not None else cache.default_cache_dir(),
        audit=audit,
        keys=keys,
        matrix_key=compute_matrix_key(list(keys.values())),
        watch=Stopwatch(),
    )


def _index(job: Job, manifests: list[Manifest]) -> VariantIndex:
    return VariantIndex(
        matrix_key=job.matrix_key,
        variants=[
            Variant(
                id=str(m.variant_id),
                targets=m.targets,
                compatible_runtimes=m.compatible_runtimes,
                compatible_architectures=m.compatible_architectures,
                pure_python=m.pure_python,
                sha256=m.sha256,
                zipped_bytes=m.zipped_bytes,
                unzipped_bytes=m.unzipped_bytes,
                packages=[{"name": p.name, "version": p.version} for p in m.packages],
                audit_status=m.audit.status,
                manifest=f"{m.variant_id}/{MANIFEST_JSON}",
                zip=f"{m.variant_id}/{LAYER_ZIP}",
            )
            for m in manifests
        ],
    )


def _run(job: Job, folder_of: Callable[[str], Path], use_cache: bool) -> tuple[list[Manifest], VariantIndex]:
    """Build (or reuse) every variant; each variant's files end in ``folder_of(variant id)``."""
    if use_cache:
        hit = _from_cache(job, folder_of)
        if hit is not None:
            return hit
    with tempfile.TemporaryDirectory(prefix="layershift-build-") as tmp, ThreadPoolExecutor(1) as background:
        job.work = Path(tmp)
        job.background = background
        built: list[tuple[Manifest, Path]] = []
        for variant in _plan_and_build(job):
            package_stage(variant)
            remedy_stage(job, variant)
            built.append(manifest_stage(job, variant))
        manifests = [m for m, _ in built]
        index = _index(job, manifests)
        index.write(job.work / VARIANTS_JSON)
        for manifest, folder in built:
            destination = folder_of(str(manifest.variant_id))
            destination.mkdir(parents=True, exist_ok=True)
            for name in (LAYER_ZIP, SBOM_JSON, MANIFEST_JSON):
                shutil.move(str(folder / name), str(destination / name))
        if all(m.bytecode.compiled for m in manifests):
            _store(job, manifests, folder_of, job.work / VARIANTS_JSON)
    for manifest in manifests:
        job.say(summaries.report_text(manifest))
    return manifests, index


def with_file_hashes(index: VariantIndex, out_dir: Path) -> VariantIndex:
    """``index`` with the sha256 of every file of each variant, as written in ``out_dir``."""
    variants = []
    for variant in index.variants:
        names = [f"{variant.id}/{name}" for name in (LAYER_ZIP, MANIFEST_JSON, SBOM_JSON)]
        files = {name: zipper.sha256_file(out_dir / name) for name in names if (out_dir / name).is_file()}
        variants.append(variant.model_copy(update={"files": files}))
    return index.model_copy(update={"variants": variants})


def build_matrix(
    requirements_text: str | bytes,
    *,
    targets: list[tuple[str, str]],
    out_dir: Path,
    allow_ranges: bool = False,
    profile: str = "default",
    audit_policy: AuditPolicy | None = None,
    echo: Echo | None = None,
    cache_dir: Path | None = None,
    use_cache: bool = True,
) -> VariantIndex:
    """Build every layer variant that ``targets`` (runtime, architecture) pairs need, sharing work where sound.

    Writes ``out_dir/variants.json`` (the :class:`VariantIndex`) and, per variant,
    ``out_dir/<id>/layer.zip``, ``manifest.json`` and ``sbom.cdx.json``; all of it only when every
    variant passed every check. Grouping: :mod:`layershift_core.builder.matrix`. Every pip run of
    the job uses the same pip cache, so a wheel is downloaded once for all targets.

    The cache and errors are those of :func:`build_layer`; ``audit_policy`` (default: audit, never
    fail) is the vulnerability gate, part of each target's build key and applied on a cache hit too.
    """
    job = _job(
        requirements_text,
        targets,
        allow_ranges=allow_ranges,
        profile=profile,
        audit_policy=audit_policy,
        echo=echo,
        cache_dir=cache_dir,
    )
    out_dir = Path(out_dir)
    _manifests, index = _run(job, lambda vid: out_dir / vid, use_cache)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = with_file_hashes(index, out_dir)
    index.write(out_dir / VARIANTS_JSON)
    job.say(
        f"layershift: matrix {job.matrix_key[:16]}: {len(index.variants)} variant(s) for {len(job.targets)} target(s): "
        + "; ".join(f"{v.id} ({', '.join(f'{t.runtime}/{t.architecture}' for t in v.targets)})" for v in index.variants)
    )
    return index


def build_layer(
    requirements_text: str | bytes,
    *,
    runtime: str,
    architecture: str,
    out_dir: Path,
    allow_ranges: bool = False,
    profile: str = "default",
    echo: Echo | None = None,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    audit: bool = True,
    fail_on_vulnerability: bool = False,
    audit_policy: AuditPolicy | None = None,
) -> Manifest:
    """Build a Lambda layer zip for ``runtime``/``architecture`` from a requirements file.

    Writes ``out_dir/layer.zip``, ``out_dir/manifest.json`` and ``out_dir/sbom.cdx.json`` (only
    when every check passed) and returns the manifest. It is the one-target matrix of
    :func:`build_matrix`: the same stages, the same zip.

    With ``use_cache`` (the default), a build whose build key is already in ``cache_dir`` (default
    ``$LAYERSHIFT_BUILD_CACHE`` or ``~/.cache/layershift/builds``) is not run again: the cached
    artifacts are copied and the manifest says ``cache_hit``. Every build with bytecode is stored
    in the cache, also with ``use_cache=False`` (which only skips the lookup). ``audit`` runs
    pip-audit where it is installed; ``audit_policy`` is the vulnerability gate (default: never
    fail; ``fail_on_vulnerability`` is ``fail_on = "low"``).

    Raises InvalidRequirements / InvalidLayerSpec for bad input, and BuildFailed or one of its
    subclasses (SdistOnlyPackage, SizeBudgetExceeded, ImportSmokeTestFailed) when the layer cannot
    be built.
    """
    if audit_policy is None and fail_on_vulnerability:
        audit_policy = AuditPolicy(fail_on="low", unavailable="warn")
    job = _job(
        requirements_text,
        [(runtime, architecture)],
        allow_ranges=allow_ranges,
        profile=profile,
        audit_policy=audit_policy,
        echo=echo,
        cache_dir=cache_dir,
        audit=audit,
    )
    manifests, _index = _run(job, lambda vid: Path(out_dir), use_cache)
    return manifests[0]


# ---------------------------------------------------------------- the build cache


def _store(job: Job, manifests: list[Manifest], folder_of: Callable[[str], Path], index_path: Path) -> None:
    """Each variant under its key, variants.json under the matrix key (one folder when they are the same)."""
    entries: dict[str, list[Path]] = {}
    for manifest in manifests:
        folder = folder_of(str(manifest.variant_id))
        entries.setdefault(manifest.build_key, []).extend(folder / n for n in (LAYER_ZIP, MANIFEST_JSON, SBOM_JSON))
    entries.setdefault(job.matrix_key, []).append(index_path)
    for key, files in entries.items():
        cache.store(job.cache_root, key, files)


def _cached_variant(job: Job, variant: Variant) -> tuple[Path, Manifest] | None:
    key = compute_variant_key([t.build_key for t in variant.targets])
    folder = cache.entry(job.cache_root, key)
    zip_path, manifest_path = folder / LAYER_ZIP, folder / MANIFEST_JSON
    if not (zip_path.is_file() and manifest_path.is_file()):
        return None
    try:
        manifest = Manifest.read(manifest_path)
    except (OSError, ValueError):
        return None
    if (
        manifest.build_key != key
        or manifest.variant_id != variant.id
        or manifest.compatible_architectures != variant.compatible_architectures
        or zipper.sha256_file(zip_path) != manifest.sha256
    ):
        return None
    return folder, manifest


def _from_cache(job: Job, folder_of: Callable[[str], Path]) -> tuple[list[Manifest], VariantIndex] | None:
    """The cached variants of this matrix copied to their folders, or None when the cache cannot serve them all."""
    index_path = cache.entry(job.cache_root, job.matrix_key) / VARIANTS_JSON
    try:
        index = VariantIndex.read(index_path)
    except (OSError, ValueError):
        return None
    expected = {(t.runtime, t.architecture, job.key_of(t)) for t in job.targets}
    listed = {(t.runtime, t.architecture, t.build_key) for v in index.variants for t in v.targets}
    if index.matrix_key != job.matrix_key or listed != expected:
        return None
    found = [_cached_variant(job, variant) for variant in index.variants]
    if any(entry is None for entry in found):
        return None
    manifests: list[Manifest] = []
    for variant, entry in zip(index.variants, found, strict=True):
        assert entry is not None
        folder, cached = entry
        manifest = regate(cached, job.policy, job.audit)
        elapsed = round(time.monotonic() - job.watch.started, 3)
        manifest = manifest.model_copy(update={"cache_hit": True, "timings": {"cache": elapsed, "total": elapsed}})
        destination = folder_of(variant.id)
        destination.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / LAYER_ZIP, destination / LAYER_ZIP)
        if manifest.sbom and (folder / manifest.sbom).is_file():
            shutil.copyfile(folder / manifest.sbom, destination / manifest.sbom)
        manifest.write(destination / MANIFEST_JSON)
        manifests.append(manifest)
        job.say(f"layershift: cache hit for build key {manifest.build_key}: reused {folder}")
        job.say(summaries.report_text(manifest))
    index = index.model_copy(
        update={
            "variants": [
                v.model_copy(update={"audit_status": m.audit.status})
                for v, m in zip(index.variants, manifests, strict=True)
            ]
        }
    )
    return manifests, index


def _site_versions(manifest: Manifest) -> list[dict[str, str]]:
    """``{name: version}`` per Python minor of a manifest (minors can resolve differently)."""
    minors = sorted({v for p in manifest.packages for v in p.python_versions}) or [manifest.bytecode.python_version]
    sets = [
        {p.name: p.version for p in manifest.packages if not p.python_versions or minor in p.python_versions}
        for minor in minors
    ]
    unique: list[dict[str, str]] = []
    for versions in sets:
        if versions not in unique:
            unique.append(versions)
    return unique


def regate(manifest: Manifest, policy: AuditPolicy, audit: bool = True) -> Manifest:
    """Apply the gate to an earlier build (a cache hit): audit its packages again, since advisories appear
    after a build. Without a gate nothing runs; if the audit cannot run now, the recorded findings are
    gated and ``unavailable`` decides. Raises BuildFailed; returns the manifest with the audit it was gated on.
    """
    if not policy.gates:
        return manifest
    recorded = AuditReport(manifest.audit.status, list(manifest.audit.findings), note=manifest.audit.note)
    if audit:
        fresh = _merge_audits([audit_module.run_audit(v) for v in _site_versions(manifest)])
    else:
        fresh = AuditReport(audit_module.UNAVAILABLE, note="audit turned off")
    if fresh.status == audit_module.UNAVAILABLE:
        audit_module.gate(recorded, policy)
        report = AuditReport(
            audit_module.UNAVAILABLE,
            recorded.findings,
            note=f"could not audit again on a cache hit ({fresh.note}); the findings are the build's",
        )
    else:
        report = fresh
        report.note = "audited again on a cache hit" + (f"; {fresh.note}" if fresh.note else "")
    audit_module.gate(report, policy)
    return manifest.model_copy(
        update={"audit": AuditSummary(status=report.status, findings=report.findings, note=report.note)}
    )


# ---------------------------------------------------------------- the build's report


__all__ = [
    "BUILD_FAILURE_JSON",
    "LAYER_ZIP",
    "MANIFEST_JSON",
    "SBOM_JSON",
    "UNZIPPED_BUDGET_BYTES",
    "VARIANTS_JSON",
    "Stopwatch",
    "build_layer",
    "build_matrix",
    "regate",
]
