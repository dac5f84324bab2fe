"""The static ELF check, on real shared objects: the build host's own libraries and an installed wheel's.

The host's libraries come from Debian's essential packages (glibc 2.36 builds), so they need newer
glibc versions than Amazon Linux 2 has: exactly what a wheel built on too new a system looks like.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import shutil
from pathlib import Path

import pytest

from layershift_core.builder import elf_check
from layershift_core.builder.distributions import scan
from layershift_core.builder.elf_check import check_shared_objects, find_target_interpreter, owners_from
from layershift_core.builder.platforms import host_can_run, target_for
from layershift_core.errors import BinaryCheckFailed, BuildFailed

HOST_LIBS = Path("/usr/lib/x86_64-linux-gnu")
LZMA = HOST_LIBS / "liblzma.so.5"  # needs only libc.so.6, up to GLIBC_2.34
SELINUX = HOST_LIBS / "libselinux.so.1"  # needs libpcre2-8.so.0, which no Lambda image has
PCRE2 = HOST_LIBS / "libpcre2-8.so.0"
SITE_311 = "python/lib/python3.11/site-packages"

pytestmark = pytest.mark.skipif(
    not all(p.exists() for p in (LZMA, SELINUX, PCRE2)), reason="needs the x86_64 Debian host's libraries"
)


def _record_line(site: Path, rel: str) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256((site / rel).read_bytes()).digest()).rstrip(b"=").decode()
    return f"{rel},sha256={digest},{(site / rel).stat().st_size}"


def _dist(site: Path, name: str, version: str, files: dict[str, Path | bytes]) -> None:
    """A hand-made installed distribution: ``files`` (site-relative) copied from real objects or given bytes."""
    for rel, source in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, Path):
            shutil.copyfile(source.resolve(), path)
        else:
            path.write_bytes(source)
    dist_info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (dist_info / "WHEEL").write_text("Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: cp311-cp311-linux_x86_64\n")
    lines = [_record_line(site, rel) for rel in files]
    lines.append(f"{dist_info.name}/RECORD,,")
    (dist_info / "RECORD").write_text("\n".join(lines) + "\n")


def test_a_too_new_glibc_names_the_file_the_distribution_and_both_versions(tmp_path: Path) -> None:
    _dist(tmp_path / SITE_311, "foo", "1.2", {"foo/__init__.py": b"", "foo/_bar.so": LZMA})
    report = check_shared_objects(tmp_path, target_for("python3.11", "x86_64"))
    assert report.failures == [
        "python/lib/python3.11/site-packages/foo/_bar.so (foo 1.2): needs GLIBC_2.34, "
        "the python3.11 runtime (Amazon Linux 2) has glibc 2.26"
    ]
    assert report.max_glibc == "2.34"
    assert report.checked == 1
    error = report.error()
    assert isinstance(error, BinaryCheckFailed) and isinstance(error, BuildFailed)
    assert "foo/_bar.so (foo 1.2): needs GLIBC_2.34" in str(error)
    assert "glibc <= 2.34 required (runtime has 2.26), 1 problem(s)" in report.summary()
    # the build passes owners from the distributions it scanned: the same names
    owners = owners_from(scan(tmp_path / SITE_311), SITE_311)
    assert check_shared_objects(tmp_path, target_for("python3.11", "x86_64"), owners=owners) == report


def test_the_same_object_passes_on_amazon_linux_2023(tmp_path: Path) -> None:
    _dist(tmp_path / "python/lib/python3.13/site-packages", "foo", "1.2", {"foo/_bar.so": LZMA})
    report = check_shared_objects(tmp_path, target_for("python3.13", "x86_64"))
    assert report.failures == []
    assert (report.checked, report.needed, report.resolved_system, report.resolved_in_layer) == (1, 1, 1, 0)
    assert report.summary() == (
        "1 shared objects checked, 1 needed libraries resolved (0 in the layer, 1 system), "
        "glibc <= 2.34 required (runtime has 2.34)"
    )


def test_a_machine_mismatch_is_caught(tmp_path: Path) -> None:
    _dist(tmp_path / "python/lib/python3.13/site-packages", "foo", "1.2", {"foo/_bar.so": LZMA})
    report = check_shared_objects(tmp_path, target_for("python3.13", "arm64"))
    assert report.failures == [
        "python/lib/python3.13/site-packages/foo/_bar.so (foo 1.2): built for EM_X86_64 (64-bit), "
        "the arm64 target needs EM_AARCH64 (64-bit)"
    ]
    assert report.needed == 0  # nothing else is read from an object of the wrong machine


def test_a_missing_needed_library_is_caught_and_a_vendored_copy_resolves_it(tmp_path: Path) -> None:
    site = tmp_path / "python/lib/python3.13/site-packages"
    _dist(site, "selinux-wrapper", "3.4", {"selinux_wrapper/_selinux.so": SELINUX})
    target = target_for("python3.13", "x86_64")
    report = check_shared_objects(tmp_path, target)
    assert report.failures == [
        "python/lib/python3.13/site-packages/selinux_wrapper/_selinux.so (selinux-wrapper 3.4): needs "
        "libpcre2-8.so.0, which is neither in the layer nor in the base image of the python3.13 runtime "
        "(Amazon Linux 2023)"
    ]
    # the wheel vendors it the auditwheel way, in a .libs folder beside the package
    libs = site / "selinux_wrapper.libs"
    libs.mkdir()
    shutil.copyfile(PCRE2.resolve(), libs / "libpcre2-8.so.0")
    report = check_shared_objects(tmp_path, target)
    assert report.failures == []
    assert report.checked == 2
    assert report.resolved_in_layer == 1
    assert report.resolved_system == report.needed - 1


def test_a_library_only_one_runtime_ships_resolves_per_runtime(tmp_path: Path) -> None:
    ssl = HOST_LIBS / "libssl.so.3"
    if not ssl.exists():
        pytest.skip("no libssl.so.3 on this host")
    _dist(tmp_path / "python", "sslwrap", "1.0", {"sslwrap/_ssl.so": ssl})
    al2023 = check_shared_objects(tmp_path, target_for("python3.12", "x86_64"))
    al2 = check_shared_objects(tmp_path, target_for("python3.11", "x86_64"))
    assert not any("libcrypto.so.3" in f for f in al2023.failures)  # OpenSSL 3 is Amazon Linux 2023's
    assert any("needs libcrypto.so.3, which is neither in the layer" in f for f in al2.failures)


def test_a_truncated_shared_object_is_reported(tmp_path: Path) -> None:
    _dist(tmp_path / "python", "foo", "1.2", {"foo/_bar.so": LZMA.resolve().read_bytes()[:200]})
    report = check_shared_objects(tmp_path, target_for("python3.13", "x86_64"))
    assert len(report.failures) == 1
    assert report.failures[0].startswith("python/foo/_bar.so (foo 1.2): not a readable ELF shared object")


def test_owners_given_by_the_caller_are_used(tmp_path: Path) -> None:
    (tmp_path / "python/pkg.libs").mkdir(parents=True)
    shutil.copyfile(LZMA.resolve(), tmp_path / "python/pkg.libs/liblzma-1a2b3c.so.5.4.1")
    report = check_shared_objects(
        tmp_path,
        target_for("python3.11", "x86_64"),
        owners=lambda rel: "pkg 9.9" if rel.startswith("python/") else None,
    )
    assert report.objects == {"python/pkg.libs/liblzma-1a2b3c.so.5.4.1": "pkg 9.9"}
    assert report.failures[0].startswith("python/pkg.libs/liblzma-1a2b3c.so.5.4.1 (pkg 9.9): needs GLIBC_2.34")


def test_a_real_manylinux_wheel_passes_with_its_figures(tmp_path: Path) -> None:
    """pydantic-core (a dependency of this project) is installed from a manylinux_2_17 x86_64 wheel."""
    dist = importlib.metadata.distribution("pydantic_core")
    tags = dist.read_text("WHEEL") or ""
    if "manylinux" not in tags or "x86_64" not in tags:
        pytest.skip("pydantic-core is not installed from an x86_64 manylinux wheel here")
    files = {str(f): Path(str(dist.locate_file(f))) for f in dist.files or [] if ".dist-info" not in str(f)}
    files = {rel: path for rel, path in files.items() if "__pycache__" not in rel}
    _dist(tmp_path / "python/lib/python3.11/site-packages", "pydantic-core", dist.version, files)
    extension = [rel for rel in files if rel.endswith(".so")]
    report = check_shared_objects(tmp_path, target_for("python3.11", "x86_64"))
    assert report.failures == []
    assert report.checked == len(extension) == 1
    needed = elf_check._read_elf(files[extension[0]]).needed
    assert report.needed == len(needed) and set(needed) <= {
        "libc.so.6",
        "libm.so.6",
        "libgcc_s.so.1",
        "libdl.so.2",
        "libpthread.so.0",
        "librt.so.1",
        "ld-linux-x86-64.so.2",
    }
    assert report.resolved_system == report.needed and report.resolved_in_layer == 0
    assert report.max_glibc is not None
    assert tuple(int(p) for p in report.max_glibc.split(".")) <= (2, 17)  # what its manylinux_2_17 tag promises
    assert report.objects == {f"python/lib/python3.11/site-packages/{extension[0]}": f"pydantic-core {dist.version}"}


def test_libstdcxx_versions_are_checked_against_the_image_unless_the_layer_brings_its_own(tmp_path: Path) -> None:
    """The host's libapt-pkg (GCC 12) asks GLIBCXX_3.4.29: Amazon Linux 2023's GCC 11 has it, AL2's GCC 7 not."""
    apt = HOST_LIBS / "libapt-pkg.so.6.0"
    if not apt.exists():
        pytest.skip("no libapt-pkg on this host")
    _dist(tmp_path / "python", "aptwrap", "2.6", {"aptwrap/_apt.so": apt})
    expected = (
        "python/aptwrap/_apt.so (aptwrap 2.6): needs GLIBCXX_3.4.29 from libstdc++.so.6, the libstdc++ of the "
        "python3.11 runtime (Amazon Linux 2) has up to GLIBCXX_3.4.24"
    )
    al2 = check_shared_objects(tmp_path, target_for("python3.11", "x86_64"))
    assert expected in al2.failures
    assert al2.max_glibcxx == "3.4.29"
    al2023 = check_shared_objects(tmp_path, target_for("python3.13", "x86_64"))
    assert not any("GLIBCXX" in f for f in al2023.failures)
    # a libstdc++ shipped in the layer's lib/ folder (on Lambda's LD_LIBRARY_PATH as /opt/lib) answers instead
    (tmp_path / "lib").mkdir()
    shutil.copyfile((HOST_LIBS / "libstdc++.so.6").resolve(), tmp_path / "lib/libstdc++.so.6")
    vendored = check_shared_objects(tmp_path, target_for("python3.11", "x86_64"))
    assert expected not in vendored.failures
    assert vendored.max_glibcxx is None


def test_every_runtime_has_a_system_set_for_both_machines() -> None:
    for runtime, by_machine in elf_check.SYSTEM_LIBRARIES.items():
        assert set(by_machine) == {"x86_64", "aarch64"}, runtime
        assert {"libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1", "libz.so.1"} <= by_machine["x86_64"]
        assert "ld-linux-aarch64.so.1" in by_machine["aarch64"] and "ld-linux-x86-64.so.2" not in by_machine["aarch64"]
    assert "libssl.so.3" in elf_check.SYSTEM_LIBRARIES["python3.13"]["x86_64"]
    assert "libssl.so.3" not in elf_check.SYSTEM_LIBRARIES["python3.11"]["x86_64"]


def test_no_target_interpreter_for_the_hosts_own_architecture_nor_without_qemu(monkeypatch: pytest.MonkeyPatch) -> None:
    native = target_for("python3.13", "x86_64")
    assert host_can_run(native)
    assert find_target_interpreter(native) is None
    elf_check._find_target_interpreter.cache_clear()
    monkeypatch.setattr(elf_check.shutil, "which", lambda name: None)
    assert find_target_interpreter(target_for("python3.13", "arm64")) is None
    elf_check._find_target_interpreter.cache_clear()


def test_a_target_interpreter_is_qemu_with_the_sysroot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sysroot holding a python3.13 of the target machine (here: an aarch64 object stands in for it)."""
    sysroot = tmp_path / "arm64-root"
    (sysroot / "var/lang/bin").mkdir(parents=True)
    (sysroot / "var/lang/bin/python3.13").write_bytes(b"")
    monkeypatch.setenv("LAYERSHIFT_SYSROOT_AARCH64", str(sysroot))
    monkeypatch.setattr(elf_check.shutil, "which", lambda name: f"/usr/bin/{name}" if name == "qemu-aarch64" else None)
    monkeypatch.setattr(elf_check, "_is_target_elf", lambda path, machine: machine == "aarch64")
    seen: list[list[str]] = []
    monkeypatch.setattr(
        elf_check, "runs_as", lambda prefix, version, timeout=30: seen.append(prefix) or version == "3.13"
    )
    elf_check._find_target_interpreter.cache_clear()
    try:
        prefix = find_target_interpreter(target_for("python3.13", "arm64"))
    finally:
        elf_check._find_target_interpreter.cache_clear()
    assert prefix == [
        "/usr/bin/qemu-aarch64",
        "-L",
        str(sysroot),
        "-E",
        "LD_LIBRARY_PATH=/var/lang/lib:/lib64:/usr/lib64",
        "/var/lang/bin/python3.13",
    ]
    assert seen == [prefix]
