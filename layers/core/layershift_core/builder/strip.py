"""Stripping debug symbols from the packages' own extension modules.

Only Python extension modules (``*.cpython-3X-<arch>.so``, ``*.abi3.so`` and plain ``name.so``
modules) are stripped, never the shared objects vendored in ``*.libs`` folders (stripping those
breaks numpy's OpenBLAS) nor other ``lib*.so`` libraries shipped inside packages. Each original is
kept aside, so :func:`restore` can put every unstripped file back when the import smoke test fails
afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

STRIP_OPTION = "--strip-unneeded"
STRIP_TIMEOUT_SECONDS = 120
_EXTENSION_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.(cpython-\d+[a-z]*-[A-Za-z0-9_]+-linux-gnu|abi3))?\.so$")
_SKIPPED_FOLDER_SUFFIXES = (".libs", ".dist-info", ".data")


@dataclass
class StripReport:
    """What stripping did."""

    ran: bool
    tool: str | None = None
    option: str | None = None
    files: int = 0
    bytes_before: int = 0
    bytes_saved: int = 0
    restored: bool = False
    note: str | None = None
    stripped: list[str] = field(default_factory=list)


def extension_modules(site: Path) -> list[Path]:
    """The packages' own extension modules under ``site``, outside ``*.libs`` folders."""
    found: list[Path] = []
    for current, dirs, files in os.walk(site):
        dirs[:] = sorted(d for d in dirs if not d.endswith(_SKIPPED_FOLDER_SUFFIXES))
        for name in sorted(files):
            if name.startswith("lib") and ".cpython-" not in name and ".abi3." not in name:
                continue
            path = Path(current, name)
            if _EXTENSION_RE.match(name) and path.is_file() and not path.is_symlink():
                found.append(path)
    return found


def _strip_one(tool: str, option: str, path: Path, backup: Path) -> tuple[Path, int, int] | None:
    """Strip ``path`` into a copy; keep the original at ``backup``. None when strip fails or saves nothing."""
    stripped = path.with_name(path.name + ".stripped")
    try:
        proc = subprocess.run(
            [tool, option, "-o", str(stripped), str(path)],
            capture_output=True,
            text=True,
            timeout=STRIP_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        stripped.unlink(missing_ok=True)
        return None
    before = path.stat().st_size
    if proc.returncode != 0 or not stripped.is_file() or stripped.stat().st_size >= before:
        stripped.unlink(missing_ok=True)
        return None
    after = stripped.stat().st_size
    shutil.copymode(path, stripped)
    backup.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, backup)
    os.replace(stripped, path)
    return path, before, after


def strip_extensions(site: Path, tool: str, backup_dir: Path, option: str = STRIP_OPTION) -> StripReport:
    """Strip every extension module of ``site`` with ``tool option``; originals go to ``backup_dir``."""
    report = StripReport(ran=True, tool=tool, option=option)
    modules = extension_modules(site)
    if not modules:
        report.note = "no extension modules to strip"
        return report
    workers = min(16, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda p: _strip_one(tool, option, p, backup_dir / p.relative_to(site)), modules))
    for result in results:
        if result is None:
            continue
        path, before, after = result
        report.files += 1
        report.bytes_before += before
        report.bytes_saved += before - after
        report.stripped.append(path.relative_to(site).as_posix())
    report.stripped.sort()
    return report


def restore(site: Path, backup_dir: Path, report: StripReport, reason: str) -> None:
    """Put every unstripped original back and record why."""
    for rel in report.stripped:
        os.replace(backup_dir / rel, site / rel)
    report.restored = True
    report.note = f"stripping undone, the unstripped extension modules ship: {reason}"
