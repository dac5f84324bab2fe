"""The build manifest written beside layer.zip."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class PackageEntry(BaseModel):
    """One installed distribution."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    unzipped_bytes: int = 0
    wheel_tags: list[str] = Field(default_factory=list)
    top_level_modules: list[str] = Field(default_factory=list)


class PruneSummary(BaseModel):
    """What pruning removed."""

    folders: list[str] = Field(default_factory=list)
    files: int = 0
    bytes: int = 0


class BytecodeSummary(BaseModel):
    """How bytecode was produced."""

    compiled: bool
    python_version: str
    invalidation_mode: str | None = None
    files: int = 0


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
    bytecode: BytecodeSummary
    smoke_test: SmokeTestSummary
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
