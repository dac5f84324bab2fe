"""Lambda build targets: runtimes, architectures, wheel platform tags and the target interpreter."""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from layershift_core.errors import InvalidLayerSpec

# Runtime -> (major, minor, glibc of the Lambda base image).
# python3.11 runs on Amazon Linux 2 (glibc 2.26); python3.12 and 3.13 on Amazon Linux 2023 (2.34).
RUNTIMES: dict[str, tuple[int, int, tuple[int, int]]] = {
    "python3.11": (3, 11, (2, 26)),
    "python3.12": (3, 12, (2, 34)),
    "python3.13": (3, 13, (2, 34)),
}
# Lambda architecture -> machine name used in wheel platform tags.
ARCHITECTURES: dict[str, str] = {"x86_64": "x86_64", "arm64": "aarch64"}

_OLDEST_MANYLINUX2014_GLIBC_MINOR = 17

# What the Lambda Python runtimes ship in /var/runtime, outside any layer: distribution -> version.
# Which distributions are there is stable; their versions are not. AWS moves them with runtime
# updates (see "Runtime-included SDK versions" on
# https://docs.aws.amazon.com/lambda/latest/dg/lambda-python.html), so these versions are an
# assumed snapshot, not read from a runtime, and the slim-runtime profile's version-mismatch
# warning is advice to check, not a measurement. The profile drops these distributions from a layer.
_RUNTIME_SDK: dict[str, str] = {
    "boto3": "1.36.2",
    "botocore": "1.36.2",
    "s3transfer": "0.11.1",
    "jmespath": "1.0.1",
    "python-dateutil": "2.9.0.post0",
    "urllib3": "1.26.20",
    "six": "1.16.0",
}
RUNTIME_PROVIDED_PACKAGES: dict[str, dict[str, str]] = {
    runtime: dict(_RUNTIME_SDK) for runtime in ("python3.11", "python3.12", "python3.13")
}


@dataclass(frozen=True)
class Target:
    """One runtime and architecture to build for."""

    runtime: str
    architecture: str
    major: int
    minor: int
    glibc: tuple[int, int]
    machine: str

    @property
    def python_version(self) -> str:
        """``"3.13"``."""
        return f"{self.major}.{self.minor}"

    @property
    def abi(self) -> str:
        """``"cp313"``."""
        return f"cp{self.major}{self.minor}"

    def platform_tags(self) -> list[str]:
        """Every manylinux platform tag the runtime's glibc can load, newest first."""
        glibc_major, glibc_minor = self.glibc
        tags = [
            f"manylinux_{glibc_major}_{minor}_{self.machine}"
            for minor in range(glibc_minor, _OLDEST_MANYLINUX2014_GLIBC_MINOR - 1, -1)
        ]
        tags.append(f"manylinux2014_{self.machine}")
        if self.machine == "x86_64":
            # PEP 600 names of manylinux2010 and manylinux1; pip adds the legacy aliases itself.
            tags += [
                "manylinux_2_12_x86_64",
                "manylinux2010_x86_64",
                "manylinux_2_5_x86_64",
                "manylinux1_x86_64",
            ]
        return tags

    def marker_environment(self) -> dict[str, str]:
        """PEP 508 marker values of the Lambda runtime (for evaluating requirement markers)."""
        return {
            "python_version": self.python_version,
            "python_full_version": f"{self.python_version}.0",
            "implementation_name": "cpython",
            "implementation_version": f"{self.python_version}.0",
            "platform_python_implementation": "CPython",
            "platform_machine": self.machine,
            "platform_system": "Linux",
            "sys_platform": "linux",
            "os_name": "posix",
        }

    def site_prefix(self, pure_python: bool) -> str:
        """Where packages live inside the layer zip (Lambda puts ``/opt/<prefix>`` on sys.path)."""
        if pure_python:
            return "python"
        return f"python/lib/python{self.python_version}/site-packages"


def target_for(runtime: str, architecture: str) -> Target:
    """The build target for a Lambda runtime and architecture, or :class:`InvalidLayerSpec`."""
    if runtime not in RUNTIMES:
        raise InvalidLayerSpec(
            f"runtime {runtime!r} is not supported by the builder; choose one of {', '.join(RUNTIMES)}"
        )
    if architecture not in ARCHITECTURES:
        raise InvalidLayerSpec(
            f"architecture {architecture!r} is not supported; choose one of {', '.join(ARCHITECTURES)}"
        )
    major, minor, glibc = RUNTIMES[runtime]
    return Target(runtime, architecture, major, minor, glibc, ARCHITECTURES[architecture])


def host_can_run(target: Target) -> bool:
    """Whether this machine can load the target architecture's shared objects."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine) == target.machine


def strip_tool(target: Target) -> tuple[str | None, str | None]:
    """The ``strip`` that handles the target's shared objects, or (None, why not).

    The host's own ``strip`` when the target architecture is the host's; otherwise the GNU cross
    tool ``<machine>-linux-gnu-strip`` (for example ``aarch64-linux-gnu-strip``) when installed.
    """
    if host_can_run(target):
        tool = shutil.which("strip")
        return (tool, None) if tool else (None, "no strip tool on PATH")
    cross = f"{target.machine}-linux-gnu-strip"
    tool = shutil.which(cross)
    return (tool, None) if tool else (None, f"{cross} is not installed")


def _pyenv_roots() -> list[Path]:
    roots = []
    if os.environ.get("PYENV_ROOT"):
        roots.append(Path(os.environ["PYENV_ROOT"]))
    roots += [Path.home() / ".pyenv", Path("/root/.pyenv")]
    unique: list[Path] = []
    for root in roots:
        if root not in unique:
            unique.append(root)
    return unique


def _patch_key(path: Path) -> Version:
    try:
        return Version(path.parent.parent.name)
    except InvalidVersion:
        return Version("0")


def _candidates(python_version: str) -> list[str]:
    name = f"python{python_version}"
    found: list[str] = []
    on_path = shutil.which(name)
    if on_path:
        found.append(on_path)
    if f"{sys.version_info.major}.{sys.version_info.minor}" == python_version:
        found.append(sys.executable)
    for root in _pyenv_roots():
        matches = sorted(root.glob(f"versions/{python_version}*/bin/{name}"), key=_patch_key, reverse=True)
        found += [str(m) for m in matches]
    unique: list[str] = []
    for candidate in found:
        if candidate not in unique:
            unique.append(candidate)
    return unique


def runs_as(command: list[str], python_version: str, timeout: float = 30) -> bool:
    """Whether ``command`` (an interpreter, or a prefix such as qemu's that runs one) is CPython ``python_version``."""
    try:
        result = subprocess.run(
            [*command, "-I", "-S", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and result.stdout.strip() == python_version


@functools.cache
def find_interpreter(python_version: str) -> str | None:
    """A working CPython ``python_version`` interpreter: ``pythonX.Y`` on PATH, then pyenv versions.

    Each candidate is run once to check it really is that version (a pyenv shim can exist on PATH
    and still fail). Returns None when none works.
    """
    for candidate in _candidates(python_version):
        if runs_as([candidate], python_version):
            return candidate
    return None


@functools.cache
def has_pip(executable: str) -> bool:
    """Whether ``executable -m pip`` works."""
    try:
        result = subprocess.run(
            [executable, "-m", "pip", "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0
