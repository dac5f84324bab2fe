"""What was installed: distributions, their wheel tags, top-level modules and file ownership.

A distribution's top-level modules are what a consumer imports after ``pip install``: the importable
names the wheel installed at the top of the site folder, read from its RECORD (PEP 376/627: the
list of files the installer actually wrote). ``top_level.txt`` is a setuptools-only, non-standard
hint that goes stale: it names modules the wheel does not install at the top (PyNaCl lists
``_sodium``, which is ``nacl/_sodium``; xxhash lists ``_xxhash``), folders that are no modules
(ujson's ``ujson-stubs``), and hatchling, maturin, flit and poetry wheels have none. It is read only
for a distribution without a RECORD. Every name must exist in the site folder as a package, a
``.py`` file or an extension module.

Left out, and listed in ``InstalledDistribution.not_imported``: names no consumer imports, which
some wheels ship by mistake (a top-level ``tests`` or ``docs`` package, ``setup.py``,
``conftest.py``), and mypyc's shared helper modules (``<hash>__mypyc``), which the compiled modules
load themselves.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath

from packaging.utils import canonicalize_name

_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MYPYC_HELPER_RE = re.compile(r"^[0-9a-f]{20}__mypyc$")
# Top-level names a wheel may ship that are no part of its importable API.
NOT_IMPORTED = frozenset({"tests", "test", "conftest", "setup", "docs", "doc", "examples", "example", "benchmarks"})
_EXTENSION_RE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(\.[A-Za-z0-9_-]+)?\.(so|pyd)$")


@dataclass
class InstalledDistribution:
    """One installed wheel, read from its ``.dist-info``."""

    name: str
    version: str
    dist_info: str
    pure: bool
    tags: list[str]
    top_level: list[str]
    files: list[str] = field(default_factory=list)
    # Requires-Dist lines (with their markers) and Provides-Extra names, from METADATA
    requires: list[str] = field(default_factory=list)
    extras: list[str] = field(default_factory=list)
    # top-level names the wheel installs that are not imported (see the module docstring)
    not_imported: list[str] = field(default_factory=list)

    @property
    def is_pure_python(self) -> bool:
        """``Root-Is-Purelib: true`` and every tag is ``pyX-none-any``."""
        return self.pure and all(tag.split("-")[0].startswith("py") and tag.endswith("-none-any") for tag in self.tags)


def _top_level_from_files(files: list[str]) -> list[str]:
    names: set[str] = set()
    for rel in files:
        parts = PurePosixPath(rel).parts
        if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith((".dist-info", ".data")):
            continue
        if len(parts) > 1:
            if _MODULE_RE.match(parts[0]):
                names.add(parts[0])
            continue
        filename = parts[0]
        if filename.endswith(".py") and _MODULE_RE.match(filename[:-3]):
            names.add(filename[:-3])
            continue
        match = _EXTENSION_RE.match(filename)
        if match:
            names.add(match.group("name"))
    return sorted(names)


def _top_level_from_text(text: str | None) -> list[str]:
    """Module names of a ``top_level.txt`` (``pkg/sub`` lines count as ``pkg``)."""
    lines = [line.strip().replace("/", ".") for line in (text or "").splitlines() if line.strip()]
    return sorted({line.split(".")[0] for line in lines if _MODULE_RE.match(line.split(".")[0])})


def _module_exists(site: Path, module: str) -> bool:
    if (site / module).is_dir() or (site / f"{module}.py").is_file():
        return True
    return any(_EXTENSION_RE.match(p.name) for p in site.glob(f"{module}.*"))


def scan(site: Path) -> list[InstalledDistribution]:
    """Every distribution installed in ``site``, sorted by name."""
    found: list[InstalledDistribution] = []
    for dist_info in sorted(site.glob("*.dist-info")):
        dist = importlib.metadata.PathDistribution(dist_info)
        metadata = dist.metadata
        wheel = HeaderParser().parsestr(dist.read_text("WHEEL") or "")
        files = [str(PurePosixPath(str(f))) for f in dist.files or []]
        names = _top_level_from_files(files) if files else _top_level_from_text(dist.read_text("top_level.txt"))
        names = sorted({m for m in names if _module_exists(site, m)})
        not_imported = [m for m in names if m in NOT_IMPORTED or _MYPYC_HELPER_RE.match(m)]
        top_level = [m for m in names if m not in not_imported]
        found.append(
            InstalledDistribution(
                name=canonicalize_name(metadata["Name"]),
                version=metadata["Version"],
                dist_info=dist_info.name,
                pure=(wheel.get("Root-Is-Purelib", "").strip().lower() == "true"),
                tags=sorted(wheel.get_all("Tag") or []),
                top_level=top_level,
                files=files,
                requires=list(dist.requires or []),
                extras=sorted(set(metadata.get_all("Provides-Extra") or [])),
                not_imported=not_imported,
            )
        )
    return sorted(found, key=lambda d: d.name)


def owners(dists: list[InstalledDistribution]) -> dict[str, str]:
    """Map of recorded files and their folders (posix, relative to the site folder) to distributions."""
    owned: dict[str, str] = {}
    for dist in dists:
        owned.setdefault(dist.dist_info, dist.name)
        for rel in dist.files:
            owned[rel] = dist.name
            for parent in PurePosixPath(rel).parents:
                if str(parent) != ".":
                    owned.setdefault(str(parent), dist.name)
    return owned


def owner_of(rel: str, owned: dict[str, str]) -> str | None:
    """The distribution owning a file: recorded, compiled from a recorded source, or in an owned folder."""
    if rel in owned:
        return owned[rel]
    path = PurePosixPath(rel)
    if path.parent.name == "__pycache__" and path.suffix == ".pyc":
        source = str(path.parent.parent / (path.name.split(".")[0] + ".py"))
        if source in owned:
            return owned[source]
    elif path.suffix == ".pyc":
        # sourceless layout: mod.pyc in place of mod.py
        source = str(path.with_suffix(".py"))
        if source in owned:
            return owned[source]
    for parent in path.parents:
        if str(parent) != "." and str(parent) in owned:
            return owned[str(parent)]
    return None
