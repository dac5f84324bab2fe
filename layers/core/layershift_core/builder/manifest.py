"""The build manifest written beside layer.zip."""

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


class SmokeTestSummary(BaseModel):
    """Outcome of the import smoke test."""

    ran: bool
    modules: int = 0
    recompiled: list[str] = Field(default_factory=list)
    import_seconds: float | None = None


class Manifest(BaseModel):
    """Everything known about one built layer zip."""

    model_config = ConfigDict(frozen=True)

    build_key: str
    sha256: str
    zipped_bytes: int
    unzipped_bytes: int
    runtime: str
    architecture: str
    profile: str = "default"
    compatible_runtimes: list[str]
    compatible_architectures: list[str]
    layout: str = Field(description="folder inside the zip holding the packages, e.g. 'python'")
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
