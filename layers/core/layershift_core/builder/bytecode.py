"""Bytecode for the target runtime, valid whatever the zip does to timestamps.

Sources are compiled by the target CPython itself, in ``unchecked-hash`` mode: the interpreter
loads the ``.pyc`` without comparing it against the source's mtime, so extracting the zip (which
keeps 2-second timestamps, or none) cannot make it stale. Without bytecode, Lambda's read-only
``/opt`` makes every cold start compile every imported module again.

Two layouts:
- with sources (default): ``pkg/__pycache__/mod.cpython-3X.pyc`` beside ``pkg/mod.py``;
- sourceless: ``pkg/mod.pyc`` compiled in place of ``pkg/mod.py`` (a sourceless import needs the
  ``.pyc`` beside, not in ``__pycache__``), and the source removed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from layershift_core.builder import sandbox

COMPILE_TIMEOUT_SECONDS = 1800
INVALIDATION_MODE = "unchecked-hash"
_SKIPPED_FOLDER_SUFFIXES = (".dist-info", ".data", ".libs")


@dataclass
class BytecodeReport:
    """Whether and how bytecode was compiled."""

    compiled: bool
    interpreter: str | None
    invalidation_mode: str | None
    files: int
    warning: str | None = None
    sourceless: bool = False
    sources_removed: int = 0
    sources_kept: list[str] = field(default_factory=list)


def no_interpreter_warning(python_version: str) -> str:
    """The warning recorded when no target interpreter is available."""
    return (
        f"no working python{python_version} interpreter was found on PATH or under ~/.pyenv/versions: "
        "the layer ships no bytecode, so every cold start compiles each imported module again"
    )


# Fixed, not the machine's core count: which sources one compiler process handles, and in which
# order, shapes the marshalled bytes (string interning decides where marshal writes references), so
# the split must be the same on every machine for two builds to give the same zip.
COMPILE_PROCESSES = 4


def _compile(
    paths: list[Path], site: Path, interpreter: str, runtime_path: str, legacy: bool
) -> subprocess.CompletedProcess[str]:
    with sandbox.package_environment() as env:
        # Hash randomisation changes the order of frozenset constants in the marshalled code objects.
        env["PYTHONHASHSEED"] = "0"
        env.pop("SOURCE_DATE_EPOCH", None)
        return _compile_in(paths, site, interpreter, runtime_path, legacy, env)


def _compile_in(
    paths: list[Path], site: Path, interpreter: str, runtime_path: str, legacy: bool, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    sources = sorted({source for path in paths for source in _sources(path)})
    base = [interpreter, "-I", "-m", "compileall", "-q", "--invalidation-mode", INVALIDATION_MODE]
    # Record the Lambda path (``/opt/...``) as the source path: tracebacks point there and builds in
    # different temporary folders give identical bytes.
    base += ["-s", str(site), "-p", runtime_path]
    if legacy:
        base.append("-b")
    size = -(-len(sources) // COMPILE_PROCESSES) or 1
    chunks = [sources[i : i + size] for i in range(0, len(sources), size)]
    with tempfile.TemporaryDirectory(prefix="layershift-compile-") as work:
        running = []
        for index, chunk in enumerate(chunks):
            listing = Path(work, f"sources-{index}.txt")
            listing.write_text("".join(f"{source}\n" for source in chunk))
            running.append(
                subprocess.Popen(
                    [*base, "-i", str(listing)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                )
            )
        outputs = [process.communicate(timeout=COMPILE_TIMEOUT_SECONDS) for process in running]
    returncode = max((process.returncode for process in running), default=0)
    return subprocess.CompletedProcess(
        base, returncode, "".join(out for out, _ in outputs), "".join(err for _, err in outputs)
    )


def _warning(proc: subprocess.CompletedProcess[str]) -> str | None:
    if proc.returncode == 0:
        return None
    # compileall reports files it cannot compile (e.g. Python 2 leftovers, templates named .py)
    # and goes on; such files simply ship without bytecode.
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return f"some sources did not compile and ship without bytecode: {'; '.join(errors[:5])}"


def _sources(root: Path) -> list[Path]:
    found: list[Path] = []
    if root.is_file():
        return [root] if root.suffix == ".py" else []
    for current, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.endswith(_SKIPPED_FOLDER_SUFFIXES) and d != "__pycache__"]
        found += [Path(current, name) for name in files if name.endswith(".py")]
    return found


def compile_site(
    site: Path,
    interpreter: str | None,
    python_version: str,
    runtime_path: str,
    *,
    sourceless: bool = False,
    sources_backup: Path | None = None,
) -> BytecodeReport:
    """Compile every ``.py`` under ``site`` with ``interpreter``.

    ``runtime_path`` is where ``site`` lives on Lambda (e.g. ``/opt/python``). With ``sourceless``,
    each source is compiled in place to ``mod.pyc`` and then moved to ``sources_backup`` (or
    deleted), so :func:`restore_sources` can put it back; sources that did not compile stay.
    """
    if interpreter is None:
        return BytecodeReport(False, None, None, 0, no_interpreter_warning(python_version))
    proc = _compile([site], site, interpreter, runtime_path, legacy=sourceless)
    warning = _warning(proc)
    if not sourceless:
        files = count_bytecode(site)
        return BytecodeReport(True, interpreter, INVALIDATION_MODE, files, warning)
    removed = 0
    files = 0
    for source in _sources(site):
        compiled = source.with_suffix(".pyc")
        if not compiled.is_file():
            continue
        files += 1
        removed += 1
        if sources_backup is None:
            source.unlink()
            continue
        kept = sources_backup / source.relative_to(site)
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, kept)
    return BytecodeReport(
        True, interpreter, INVALIDATION_MODE, files, warning, sourceless=True, sources_removed=removed
    )


def restore_sources(
    site: Path, sources_backup: Path, top_level: list[str], interpreter: str, runtime_path: str, report: BytecodeReport
) -> list[str]:
    """Put the sources of ``top_level`` modules back, with ``__pycache__`` bytecode instead of in-place pyc.

    Used when a module does not import without its sources. Returns the restored top-level names.
    """
    restored: list[str] = []
    targets: list[Path] = []
    for name in top_level:
        for candidate in (sources_backup / name, sources_backup / f"{name}.py"):
            if not candidate.exists():
                continue
            for kept in _sources(candidate):
                destination = site / kept.relative_to(sources_backup)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(kept, destination)
                legacy = destination.with_suffix(".pyc")
                if legacy.is_file():
                    legacy.unlink()
                report.sources_removed -= 1
            targets.append(site / candidate.relative_to(sources_backup))
            if name not in restored:
                restored.append(name)
    if targets:
        _compile(targets, site, interpreter, runtime_path, legacy=False)
        report.files = count_bytecode(site)
        report.sources_kept = sorted({*report.sources_kept, *restored})
    return restored


def count_bytecode(site: Path) -> int:
    """Number of ``.pyc`` files under ``site``, in ``__pycache__`` or in place."""
    total = 0
    for _current, dirs, files in os.walk(site):
        dirs[:] = [d for d in dirs if not d.endswith(_SKIPPED_FOLDER_SUFFIXES)]
        total += sum(1 for name in files if name.endswith(".pyc"))
    return total
