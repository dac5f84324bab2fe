"""Safe pruning of an installed site folder, reported per category.

Removed in every profile:
- ``tests`` and ``test`` folders inside packages (never a top-level module), unless another module
  of the package refers to them (``pkg.tests`` or a relative ``from .tests import``): those stay;
- ``__pycache__`` folders that came inside wheels (bytecode is compiled afterwards for the target);
- files no runtime reads: type stubs (``*.pyi``), Cython sources (``*.pyx``, ``*.pxd``, ``*.pxi``),
  C and C++ sources and headers (``*.c``, ``*.cpp``, ``*.h``, ``*.hpp``). Headers such as
  ``numpy/_core/include`` serve only to build extensions against the package, like static
  libraries (``*.a``, e.g. ``numpy/_core/lib/libnpymath.a``). Packages that read
  their C sources or headers at run time (cffi, Cython, JIT compilers) keep them.

Never touched: ``.dist-info`` (importlib.metadata and the SBOM read it), ``.data``, ``*.libs``
folders of vendored shared objects, ``py.typed``.

The slim-runtime profile also removes whole distributions that the Lambda runtime ships
(:func:`remove_distributions`).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

TEST_FOLDER_NAMES = frozenset({"tests", "test"})

TESTS = "tests"
PYCACHE = "__pycache__"
TYPE_STUBS = "type stubs"
CYTHON = "cython sources"
C_SOURCES = "c sources and headers"
STATIC_LIBRARIES = "static libraries"
RUNTIME_PACKAGES = "runtime-provided packages"
CATEGORIES = (TESTS, PYCACHE, TYPE_STUBS, CYTHON, C_SOURCES, STATIC_LIBRARIES)

SUFFIX_CATEGORIES: dict[str, str] = {
    ".pyi": TYPE_STUBS,
    ".pyx": CYTHON,
    ".pxd": CYTHON,
    ".pxi": CYTHON,
    ".c": C_SOURCES,
    ".cpp": C_SOURCES,
    ".h": C_SOURCES,
    ".hpp": C_SOURCES,
    ".a": STATIC_LIBRARIES,
}

# Top-level packages that read their own C/C++ sources, headers or Cython declarations at run time
# (compiling code on the fly, or shipping them as their product): their files stay.
SOURCE_READERS = frozenset(
    {
        "cffi",
        "Cython",
        "pyximport",
        "pybind11",
        "nanobind",
        "cupy",
        "cupy_backends",
        "numba",
        "llvmlite",
        "pytensor",
        "theano",
        "torch",
        "triton",
        "jax",
        "jaxlib",
        "tensorflow",
        "mypy",
        "jedi",
        "typeshed_client",
    }
)

_MAIN_GUARD_RE = re.compile(r"""^if\s+__name__\s*==\s*["']__main__["']""", re.M)
_FROM_IMPORT_RE = re.compile(r"^[ \t]*from[ \t]+(\.*)([\w.]*)[ \t]+import[ \t]+(?:\(([^)]*)\)|([^\n]*))", re.M)
_IMPORT_RE = re.compile(r"^[ \t]*import[ \t]+([\w. \t,]+)", re.M)


@dataclass
class CategoryReport:
    """Files and bytes removed in one category."""

    files: int = 0
    bytes: int = 0


@dataclass
class PruneReport:
    """What pruning removed: removed folders, totals and a breakdown by category."""

    folders: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    categories: dict[str, CategoryReport] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)

    def count(self, category: str, files: int, size: int) -> None:
        entry = self.categories.setdefault(category, CategoryReport())
        entry.files += files
        entry.bytes += size
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


def _counts_as_runtime_code(name: str, text: str) -> bool:
    """Whether a module's imports matter at run time: pytest files and scripts run by hand do not."""
    if name == "conftest.py" or name.startswith("test_"):
        return False
    return _MAIN_GUARD_RE.search(text) is None


def imported_names(text: str, package: tuple[str, ...]) -> set[str]:
    """Dotted names a module's import statements refer to (relative imports resolved against ``package``)."""
    names: set[str] = set()
    for match in _IMPORT_RE.finditer(text):
        for part in match.group(1).split(","):
            words = part.split()
            if words:
                names.add(words[0])
    for match in _FROM_IMPORT_RE.finditer(text):
        dots, module, grouped, inline = match.groups()
        imported = grouped if grouped is not None else inline
        if dots:
            base = package[: len(package) - len(dots) + 1] if len(dots) <= len(package) else ()
            module = ".".join([*base, module] if module else base)
        if not module:
            continue
        names.add(module)
        for item in imported.replace("\\", " ").split("#")[0].split(","):
            words = item.split()
            if words:
                names.add(f"{module}.{words[0]}")
    return names


def _referenced_test_folders(site: Path, candidates: list[Path]) -> set[Path]:
    """Test folders that a module outside them imports: removing those would break the package.

    Only import statements count (``import pkg.tests``, ``from pkg.tests import``, ``from pkg import
    tests`` and relative forms), in modules that are not pytest files (``conftest.py``,
    ``test_*.py``) nor scripts (a ``__main__`` guard).
    """
    by_top: dict[str, dict[Path, str]] = {}
    for folder in candidates:
        by_top.setdefault(folder.relative_to(site).parts[0], {})[folder] = ".".join(folder.relative_to(site).parts)
    referenced: set[Path] = set()
    for top, dotted in by_top.items():
        words = {folder.name for folder in dotted}
        imported: set[str] = set()
        for root, dirs, files in os.walk(site / top):
            here = Path(root)
            dirs[:] = [d for d in dirs if here / d not in dotted and d != "__pycache__"]
            package = here.relative_to(site).parts
            for name in files:
                if not name.endswith(".py"):
                    continue
                try:
                    text = (here / name).read_text(encoding="utf-8", errors="replace")
                except OSError:
                    continue
                if not any(word in text for word in words) or not _counts_as_runtime_code(name, text):
                    continue
                imported |= imported_names(text, package)
        for folder, name in dotted.items():
            prefix = name + "."
            if name in imported or any(item.startswith(prefix) for item in imported):
                referenced.add(folder)
    return referenced


def prune(site: Path) -> PruneReport:
    """Remove package test folders, wheel caches and files no runtime reads; returns what went."""
    report = PruneReport()
    test_folders: list[Path] = []
    caches: list[Path] = []
    doomed_files: list[tuple[Path, str]] = []
    for root, dirs, files in os.walk(site):
        here = Path(root)
        rel_parts = here.relative_to(site).parts
        skipped: set[str] = set()
        for name in sorted(dirs):
            if _protected((*rel_parts, name)):
                skipped.add(name)
                continue
            if name == "__pycache__":
                caches.append(here / name)
                skipped.add(name)
            elif name in TEST_FOLDER_NAMES and len(rel_parts) >= 1:
                test_folders.append(here / name)
                skipped.add(name)
        dirs[:] = [d for d in dirs if d not in skipped]
        if not rel_parts or rel_parts[0] in SOURCE_READERS:
            continue
        for name in files:
            category = SUFFIX_CATEGORIES.get(os.path.splitext(name)[1])
            if category is not None:
                doomed_files.append((here / name, category))

    referenced = _referenced_test_folders(site, test_folders)
    report.kept = sorted(f"{f.relative_to(site).as_posix()} (imported by its package)" for f in referenced)
    folders = [(f, TESTS) for f in test_folders if f not in referenced] + [(f, PYCACHE) for f in caches]
    for folder, category in sorted(folders):
        file_count, size = _measure(folder)
        report.count(category, file_count, size)
        report.folders.append(folder.relative_to(site).as_posix())
        shutil.rmtree(folder)
    for path, category in sorted(doomed_files):
        if path.is_symlink() or not path.is_file():
            continue
        report.count(category, 1, path.stat().st_size)
        path.unlink()
    _remove_empty_folders(site, {p.parent for p, _ in doomed_files})
    report.folders.sort()
    for category in CATEGORIES:
        report.categories.setdefault(category, CategoryReport())
    return report


def _remove_empty_folders(site: Path, folders: set[Path]) -> None:
    """Remove folders emptied by pruning (and their emptied parents), never a top-level one."""
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        current = folder
        while current != site and len(current.relative_to(site).parts) > 1 and current.is_dir():
            if any(current.iterdir()):
                break
            current.rmdir()
            current = current.parent


@dataclass
class RemovedDistribution:
    """A distribution removed because the runtime ships it."""

    name: str
    version: str
    runtime_version: str | None
    files: int
    bytes: int


def remove_distributions(site: Path, dists: list, names: dict[str, str]) -> list[RemovedDistribution]:
    """Remove every file of the distributions named in ``names`` (name -> the runtime's version).

    Files are taken from each distribution's RECORD; only files inside ``site`` are removed, then
    folders left empty.
    """
    removed: list[RemovedDistribution] = []
    site_resolved = site.resolve()
    for dist in dists:
        if dist.name not in names:
            continue
        files = 0
        size = 0
        parents: set[Path] = set()
        for rel in dist.files:
            path = (site / PurePosixPath(rel)).resolve()
            if not path.is_relative_to(site_resolved) or not path.is_file():
                continue
            files += 1
            size += path.stat().st_size
            path.unlink()
            parents.add(path.parent)
        dist_info = site / dist.dist_info
        if dist_info.is_dir():
            more_files, more_bytes = _measure(dist_info)
            files += more_files
            size += more_bytes
            shutil.rmtree(dist_info)
        for folder in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            current = folder
            while current != site_resolved and current.is_relative_to(site_resolved) and current.is_dir():
                leftovers = [p for p in current.iterdir() if p.name != "__pycache__"]
                if leftovers:
                    break
                shutil.rmtree(current)
                current = current.parent
        removed.append(RemovedDistribution(dist.name, dist.version, names[dist.name], files, size))
    return removed
