"""Import smoke test: every top-level module of the layer, from a read-only copy of its tree.

The copy is the tree the zip is written from, hard-linked file by file into fresh folders that are
then made read-only, so the test can run while the zip is being written. A file an import creates
lands in the copy's folders, never in the layer. The one write a hard link cannot keep out, an
import rewriting one of its own files in place (which Lambda's read-only ``/opt`` refuses), is
detected and fails the test. The zip is a deterministic function of that tree, with every entry
readable, and unchecked-hash bytecode does not depend on the timestamps the zip keeps.

The test runs in a fresh target interpreter started with ``-I -S -B`` (isolated, no site, no
bytecode written), with only the layer's folder on ``sys.path``, like a function importing from
Lambda's read-only ``/opt``. Importing runs the packages' own code, so the interpreter gets no AWS
credentials and an empty ``HOME``, and no network where the host allows a network namespace
(:mod:`~layershift_core.builder.sandbox`); what the imports print is kept in the report
(``output``), and the report says whether the network was reachable (``network``). It wraps
``SourceFileLoader.source_to_code`` to count the modules that had to be compiled from source: on
Lambda each of them is a compile on every cold start.

What is imported is what a consumer imports: each distribution's own top-level modules, as
:mod:`~layershift_core.builder.distributions` reads them from RECORD. A failure names the module and
its distribution. One kind of failure is no failure: a module whose ImportError comes only from
modules that are not in the layer and that its own distribution requires only under an
``extra == "..."`` marker (black's ``blackd`` without ``black[d]``'s aiohttp). ``pip install`` + import
of the distribution's main package works the same on Lambda, so the build goes on and the report's
``optional_extras`` says which module needs which extra. It stays a failure when that module is the
distribution's main package, or when none of the distribution's modules imports. A missing required
dependency, a syntax error, a broken shared object or an interpreter crash (reported with the
module it happened in; the other modules are imported again without it) fail the test.
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

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from layershift_core.builder import sandbox
from layershift_core.builder.distributions import InstalledDistribution, scan
from layershift_core.errors import ImportSmokeTestFailed

SMOKE_TIMEOUT_SECONDS = 600
# What the imports print is kept up to this many characters (the end of it).
OUTPUT_LIMIT = 4000

# Modules the Lambda Python runtime provides outside any layer.
RUNTIME_PROVIDED = frozenset(
    {"boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six", "awslambdaric"}
)

_CHILD = r"""
import importlib, importlib.machinery, json, os, re, sys, time
site, result_path, progress_path, modules = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
sys.path.insert(0, site)
recompiled = []
_original = importlib.machinery.SourceFileLoader.source_to_code
def _counting(self, data, path, *args, **kwargs):
    recompiled.append(str(path))
    return _original(self, data, path, *args, **kwargs)
importlib.machinery.SourceFileLoader.source_to_code = _counting
_NO_MODULE = re.compile(r"No module named '([^']+)'")
def _missing(exc):
    # every module found missing along the chain: a package often re-raises ``ImportError(...)
    # from None`` with its own advice, and the ModuleNotFoundError stays in __context__
    names, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ModuleNotFoundError):
            match = _NO_MODULE.search(str(exc))
            name = exc.name or (match.group(1) if match else None)
            if name and name not in names:
                names.append(name)
        exc = exc.__cause__ or exc.__context__
    return names
failures = []
started = time.perf_counter()
progress = open(progress_path, "w", encoding="utf-8")
for name in modules:
    progress.seek(0)
    progress.truncate()
    progress.write(name)
    progress.flush()
    try:
        importlib.import_module(name)
    except BaseException as exc:
        missing = _missing(exc)
        failures.append({"module": name, "error": type(exc).__name__, "message": str(exc)[:500],
                         "missing": missing[0] if missing else None, "missing_all": missing,
                         "import_error": isinstance(exc, ImportError)})
elapsed = time.perf_counter() - started
import platform
version = "%d.%d.%d" % sys.version_info[:3]
environment = {"python_version": "%d.%d" % sys.version_info[:2], "python_full_version": version,
               "implementation_name": sys.implementation.name, "implementation_version": version,
               "platform_machine": platform.machine(), "platform_system": platform.system(),
               "platform_python_implementation": platform.python_implementation(),
               "sys_platform": sys.platform, "os_name": os.name}
with open(result_path, "w", encoding="utf-8") as fh:
    json.dump({"failures": failures, "recompiled": recompiled, "seconds": elapsed, "environment": environment}, fh)
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
    # modules that do not import only because an optional extra of their distribution is not
    # installed: one message each, naming module, distribution, extra and missing package
    optional_extras: list[str] = field(default_factory=list)
    # each module -> the distributions (``"name version"``) that install it, when known
    module_owners: dict[str, list[str]] = field(default_factory=dict)
    # what the imports printed (stdout and stderr, the last OUTPUT_LIMIT characters)
    output: str = ""
    # whether the imports could reach the network, and how they were cut off from it
    network: str = ""

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
    layer_root: Path,
    site_prefix: str,
    modules: list[str],
    interpreter: str | None,
    *,
    raise_on_failure: bool = True,
    distributions: list[InstalledDistribution] | None = None,
    command_prefix: list[str] | None = None,
) -> SmokeReport:
    """Import every module from a read-only copy of ``layer_root`` (the tree the layer zip holds).

    ``distributions`` are the distributions installed in ``layer_root/site_prefix`` (read from its
    ``.dist-info`` folders when not given): they say which distribution each module belongs to and
    which of its requirements are optional extras. ``command_prefix`` runs the target's Python in
    place of ``interpreter`` (for example under qemu-user, see
    :func:`~layershift_core.builder.elf_check.find_target_interpreter`).

    Raises ImportSmokeTestFailed when a module does not import, unless ``raise_on_failure`` is
    False: then the failures are in the returned report. A module that fails only because an
    optional extra of its distribution is not installed is no failure: it is listed in
    ``optional_extras`` (see :func:`_optional_extra`).
    """
    python = list(command_prefix) if command_prefix else ([interpreter] if interpreter else None)
    if python is None:
        return SmokeReport(
            ran=False,
            modules=modules,
            notes=["import smoke test skipped: no interpreter of the target Python version was found"],
        )
    if not modules:
        return SmokeReport(ran=True, modules=[], notes=["no top-level modules to import"])
    site = Path(layer_root) / site_prefix
    dists = distributions if distributions is not None else scan(site)
    with tempfile.TemporaryDirectory(prefix="layershift-smoke-") as tmp:
        root = Path(tmp) / "opt"
        read_only_copy(layer_root, root)
        before = _file_states(root)
        isolation = sandbox.network_isolation()
        python = [*isolation.prefix, *python]
        try:
            result = _import_resilient(root / site_prefix, Path(tmp), modules, python)
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
    owners = _owners(dists, modules)
    if isinstance(result, str):
        if raise_on_failure:
            raise ImportSmokeTestFailed(result)
        return SmokeReport(
            ran=True,
            modules=modules,
            failures=[result],
            failed_modules=list(modules),
            module_owners=owners,
            network=isolation.note,
        )
    report = _report(result, str(root) + "/", modules, site, dists)
    report.module_owners = owners
    report.output = result.get("output", "")[-OUTPUT_LIMIT:]
    report.network = isolation.note
    if report.failures and raise_on_failure:
        raise report.error()
    return report


# A module that crashes the interpreter is reported and the others are imported again without it,
# in a fresh interpreter, so one crash does not hide the rest; at most this many times.
MAX_CRASHES = 5


def _import_resilient(site: Path, tmp: Path, modules: list[str], python: list[str]) -> dict | str:
    """The child's result with each crash as a failure, or the crash message when nothing could be imported."""
    crashes: list[dict] = []
    remaining = list(modules)
    output: list[str] = []
    while True:
        result, crashed_in = _import_all(site, tmp, remaining, python, output)
        if isinstance(result, dict):
            break
        if crashed_in not in remaining or len(crashes) >= MAX_CRASHES:
            if not crashes:
                return result
            # give up on the rest: they count as failed with the crash that stopped them
            crashes.append({"module": ", ".join(remaining), "error": "crash", "message": result})
            result = {"failures": [], "recompiled": [], "seconds": None, "environment": {}}
            break
        crashes.append({"module": crashed_in, "error": "crash", "message": result})
        remaining.remove(crashed_in)
        if not remaining:
            result = {"failures": [], "recompiled": [], "seconds": None, "environment": {}}
            break
    result["failures"] = crashes + result["failures"]
    result["output"] = "".join(output)
    return result


def _import_all(
    site: Path, tmp: Path, modules: list[str], python: list[str], output: list[str]
) -> tuple[dict | str, str | None]:
    """(the child's result, or the message saying how it crashed; the module it crashed in). What the
    child printed is appended to ``output``."""
    result_path = tmp / "result.json"
    progress = tmp / "progress.txt"
    result_path.unlink(missing_ok=True)
    progress.unlink(missing_ok=True)
    cmd = [*python, "-I", "-S", "-B", "-c", _CHILD, str(site), str(result_path), str(progress), *modules]
    try:
        with sandbox.package_environment() as env:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_SECONDS, check=False, cwd=tmp, env=env
            )
    except subprocess.TimeoutExpired:
        raise ImportSmokeTestFailed(
            f"importing the layer's modules did not finish within {SMOKE_TIMEOUT_SECONDS} s"
            + _while_importing(progress)
        ) from None
    output.append((proc.stdout or "") + (proc.stderr or ""))
    if not result_path.exists():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-10:])
        message = f"the import smoke test crashed (exit {proc.returncode}){_while_importing(progress)}:\n{tail}"
        return message, _current_module(progress)
    return json.loads(result_path.read_text(encoding="utf-8")), None


def _current_module(progress: Path) -> str | None:
    try:
        return progress.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _while_importing(progress: Path) -> str:
    module = _current_module(progress)
    return f" while importing {module}" if module else ""


def _owners(dists: list[InstalledDistribution], modules: list[str]) -> dict[str, list[str]]:
    by_module: dict[str, list[str]] = {}
    for dist in dists:
        for module in dist.top_level:
            by_module.setdefault(module, []).append(f"{dist.name} {dist.version}")
    return {m: by_module[m] for m in modules if m in by_module}


# Distributions whose import name is not their project name with "-" for "_" (canonical names).
_IMPORT_NAMES: dict[str, frozenset[str]] = {
    "pyyaml": frozenset({"yaml", "_yaml"}),
    "pillow": frozenset({"PIL"}),
    "attrs": frozenset({"attr", "attrs"}),
    "python-dateutil": frozenset({"dateutil"}),
    "pyjwt": frozenset({"jwt"}),
    "beautifulsoup4": frozenset({"bs4"}),
    "scikit-learn": frozenset({"sklearn"}),
    "opencv-python": frozenset({"cv2"}),
    "opencv-python-headless": frozenset({"cv2"}),
    "pyopenssl": frozenset({"OpenSSL"}),
    "pycryptodome": frozenset({"Crypto"}),
    "pycryptodomex": frozenset({"Cryptodome"}),
    "protobuf": frozenset({"google"}),
    "grpcio": frozenset({"grpc"}),
    "pynacl": frozenset({"nacl"}),
    "rpds-py": frozenset({"rpds"}),
    "psycopg2-binary": frozenset({"psycopg2"}),
    "psycopg-binary": frozenset({"psycopg_binary"}),
    "pyzmq": frozenset({"zmq"}),
    "gitpython": frozenset({"git"}),
    "pymupdf": frozenset({"fitz", "pymupdf"}),
    "mysqlclient": frozenset({"MySQLdb"}),
    "markdown-it-py": frozenset({"markdown_it"}),
    "email-validator": frozenset({"email_validator"}),
    "pysocks": frozenset({"socks", "sockshandler"}),
}
_PREFIXES = ("python-", "py")
_SUFFIXES = ("-python", "-py", "-binary")


def _provides(requirement_name: str, module: str) -> bool:
    """Whether the distribution ``requirement_name`` is the one that installs top-level ``module``."""
    dist, wanted = canonicalize_name(requirement_name), canonicalize_name(module)
    if module in _IMPORT_NAMES.get(dist, ()):
        return True
    candidates: set[str] = {dist}
    candidates |= {dist.removeprefix(p) for p in _PREFIXES if dist.startswith(p)}
    candidates |= {dist.removesuffix(s) for s in _SUFFIXES if dist.endswith(s)}
    return wanted in candidates


@dataclass
class _Extra:
    extras: list[str]
    requirement: str


def _extra_requirements(dist: InstalledDistribution, module: str, environment: dict[str, str]) -> list[_Extra] | None:
    """The requirements of ``dist`` that bring ``module`` only with an extra, or None when none does.

    None too when ``dist`` requires it without any extra: then it is a missing required dependency.
    """
    found: list[_Extra] = []
    for text in dist.requires:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if not _provides(req.name, module):
            continue
        if req.marker is None or req.marker.evaluate({**environment, "extra": ""}):
            return None
        extras = [extra for extra in dist.extras if req.marker.evaluate({**environment, "extra": extra})]
        if extras:
            found.append(_Extra(extras, text))
    return found or None


def _installed(site: Path, dists: list[InstalledDistribution], module: str) -> bool:
    if (site / module).exists() or (site / f"{module}.py").exists() or any(site.glob(f"{module}.*.so")):
        return True
    return any(_provides(d.name, module) for d in dists)


def _optional_extra(
    failure: dict, owners: list[InstalledDistribution], site: Path, dists: list[InstalledDistribution], env: dict
) -> tuple[InstalledDistribution, str, list[_Extra]] | None:
    """(distribution, missing module, extra requirements) when ``failure`` is only an optional extra not installed.

    That is: the import raised an ImportError caused by ModuleNotFoundError(s); every missing module
    is absent from the layer; and a distribution owning the failing module requires each of them only
    under an ``extra == ...`` marker. pip leaves such a requirement out unless the extra is asked for,
    and ``pip install`` + ``import`` of the distribution's main package works without it.
    """
    missing = [name.split(".")[0] for name in failure.get("missing_all") or []]
    if not failure.get("import_error") or not missing:
        return None
    if any(_installed(site, dists, name) for name in missing):
        return None
    for dist in owners:
        extras = [_extra_requirements(dist, name, env) for name in missing]
        if all(extras):
            return dist, missing[0], [e for group in extras if group for e in group]
    return None


def _is_primary(dist: InstalledDistribution, module: str) -> bool:
    """Whether ``module`` is the package a consumer imports first: the one named like the distribution."""
    return canonicalize_name(module) == dist.name or module in _IMPORT_NAMES.get(dist.name, ())


def _label(dists: list[InstalledDistribution]) -> str:
    return ", ".join(f"{d.name} {d.version}" for d in dists)


def _report(
    result: dict, prefix: str, modules: list[str], site: Path, dists: list[InstalledDistribution]
) -> SmokeReport:
    recompiled = sorted(p.removeprefix(prefix) for p in result["recompiled"])
    env = result.get("environment") or {}
    owners: dict[str, list[InstalledDistribution]] = {}
    for dist in dists:
        for module in dist.top_level:
            owners.setdefault(module, []).append(dist)
    failed_names = {f["module"] for f in result["failures"]}
    notes: list[str] = []
    optional: list[str] = []
    failures: list[str] = []
    failed: list[str] = []
    for failure in result["failures"]:
        module = failure["module"]
        if failure["error"] == "crash":
            mine = owners.get(module, [])
            message = failure["message"]
            if mine:
                message = message.replace(f"while importing {module}", f"while importing {module} ({_label(mine)})", 1)
            failures.append(message)
            failed += module.split(", ")
            continue
        missing = (failure.get("missing") or "").split(".")[0]
        if failure["error"] in ("ModuleNotFoundError", "ImportError") and missing in RUNTIME_PROVIDED:
            notes.append(f"{module} imports {missing}, which the Lambda runtime provides; not checked here")
            continue
        mine = owners.get(module, [])
        why = _optional_extra(failure, mine, site, dists, env)
        if why is not None:
            dist, name, extras = why
            others_import = any(m in modules and m not in failed_names for m in dist.top_level)
            wording = "; ".join(
                f"{dist.name} requires it only with the extra{'s' if len(e.extras) > 1 else ''} "
                + ", ".join(repr(x) for x in e.extras)
                + f" ({e.requirement})"
                for e in extras
            )
            if not _is_primary(dist, module) and others_import:
                optional.append(
                    f"{module} ({dist.name} {dist.version}) needs {name}, which is not installed: {wording}. "
                    f"Install {dist.name}[{extras[0].extras[0]}] to use {module}"
                )
                continue
            reason = (
                f"its main package {module}"
                if _is_primary(dist, module)
                else f"none of its top-level modules imports, and {module}"
            )
            failures.append(
                f"{module}: {failure['error']}: {failure['message']} (from {dist.name} {dist.version}: {reason} "
                f"needs {name}, which is not installed: {wording})"
            )
            failed.append(module)
            continue
        where = f" (from {_label(mine)})" if mine else ""
        failures.append(f"{module}: {failure['error']}: {failure['message']}{where}")
        failed.append(module)
    return SmokeReport(
        ran=True,
        modules=modules,
        recompiled=recompiled,
        import_seconds=result["seconds"],
        notes=notes,
        failures=failures,
        failed_modules=failed,
        optional_extras=optional,
    )
