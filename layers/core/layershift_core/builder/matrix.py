"""How a build matrix's targets share layer zips: the grouping rules, variant ids and compatibility.

- Targets whose resolutions are identical (same names and versions) and all pure Python (every
  wheel ``py*-none-any``) share ONE variant in the ``python/`` layout, with bytecode for each of
  their Python minors side by side in ``__pycache__`` (``mod.cpython-312.pyc``,
  ``mod.cpython-313.pyc``). The sourceless profile compiles ``mod.pyc`` in place, which only one
  minor can own, so there each minor is a variant of its own.
- Native targets get a layer version per architecture. On one architecture the targets' minors
  share one zip, one ``python/lib/python3.X/site-packages`` each, when the whole zip fits Lambda's
  unzipped budget; otherwise each (runtime, architecture) is a variant of its own.
"""

from __future__ import annotations

from collections.abc import Iterable

from layershift_core.builder.install import Resolution
from layershift_core.builder.platforms import ARCHITECTURES, RUNTIMES, Target, target_for
from layershift_core.errors import InvalidLayerSpec

ANY_ARCHITECTURE = "any"


def parse_targets(text: str) -> list[tuple[str, str]]:
    """``"python3.12/x86_64,python3.13/arm64"`` -> ``[("python3.12", "x86_64"), ("python3.13", "arm64")]``."""
    targets: list[tuple[str, str]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        runtime, sep, architecture = item.partition("/")
        if not sep or not runtime.strip() or not architecture.strip():
            raise InvalidLayerSpec(f"target {item!r} is not runtime/architecture, e.g. python3.13/arm64")
        targets.append((runtime.strip(), architecture.strip()))
    if not targets:
        raise InvalidLayerSpec("no build target given; list them as runtime/architecture, e.g. python3.13/x86_64")
    return targets


def _runtime_order(runtime: str) -> tuple[int, int]:
    major, minor, _glibc = RUNTIMES[runtime]
    return major, minor


def sort_targets(targets: Iterable[Target]) -> list[Target]:
    """Targets in a stable order (runtime, then architecture), without duplicates."""
    unique = {(t.runtime, t.architecture): t for t in targets}
    return [unique[k] for k in sorted(unique, key=lambda k: (_runtime_order(k[0]), k[1]))]


def targets_for(pairs: list[tuple[str, str]]) -> list[Target]:
    """The build targets of (runtime, architecture) pairs, checked, sorted and without duplicates."""
    if not pairs:
        raise InvalidLayerSpec("a build matrix needs at least one (runtime, architecture) target")
    return sort_targets(target_for(runtime, architecture) for runtime, architecture in pairs)


def pure_groups(resolutions: list[Resolution], sourceless: bool) -> tuple[list[list[Target]], list[Target]]:
    """(groups of targets that share one pure-Python variant, the targets left to build natively)."""
    groups: dict[tuple, list[Target]] = {}
    native: list[Target] = []
    for resolution in resolutions:
        if not resolution.pure:
            native.append(resolution.target)
            continue
        key: tuple = resolution.signature()
        if sourceless:
            key = (*key, ("python", resolution.target.python_version))
        groups.setdefault(key, []).append(resolution.target)
    return [sort_targets(group) for group in groups.values()], sort_targets(native)


def by_architecture(targets: list[Target]) -> dict[str, list[Target]]:
    """Native targets per architecture, in a stable order."""
    found: dict[str, list[Target]] = {}
    for target in sort_targets(targets):
        found.setdefault(target.architecture, []).append(target)
    return dict(sorted(found.items()))


def pure_architectures(group: list[Target], matrix: list[Target]) -> list[str]:
    """The architectures a pure-Python variant of ``group`` can declare.

    Every architecture, except one on which the matrix builds one of the group's runtimes into
    another variant (its resolution differed there, so this layer is not its layer).
    """
    mine = {(t.runtime, t.architecture) for t in group}
    runtimes = {t.runtime for t in group}
    elsewhere = {(t.runtime, t.architecture) for t in matrix} - mine
    return sorted(a for a in ARCHITECTURES if not any((r, a) in elsewhere for r in runtimes))


def variant_id(targets: list[Target], architectures: list[str]) -> str:
    """``python3.13-arm64``, ``python3.12-python3.13-x86_64``, ``python3.12-python3.13-any``."""
    runtimes = sorted({t.runtime for t in targets}, key=_runtime_order)
    arch = ANY_ARCHITECTURE if len(architectures) > 1 else architectures[0]
    return "-".join([*runtimes, arch])


def unique_ids(ids: list[str]) -> list[str]:
    """The ids, a suffix added to repeats (only reachable with unusual marker-dependent resolutions)."""
    seen: dict[str, int] = {}
    result: list[str] = []
    for vid in ids:
        count = seen.get(vid, 0)
        seen[vid] = count + 1
        result.append(vid if count == 0 else f"{vid}-{count + 1}")
    return result
