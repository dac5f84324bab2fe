"""Wheel-only cross install with pip, and translation of pip's failures into clear errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)

from layershift_core.builder import sandbox
from layershift_core.builder.platforms import Target, find_interpreter, has_pip
from layershift_core.errors import BuildFailed, SdistOnlyPackage
from layershift_core.requirements import RequirementSet

PIP_TIMEOUT_SECONDS = 1800
_MAX_ERROR_LINES = 40
_NO_MATCH_RE = re.compile(r"No matching distribution found for (?P<req>.+?)\s*$")
_SKIPPED_RE = re.compile(r"Skipping link: (?P<reason>.+): (?P<url>\S+)(?: \(from .*\))?\s*$")
_OTHER_PYTHON_RE = re.compile(r"Link requires a different Python \((?P<reason>[^)]*)\): (?P<url>\S+)")


@dataclass
class InstallResult:
    """What the install step did."""

    pip_python: str
    pip_version: str
    command: list[str]
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    # canonical name -> {"url", "sha256"} of each installed wheel, from pip's install report
    wheels: dict[str, dict[str, str]] = field(default_factory=dict)


def pip_interpreter(target: Target) -> tuple[str, list[str]]:
    """Which interpreter runs pip: this one when it matches the target, else the target's own.

    pip evaluates dependency markers (``python_version < "3.12"``) against the interpreter that
    runs it, so a matching interpreter gives the right dependency set. Returns (executable, warnings).
    """
    if f"{sys.version_info.major}.{sys.version_info.minor}" == target.python_version:
        return sys.executable, []
    other = find_interpreter(target.python_version)
    if other and has_pip(other):
        return other, []
    return sys.executable, [
        f"pip ran on Python {sys.version_info.major}.{sys.version_info.minor}, not {target.python_version}: "
        "markers of dependencies were evaluated for the build host's Python version"
    ]


def selected_requirements_text(reqs: RequirementSet, target: Target) -> tuple[str, list[str]]:
    """The requirements whose markers hold on the target runtime (markers dropped), and the skipped ones.

    pip would evaluate top-level markers against the build host; evaluating them here against the
    Lambda runtime keeps cross builds right.
    """
    env = target.marker_environment()
    lines: list[str] = []
    skipped: list[str] = []
    for req in reqs.requirements:
        if not req.applies_to(env):
            skipped.append(req.requirement_string())
            continue
        extras = f"[{','.join(req.extras)}]" if req.extras else ""
        hashes = "".join(f" --hash={h}" for h in req.hashes)
        lines.append(f"{req.name}{extras}{req.specifier}{hashes}")
    return "".join(f"{line}\n" for line in lines), skipped


def target_options(target: Target) -> list[str]:
    """pip options that select wheels for the target runtime and architecture, and nothing else."""
    options: list[str] = []
    for tag in target.platform_tags():
        options += ["--platform", tag]
    return [
        *options,
        "--implementation",
        "cp",
        "--python-version",
        target.python_version,
        "--abi",
        target.abi,
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
    ]


def pip_command(
    pip_python: str,
    target: Target,
    requirements_file: Path,
    dest: Path,
    require_hashes: bool,
    report: Path | None = None,
) -> list[str]:
    """The pip command line of a wheel-only install for the target (``report``: pip's JSON install report)."""
    cmd = [pip_python, "-m", "pip", "install", "--target", str(dest), *target_options(target)]
    cmd += [
        "--no-compile",
        "--progress-bar",
        "off",
    ]
    if report is not None:
        cmd += ["--report", str(report)]
    if require_hashes:
        cmd.append("--require-hashes")
    cmd += ["-r", str(requirements_file)]
    return cmd


def wheels_from_report(path: Path) -> dict[str, dict[str, str]]:
    """``{name: {"url": ..., "sha256": ...}}`` of the wheels pip installed, from its ``--report``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    wheels: dict[str, dict[str, str]] = {}
    for item in data.get("install", []):
        name = (item.get("metadata") or {}).get("name")
        info = item.get("download_info") or {}
        if not name:
            continue
        entry = {"url": str(info.get("url", ""))}
        digest = ((info.get("archive_info") or {}).get("hashes") or {}).get("sha256")
        if digest:
            entry["sha256"] = str(digest)
        wheels[canonicalize_name(name)] = entry
    return wheels


def _pip_cache_dir() -> str:
    """``PIP_CACHE_DIR``, else pip's default on Linux (``$XDG_CACHE_HOME/pip``, ``~/.cache/pip``), resolved
    before pip gets a ``HOME`` of its own."""
    configured = os.environ.get("PIP_CACHE_DIR", "").strip()
    if configured:
        return configured
    return str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pip")


@contextmanager
def _pip_env() -> Iterator[dict[str, str]]:
    """pip's environment: no AWS credentials and an empty ``HOME`` (pip could run an sdist's setup code,
    see :mod:`~layershift_core.builder.sandbox`). Every pip run shares the same cache, so what one
    target's resolution or install downloaded is there for the next target of the job."""
    cache_dir = _pip_cache_dir()
    with sandbox.package_environment() as env:
        env.update(PIP_NO_INPUT="1", PIP_ROOT_USER_ACTION="ignore", PYTHONDONTWRITEBYTECODE="1")
        env["PIP_CACHE_DIR"] = cache_dir
        env.pop("PIP_TARGET", None)
        env.pop("PIP_PREFIX", None)
        yield env


def pip_version_from_report(path: Path) -> str:
    """The version of pip that wrote the install report ``path``."""
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("pip_version") or "unknown")
    except (OSError, ValueError, AttributeError):
        return "unknown"


def key_error_lines(output: str) -> list[str]:
    """pip's error lines: from the first ``ERROR:`` on, without warnings and notices."""
    lines = [line.rstrip() for line in output.splitlines()]
    start = next((i for i, line in enumerate(lines) if line.startswith("ERROR:")), None)
    if start is None:
        tail = [line for line in lines if line.strip()]
        return tail[-15:]
    kept = [line for line in lines[start:] if line.strip() and not line.startswith(("WARNING:", "[notice]"))]
    if len(kept) > _MAX_ERROR_LINES:
        kept = [*kept[:_MAX_ERROR_LINES], f"... ({len(kept) - _MAX_ERROR_LINES} more lines)"]
    return kept


def _unmatched_requirements(output: str) -> list[Requirement]:
    found: list[Requirement] = []
    for line in output.splitlines():
        match = _NO_MATCH_RE.search(line)
        if not match:
            continue
        try:
            found.append(Requirement(match.group("req")))
        except InvalidRequirement:
            continue
    return found


def _file_version(filename: str) -> tuple[str, str, str] | None:
    """(canonical name, version, kind) of a distribution file name; kind is 'wheel' or 'sdist'."""
    try:
        name, version, _build, tags = parse_wheel_filename(filename)
        return name, str(version), "wheel:" + ".".join(sorted(str(t) for t in tags))
    except InvalidWheelFilename:
        pass
    try:
        name, version = parse_sdist_filename(filename)
        return name, str(version), "sdist"
    except InvalidSdistFilename:
        return None


def _diagnose(pip_python: str, target: Target, req: Requirement, work: Path) -> SdistOnlyPackage | None:
    """Look again, verbosely, at why no file of ``req`` fits the target; None if nothing was published."""
    probe = [pip_python, "-m", "pip", "download", "--no-deps", "--dest", str(work / "probe"), "-vv"]
    probe += [*target_options(target), str(Requirement(f"{req.name}{req.specifier}"))]
    try:
        with _pip_env() as env:
            result = subprocess.run(probe, capture_output=True, text=True, timeout=300, check=False, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    name = canonicalize_name(req.name)
    sdists: list[str] = []
    wheel_tags: set[str] = set()
    other_python: set[str] = set()
    for line in (result.stdout + result.stderr).splitlines():
        match = _SKIPPED_RE.search(line) or _OTHER_PYTHON_RE.search(line)
        if not match:
            continue
        filename = unquote(urlsplit(match.group("url")).path.rsplit("/", 1)[-1])
        parsed = _file_version(filename)
        if parsed is None or parsed[0] != name:
            continue
        if req.specifier and not req.specifier.contains(parsed[1], prereleases=True):
            continue
        if "different Python" in line:
            other_python.add(f"{parsed[1]} ({match.group('reason')})")
        elif parsed[2] == "sdist":
            sdists.append(f"{name} {parsed[1]}")
        else:
            wheel_tags.add(parsed[2].removeprefix("wheel:"))
    wanted = f"CPython {target.python_version} on manylinux {target.machine} ({target.runtime}, {target.architecture})"
    if wheel_tags:
        shown = ", ".join(sorted(wheel_tags)[:6]) + (" ..." if len(wheel_tags) > 6 else "")
        return SdistOnlyPackage(
            f"{req}: no wheel for {wanted}; the published wheels are tagged {shown}. "
            "Pick a version with a matching wheel."
        )
    if sdists:
        return SdistOnlyPackage(
            f"{req}: only a source distribution (sdist) is published for {sdists[0]}; the builder "
            f"installs wheels only, so pick a version that ships a wheel for {wanted}."
        )
    if other_python:
        return SdistOnlyPackage(
            f"{req}: the published files require a different Python than {target.python_version}: "
            + ", ".join(sorted(other_python)[:4])
        )
    return None


def _fail(proc: subprocess.CompletedProcess[str], pip_python: str, target: Target, work: Path, what: str) -> None:
    """Raise the clearest error for a failed pip run: SdistOnlyPackage when a pin has no wheel, else BuildFailed."""
    output = proc.stdout + "\n" + proc.stderr
    for missing in _unmatched_requirements(output):
        diagnosis = _diagnose(pip_python, target, missing, work)
        if diagnosis is not None:
            raise diagnosis
    lines = key_error_lines(output)
    raise BuildFailed(f"{what} failed for {target.runtime} {target.architecture}:\n" + "\n".join(lines))


def _run_pip(cmd: list[str], what: str) -> subprocess.CompletedProcess[str]:
    try:
        with _pip_env() as env:
            return subprocess.run(
                cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_SECONDS, check=False, env=env
            )
    except subprocess.TimeoutExpired:
        raise BuildFailed(f"{what} did not finish within {PIP_TIMEOUT_SECONDS} s") from None


def install(reqs: RequirementSet, target: Target, dest: Path, work: Path) -> InstallResult:
    """Install ``reqs`` (and their dependencies) as wheels for ``target`` into ``dest``.

    Raises :class:`SdistOnlyPackage` when a requirement has no wheel for the target, and
    :class:`BuildFailed` with pip's key error lines for any other pip failure.
    """
    pip_python, warnings = pip_interpreter(target)
    text, skipped = selected_requirements_text(reqs, target)
    result = InstallResult(
        pip_python=pip_python,
        pip_version="unknown",
        command=[],
        warnings=warnings,
        skipped=skipped,
    )
    dest.mkdir(parents=True, exist_ok=True)
    if not text:
        return result
    work.mkdir(parents=True, exist_ok=True)
    req_file = work / "requirements.selected.txt"
    req_file.write_text(text, encoding="utf-8")
    report = work / "pip-report.json"
    cmd = pip_command(pip_python, target, req_file, dest, reqs.require_hashes, report=report)
    result.command = cmd
    proc = _run_pip(cmd, "pip install")
    (work / "pip.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        _fail(proc, pip_python, target, work, "pip install")
    result.wheels = wheels_from_report(report)
    result.pip_version = pip_version_from_report(report)
    return result


@dataclass
class Resolution:
    """What pip would install for one target: ``{name: version}`` and whether every wheel is pure Python."""

    target: Target
    packages: dict[str, str]
    pure: bool
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def signature(self) -> tuple[tuple[str, str], ...]:
        """The resolved names and versions, comparable across targets."""
        return tuple(sorted(self.packages.items()))


def _is_pure_wheel(url: str) -> bool:
    filename = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    try:
        _name, _version, _build, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return False
    return all(tag.interpreter.startswith("py") and tag.abi == "none" and tag.platform == "any" for tag in tags)


def parse_resolution(target: Target, report: dict, skipped: list[str]) -> Resolution:
    """A Resolution from pip's ``--report`` JSON of a dry run."""
    packages: dict[str, str] = {}
    pure = True
    for item in report.get("install", []):
        metadata = item.get("metadata") or {}
        if not metadata.get("name"):
            continue
        packages[canonicalize_name(str(metadata["name"]))] = str(metadata.get("version", ""))
        pure = pure and _is_pure_wheel(str((item.get("download_info") or {}).get("url", "")))
    return Resolution(target, packages, pure=pure and bool(packages), skipped=skipped)


def resolve(reqs: RequirementSet, target: Target, work: Path) -> Resolution:
    """What ``install`` would install for ``target``, from pip's dry run (metadata only, nothing installed).

    The same wheel-only options as the install; raises as :func:`install` does when nothing fits.
    """
    started = time.monotonic()
    pip_python, _warnings = pip_interpreter(target)
    text, skipped = selected_requirements_text(reqs, target)
    if not text:
        return Resolution(target, {}, pure=False, skipped=skipped)
    work.mkdir(parents=True, exist_ok=True)
    req_file = work / "requirements.selected.txt"
    req_file.write_text(text, encoding="utf-8")
    # pip refuses --platform without --target, even for a dry run; nothing is written there.
    cmd = [pip_python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-"]
    cmd += ["--target", str(work / "dry-run-target"), *target_options(target)]
    if reqs.require_hashes:
        cmd.append("--require-hashes")
    cmd += ["-r", str(req_file)]
    proc = _run_pip(cmd, "pip's resolution (--dry-run)")
    (work / "pip-resolve.log").write_text(proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        _fail(proc, pip_python, target, work, "pip's resolution (--dry-run)")
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise BuildFailed(
            f"pip's dry run for {target.runtime} {target.architecture} printed no report: {proc.stdout[-300:]}"
        ) from None
    resolution = parse_resolution(target, report, skipped)
    resolution.seconds = time.monotonic() - started
    return resolution
