"""Import smoke test: every top-level module of the layer, from a read-only copy of its tree.

The copy is the tree the zip is written from, hard-linked file by file into fresh folders that are
then made read-only, so the test can run while the zip is being written. A file an import creates
lands in the copy's folders, never in the layer. The one write a hard link cannot keep out, an
import rewriting one of its own files in place (which Lambda's read-only ``/opt`` refuses), is
detected and fails the test. The zip is a deterministic function of that tree, with every entry
readable, and unchecked-hash bytecode does not depend on the timestamps the zip keeps.

The test runs in a fresh target interpreter started with ``-I -S -B`` (isolated, no site, no
bytecode written), with only the layer's folder on ``sys.path``, like a function importing from
Lambda's read-only ``/opt``. It wraps ``SourceFileLoader.source_to_code`` to count the modules that
had to be compiled from source: on Lambda each of them is a compile on every cold start.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from layershift_core.errors import ImportSmokeTestFailed

SMOKE_TIMEOUT_SECONDS = 600

# Modules the Lambda Python runtime provides outside any layer.
RUNTIME_PROVIDED = frozenset(
    {"boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six", "awslambdaric"}
)

_CHILD = r"""
import importlib, importlib.machinery, json, sys, time, traceback
site, result_path, modules = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path.insert(0, site)
recompiled = []
_original = importlib.machinery.SourceFileLoader.source_to_code
def _counting(self, data, path, *args, **kwargs):
    recompiled.append(str(path))
    return _original(self, data, path, *args, **kwargs)
importlib.machinery.SourceFileLoader.source_to_code = _counting
failures = []
started = time.perf_counter()
for name in modules:
    try:
        importlib.import_module(name)
    except BaseException as exc:
        missing = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
        failures.append({"module": name, "error": type(exc).__name__, "message": str(exc)[:500],
                         "missing": missing})
elapsed = time.perf_counter() - started
with open(result_path, "w", encoding="utf-8") as fh:
    json.dump({"failures": failures, "recompiled": recompiled, "seconds": elapsed}, fh)
"""


@dataclass
class SmokeReport:
    """Outcome of the import smoke test."""

    ran: bool
    modules: list[str] = field(default_factory=list)
    recompiled: list[str] = field(default_factory=list)
    import_seconds: float | None = None
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    failed_modules: list[str] = field(default_factory=list)

    def error(self) -> ImportSmokeTestFailed:
        """The exception that reports this test's failures."""
        return ImportSmokeTestFailed("top-level modules of the layer do not import:\n" + "\n".join(self.failures))


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, destination)


def _set_folders_writable(root: Path, writable: bool) -> None:
    folders = [root, *(Path(current, name) for current, dirs, _ in os.walk(root) for name in dirs)]
    for folder in folders:
        mode = folder.stat().st_mode
        folder.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _file_states(root: Path) -> dict[str, tuple[int, int, int]]:
    states: dict[str, tuple[int, int, int]] = {}
    for current, _dirs, files in os.walk(root):
        for name in files:
            path = Path(current, name)
            st = path.lstat()
            states[path.relative_to(root).as_posix()] = (st.st_mtime_ns, st.st_size, st.st_mode)
    return states


def read_only_copy(layer_root: Path, destination: Path) -> None:
    """``layer_root`` hard-linked into ``destination``, whose folders are then made read-only."""
    shutil.copytree(layer_root, destination, symlinks=True, copy_function=_link_or_copy)
    _set_folders_writable(destination, False)


def run_smoke_test(
    layer_root: Path, site_prefix: str, modules: list[str], interpreter: str | None, *, raise_on_failure: bool = True
) -> SmokeReport:
    """Import every module from a read-only copy of ``layer_root`` (the tree the layer zip holds).

    Raises ImportSmokeTestFailed when a module does not import, unless ``raise_on_failure`` is
    False: then the failures are in the returned report.
    """
    if interpreter is None:
        return SmokeReport(
            ran=False,
            modules=modules,
            notes=["import smoke test skipped: no interpreter of the target Python version was found"],
        )
    if not modules:
        return SmokeReport(ran=True, modules=[], notes=["no top-level modules to import"])
    with tempfile.TemporaryDirectory(prefix="layershift-smoke-") as tmp:
        root = Path(tmp) / "opt"
        read_only_copy(layer_root, root)
        before = _file_states(root)
        try:
            result = _import_all(root / site_prefix, Path(tmp), modules, interpreter)
        finally:
            _set_folders_writable(root, True)
        after = _file_states(layer_root)
    rewritten = sorted(path for path, state in before.items() if after.get(path, state) != state)
    if rewritten and not isinstance(result, str):
        result["failures"].append(
            {
                "module": "(import)",
                "error": "OSError",
                "message": "importing the layer rewrote its own files, which Lambda's read-only /opt refuses: "
                + ", ".join(rewritten[:10]),
            }
        )
    if isinstance(result, str):
        if raise_on_failure:
            raise ImportSmokeTestFailed(result)
        return SmokeReport(ran=True, modules=modules, failures=[result], failed_modules=list(modules))
    return _report(result, str(root) + "/", modules, raise_on_failure)


def _import_all(site: Path, tmp: Path, modules: list[str], interpreter: str) -> dict | str:
    """The child's result, or the message saying how it crashed."""
    result_path = tmp / "result.json"
    cmd = [interpreter, "-I", "-S", "-B", "-c", _CHILD, str(site), str(result_path), *modules]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_SECONDS, check=False, cwd=tmp)
    except subprocess.TimeoutExpired:
        raise ImportSmokeTestFailed(
            f"importing the layer's modules did not finish within {SMOKE_TIMEOUT_SECONDS} s"
        ) from None
    if not result_path.exists():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-10:])
        return f"the import smoke test crashed (exit {proc.returncode}):\n{tail}"
    return json.loads(result_path.read_text(encoding="utf-8"))


def _report(result: dict, prefix: str, modules: list[str], raise_on_failure: bool) -> SmokeReport:
    recompiled = sorted(p.removeprefix(prefix) for p in result["recompiled"])
    notes: list[str] = []
    failures: list[str] = []
    failed: list[str] = []
    for failure in result["failures"]:
        missing = (failure.get("missing") or "").split(".")[0]
        if failure["error"] == "ModuleNotFoundError" and missing in RUNTIME_PROVIDED:
            notes.append(f"{failure['module']} imports {missing}, which the Lambda runtime provides; not checked here")
            continue
        failures.append(f"{failure['module']}: {failure['error']}: {failure['message']}")
        failed.append(failure["module"])
    report = SmokeReport(
        ran=True,
        modules=modules,
        recompiled=recompiled,
        import_seconds=result["seconds"],
        notes=notes,
        failures=failures,
        failed_modules=failed,
    )
    if failures and raise_on_failure:
        raise report.error()
    return report
