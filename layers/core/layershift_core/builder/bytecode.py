"""Bytecode for the target runtime, valid whatever the zip does to timestamps.

Sources are compiled by the target CPython itself, in ``unchecked-hash`` mode: the interpreter
loads the ``.pyc`` without comparing it against the source's mtime, so extracting the zip (which
keeps 2-second timestamps, or none) cannot make it stale. Without bytecode, Lambda's read-only
``/opt`` makes every cold start compile every imported module again.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

COMPILE_TIMEOUT_SECONDS = 1800
INVALIDATION_MODE = "unchecked-hash"


@dataclass
class BytecodeReport:
    """Whether and how bytecode was compiled."""

    compiled: bool
    interpreter: str | None
    invalidation_mode: str | None
    files: int
    warning: str | None = None


def no_interpreter_warning(python_version: str) -> str:
    """The warning recorded when no target interpreter is available."""
    return (
        f"no working python{python_version} interpreter was found on PATH or under ~/.pyenv/versions: "
        "the layer ships no bytecode, so every cold start compiles each imported module again"
    )


def compile_site(site: Path, interpreter: str | None, python_version: str, runtime_path: str) -> BytecodeReport:
    """Compile every ``.py`` under ``site`` with ``interpreter`` into ``__pycache__``.

    ``runtime_path`` is where ``site`` lives on Lambda (e.g. ``/opt/python``); it is recorded as
    the source path in the bytecode, so tracebacks point there and builds in different temporary
    folders give identical bytes.
    """
    if interpreter is None:
        return BytecodeReport(False, None, None, 0, no_interpreter_warning(python_version))
    env = dict(os.environ)
    # Hash randomisation changes the order of frozenset constants in the marshalled code objects.
    env["PYTHONHASHSEED"] = "0"
    env.pop("SOURCE_DATE_EPOCH", None)
    cmd = [
        interpreter,
        "-I",
        "-m",
        "compileall",
        "-q",
        "-j0",
        "--invalidation-mode",
        INVALIDATION_MODE,
        "-d",
        runtime_path,
        str(site),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_SECONDS, check=False, env=env)
    files = sum(1 for _ in site.rglob("__pycache__/*.pyc"))
    warning = None
    if proc.returncode != 0:
        # compileall reports files it cannot compile (e.g. Python 2 leftovers, templates named .py)
        # and goes on; such files simply ship without bytecode.
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        shown = "; ".join(errors[:5])
        warning = f"some sources did not compile and ship without bytecode: {shown}"
    return BytecodeReport(True, interpreter, INVALIDATION_MODE, files, warning)
