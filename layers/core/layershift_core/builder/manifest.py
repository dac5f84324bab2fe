"""The build manifest written beside layer.zip, and the index of a build matrix's variants (variants.json)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PackageEntry(BaseModel):
    """One installed distribution."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    unzipped_bytes: int = 0
    wheel_tags: list[str] = Field(default_factory=list)
    top_level_modules: list[str] = Field(default_factory=list)
    python_versions: list[str] = Field(
        default_factory=list, description="the Python minors whose package folder holds this version"
    )
    hashes: list[str] = Field(
        default_factory=list,
        description="'sha256:<hex>' of each wheel file pip installed for it (one per Python minor when they differ), "
        "as pip's --require-hashes takes them",
    )


class PruneCategory(BaseModel):
    """Files and bytes removed in one pruning category."""

    files: int = 0
    bytes: int = 0


class PruneSummary(BaseModel):
    """What pruning removed: folders, totals, and a breakdown by category."""

    folders: list[str] = Field(default_factory=list)
    files: int = 0
    bytes: int = 0
    categories: dict[str, PruneCategory] = Field(
        default_factory=dict,
        description="tests, __pycache__, type stubs, cython sources, c sources and headers, runtime-provided packages",
    )
    kept: list[str] = Field(default_factory=list, description="what pruning left on purpose, and why")


class RuntimePackage(BaseModel):
    """A distribution left out of the layer because the Lambda runtime ships it (slim-runtime)."""

    name: str
    version: str = Field(description="the version the requirements resolved to")
    runtime_version: str | None = Field(default=None, description="the version the runtime ships")
    bytes: int = 0


class StripSummary(BaseModel):
    """Stripping debug symbols from the packages' own extension modules."""

    ran: bool = False
    tool: str | None = None
    option: str | None = None
    files: int = 0
    bytes_saved: int = 0
    restored: bool = Field(default=False, description="the smoke test failed stripped, so the originals ship")
    note: str | None = None


class AuditSummary(BaseModel):
    """The pip-audit result."""

    status: str = Field(default="unavailable", description="ok, vulnerable or unavailable")
    findings: list[dict[str, Any]] = Field(default_factory=list)
    note: str | None = None


class BytecodeSummary(BaseModel):
    """How bytecode was produced."""

    compiled: bool
    python_version: str
    invalidation_mode: str | None = None
    files: int = 0
    interpreter: str | None = Field(default=None, description="the target interpreter that compiled it")
    layout: str | None = Field(default=None, description="'__pycache__' (beside sources) or 'sourceless' (in place)")
    sources_kept: list[str] = Field(
        default_factory=list, description="sourceless: top-level modules that ship sources because they need them"
    )
    cold_start_cost: str | None = Field(default=None, description="what shipping without bytecode costs")
    python_versions: list[str] = Field(
        default_factory=list, description="every Python minor the layer holds bytecode for (cpython-3XY tags)"
    )


class SmokeRun(BaseModel):
    """The import smoke test with one target interpreter."""

    python_version: str
    ran: bool
    modules: int = 0
    recompiled: list[str] = Field(default_factory=list)
    import_seconds: float | None = None
    note: str | None = Field(default=None, description="why it did not run")
    network: str | None = Field(default=None, description="whether the imports could reach the network")
    output: str = Field(default="", description="what the imports printed (the end of it)")


class SmokeTestSummary(BaseModel):
    """Outcome of the import smoke test (the first run's figures; ``runs`` has one per Python minor)."""

    ran: bool
    modules: int = 0
    recompiled: list[str] = Field(default_factory=list)
    import_seconds: float | None = None
    runs: list[SmokeRun] = Field(default_factory=list)
    credentials: str = Field(
        default="none: the imports ran without AWS credentials, an empty HOME and AWS_EC2_METADATA_DISABLED",
        description="what the imports could find of the build's AWS credentials",
    )
    network: str | None = Field(default=None, description="whether the imports could reach the network")


class BinariesSummary(BaseModel):
    """The check of the layer's shared objects against the target (ELF, and the import when it could run)."""

    checks: list[str] = Field(
        default_factory=list, description="'elf' always; 'import' when the smoke test ran; 'import (qemu)' under qemu"
    )
    machine: str | None = Field(
        default=None, description="the ELF machine checked for (x86_64, aarch64), or 'any' for a layer serving both"
    )
    failures: list[str] = Field(
        default_factory=list, description="what the ELF check found wrong (a build fails on any)"
    )
    checked: int = Field(default=0, description="ELF files checked")
    needed: int = Field(default=0, description="DT_NEEDED entries seen")
    resolved_in_layer: int = 0
    resolved_system: int = 0
    max_glibc: str | None = Field(default=None, description="the newest GLIBC_x.y symbol version required")
    import_note: str | None = Field(default=None, description="why the import check did not run, where it did not")
    summary: str | None = None


class VariantTarget(BaseModel):
    """One (runtime, architecture) a variant serves, and that target's build key."""

    model_config = ConfigDict(frozen=True)

    runtime: str
    architecture: str
    build_key: str


class Manifest(BaseModel):
    """Everything known about one built layer zip."""

    model_config = ConfigDict(frozen=True)

    build_key: str = Field(description="the build key of the one target, or the matrix key of the variant's targets")
    sha256: str
    zipped_bytes: int
    unzipped_bytes: int
    runtime: str = Field(description="the (first) target's runtime; targets lists every one")
    architecture: str = Field(description="the (first) target's architecture")
    profile: str = "default"
    compatible_runtimes: list[str]
    compatible_architectures: list[str]
    layout: str = Field(description="folder inside the zip holding the packages, e.g. 'python'")
    layouts: list[str] = Field(
        default_factory=list, description="every package folder, one per Python minor in a shared native layer"
    )
    variant_id: str | None = None
    targets: list[VariantTarget] = Field(default_factory=list)
    pure_python: bool
    requirements: str = Field(description="the normalised requirements the layer was built from")
    packages: list[PackageEntry]
    top_level_modules: list[str]
    wheel_tags: list[str]
    skipped_requirements: list[str] = Field(
        default_factory=list, description="requirements whose markers do not hold on the target runtime"
    )
    pruned: PruneSummary = Field(default_factory=PruneSummary)
    runtime_packages_removed: list[RuntimePackage] = Field(default_factory=list)
    stripped: StripSummary = Field(default_factory=StripSummary)
    bytecode: BytecodeSummary
    smoke_test: SmokeTestSummary
    binaries: BinariesSummary = Field(default_factory=BinariesSummary)
    sbom: str | None = Field(default=None, description="file name of the CycloneDX SBOM beside the zip")
    audit: AuditSummary = Field(default_factory=AuditSummary)
    cache_hit: bool = Field(default=False, description="reused from the build cache, nothing was built")
    pip_version: str
    builder_version: str
    timings: dict[str, float]
    warnings: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    created_at: datetime

    def write(self, path: Path) -> None:
        """Write the manifest as indented JSON."""
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """Read a manifest written by :meth:`write`."""
        return cls.model_validate_json(path.read_text(encoding="utf-8"))

    def package_versions(self) -> dict[str, str]:
        """``{name: version}`` of every installed distribution."""
        return {p.name: p.version for p in self.packages}


class Variant(BaseModel):
    """One layer zip of a build matrix, and the targets it serves."""

    id: str = Field(description="stable, filesystem- and SSM-safe, e.g. python3.12-python3.13-x86_64")
    targets: list[VariantTarget]
    compatible_runtimes: list[str]
    compatible_architectures: list[str]
    pure_python: bool
    sha256: str
    zipped_bytes: int
    unzipped_bytes: int
    packages: list[dict[str, Any]] = Field(description='[{"name": ..., "version": ...}]')
    audit_status: str = Field(description="ok, vulnerable or unavailable")
    manifest: str = Field(description="<id>/manifest.json, relative to the index")
    zip: str = Field(description="<id>/layer.zip, relative to the index")
    files: dict[str, str] = Field(
        default_factory=dict,
        description="every file of the variant (zip, manifest, SBOM), its path relative to the index -> sha256",
    )

    def serves(self, runtime: str, architecture: str) -> bool:
        """Whether this variant is built for, or compatible with, the target."""
        return runtime in self.compatible_runtimes and architecture in self.compatible_architectures


class VariantIndex(BaseModel):
    """variants.json: every variant of one build matrix."""

    matrix_key: str
    variants: list[Variant]

    def variant_for(self, runtime: str, architecture: str) -> Variant | None:
        """The variant built for that target, else one compatible with it, else None."""
        for variant in self.variants:
            if any(t.runtime == runtime and t.architecture == architecture for t in variant.targets):
                return variant
        return next((v for v in self.variants if v.serves(runtime, architecture)), None)

    def write(self, path: Path) -> None:
        """Write the index as indented JSON."""
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> VariantIndex:
        """Read an index written by :meth:`write`."""
        return cls.model_validate_json(path.read_text(encoding="utf-8"))
