"""The import smoke test on small hand-made layers: an optional extra is no failure, a broken package is.

Each layer is laid out the way ``pip install --target`` leaves wheels (``.dist-info`` with METADATA
and RECORD), and imported by a real python3.13 in a fresh process, as the build does.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path

import pytest

from layershift_core.builder.distributions import scan
from layershift_core.builder.platforms import find_interpreter
from layershift_core.builder.smoke import run_smoke_test
from layershift_core.errors import ImportSmokeTestFailed

PYTHON = find_interpreter("3.13")
needs_313 = pytest.mark.skipif(PYTHON is None, reason="needs a python3.13 interpreter")
SITE = "python"
# a real x86_64 extension module's first bytes: an ELF header with nothing behind it
HOST_SO = Path("/usr/lib/x86_64-linux-gnu/libz.so.1")

BLACKD = """\
try:
    from aiohttp import web
except ImportError as ie:
    raise ImportError(
        f"aiohttp dependency is not installed: {ie}. Please re-install black with the '[d]' extra"
    ) from None
"""


def _record_line(site: Path, rel: str) -> str:
    data = (site / rel).read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{rel},sha256={digest},{len(data)}"


def wheel(
    site: Path,
    name: str,
    version: str,
    files: dict[str, str | bytes],
    *,
    requires: tuple[str, ...] = (),
    extras: tuple[str, ...] = (),
    top_level: tuple[str, ...] | None = None,
) -> None:
    """An installed wheel: files, and a .dist-info whose METADATA carries Requires-Dist and Provides-Extra."""
    for rel, content in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    dist_info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Provides-Extra: {e}\n" for e in extras) + "".join(f"Requires-Dist: {r}\n" for r in requires)
    (dist_info / "METADATA").write_text(metadata)
    (dist_info / "WHEEL").write_text("Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    if top_level is not None:
        (dist_info / "top_level.txt").write_text("".join(f"{m}\n" for m in top_level))
    rels = [*files, *(f"{dist_info.name}/{f.name}" for f in sorted(dist_info.iterdir()))]
    lines = [_record_line(site, rel) for rel in rels] + [f"{dist_info.name}/RECORD,,"]
    (dist_info / "RECORD").write_text("\n".join(lines) + "\n")


def blacklike(site: Path, blackd: str = BLACKD) -> None:
    """Like black: a main package, and a second top-level module that needs the extra 'd' (aiohttp)."""
    wheel(
        site,
        "black",
        "26.10.1",
        {"black/__init__.py": "VERSION = '26.10.1'\n", "blackd/__init__.py": blackd, "_black_version.py": "v = 1\n"},
        requires=("click>=8.0.0", 'aiohttp>=3.10; extra == "d"', 'colorama>=0.4.3; extra == "colorama"'),
        extras=("colorama", "d"),
    )
    wheel(site, "click", "8.5.1", {"click/__init__.py": ""})


def smoke(root: Path, **kwargs):
    site = root / SITE
    modules = sorted({m for d in scan(site) for m in d.top_level})
    return run_smoke_test(root, SITE, modules, PYTHON, raise_on_failure=False, **kwargs)


@needs_313
def test_a_second_module_needing_an_optional_extra_is_reported_not_failed(tmp_path: Path) -> None:
    blacklike(tmp_path / SITE)
    report = smoke(tmp_path)
    assert report.failures == []
    assert report.modules == ["_black_version", "black", "blackd", "click"]
    assert report.optional_extras == [
        "blackd (black 26.10.1) needs aiohttp, which is not installed: black requires it only with the extra 'd' "
        '(aiohttp>=3.10; extra == "d"). Install black[d] to use blackd'
    ]
    assert report.module_owners["blackd"] == ["black 26.10.1"]
    # raising is for failures only
    assert run_smoke_test(tmp_path, SITE, report.modules, PYTHON).optional_extras == report.optional_extras


@needs_313
def test_a_plain_import_of_an_extra_counts_too(tmp_path: Path) -> None:
    blacklike(tmp_path / SITE, blackd="import aiohttp.web\n")
    report = smoke(tmp_path)
    assert report.failures == []
    assert len(report.optional_extras) == 1 and report.optional_extras[0].startswith("blackd (black 26.10.1)")


@needs_313
def test_a_missing_required_dependency_fails_naming_module_and_distribution(tmp_path: Path) -> None:
    site = tmp_path / SITE
    wheel(site, "needy", "1.0", {"needy/__init__.py": "import idna\n"}, requires=("idna>=3",))
    report = smoke(tmp_path)
    assert report.failures == ["needy: ModuleNotFoundError: No module named 'idna' (from needy 1.0)"]
    assert report.failed_modules == ["needy"]
    assert report.optional_extras == []
    with pytest.raises(ImportSmokeTestFailed, match=r"needy: ModuleNotFoundError: No module named 'idna'"):
        run_smoke_test(tmp_path, SITE, ["needy"], PYTHON)


@needs_313
def test_a_dependency_required_both_plainly_and_by_an_extra_is_required(tmp_path: Path) -> None:
    site = tmp_path / SITE
    wheel(
        site,
        "tool",
        "1.0",
        {"tool/__init__.py": "", "tool_cli.py": "import click\n"},
        requires=("click>=8", 'click>=8.1; extra == "cli"'),
        extras=("cli",),
    )
    report = smoke(tmp_path)
    assert report.failures == ["tool_cli: ModuleNotFoundError: No module named 'click' (from tool 1.0)"]


@needs_313
def test_an_undeclared_import_fails_even_if_another_distribution_has_it_as_an_extra(tmp_path: Path) -> None:
    site = tmp_path / SITE
    blacklike(site)
    wheel(site, "sloppy", "1.0", {"sloppy/__init__.py": "", "sloppy_server.py": "import aiohttp\n"})
    report = smoke(tmp_path)
    assert report.failures == ["sloppy_server: ModuleNotFoundError: No module named 'aiohttp' (from sloppy 1.0)"]
    assert len(report.optional_extras) == 1  # blackd's, which black declares


@needs_313
def test_a_main_package_that_needs_an_extra_still_fails(tmp_path: Path) -> None:
    """pip install + import of the main package would fail the same way on Lambda."""
    site = tmp_path / SITE
    wheel(
        site,
        "fancy",
        "2.0",
        {"fancy/__init__.py": "import numpy\n", "fancy_extras.py": ""},
        requires=('numpy; extra == "fast"',),
        extras=("fast",),
    )
    report = smoke(tmp_path)
    assert report.failures == [
        "fancy: ModuleNotFoundError: No module named 'numpy' (from fancy 2.0: its main package fancy needs numpy, "
        "which is not installed: fancy requires it only with the extra 'fast' (numpy; extra == \"fast\"))"
    ]
    assert report.optional_extras == []


@needs_313
def test_an_installed_extra_that_is_broken_is_a_failure(tmp_path: Path) -> None:
    """Whether aiohttp is an extra does not matter once it is in the layer: it must import."""
    site = tmp_path / SITE
    blacklike(site)
    wheel(site, "aiohttp", "3.14.5", {"aiohttp/__init__.py": "import multidict\n"}, requires=("multidict>=4.5",))
    report = smoke(tmp_path)
    assert "aiohttp: ModuleNotFoundError: No module named 'multidict' (from aiohttp 3.14.5)" in report.failures
    assert any(f.startswith("blackd: ImportError: aiohttp dependency is not installed") for f in report.failures)
    assert report.optional_extras == []


@needs_313
def test_a_syntax_error_fails_naming_module_and_distribution(tmp_path: Path) -> None:
    wheel(tmp_path / SITE, "typo", "0.1", {"typo/__init__.py": "def broken(:\n    pass\n"})
    report = smoke(tmp_path)
    assert len(report.failures) == 1
    assert report.failures[0].startswith("typo: SyntaxError: ")
    assert report.failures[0].endswith("(from typo 0.1)")


@needs_313
@pytest.mark.skipif(not HOST_SO.exists(), reason="needs a host shared object")
def test_a_truncated_extension_module_fails_naming_module_and_distribution(tmp_path: Path) -> None:
    truncated = HOST_SO.resolve().read_bytes()[:400]
    wheel(
        tmp_path / SITE,
        "speedy",
        "1.0",
        {"speedy/__init__.py": "from ._core import run\n", "speedy/_core.cpython-313-x86_64-linux-gnu.so": truncated},
    )
    report = smoke(tmp_path)
    assert len(report.failures) == 1
    assert report.failures[0].startswith("speedy: ImportError: ")
    assert "_core.cpython-313-x86_64-linux-gnu.so" in report.failures[0]
    assert report.failures[0].endswith("(from speedy 1.0)")


@needs_313
def test_a_crash_names_its_module_and_does_not_hide_the_other_failures(tmp_path: Path) -> None:
    wheel(tmp_path / SITE, "aborts", "1.0", {"aborts.py": "import os\nos.abort()\n"})
    wheel(tmp_path / SITE, "fine", "1.0", {"fine.py": ""})
    wheel(tmp_path / SITE, "typo", "0.1", {"typo.py": "def broken(:\n"})
    report = smoke(tmp_path)
    assert len(report.failures) == 2
    assert report.failures[0].startswith("the import smoke test crashed (exit -6) while importing aborts (aborts 1.0):")
    assert report.failures[1].startswith("typo: SyntaxError: ")
    assert report.failed_modules == ["aborts", "typo"]
    assert report.module_owners == {"aborts": ["aborts 1.0"], "fine": ["fine 1.0"], "typo": ["typo 0.1"]}


@needs_313
def test_a_command_prefix_runs_the_interpreter(tmp_path: Path) -> None:
    """What qemu-user would be: here a plain ``env``, in front of the target's Python."""
    blacklike(tmp_path / SITE)
    env = shutil.which("env")
    assert env is not None
    report = run_smoke_test(
        tmp_path, SITE, ["black", "click"], None, raise_on_failure=False, command_prefix=[env, str(PYTHON)]
    )
    assert report.ran and report.failures == []


def test_without_an_interpreter_nothing_runs(tmp_path: Path) -> None:
    report = run_smoke_test(tmp_path, SITE, ["black"], None)
    assert not report.ran
    assert report.notes == ["import smoke test skipped: no interpreter of the target Python version was found"]


def test_top_level_modules_come_from_record_not_a_stale_top_level_txt(tmp_path: Path) -> None:
    site = tmp_path / SITE
    wheel(
        site,
        "pynacl",
        "1.6.2",
        {"nacl/__init__.py": "", "nacl/_sodium.abi3.so": b"", "tests/__init__.py": "", "setup.py": ""},
        top_level=("_sodium", "nacl", "tests"),
    )
    wheel(
        site,
        "pytokens",
        "0.4.1",
        {"pytokens/__init__.py": "", "fd7dcdb10166ebd4db98__mypyc.cpython-313-x86_64-linux-gnu.so": b""},
    )
    dists = {d.name: d for d in scan(site)}
    assert dists["pynacl"].top_level == ["nacl"]
    assert dists["pynacl"].not_imported == ["setup", "tests"]
    assert dists["pytokens"].top_level == ["pytokens"]
    assert dists["pytokens"].not_imported == ["fd7dcdb10166ebd4db98__mypyc"]


def test_a_distribution_without_record_falls_back_to_top_level_txt(tmp_path: Path) -> None:
    site = tmp_path / SITE
    wheel(site, "legacy", "1.0", {"legacy_mod/__init__.py": ""}, top_level=("legacy_mod", "ghost"))
    (site / "legacy-1.0.dist-info" / "RECORD").unlink()
    assert [d.top_level for d in scan(site)] == [["legacy_mod"]]


def test_metadata_requirements_and_extras_are_read(tmp_path: Path) -> None:
    blacklike(tmp_path / SITE)
    black = next(d for d in scan(tmp_path / SITE) if d.name == "black")
    assert black.extras == ["colorama", "d"]
    assert 'aiohttp>=3.10; extra == "d"' in black.requires


@needs_313
def test_a_distribution_none_of_whose_modules_imports_fails_even_for_extras(tmp_path: Path) -> None:
    wheel(
        tmp_path / SITE,
        "plugins-pack",
        "1.0",
        {"plugin_a.py": "import numpy\n", "plugin_b.py": "import pandas\n"},
        requires=('numpy; extra == "a"', 'pandas; extra == "b"'),
        extras=("a", "b"),
    )
    report = smoke(tmp_path)
    assert report.optional_extras == []
    assert report.failed_modules == ["plugin_a", "plugin_b"]
    assert "none of its top-level modules imports, and plugin_a needs numpy" in report.failures[0]
