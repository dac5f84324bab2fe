"""Import smoke test: every top-level module of the layer, from the extracted zip.

The test runs in a fresh target interpreter started with ``-I -S -B`` (isolated, no site, no
bytecode written), with only the layer's folder on ``sys.path``, like a function importing from
Lambda's read-only ``/opt``. It wraps ``SourceFileLoader.source_to_code`` to count the modules that
had to be compiled from source: on Lambda each of them is a compile on every cold start.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import zipfile
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


def run_smoke_test(
    zip_path: Path, site_prefix: str, modules: list[str], interpreter: str | None, *, raise_on_failure: bool = True
) -> SmokeReport:
    """Import every module from a fresh extraction of ``zip_path``.

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
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(root)
        result_path = Path(tmp) / "result.json"
        cmd = [
            interpreter,
            "-I",
            "-S",
            "-B",
            "-c",
            _CHILD,
            str(root / site_prefix),
            str(result_path),
            *modules,
        ]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_SECONDS, check=False, cwd=tmp
            )
        except subprocess.TimeoutExpired:
            raise ImportSmokeTestFailed(
                f"importing the layer's modules did not finish within {SMOKE_TIMEOUT_SECONDS} s"
            ) from None
        if not result_path.exists():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-10:])
            message = f"the import smoke test crashed (exit {proc.returncode}):\n{tail}"
            if raise_on_failure:
                raise ImportSmokeTestFailed(message)
            return SmokeReport(ran=True, modules=modules, failures=[message], failed_modules=list(modules))
        result = json.loads(result_path.read_text(encoding="utf-8"))
        prefix = str(root) + "/"
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
