"""What was installed: distributions, their wheel tags, top-level modules and file ownership."""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath

from packaging.utils import canonicalize_name

_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
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
        top_text = dist.read_text("top_level.txt")
        if top_text is not None:
            candidates = sorted({line.strip().replace("/", ".") for line in top_text.splitlines() if line.strip()})
            top_level = [c.split(".")[0] for c in candidates if _MODULE_RE.match(c.split(".")[0])]
        else:
            top_level = _top_level_from_files(files)
        top_level = sorted({m for m in top_level if _module_exists(site, m)})
        found.append(
            InstalledDistribution(
                name=canonicalize_name(metadata["Name"]),
                version=metadata["Version"],
                dist_info=dist_info.name,
                pure=(wheel.get("Root-Is-Purelib", "").strip().lower() == "true"),
                tags=sorted(wheel.get_all("Tag") or []),
                top_level=top_level,
                files=files,
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
