"""Conservative pruning of an installed site folder.

Removed: ``__pycache__`` folders that came inside wheels (bytecode is compiled afterwards for the
target runtime) and ``tests`` folders inside packages. Kept: every ``.dist-info`` (importlib.metadata
and SBOMs read it), top-level folders, and every shared object (``*.libs`` folders are never touched).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

TEST_FOLDER_NAMES = frozenset({"tests"})


@dataclass
class PruneReport:
    """What pruning removed."""

    folders: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0

    def add(self, site: Path, folder: Path) -> None:
        files, size = _measure(folder)
        self.folders.append(folder.relative_to(site).as_posix())
        self.files += files
        self.bytes += size


def _measure(folder: Path) -> tuple[int, int]:
    files = 0
    size = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(root, name)
            if not path.is_symlink():
                files += 1
                size += path.stat().st_size
    return files, size


def _protected(rel_parts: tuple[str, ...]) -> bool:
    return any(part.endswith((".dist-info", ".libs", ".data")) for part in rel_parts)


def prune(site: Path) -> PruneReport:
    """Remove caches and package test folders from ``site``; returns what went."""
    report = PruneReport()
    doomed: list[Path] = []
    for root, dirs, _files in os.walk(site):
        here = Path(root)
        rel_parts = here.relative_to(site).parts
        for name in sorted(dirs):
            if _protected((*rel_parts, name)):
                continue
            if name == "__pycache__" or (name in TEST_FOLDER_NAMES and len(rel_parts) >= 1):
                doomed.append(here / name)
        dirs[:] = [d for d in dirs if here / d not in doomed]
    for folder in sorted(doomed):
        report.add(site, folder)
        shutil.rmtree(folder)
    report.folders.sort()
    return report
