"""The ELF check on real aarch64 wheels from PyPI, which this x86_64 host cannot load at all.

The wheels are downloaded once (``pip download --only-binary=:all:`` for CPython 3.13 on manylinux
aarch64) into ``~/.cache/layershift/test-wheels`` and unpacked the way pip installs them.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

from layershift_core.builder import install
from layershift_core.builder.elf_check import check_shared_objects
from layershift_core.builder.platforms import target_for

pytestmark = pytest.mark.network

SITE = "python/lib/python3.13/site-packages"
# small wheels: one plain extension module; one that vendors a library in google_crc32c.libs (auditwheel's
# RPATH $ORIGIN/../google_crc32c.libs); one built on manylinux_2_34, too new for Amazon Linux 2
WHEELS = ("markupsafe==3.0.4", "google-crc32c==1.9.0", "bcrypt==5.0.0")
CACHE = Path.home() / ".cache" / "layershift" / "test-wheels" / "cp313-aarch64"


@pytest.fixture(scope="module")
def aarch64_wheels() -> dict[str, Path]:
    """``{requirement: wheel file}``, downloaded once for python3.13 arm64."""
    CACHE.mkdir(parents=True, exist_ok=True)
    options = install.target_options(target_for("python3.13", "arm64"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(CACHE), *options, *WHEELS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found: dict[str, Path] = {}
    for requirement in WHEELS:
        name, version = requirement.replace("-", "_").split("==")
        matches = sorted(CACHE.glob(f"{name}-{version}-*aarch64*.whl"))
        assert matches, f"no aarch64 wheel of {requirement} in {CACHE}"
        found[requirement] = matches[0]
    return found


def _layer(root: Path, *wheels: Path) -> Path:
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(root / SITE)
    return root


def _needed(path: Path) -> list[str]:
    """DT_NEEDED read straight from pyelftools, to check the report's figures against."""
    with path.open("rb") as fh:
        elf = ELFFile(fh)
        assert elf.header.e_machine == "EM_AARCH64"
        return [
            tag.needed
            for section in elf.iter_sections()
            if isinstance(section, DynamicSection)
            for tag in section.iter_tags()
            if tag.entry.d_tag == "DT_NEEDED"
        ]


def test_good_aarch64_wheels_pass_with_the_right_figures(tmp_path: Path, aarch64_wheels: dict[str, Path]) -> None:
    root = _layer(tmp_path, aarch64_wheels["markupsafe==3.0.4"], aarch64_wheels["google-crc32c==1.9.0"])
    site = root / SITE
    objects = sorted(p for p in site.rglob("*.so*") if p.is_file())
    vendored = {p.name for p in (site / "google_crc32c.libs").iterdir()}
    needed = [name for p in objects for name in _needed(p)]
    report = check_shared_objects(root, target_for("python3.13", "arm64"))
    assert report.failures == []
    assert report.checked == len(objects) >= 3
    assert report.needed == len(needed)
    assert report.resolved_in_layer == sum(1 for name in needed if name in vendored) >= 1
    assert report.resolved_system == report.needed - report.resolved_in_layer
    assert report.max_glibc is not None
    assert tuple(int(p) for p in report.max_glibc.split(".")) <= (2, 17)  # both are manylinux2014 wheels
    owners = set(report.objects.values())
    assert owners == {"markupsafe 3.0.4", "google-crc32c 1.9.0"}
    # manylinux2014 promises glibc 2.17: Amazon Linux 2 loads them too
    assert check_shared_objects(root, target_for("python3.11", "arm64")).failures == []


def test_aarch64_objects_for_an_x86_64_target_are_a_machine_mismatch(
    tmp_path: Path, aarch64_wheels: dict[str, Path]
) -> None:
    root = _layer(tmp_path, aarch64_wheels["markupsafe==3.0.4"])
    report = check_shared_objects(root, target_for("python3.13", "x86_64"))
    assert len(report.failures) == report.checked == 1
    speedups = f"{SITE}/markupsafe/_speedups.cpython-313-aarch64-linux-gnu.so"
    assert report.failures[0].startswith(f"{speedups} (markupsafe 3.0.4): ")
    assert report.failures[0].endswith("built for EM_AARCH64 (64-bit), the x86_64 target needs EM_X86_64 (64-bit)")
    assert "1 problem(s)" in report.summary()


def test_a_manylinux_2_34_wheel_is_too_new_for_amazon_linux_2(tmp_path: Path, aarch64_wheels: dict[str, Path]) -> None:
    root = _layer(tmp_path, aarch64_wheels["bcrypt==5.0.0"])
    assert check_shared_objects(root, target_for("python3.13", "arm64")).failures == []
    report = check_shared_objects(root, target_for("python3.11", "arm64"))
    assert report.failures == [
        f"{SITE}/bcrypt/_bcrypt.abi3.so (bcrypt 5.0.0): needs GLIBC_2.34, "
        "the python3.11 runtime (Amazon Linux 2) has glibc 2.26"
    ]
    assert "bcrypt/_bcrypt.abi3.so (bcrypt 5.0.0): needs GLIBC_2.34" in str(report.error())
