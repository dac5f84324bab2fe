"""How the builder runs package code: without AWS credentials, and without a network where it can.

The build runs untrusted code: the import smoke test imports every module of the layer, and pip
could run an sdist's setup code. Every subprocess that may run package code (pip, compileall, the
smoke test) gets :func:`package_environment`: the builder's environment with every variable the AWS
SDKs read credentials or a credential source from removed, the shared config and credentials files
pointed at ``/dev/null``, the EC2 instance metadata lookup disabled, and ``HOME`` an empty folder of
its own (no ``~/.aws``, no ``~/.netrc``, no ``~/.config``).

The smoke test also runs in a network namespace of its own (``unshare --user --net``: a user
namespace needs no privilege where the kernel allows it), so an import reaches neither the
container credentials endpoint nor any other host. Where that is not allowed (a container whose
seccomp profile refuses ``unshare``), :func:`network_isolation` says so and the manifest records
that the network was reachable.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

# Variables that hold AWS credentials, or tell an SDK where to get them.
CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CREDENTIAL_EXPIRATION",
)
# Variables set to a value that points at nothing.
NEUTRALISED = {
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
# How the smoke test is cut off the network (util-linux unshare; no root needed).
UNSHARE_NET = ("unshare", "--user", "--net", "--")


def scrubbed(environ: Mapping[str, str], home: str) -> dict[str, str]:
    """``environ`` without AWS credentials or a way to find them, with ``HOME`` at ``home``."""
    env = {key: value for key, value in environ.items() if key not in CREDENTIAL_VARIABLES}
    env.update(NEUTRALISED)
    env["HOME"] = home
    return env


@contextmanager
def package_environment(environ: Mapping[str, str] | None = None) -> Iterator[dict[str, str]]:
    """The environment for a subprocess that may run package code, with an empty ``HOME`` of its own
    (removed afterwards)."""
    home = tempfile.mkdtemp(prefix="layershift-home-")
    try:
        yield scrubbed(os.environ if environ is None else environ, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


@dataclass(frozen=True)
class NetworkIsolation:
    """Whether the smoke test can run without a network, and the command prefix that does it."""

    prefix: tuple[str, ...]
    note: str

    @property
    def isolated(self) -> bool:
        return bool(self.prefix)


@functools.cache
def network_isolation() -> NetworkIsolation:
    """``unshare --user --net`` when it works on this machine (probed once), else no isolation and why."""
    if shutil.which(UNSHARE_NET[0]) is None:
        return NetworkIsolation((), "the network was reachable: unshare (util-linux) is not installed")
    try:
        probe = subprocess.run([*UNSHARE_NET, "true"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return NetworkIsolation((), f"the network was reachable: unshare did not run ({type(exc).__name__})")
    if probe.returncode != 0:
        why = (probe.stderr or probe.stdout).strip().splitlines()[-1:] or [f"exit {probe.returncode}"]
        return NetworkIsolation((), f"the network was reachable: this host refuses a network namespace ({why[0]})")
    return NetworkIsolation(UNSHARE_NET, "no network: the imports ran in a network namespace of their own")


_PR_SET_DUMPABLE = 4


def protect_own_environment() -> bool:
    """Make this process non-dumpable, so that its ``/proc/<pid>/environ`` and memory are readable by
    root only: a child running package code as the same user cannot read the credentials this process
    was started with. A child running as root still can (CodeBuild's default user is root); there,
    the build role's grants are what bounds it. True when the kernel took it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False
