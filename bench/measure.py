"""Measurements of a layer: sizes, the modules it should import, and cold imports in fresh processes.

Nothing here builds anything; :mod:`bench.variants` does. Everything works on a zip or a folder.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

LAMBDA_UNZIPPED_LIMIT = 262_144_000  # 250 MiB, Lambda's limit on a function plus its layers
IMPORT_TIMEOUT_SECONDS = 600

# Run by the target interpreter with -B -I -S. Reads its job from a JSON file, imports every module,
# counts the modules compiled from source, and writes the result back as JSON.
CHILD_SCRIPT = r"""
import importlib, importlib.machinery, json, sys, time
job = json.load(open(sys.argv[1], encoding="utf-8"))
sys.path[0:0] = job["front"]
sys.path.extend(job["back"])
recompiled = []
_original = importlib.machinery.SourceFileLoader.source_to_code
def _counting(self, data, path, *args, **kwargs):
    recompiled.append(str(path))
    return _original(self, data, path, *args, **kwargs)
importlib.machinery.SourceFileLoader.source_to_code = _counting
failures = []
started = time.perf_counter()
for name in job["modules"]:
    try:
        importlib.import_module(name)
    except BaseException as exc:
        failures.append({"module": name, "error": type(exc).__name__, "message": str(exc)[:300],
                         "missing": getattr(exc, "name", None) if isinstance(exc, ImportError) else None})
seconds = time.perf_counter() - started
from_back = []
for name in job["modules"]:
    path = getattr(sys.modules.get(name), "__file__", None) or ""
    if any(path.startswith(prefix + "/") for prefix in job["back"]):
        from_back.append(name)
with open(job["out"], "w", encoding="utf-8") as fh:
    json.dump({"seconds": seconds, "recompiled": recompiled, "failures": failures, "from_back": from_back}, fh)
"""


@dataclass
class ImportRun:
    """One fresh process importing every module."""

    seconds: float
    recompiled: list[str]
    failures: list[dict]
    from_back: list[str] = field(default_factory=list)


@dataclass
class ImportResult:
    """Cold imports of a layer: the median time over runs, recompiles and failures of the first run."""

    runs: int
    median_seconds: float
    all_seconds: list[float]
    recompiled: int
    recompiled_examples: list[str]
    failures: list[dict]
    from_runtime: list[str]

    @property
    def failed_modules(self) -> list[str]:
        return [f["module"] for f in self.failures]

    def to_json(self) -> dict:
        data = asdict(self)
        data["failed_modules"] = self.failed_modules
        return data


def zip_unzipped_bytes(zip_path: Path) -> int:
    """Sum of the uncompressed sizes of the zip's entries: what Lambda counts against 250 MB."""
    with zipfile.ZipFile(zip_path) as zf:
        return sum(info.file_size for info in zf.infolist())


def tree_bytes(root: Path) -> int:
    """Sum of the sizes of the regular files under ``root`` (symlinks not followed)."""
    total = 0
    for current, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(current, name)
            if not os.path.islink(path):
                total += os.path.getsize(path)
    return total


def plain_zip(root: Path, zip_path: Path) -> None:
    """Zip ``root``'s contents the way ``cd root && zip -r`` does: folders too, real modification times.

    The zip keeps each file's local time at zip's 2-second resolution (no extended-time fields), so
    a file written at an odd second comes back one second earlier after extraction.
    """
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for current, dirs, files in os.walk(root):
            here = Path(current)
            for name in dirs:
                zf.write(here / name, (here / name).relative_to(root).as_posix())
            for name in files:
                zf.write(here / name, (here / name).relative_to(root).as_posix())


def extract_keeping_times(zip_path: Path, dest: Path) -> None:
    """Extract like ``unzip``: each file gets the zip entry's (local) time and its stored permissions."""
    dest.mkdir(parents=True, exist_ok=True)
    dirs: list[tuple[Path, float]] = []
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            target = Path(zf.extract(info, dest))
            stamp = time.mktime((*info.date_time, 0, 0, -1))
            mode = (info.external_attr >> 16) & 0o7777
            if info.is_dir():
                dirs.append((target, stamp))
                continue
            if mode:
                os.chmod(target, mode)
            os.utime(target, (stamp, stamp))
    for target, stamp in reversed(dirs):
        os.utime(target, (stamp, stamp))


def layer_paths(root: Path, python_version: str) -> list[Path]:
    """The folders Lambda puts on sys.path for a layer extracted at ``root`` (its /opt), in Lambda's order."""
    return [root / "python" / "lib" / f"python{python_version}" / "site-packages", root / "python"]


def _names_from_record(record: Path) -> set[str]:
    names: set[str] = set()
    for line in record.read_text(encoding="utf-8", errors="replace").splitlines():
        path = line.split(",", 1)[0].strip()
        if not path:
            continue
        parts = path.split("/")
        first = parts[0]
        if first in ("..", "__pycache__", "bin") or first.endswith((".dist-info", ".data", ".libs", ".pth")):
            continue
        if len(parts) > 1:
            if path.endswith((".py", ".so", ".pyc")):
                names.add(first)
        elif first.endswith(".py"):
            names.add(first[: -len(".py")])
        elif first.endswith(".so"):
            names.add(first.split(".", 1)[0])
    return names


def top_level_modules(site: Path) -> list[str]:
    """The top-level modules of the distributions installed in ``site``: top_level.txt, else RECORD.

    Only names that exist in ``site`` as a package folder, a ``.py`` file or an extension module are
    kept, so a stale top_level.txt entry does not count as an import failure.
    """
    names: set[str] = set()
    for dist_info in sorted(site.glob("*.dist-info")):
        top_level = dist_info / "top_level.txt"
        record = dist_info / "RECORD"
        if top_level.is_file():
            listed = {line.strip().split("/")[0] for line in top_level.read_text(encoding="utf-8").splitlines()}
            names |= {name for name in listed if name}
        elif record.is_file():
            names |= _names_from_record(record)
    present = set()
    for name in names:
        if not name.isidentifier():
            continue
        exists = (site / name).is_dir() or (site / f"{name}.py").is_file()
        if exists or any(site.glob(f"{name}.*.so")) or (site / f"{name}.so").is_file():
            present.add(name)
    return sorted(present)


def can_mount_at(mount_point: Path) -> bool:
    """Whether a private mount namespace can bind a folder over ``mount_point`` (root with ``unshare``)."""
    if shutil.which("unshare") is None or not mount_point.is_dir():
        return False
    with tempfile.TemporaryDirectory(prefix="bench-mount-") as tmp:
        (Path(tmp) / "probe").write_text("ok")
        try:
            proc = subprocess.run(
                [*mount_prefix(Path(tmp), mount_point), "cat", str(mount_point / "probe")],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
    return proc.returncode == 0 and proc.stdout == "ok"


def mount_prefix(source: Path, mount_point: Path) -> list[str]:
    """A command prefix that runs the rest with ``source`` bound over ``mount_point``, in a private namespace."""
    script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(source), str(mount_point)]


def import_once(
    interpreter: str,
    front: list[Path],
    modules: list[str],
    back: list[Path] | None = None,
    timeout: float = IMPORT_TIMEOUT_SECONDS,
    mount: tuple[Path, Path] | None = None,
) -> ImportRun:
    """One fresh ``interpreter -B -I -S`` process importing ``modules`` with ``front`` ahead of the stdlib.

    ``mount`` = (folder, mount point) runs the process with the folder bound over the mount point,
    so a layer extracted anywhere is seen at ``/opt`` as on Lambda (``front`` then names paths under
    the mount point). Bytecode records the path it was compiled for; when that differs from where
    the module is loaded, the interpreter rewrites every code object's file name, which costs time.
    """
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        job = Path(tmp) / "job.json"
        out = Path(tmp) / "out.json"
        job.write_text(
            json.dumps(
                {
                    "front": [str(p) for p in front],
                    "back": [str(p) for p in back or []],
                    "modules": modules,
                    "out": str(out),
                }
            ),
            encoding="utf-8",
        )
        prefix = mount_prefix(*mount) if mount else []
        proc = subprocess.run(
            [*prefix, interpreter, "-B", "-I", "-S", "-c", CHILD_SCRIPT, str(job)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=tmp,
        )
        if not out.exists():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
            raise RuntimeError(f"the import process crashed (exit {proc.returncode}):\n{tail}")
        data = json.loads(out.read_text(encoding="utf-8"))
    return ImportRun(
        seconds=data["seconds"], recompiled=data["recompiled"], failures=data["failures"], from_back=data["from_back"]
    )


def measure_imports(
    interpreter: str,
    front: list[Path],
    modules: list[str],
    runs: int,
    back: list[Path] | None = None,
    mount: tuple[Path, Path] | None = None,
) -> ImportResult:
    """``runs`` fresh processes; the median time, and the first run's recompiles and failures."""
    results = [import_once(interpreter, front, modules, back, mount=mount) for _ in range(max(1, runs))]
    return summarise_imports(results, front)


def summarise_imports(results: list[ImportRun], front: list[Path]) -> ImportResult:
    """The median time over ``results``, and the first run's recompiles and failures."""
    first = results[0]
    prefixes = sorted({str(p) + "/" for p in front}, key=len, reverse=True)

    def short(path: str) -> str:
        for prefix in prefixes:
            if path.startswith(prefix):
                return path[len(prefix) :]
        return path

    return ImportResult(
        runs=len(results),
        median_seconds=statistics.median(r.seconds for r in results),
        all_seconds=[round(r.seconds, 4) for r in results],
        recompiled=max(len(r.recompiled) for r in results),
        recompiled_examples=[short(p) for p in first.recompiled[:5]],
        failures=first.failures,
        from_runtime=first.from_back,
    )
