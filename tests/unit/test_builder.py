"""The builder's offline parts: build key, platforms, zip, pruning, layout, manifest, job and command.

pip is replaced by a fake that lays out wheels on disk, so these tests need no network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from layershift_core.builder import (
    BUILDER_VERSION,
    AuditPolicy,
    Manifest,
    VariantIndex,
    build_job,
    build_layer,
    build_matrix,
    command,
    compute_build_key,
    compute_matrix_key,
    install,
)
from layershift_core.builder import audit as audit_module
from layershift_core.builder import build as build_module
from layershift_core.builder import strip as strip_module
from layershift_core.builder.distributions import scan
from layershift_core.builder.elf_check import ElfReport
from layershift_core.builder.matrix import parse_targets
from layershift_core.builder.platforms import RUNTIME_PROVIDED_PACKAGES, find_interpreter, target_for
from layershift_core.builder.prune import prune
from layershift_core.builder.smoke import SmokeReport
from layershift_core.builder.zipper import FIXED_DATE_TIME, sha256_file, write_zip
from layershift_core.errors import (
    BinaryCheckFailed,
    BuildFailed,
    ImportSmokeTestFailed,
    InvalidLayerSpec,
    InvalidRequirements,
    SizeBudgetExceeded,
)
from layershift_core.requirements import RequirementSet, parse_requirements

HAS_313 = find_interpreter("3.13") is not None
# A real x86_64 shared object of the build host (it needs libc.so.6 only, up to GLIBC_2.34), for the ELF check.
HOST_SO = Path("/usr/lib/x86_64-linux-gnu/liblzma.so.5")
SO_BYTES = HOST_SO.read_bytes() if HOST_SO.exists() else b""
needs_host_so = pytest.mark.skipif(not SO_BYTES, reason="needs the x86_64 Debian host's liblzma.so.5")


@pytest.fixture(autouse=True)
def _no_pip_audit(monkeypatch: pytest.MonkeyPatch) -> None:
    """pip-audit would reach the network: these builds see it as not installed unless a test says otherwise."""
    monkeypatch.setattr(audit_module, "pip_audit_available", lambda: False)


# ---------------------------------------------------------------- a fake pip


def _record_line(root: Path, rel: str) -> str:
    data = (root / rel).read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{rel},sha256={digest},{len(data)}"


def fake_wheel(
    dest: Path,
    name: str,
    version: str,
    files: dict[str, str | bytes],
    *,
    pure: bool = True,
    tags: tuple[str, ...] = ("py3-none-any",),
    top_level: list[str] | None = None,
) -> None:
    """Lay out an installed wheel the way ``pip install --target`` leaves it."""
    for rel, content in files.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    dist_info = f"{name.replace('-', '_')}-{version}.dist-info"
    (dest / dist_info).mkdir(parents=True)
    (dest / dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    wheel = "Wheel-Version: 1.0\nGenerator: test\n" + f"Root-Is-Purelib: {'true' if pure else 'false'}\n"
    wheel += "".join(f"Tag: {t}\n" for t in tags)
    (dest / dist_info / "WHEEL").write_text(wheel)
    meta = [f"{dist_info}/METADATA", f"{dist_info}/WHEEL"]
    if top_level is not None:
        (dest / dist_info / "top_level.txt").write_text("".join(f"{m}\n" for m in top_level))
        meta.append(f"{dist_info}/top_level.txt")
    lines = [_record_line(dest, rel) for rel in [*files, *meta]] + [f"{dist_info}/RECORD,,"]
    (dest / dist_info / "RECORD").write_text("\n".join(lines) + "\n")


def fake_installer(layout):
    """An ``install.install`` replacement that calls ``layout(dest)``."""

    def _install(reqs, target, dest, work):
        dest.mkdir(parents=True, exist_ok=True)
        layout(dest)
        return install.InstallResult(pip_python="fake", pip_version="0", command=[])

    return _install


def pure_layout(dest: Path) -> None:
    fake_wheel(
        dest,
        "alpha",
        "1.0",
        {
            "alpha/__init__.py": "VALUE = {'a', 'b'}\n",
            "alpha/core.py": "def f():\n    return 1\n",
            "alpha/tests/__init__.py": "",
            "alpha/tests/test_core.py": "def test(): pass\n",
            "alpha/__pycache__/core.cpython-39.pyc": b"stale",
        },
        top_level=["alpha"],
    )
    fake_wheel(dest, "beta-tools", "2.0", {"beta.py": "import alpha\n"}, tags=("py2-none-any", "py3-none-any"))


def binary_layout(dest: Path) -> None:
    pure_layout(dest)
    fake_wheel(
        dest,
        "gamma",
        "3.0",
        {"gamma/__init__.py": "", "gamma.libs/libfoo.so.1": SO_BYTES, "gamma/tests/x.py": ""},
        pure=False,
        tags=("cp313-cp313-manylinux_2_17_x86_64", "cp313-cp313-manylinux2014_x86_64"),
        top_level=["gamma"],
    )


# ---------------------------------------------------------------- build key and targets


def _reqs(text: str = "six==1.16.0\npyjwt==2.10.0\n") -> RequirementSet:
    return parse_requirements(text)


def test_build_key_is_stable_and_sensitive_to_every_input() -> None:
    key = compute_build_key(_reqs(), "python3.13", "x86_64")
    assert len(key) == 64
    assert key == compute_build_key(_reqs("# c\nPyJWT==2.10.0\nsix==1.16.0\n"), "python3.13", "x86_64", "default")
    others = {
        compute_build_key(_reqs("six==1.16.0\npyjwt==2.9.0\n"), "python3.13", "x86_64"),
        compute_build_key(_reqs(), "python3.12", "x86_64"),
        compute_build_key(_reqs(), "python3.13", "arm64"),
        compute_build_key(_reqs(), "python3.13", "x86_64", "sourceless"),
    }
    assert key not in others
    assert len(others) == 4


def test_build_key_covers_the_builder_version(monkeypatch: pytest.MonkeyPatch) -> None:
    from layershift_core.builder import key as key_module

    before = compute_build_key(_reqs(), "python3.13", "x86_64")
    monkeypatch.setattr(key_module, "BUILDER_VERSION", BUILDER_VERSION + "-next")
    assert compute_build_key(_reqs(), "python3.13", "x86_64") != before


def test_platform_tags_follow_the_runtime_glibc() -> None:
    al2023 = target_for("python3.13", "x86_64").platform_tags()
    assert al2023[0] == "manylinux_2_34_x86_64"
    assert "manylinux_2_17_x86_64" in al2023
    assert "manylinux2014_x86_64" in al2023
    assert "manylinux_2_35_x86_64" not in al2023
    al2 = target_for("python3.11", "arm64").platform_tags()
    assert al2[0] == "manylinux_2_26_aarch64"
    assert "manylinux_2_27_aarch64" not in al2
    assert al2[-1] == "manylinux2014_aarch64"
    assert all("aarch64" in tag for tag in al2)


def test_pip_command_is_wheel_only_for_the_target(tmp_path: Path) -> None:
    target = target_for("python3.12", "arm64")
    cmd = install.pip_command("py", target, tmp_path / "r.txt", tmp_path / "out", require_hashes=True)
    joined = " ".join(cmd)
    for part in (
        "--only-binary=:all:",
        "--no-compile",
        "--implementation cp",
        "--python-version 3.12",
        "--abi cp312",
        "--platform manylinux_2_34_aarch64",
        "--require-hashes",
        f"--target {tmp_path / 'out'}",
    ):
        assert part in joined
    assert "--no-deps" not in cmd


def test_top_level_markers_are_evaluated_for_the_target() -> None:
    reqs = parse_requirements(
        'six==1.16.0\ntomli==2.0.1; python_version < "3.11"\nuvloop==0.21.0; platform_machine == "aarch64"\n'
    )
    text, skipped = install.selected_requirements_text(reqs, target_for("python3.13", "arm64"))
    assert text == "six==1.16.0\nuvloop==0.21.0\n"
    assert skipped == ['tomli==2.0.1; python_version < "3.11"']


def test_unsupported_targets_are_refused() -> None:
    with pytest.raises(InvalidLayerSpec, match=r"python3\.9"):
        target_for("python3.9", "x86_64")
    with pytest.raises(InvalidLayerSpec, match="ppc64le"):
        target_for("python3.13", "ppc64le")


def test_key_error_lines_keep_errors_and_drop_noise() -> None:
    output = (
        "Collecting six==1.16.0\n"
        "WARNING: Location 'x' is ignored\n"
        "ERROR: Cannot install a==1 and b==2 because these package versions have conflicting dependencies.\n"
        "\n"
        "The conflict is caused by:\n"
        "    a 1 depends on c==1\n"
        "[notice] A new release of pip is available\n"
    )
    assert install.key_error_lines(output) == [
        "ERROR: Cannot install a==1 and b==2 because these package versions have conflicting dependencies.",
        "The conflict is caused by:",
        "    a 1 depends on c==1",
    ]


# ---------------------------------------------------------------- zip, prune, layout


def _tree(root: Path) -> None:
    (root / "python" / "pkg" / "sub").mkdir(parents=True)
    (root / "python" / "pkg" / "__init__.py").write_text("x = 1\n")
    (root / "python" / "pkg" / "sub" / "data.bin").write_bytes(os.urandom(0) + b"\x00\x01" * 500)
    tool = root / "python" / "pkg" / "tool.sh"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o700)
    (root / "python" / "pkg" / "b.py").write_text("b = 2\n")


def test_zip_is_deterministic_whatever_the_mtimes(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    _tree(root)
    write_zip(root, tmp_path / "a.zip")
    for i, path in enumerate(sorted(root.rglob("*"))):
        os.utime(path, (1_600_000_000 + i * 7, 1_700_000_001 + i * 13))
    (root / "python" / "pkg" / "b.py").chmod(0o600)
    write_zip(root, tmp_path / "b.zip")
    assert sha256_file(tmp_path / "a.zip") == sha256_file(tmp_path / "b.zip")


def test_zip_entries_are_sorted_with_fixed_times_and_modes(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    _tree(root)
    write_zip(root, tmp_path / "a.zip")
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    assert names == [
        "python/",
        "python/pkg/",
        "python/pkg/__init__.py",
        "python/pkg/b.py",
        "python/pkg/sub/",
        "python/pkg/sub/data.bin",
        "python/pkg/tool.sh",
    ]
    modes = {i.filename: stat.S_IMODE(i.external_attr >> 16) for i in infos}
    assert modes["python/"] == 0o755
    assert modes["python/pkg/b.py"] == 0o644
    assert modes["python/pkg/tool.sh"] == 0o755
    assert all(i.date_time == FIXED_DATE_TIME for i in infos)
    assert all(i.extra == b"" and i.create_system == 3 for i in infos)


def test_prune_removes_caches_and_package_tests_only(tmp_path: Path) -> None:
    site = tmp_path / "site"
    binary_layout(site)
    (site / "tests").mkdir()
    (site / "tests" / "__init__.py").write_text("")
    (site / "gamma.libs" / "tests").mkdir()
    (site / "gamma.libs" / "tests" / "keep.so").write_bytes(b"\x7fELF")
    report = prune(site)
    assert report.folders == ["alpha/__pycache__", "alpha/tests", "gamma/tests"]
    assert report.files == 4
    assert report.categories["tests"].files == 3
    assert report.categories["__pycache__"].files == 1
    assert not (site / "alpha" / "tests").exists()
    assert (site / "tests" / "__init__.py").exists()
    assert (site / "gamma.libs" / "libfoo.so.1").exists()
    assert (site / "gamma.libs" / "tests" / "keep.so").exists()
    assert (site / "alpha-1.0.dist-info" / "RECORD").exists()


def test_distribution_scan_and_pure_python_detection(tmp_path: Path) -> None:
    site = tmp_path / "site"
    binary_layout(site)
    dists = {d.name: d for d in scan(site)}
    assert set(dists) == {"alpha", "beta-tools", "gamma"}
    assert dists["alpha"].is_pure_python
    assert dists["beta-tools"].is_pure_python
    assert dists["beta-tools"].top_level == ["beta"]  # derived from RECORD
    assert not dists["gamma"].is_pure_python
    assert dists["gamma"].tags == ["cp313-cp313-manylinux2014_x86_64", "cp313-cp313-manylinux_2_17_x86_64"]
    target = target_for("python3.13", "x86_64")
    assert target.site_prefix(True) == "python"
    assert target.site_prefix(False) == "python/lib/python3.13/site-packages"


# ---------------------------------------------------------------- build_layer offline


def test_pure_python_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "install", fake_installer(pure_layout))
    lines: list[str] = []
    manifest = build_layer(
        "alpha==1.0\nbeta-tools==2.0\n",
        runtime="python3.13",
        architecture="x86_64",
        out_dir=tmp_path / "out",
        echo=lines.append,
    )
    assert manifest.layout == "python"
    assert manifest.pure_python
    assert manifest.compatible_architectures == ["arm64", "x86_64"]
    assert manifest.compatible_runtimes == ["python3.13"]
    assert [(p.name, p.version) for p in manifest.packages] == [("alpha", "1.0"), ("beta-tools", "2.0")]
    assert manifest.top_level_modules == ["alpha", "beta"]
    assert manifest.wheel_tags == ["py2-none-any", "py3-none-any"]
    assert manifest.build_key == compute_build_key(_reqs("alpha==1.0\nbeta-tools==2.0\n"), "python3.13", "x86_64")
    assert manifest.builder_version == BUILDER_VERSION
    assert manifest.pruned.folders == ["alpha/__pycache__", "alpha/tests"]
    assert {"install", "prune", "compile", "zip", "smoke_test", "total"} <= set(manifest.timings)
    assert manifest.sha256 == sha256_file(tmp_path / "out" / "layer.zip")
    assert manifest.zipped_bytes == (tmp_path / "out" / "layer.zip").stat().st_size
    assert Manifest.read(tmp_path / "out" / "manifest.json") == manifest
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["layout"] == "python"
    with zipfile.ZipFile(tmp_path / "out" / "layer.zip") as zf:
        names = zf.namelist()
    assert "python/alpha/__init__.py" in names
    assert "python/alpha-1.0.dist-info/RECORD" in names
    assert not any("/tests/" in n for n in names)
    assert not any("cpython-39" in n for n in names)
    assert "sha256" in "\n".join(lines)
    if HAS_313:
        assert manifest.bytecode.compiled
        assert manifest.bytecode.invalidation_mode == "unchecked-hash"
        assert "python/alpha/__pycache__/core.cpython-313.pyc" in names
        assert manifest.smoke_test.ran
        assert manifest.smoke_test.modules == 2
        assert manifest.smoke_test.recompiled == []
        assert manifest.warnings == []


@needs_host_so
def test_builds_are_byte_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "install", fake_installer(binary_layout))
    first = build_layer(
        "alpha==1.0\n", runtime="python3.13", architecture="x86_64", out_dir=tmp_path / "a", use_cache=False
    )
    second = build_layer(
        "alpha==1.0\n", runtime="python3.13", architecture="x86_64", out_dir=tmp_path / "b", use_cache=False
    )
    assert not second.cache_hit
    assert first.sha256 == second.sha256
    assert (tmp_path / "a" / "layer.zip").read_bytes() == (tmp_path / "b" / "layer.zip").read_bytes()


@needs_host_so
def test_binary_build_uses_the_versioned_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "install", fake_installer(binary_layout))
    manifest = build_layer("alpha==1.0\n", runtime="python3.13", architecture="x86_64", out_dir=tmp_path)
    assert manifest.layout == "python/lib/python3.13/site-packages"
    assert not manifest.pure_python
    assert manifest.compatible_architectures == ["x86_64"]
    with zipfile.ZipFile(tmp_path / "layer.zip") as zf:
        assert "python/lib/python3.13/site-packages/gamma.libs/libfoo.so.1" in zf.namelist()


def test_missing_interpreter_ships_no_bytecode_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "install", fake_installer(pure_layout))
    monkeypatch.setattr(build_module, "find_interpreter", lambda version: None)
    manifest = build_layer("alpha==1.0\n", runtime="python3.13", architecture="x86_64", out_dir=tmp_path)
    assert not manifest.bytecode.compiled
    assert not manifest.smoke_test.ran
    assert any("every cold start compiles" in w for w in manifest.warnings)
    with zipfile.ZipFile(tmp_path / "layer.zip") as zf:
        assert not any(n.endswith(".pyc") for n in zf.namelist())


def test_size_budget_reports_sizes_by_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def big_layout(dest: Path) -> None:
        fake_wheel(dest, "big", "1.0", {"big/__init__.py": "", "big/blob.bin": b"\x00" * 300_000}, top_level=["big"])
        fake_wheel(dest, "small", "1.0", {"small.py": ""})

    monkeypatch.setattr(install, "install", fake_installer(big_layout))
    monkeypatch.setattr(build_module, "UNZIPPED_BUDGET_BYTES", 200_000)
    with pytest.raises(SizeBudgetExceeded) as info:
        build_layer("big==1.0\n", runtime="python3.13", architecture="x86_64", out_dir=tmp_path / "out")
    message = str(info.value)
    assert "over Lambda's budget" in message
    table = message.splitlines()[1:]
    assert table[0].split()[:2] == ["big", "1.0"]
    assert table[1].split()[:2] == ["small", "1.0"]
    assert not (tmp_path / "out" / "layer.zip").exists()


@pytest.mark.skipif(not HAS_313, reason="needs a python3.13 interpreter")
def test_import_failure_names_module_and_exception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(dest: Path) -> None:
        fake_wheel(dest, "broken", "1.0", {"broken/__init__.py": "raise RuntimeError('needs a GPU')\n"})
        fake_wheel(dest, "needs-boto", "1.0", {"needs_boto.py": "import boto3\n"})

    monkeypatch.setattr(install, "install", fake_installer(broken))
    with pytest.raises(ImportSmokeTestFailed) as info:
        build_layer("broken==1.0\n", runtime="python3.13", architecture="x86_64", out_dir=tmp_path / "out")
    assert "broken: RuntimeError: needs a GPU" in str(info.value)
    assert "needs_boto" not in str(info.value)  # boto3 comes with the Lambda runtime
    assert not (tmp_path / "out").exists()


def _writer_layout(statement: str):
    def layout(dest: Path) -> None:
        code = f"import pathlib\nhere = pathlib.Path(__file__).parent\n{statement}\n"
        fake_wheel(dest, "writer", "1.0", {"writer/__init__.py": code, "writer/data.txt": "original"})

    return layout


@pytest.mark.skipif(not HAS_313, reason="needs a python3.13 interpreter")
def test_a_file_an_import_creates_never_reaches_the_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "install", fake_installer(_writer_layout("(here / 'cache.txt').write_text('x')")))
    out = tmp_path / "out"
    try:
        manifest = build_layer("writer==1.0\n", runtime="python3.13", architecture="x86_64", out_dir=out)
    except ImportSmokeTestFailed as exc:
        # the copy's folders are read-only, as Lambda's /opt is: only root outside a user namespace
        # (the smoke test's network namespace drops that override) can create the file at all
        assert "Permission denied" in str(exc) and "writer/cache.txt" in str(exc)
        assert not out.exists()
        return
    assert manifest.smoke_test.ran and manifest.smoke_test.modules == 1
    with zipfile.ZipFile(out / "layer.zip") as zf:
        assert not any(name.endswith("cache.txt") for name in zf.namelist())


@pytest.mark.skipif(not HAS_313, reason="needs a python3.13 interpreter")
def test_an_import_that_rewrites_its_own_files_fails_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "install", fake_installer(_writer_layout("(here / 'data.txt').write_text('changed')")))
    with pytest.raises(ImportSmokeTestFailed) as info:
        build_layer("writer==1.0\n", runtime="python3.13", architecture="x86_64", out_dir=tmp_path / "out")
    assert "rewrote its own files" in str(info.value)
    assert "writer/data.txt" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_invalid_requirements_fail_before_installing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args, **kwargs):
        raise AssertionError("pip must not run")

    monkeypatch.setattr(install, "install", never)
    with pytest.raises(InvalidRequirements, match="line 1"):
        build_layer("requests>=2\n", runtime="python3.13", architecture="x86_64", out_dir=tmp_path)


# ---------------------------------------------------------------- CLI and CodeBuild job


def test_command_builds_and_reports_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(install, "install", fake_installer(pure_layout))
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("alpha==1.0\n")
    assert command.main(["-r", str(reqs), "--runtime", "python3.13", "--arch", "arm64", "-o", str(tmp_path / "o")]) == 0
    assert Manifest.read(tmp_path / "o" / "manifest.json").architecture == "arm64"
    reqs.write_text("alpha>=1.0\n")
    assert command.main(["-r", str(reqs), "-o", str(tmp_path / "o2")]) == 1
    assert 'line 1: "alpha>=1.0" is not pinned' in capsys.readouterr().err
    assert command.main(["-r", str(reqs), "-o", str(tmp_path / "o3"), "--allow-ranges"]) == 0
    assert command.main(["-r", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "o4")]) == 1


BUILD_ARN = "arn:aws:codebuild:us-east-1:123456789012:build/LayerBuildProject-X:0b1c"
STAGED = f"staging/{BUILD_ARN}/"
EXPORT_FILE = Path(tempfile.gettempdir()) / f"layershift-test-{os.getpid()}.sha256"


def _job_env(bucket: str, key: str, **extra: str) -> dict[str, str]:
    env = {
        "LAYERSHIFT_REQUIREMENTS_URI": f"s3://{bucket}/layers/api/requirements.txt",
        "LAYERSHIFT_TARGETS": "python3.13/x86_64",
        "LAYERSHIFT_STAGING_URI": f"s3://{bucket}/staging/",
        "CODEBUILD_BUILD_ARN": BUILD_ARN,
        "LAYERSHIFT_EXPORT_FILE": str(EXPORT_FILE),
        "LAYERSHIFT_BUILD_KEY": key,
        "LAYERSHIFT_ALLOW_RANGES": "false",
    }
    env.update(extra)
    return env


@mock_aws
def test_build_job_downloads_builds_and_uploads(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(install, "install", fake_installer(pure_layout))
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="artifacts")
    text = "alpha==1.0\nbeta-tools==2.0\n"
    s3.put_object(Bucket="artifacts", Key="layers/api/requirements.txt", Body=text.encode())
    target_key = compute_build_key(_reqs(text), "python3.13", "x86_64")
    key = compute_matrix_key([target_key])
    for name, value in _job_env("artifacts", key).items():
        monkeypatch.setenv(name, value)
    assert build_job.main() == 0
    listing = s3.get_object(Bucket="artifacts", Key=f"{STAGED}variants.json")["Body"].read()
    index = VariantIndex.model_validate_json(listing)
    [variant] = index.variants
    manifest = Manifest.model_validate_json(
        s3.get_object(Bucket="artifacts", Key=f"{STAGED}{variant.manifest}")["Body"].read()
    )
    zipped = s3.get_object(Bucket="artifacts", Key=f"{STAGED}{variant.zip}")
    body = zipped["Body"].read()
    assert manifest.build_key == target_key and index.matrix_key == key
    assert hashlib.sha256(body).hexdigest() == manifest.sha256 == variant.files[variant.zip]
    assert sorted(variant.files) == [f"{variant.id}/{n}" for n in ("layer.zip", "manifest.json", "sbom.cdx.json")]
    assert zipped["Metadata"] == {}  # nothing in staging is trusted, and no metadata claims anything
    # the sha256 the buildspec exports is that of the variants.json staged
    assert EXPORT_FILE.read_text().strip() == hashlib.sha256(listing).hexdigest()
    # only the build's own staging folder was written
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="artifacts")["Contents"]]
    assert all(k.startswith(STAGED) for k in keys if k != "layers/api/requirements.txt")
    assert "succeeded" in capsys.readouterr().out


@mock_aws
def test_build_job_fails_with_a_clear_last_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(install, "install", fake_installer(pure_layout))
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="artifacts")
    s3.put_object(Bucket="artifacts", Key="layers/api/requirements.txt", Body=b"alpha==1.0\n")
    assert build_job.run(_job_env("artifacts", "0" * 64)) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("layershift build job failed: BuildFailed: build key mismatch")
    # No zip or manifest, but the reason is recorded where the workflow looks for it.
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="artifacts", Prefix="staging/").get("Contents", [])]
    assert keys == [f"{STAGED}build-failure.json"]
    record = json.loads(s3.get_object(Bucket="artifacts", Key=keys[0])["Body"].read())
    assert record["error"] == "BuildFailed" and "build key mismatch" in record["message"]

    s3.put_object(Bucket="artifacts", Key="layers/api/requirements.txt", Body=b"alpha>=1.0\n")
    assert build_job.run(_job_env("artifacts", "")) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (
        "layershift build job failed: InvalidRequirements: "
        'requirements.txt line 1: "alpha>=1.0" is not pinned; '
        "pin it with == (or set allow_ranges = true in layer.toml)"
    )
    env = _job_env("artifacts", "")
    del env["LAYERSHIFT_TARGETS"]
    assert build_job.run(env) == 2
    assert "LAYERSHIFT_TARGETS is not set" in capsys.readouterr().err


def test_build_failed_is_the_base_of_build_errors() -> None:
    assert issubclass(SizeBudgetExceeded, BuildFailed)
    assert issubclass(ImportSmokeTestFailed, BuildFailed)


# ---------------------------------------------------------------- pruning categories


def test_prune_removes_stubs_cython_and_c_sources_where_safe(tmp_path: Path) -> None:
    site = tmp_path / "site"
    files: dict[str, str | bytes] = {
        "delta/__init__.py": "from .core import f\n",
        "delta/core.py": "def f():\n    return 1\n",
        "delta/core.pyi": "def f() -> int: ...\n",
        "delta/py.typed": "",
        "delta/_speed.pyx": "cdef int x\n",
        "delta/_speed.pxd": "cdef int x\n",
        "delta/_inc.pxi": "",
        "delta/_speed.c": "int x;\n",
        "delta/_impl.cpp": "int y;\n",
        "delta/_core/include/delta/api.h": "#define X 1\n",
        "delta/_core/include/delta/api.hpp": "#define Y 1\n",
        "delta/test/test_x.py": "",
        "delta/sub/tests/test_y.py": "",
        "delta/testing/__init__.py": "",
    }
    fake_wheel(site, "delta", "1.0", files, top_level=["delta"])
    fake_wheel(site, "cffi", "1.17.1", {"cffi/__init__.py": "", "cffi/_cffi_include.h": "/* read at run time */\n"})
    fake_wheel(
        site,
        "epsilon",
        "1.0",
        {"epsilon/__init__.py": "from epsilon.tests import fixtures\n", "epsilon/tests/fixtures.py": ""},
    )
    fake_wheel(site, "zeta", "1.0", {"zeta/__init__.py": "from . import tests\n", "zeta/tests/__init__.py": ""})
    (site / "delta.libs").mkdir()
    (site / "delta.libs" / "libx.h").write_text("")
    report = prune(site)
    cats = report.categories
    assert cats["type stubs"].files == 1
    assert cats["cython sources"].files == 3
    assert cats["c sources and headers"].files == 4
    assert cats["tests"].files == 2
    assert cats["c sources and headers"].bytes == len("int x;\n") + len("int y;\n") + len("#define X 1\n") * 2
    assert report.bytes == sum(c.bytes for c in cats.values())
    assert not (site / "delta" / "core.pyi").exists()
    assert not (site / "delta" / "_core").exists()  # emptied folders go too
    assert not (site / "delta" / "test").exists()
    assert (site / "delta" / "py.typed").exists()
    assert (site / "delta" / "testing" / "__init__.py").exists()
    assert (site / "delta" / "core.py").exists()
    assert (site / "cffi" / "_cffi_include.h").exists()
    assert (site / "delta.libs" / "libx.h").exists()
    # test folders that the package imports stay
    assert (site / "epsilon" / "tests" / "fixtures.py").exists()
    assert (site / "zeta" / "tests" / "__init__.py").exists()
    assert sorted(k.split(" ")[0] for k in report.kept) == ["epsilon/tests", "zeta/tests"]


def test_extension_modules_exclude_vendored_libraries(tmp_path: Path) -> None:
    for rel in (
        "pkg/_core.cpython-313-x86_64-linux-gnu.so",
        "pkg/_abi.abi3.so",
        "pkg/plain.so",
        "pkg/libvendored.so",
        "pkg.libs/libopenblas-r0.so",
        "pkg/libarrow.so.1700",
    ):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x7fELF")
    found = [p.relative_to(tmp_path).as_posix() for p in strip_module.extension_modules(tmp_path)]
    assert found == ["pkg/_abi.abi3.so", "pkg/_core.cpython-313-x86_64-linux-gnu.so", "pkg/plain.so"]


# ---------------------------------------------------------------- profiles


def test_unknown_profile_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidLayerSpec, match="tiny"):
        build_layer("alpha==1.0\n", runtime="python3.13", architecture="x86_64", out_dir=tmp_path, profile="tiny")


@pytest.mark.skipif(not HAS_313, reason="needs a python3.13 interpreter")
def test_sourceless_profile_ships_pyc_in_place_and_is_reproducible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(install, "install", fake_installer(pure_layout))
    kwargs = {"runtime": "python3.13", "architecture": "x86_64", "profile": "sourceless", "use_cache": False}
    first = build_layer("alpha==1.0\n", out_dir=tmp_path / "a", **kwargs)
    second = build_layer("alpha==1.0\n", out_dir=tmp_path / "b", **kwargs)
    assert first.sha256 == second.sha256
    assert first.profile == "sourceless"
    assert first.bytecode.layout == "sourceless"
    assert first.bytecode.sources_kept == []
    with zipfile.ZipFile(tmp_path / "a" / "layer.zip") as zf:
        names = zf.namelist()
    assert "python/alpha/__init__.pyc" in names
    assert "python/alpha/core.pyc" in names
    assert "python/beta.pyc" in names
    assert not any(n.endswith(".py") for n in names)
    assert not any("__pycache__" in n for n in names)
    assert first.smoke_test.ran and first.smoke_test.modules == 2
    assert first.smoke_test.recompiled == []
    assert {p.name: p.unzipped_bytes > 0 for p in first.packages} == {"alpha": True, "beta-tools": True}


@pytest.mark.skipif(not HAS_313, reason="needs a python3.13 interpreter")
def test_sourceless_keeps_the_sources_a_package_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def layout(dest: Path) -> None:
        pure_layout(dest)
        fake_wheel(
            dest,
            "reader",
            "1.0",
            {"reader/__init__.py": "import inspect\n\ndef f():\n    pass\n\nSOURCE = inspect.getsource(f)\n"},
            top_level=["reader"],
        )

    monkeypatch.setattr(install, "install", fake_installer(layout))
    manifest = build_layer(
        "reader==1.0\n", runtime="python3.13", architecture="x86_64", out_dir=tmp_path, profile="sourceless"
    )
    assert manifest.bytecode.sources_kept == ["reader"]
    assert manifest.smoke_test.recompiled == []
    with zipfile.ZipFile(tmp_path / "layer.zip") as zf:
        names = zf.namelist()
    assert "python/reader/__init__.py" in names
    assert "python/reader/__pycache__/__init__.cpython-313.pyc" in names
    assert "python/reader/__init__.pyc" not in names
    assert "python/alpha/core.pyc" in names and "python/alpha/core.py" not in names


def _runtime_layout(dest: Path) -> None:
    pure_layout(dest)
    runtime = RUNTIME_PROVIDED_PACKAGES["python3.13"]
    fake_wheel(dest, "boto3", runtime["boto3"], {"boto3/__init__.py": "import botocore\n"}, top_level=["boto3"])
    fake_wheel(dest, "botocore", "0.0.1", {"botocore/__init__.py": "", "botocore/data/x.json": "{}"})
    fake_wheel(dest, "six", runtime["six"], {"six.py": ""})
    fake_wheel(dest, "needs-old-botocore", "1.0", {"needs_old_botocore.py": "import botocore\n"})
    metadata = dest / "needs_old_botocore-1.0.dist-info" / "METADATA"
    metadata.write_text(metadata.read_text() + "Requires-Dist: botocore<0.1\nRequires-Dist: six; extra == 'x'\n")


def test_slim_runtime_profile_drops_runtime_packages_and_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "install", fake_installer(_runtime_layout))
    manifest = build_layer(
        "boto3==1.0\n", runtime="python3.13", architecture="x86_64", out_dir=tmp_path, profile="slim-runtime"
    )
    assert {p.name for p in manifest.packages} == {"alpha", "beta-tools", "needs-old-botocore"}
    removed = {p.name: (p.version, p.runtime_version) for p in manifest.runtime_packages_removed}
    runtime = RUNTIME_PROVIDED_PACKAGES["python3.13"]
    assert removed == {
        "boto3": (runtime["boto3"], runtime["boto3"]),
        "botocore": ("0.0.1", runtime["botocore"]),
        "six": (runtime["six"], runtime["six"]),
    }
    assert manifest.pruned.categories["runtime-provided packages"].files >= 6
    assert any("left out botocore 0.0.1" in w and runtime["botocore"] in w for w in manifest.warnings)
    assert not any("left out boto3" in w for w in manifest.warnings)
    assert any("needs-old-botocore 1.0 requires botocore<0.1" in w for w in manifest.warnings)
    with zipfile.ZipFile(tmp_path / "layer.zip") as zf:
        names = zf.namelist()
    assert not any(n.startswith(("python/boto3", "python/botocore", "python/six")) for n in names)
    default = build_layer("boto3==1.0\n", runtime="python3.13", architecture="x86_64", out_dir=tmp_path / "d")
    assert "botocore" in {p.name for p in default.packages}
    assert default.build_key != manifest.build_key


# ---------------------------------------------------------------- stripping


def _fake_strip(tmp_path: Path) -> str:
    """A strip stand-in: writes the input minus its last half to the -o output."""
    tool = tmp_path / "fake-strip"
    tool.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "args = sys.argv[1:]\n"
        "out = args[args.index('-o') + 1]\n"
        "data = open(args[-1], 'rb').read()\n"
        "open(out, 'wb').write(data[: len(data) // 2])\n"
    )
    tool.chmod(0o755)
    return str(tool)


def _extension_layout(dest: Path) -> None:
    pure_layout(dest)
    fake_wheel(
        dest,
        "gamma",
        "3.0",
        {
            "gamma/__init__.py": "",
            "gamma/_fast.cpython-313-x86_64-linux-gnu.so": b"\x7fELF" + b"\x00" * 1000,
            "gamma.libs/libfoo.so.1": b"\x7fELF" + b"\x00" * 1000,
        },
        pure=False,
        tags=("cp313-cp313-manylinux_2_17_x86_64",),
        top_level=["gamma"],
    )


def _smoke_by_size(broken_when_stripped: bool):
    """A smoke test stand-in that fails when the extension module in the layer is the stripped one."""

    def _smoke(layer_root, prefix, modules, interpreter, raise_on_failure=True, **kwargs):
        size = (layer_root / prefix / "gamma/_fast.cpython-313-x86_64-linux-gnu.so").stat().st_size
        if broken_when_stripped and size < 1004:
            return SmokeReport(
                ran=True, modules=modules, failures=["gamma: ImportError: bad ELF"], failed_modules=["gamma"]
            )
        return SmokeReport(ran=True, modules=modules, import_seconds=0.01)

    return _smoke


def _elf_check_that(passes: Callable[[Path], bool] = lambda root: True):
    """A stand-in for the ELF check (the fake wheels' shared objects are not real ELF files)."""

    def _check(layer_root, target, owners=None):
        objects = sorted(p for p in Path(layer_root).rglob("*.so*") if p.is_file())
        report = ElfReport(
            checked=len(objects),
            needed=2 * len(objects),
            resolved_system=2 * len(objects),
            max_glibc="2.17",
            runtime=target.runtime,
            runtime_glibc="2.34",
        )
        if not passes(Path(layer_root)):
            report.failures.append(f"{objects[0].relative_to(layer_root)}: not a readable ELF shared object")
        return report

    return _check


@pytest.mark.parametrize("broken", [False, True])
def test_stripping_is_kept_only_when_the_smoke_test_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    monkeypatch.setattr(install, "install", fake_installer(_extension_layout))
    monkeypatch.setattr(build_module, "check_shared_objects", _elf_check_that())
    monkeypatch.setattr(build_module, "strip_tool", lambda target: (_fake_strip(tmp_path), None))
    monkeypatch.setattr(build_module, "find_interpreter", lambda version: sys.executable)
    monkeypatch.setattr(build_module, "host_can_run", lambda target: True)
    monkeypatch.setattr(build_module, "run_smoke_test", _smoke_by_size(broken))
    manifest = build_layer("gamma==3.0\n", runtime="python3.13", architecture="x86_64", out_dir=tmp_path / "out")
    with zipfile.ZipFile(tmp_path / "out" / "layer.zip") as zf:
        prefix = manifest.layout
        so_size = zf.getinfo(f"{prefix}/gamma/_fast.cpython-313-x86_64-linux-gnu.so").file_size
        assert zf.getinfo(f"{prefix}/gamma.libs/libfoo.so.1").file_size == 1004  # vendored: never stripped
    assert manifest.stripped.ran
    if broken:
        assert so_size == 1004
        assert manifest.stripped.restored
        assert manifest.stripped.files == 0 and manifest.stripped.bytes_saved == 0
        assert "bad ELF" in (manifest.stripped.note or "")
    else:
        assert so_size == 502
        assert not manifest.stripped.restored
        assert manifest.stripped.files == 1
        assert manifest.stripped.bytes_saved == 502


def test_stripping_is_skipped_when_the_smoke_test_cannot_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "install", fake_installer(_extension_layout))
    monkeypatch.setattr(build_module, "check_shared_objects", _elf_check_that())
    monkeypatch.setattr(build_module, "host_can_run", lambda target: False)
    monkeypatch.setattr(build_module, "strip_tool", lambda target: (None, "aarch64-linux-gnu-strip is not installed"))
    monkeypatch.setattr(build_module, "find_target_interpreter", lambda target: None)
    lines: list[str] = []
    manifest = build_layer(
        "gamma==3.0\n", runtime="python3.13", architecture="arm64", out_dir=tmp_path, echo=lines.append
    )
    assert not manifest.stripped.ran
    assert "smoke test cannot run" in (manifest.stripped.note or "")
    assert "aarch64-linux-gnu-strip is not installed" in (manifest.stripped.note or "")
    assert not manifest.smoke_test.ran
    # the ELF check ran and says so with its figures; the import did not, and the build says why
    binaries = manifest.binaries
    assert binaries.checks == ["elf"]
    assert (binaries.checked, binaries.needed, binaries.resolved_system, binaries.max_glibc) == (2, 4, 4, "2.17")
    assert binaries.machine == "aarch64" and binaries.failures == []
    assert "did not run" in (binaries.import_note or "")
    assert "aarch64 shared objects cannot load on this" in (binaries.import_note or "")
    assert "no qemu-aarch64" in (binaries.import_note or "")
    text = "\n".join(lines)
    assert "binaries   elf: 2 shared objects checked, 4 needed libraries resolved" in text
    assert "binaries   the import smoke test did not run for python3.13 arm64" in text


@pytest.mark.parametrize("passes_stripped", [True, False])
def test_arm64_extension_modules_are_stripped_when_the_elf_check_passes_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, passes_stripped: bool
) -> None:
    def intact(root: Path) -> bool:
        so = next(root.rglob("_fast.cpython-313-x86_64-linux-gnu.so"))
        return passes_stripped or so.stat().st_size == 1004

    monkeypatch.setattr(install, "install", fake_installer(_extension_layout))
    monkeypatch.setattr(build_module, "check_shared_objects", _elf_check_that(intact))
    monkeypatch.setattr(build_module, "host_can_run", lambda target: False)
    monkeypatch.setattr(build_module, "strip_tool", lambda target: (_fake_strip(tmp_path), None))
    monkeypatch.setattr(build_module, "find_target_interpreter", lambda target: None)
    manifest = build_layer("gamma==3.0\n", runtime="python3.13", architecture="arm64", out_dir=tmp_path / "out")
    with zipfile.ZipFile(tmp_path / "out" / "layer.zip") as zf:
        prefix = manifest.layout
        so_size = zf.getinfo(f"{prefix}/gamma/_fast.cpython-313-x86_64-linux-gnu.so").file_size
        assert zf.getinfo(f"{prefix}/gamma.libs/libfoo.so.1").file_size == 1004  # vendored: never stripped
    assert manifest.stripped.ran and not manifest.smoke_test.ran
    if passes_stripped:
        assert so_size == 502 and manifest.stripped.files == 1
    else:
        assert so_size == 1004 and manifest.stripped.restored
        assert "the ELF check failed" in (manifest.stripped.note or "")


def test_a_failing_elf_check_fails_the_build_with_its_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "install", fake_installer(_extension_layout))
    monkeypatch.setattr(build_module, "check_shared_objects", _elf_check_that(lambda root: False))
    with pytest.raises(BinaryCheckFailed, match="not a readable ELF shared object") as info:
        build_layer("gamma==3.0\n", runtime="python3.13", architecture="x86_64", out_dir=tmp_path / "out")
    assert "cannot load on the python3.13 runtime" in str(info.value)
    assert not (tmp_path / "out").exists()


@needs_host_so
def test_the_elf_check_runs_on_every_build_with_its_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "install", fake_installer(binary_layout))
    lines: list[str] = []
    manifest = build_layer(
        "alpha==1.0\n", runtime="python3.13", architecture="x86_64", out_dir=tmp_path, echo=lines.append
    )
    binaries = manifest.binaries
    assert binaries.checked == 1 and binaries.needed >= 1
    assert binaries.resolved_system == binaries.needed and binaries.resolved_in_layer == 0
    assert binaries.max_glibc is not None
    assert binaries.checks == (["elf", "import"] if HAS_313 else ["elf"])
    assert "timings" in "\n".join(lines) and "check_binaries" in manifest.timings
    assert f"binaries   {', '.join(binaries.checks)}: 1 shared objects checked" in "\n".join(lines)
    # the same object is too new for python3.11's Amazon Linux 2
    with pytest.raises(BinaryCheckFailed, match=r"gamma\.libs/libfoo\.so\.1 \(gamma 3\.0\): needs GLIBC_2\.\d+"):
        build_layer("alpha==1.0\n", runtime="python3.11", architecture="x86_64", out_dir=tmp_path / "311")


@pytest.mark.skipif(not HAS_313, reason="needs a python3.13 interpreter")
def test_an_arm64_import_runs_under_qemu_when_a_target_interpreter_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(install, "install", fake_installer(_extension_layout))
    monkeypatch.setattr(build_module, "check_shared_objects", _elf_check_that())
    monkeypatch.setattr(build_module, "host_can_run", lambda target: False)
    monkeypatch.setattr(build_module, "strip_tool", lambda target: (None, "aarch64-linux-gnu-strip is not installed"))
    # a stand-in prefix: the host's python3.13 plays the qemu-run target interpreter
    monkeypatch.setattr(build_module, "find_target_interpreter", lambda target: [str(find_interpreter("3.13"))])
    manifest = build_layer("gamma==3.0\n", runtime="python3.13", architecture="arm64", out_dir=tmp_path)
    assert manifest.smoke_test.ran and manifest.smoke_test.modules == 3
    assert manifest.binaries.checks == ["elf", "import (qemu)"]
    assert manifest.binaries.import_note is None


# ---------------------------------------------------------------- build cache


def test_unchanged_build_key_is_a_cache_hit_without_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "install", fake_installer(pure_layout))
    cache_dir = tmp_path / "cache"
    kwargs = {"runtime": "python3.13", "architecture": "x86_64", "cache_dir": cache_dir}
    first = build_layer("alpha==1.0\n", out_dir=tmp_path / "a", **kwargs)
    assert not first.cache_hit

    def never(*args, **kwargs):
        raise AssertionError("pip must not run on a cache hit")

    monkeypatch.setattr(install, "install", never)
    lines: list[str] = []
    second = build_layer("# same pins\nalpha==1.0\n", out_dir=tmp_path / "b", echo=lines.append, **kwargs)
    assert second.cache_hit
    assert second.sha256 == first.sha256
    assert (tmp_path / "b" / "layer.zip").read_bytes() == (tmp_path / "a" / "layer.zip").read_bytes()
    assert (tmp_path / "b" / "sbom.cdx.json").is_file()
    assert Manifest.read(tmp_path / "b" / "manifest.json").cache_hit
    assert any("cache hit" in line for line in lines)
    with pytest.raises(AssertionError, match="pip must not run"):
        build_layer("alpha==1.0\n", out_dir=tmp_path / "c", use_cache=False, **kwargs)
    # a cached zip that no longer matches its manifest is not reused
    (cache_dir / first.build_key / "layer.zip").write_bytes(b"corrupt")
    with pytest.raises(AssertionError, match="pip must not run"):
        build_layer("alpha==1.0\n", out_dir=tmp_path / "d", **kwargs)


def test_cache_dir_defaults_to_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from layershift_core.builder import default_cache_dir

    monkeypatch.setenv("LAYERSHIFT_BUILD_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LAYERSHIFT_BUILD_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "layershift" / "builds"


def test_command_no_cache_builds_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    fake = fake_installer(pure_layout)

    def counting(*args, **kwargs):
        calls.append(1)
        return fake(*args, **kwargs)

    monkeypatch.setattr(install, "install", counting)
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("alpha==1.0\n")
    base = ["-r", str(reqs), "--cache-dir", str(tmp_path / "cache")]
    assert command.main([*base, "-o", str(tmp_path / "o1")]) == 0
    assert command.main([*base, "-o", str(tmp_path / "o2")]) == 0
    assert len(calls) == 1
    assert command.main([*base, "-o", str(tmp_path / "o3"), "--no-cache"]) == 0
    assert len(calls) == 2


# ---------------------------------------------------------------- SBOM and audit


def test_sbom_is_valid_cyclonedx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_installer(pure_layout)

    def with_report(reqs, target, dest, work):
        result = fake(reqs, target, dest, work)
        result.wheels = {"alpha": {"url": "https://files.example/alpha-1.0-py3-none-any.whl", "sha256": "ab" * 32}}
        metadata = dest / "alpha-1.0.dist-info" / "METADATA"
        metadata.write_text(
            metadata.read_text() + "Summary: the alpha package\nClassifier: License :: OSI Approved :: MIT License\n"
        )
        return result

    monkeypatch.setattr(install, "install", with_report)
    manifest = build_layer("alpha==1.0\n", runtime="python3.13", architecture="x86_64", out_dir=tmp_path)
    assert manifest.sbom == "sbom.cdx.json"
    doc = json.loads((tmp_path / "sbom.cdx.json").read_text())
    assert doc["bomFormat"] == "CycloneDX"
    assert doc["specVersion"] == "1.5"
    assert doc["version"] == 1
    assert re.fullmatch(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", doc["serialNumber"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["metadata"]["timestamp"])
    assert doc["metadata"]["component"]["hashes"] == [{"alg": "SHA-256", "content": manifest.sha256}]
    components = {c["name"]: c for c in doc["components"]}
    assert set(components) == {"alpha", "beta-tools"}
    alpha = components["alpha"]
    assert alpha["type"] == "library"
    assert alpha["version"] == "1.0"
    assert alpha["purl"] == "pkg:pypi/alpha@1.0" == alpha["bom-ref"]
    assert alpha["licenses"] == [{"license": {"name": "MIT License"}}]
    assert alpha["hashes"] == [{"alg": "SHA-256", "content": "ab" * 32}]
    assert components["beta-tools"]["purl"] == "pkg:pypi/beta-tools@2.0"
    refs = [c["bom-ref"] for c in doc["components"]]
    assert len(refs) == len(set(refs))
    assert doc["dependencies"][0]["dependsOn"] == refs


def test_audit_unavailable_does_not_fail_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "install", fake_installer(pure_layout))
    manifest = build_layer(
        "alpha==1.0\n", runtime="python3.13", architecture="x86_64", out_dir=tmp_path, fail_on_vulnerability=True
    )
    assert manifest.audit.status == "unavailable"
    assert "not installed" in (manifest.audit.note or "")


def test_audit_output_is_parsed_and_gates_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = {
        "dependencies": [
            {
                "name": "alpha",
                "version": "1.0",
                "vulns": [{"id": "PYSEC-1", "aliases": ["CVE-1"], "fix_versions": ["1.1"]}],
            },
            {"name": "beta-tools", "version": "2.0", "vulns": []},
            {"name": "private", "skip_reason": "Dependency not found on PyPI"},
        ],
        "fixes": [],
    }
    report = audit_module.parse_output(output)
    assert report.status == "vulnerable"
    assert report.findings[0]["package"] == "alpha" and report.findings[0]["id"] == "PYSEC-1"
    assert report.skipped == 1
    offline = audit_module.parse_output({"dependencies": [{"name": "alpha", "skip_reason": "not found on PyPI"}]})
    assert offline.status == "unavailable"
    assert audit_module.parse_output({"dependencies": [{"name": "a", "version": "1", "vulns": []}]}).status == "ok"

    monkeypatch.setattr(install, "install", fake_installer(pure_layout))
    monkeypatch.setattr(audit_module, "run_audit", lambda packages: report)
    manifest = build_layer("alpha==1.0\n", runtime="python3.13", architecture="x86_64", out_dir=tmp_path / "a")
    assert manifest.audit.status == "vulnerable"
    assert any("PYSEC-1" in w for w in manifest.warnings)
    with pytest.raises(BuildFailed, match=r"alpha 1\.0: PYSEC-1 \(CVE-1\), fixed in 1\.1"):
        build_layer(
            "alpha==1.0\n",
            runtime="python3.13",
            architecture="x86_64",
            out_dir=tmp_path / "b",
            fail_on_vulnerability=True,
            use_cache=False,
        )
    assert not (tmp_path / "b" / "layer.zip").exists()


def test_manifest_records_timings_and_bytecode_details(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "install", fake_installer(pure_layout))
    lines: list[str] = []
    manifest = build_layer(
        "alpha==1.0\n", runtime="python3.13", architecture="x86_64", out_dir=tmp_path, echo=lines.append
    )
    assert {"install", "prune", "strip", "compile", "zip", "smoke_test", "sbom", "total"} <= set(manifest.timings)
    assert set(manifest.pruned.categories) >= {"tests", "__pycache__", "type stubs", "cython sources"}
    assert manifest.pruned.categories["__pycache__"].files == 1
    text = "\n".join(lines)
    assert "pruned" in text and "audit      unavailable" in text
    if HAS_313:
        assert manifest.bytecode.layout == "__pycache__"
        assert manifest.bytecode.interpreter
        assert manifest.bytecode.cold_start_cost is None


def test_missing_interpreter_says_what_it_costs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "install", fake_installer(pure_layout))
    monkeypatch.setattr(build_module, "find_interpreter", lambda version: None)
    lines: list[str] = []
    manifest = build_layer(
        "alpha==1.0\n",
        runtime="python3.13",
        architecture="x86_64",
        out_dir=tmp_path,
        profile="sourceless",
        echo=lines.append,
    )
    assert "every cold start compiles" in (manifest.bytecode.cold_start_cost or "")
    assert "every cold start compiles" in "\n".join(lines)
    assert any("sourceless profile needs the target interpreter" in w for w in manifest.warnings)


@mock_aws
def test_the_build_job_takes_no_cache_hit_from_the_bucket(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(install, "install", fake_installer(pure_layout))
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="artifacts")
    text = "alpha==1.0\n"
    s3.put_object(Bucket="artifacts", Key="layers/api/requirements.txt", Body=text.encode())
    key = compute_matrix_key([compute_build_key(_reqs(text), "python3.13", "x86_64")])
    assert build_job.run(_job_env("artifacts", key, LAYERSHIFT_NO_CACHE="true")) == 0
    sbom = s3.get_object(Bucket="artifacts", Key=f"{STAGED}python3.13-any/sbom.cdx.json")
    assert json.loads(sbom["Body"].read())["bomFormat"] == "CycloneDX"
    # objects that claim, by their metadata, to be this very build, at the job's own output
    # and under artifacts/, as the job of an earlier version used to read them
    for prefix in (STAGED, f"artifacts/api/{key}/"):
        for name in ("variants.json", "python3.13-any/layer.zip", "python3.13-any/manifest.json"):
            s3.copy_object(
                Bucket="artifacts",
                Key=prefix + name,
                CopySource={"Bucket": "artifacts", "Key": STAGED + name},
                Metadata={"build-key": key, "sha256": "claimed"},
                MetadataDirective="REPLACE",
            )
    capsys.readouterr()

    def never(*args, **kwargs):
        raise AssertionError("pip must not run")

    monkeypatch.setattr(install, "install", never)
    # the builder's local cache serves it (its zips checked against their manifests), not the bucket
    assert build_job.run(_job_env("artifacts", key)) == 0
    out = capsys.readouterr().out
    assert "build job: cache hit" not in out
    assert "layershift: cache hit for build key" in out
    # without the local cache the job builds, whatever the bucket holds: pip is called
    assert build_job.run(_job_env("artifacts", key, LAYERSHIFT_NO_CACHE="true")) == 1
    assert "pip must not run" in capsys.readouterr().err


# ---------------------------------------------------------------- the build matrix

HAS_312 = find_interpreter("3.12") is not None
needs_312_313 = pytest.mark.skipif(not (HAS_312 and HAS_313), reason="needs python3.12 and python3.13 interpreters")


def fake_resolver(packages: dict[str, str], pure: bool | Callable[[object], bool] = True):
    """An ``install.resolve`` replacement: every target resolves to ``packages``."""

    def _resolve(reqs, target, work):
        is_pure = pure(target) if callable(pure) else pure
        return install.Resolution(target, dict(packages), pure=is_pure)

    return _resolve


def counting_installer(layout_for):
    """An ``install.install`` replacement laying out ``layout_for(target)(dest)``; records the targets."""
    calls: list[tuple[str, str]] = []

    def _install(reqs, target, dest, work):
        calls.append((target.runtime, target.architecture))
        dest.mkdir(parents=True, exist_ok=True)
        layout_for(target)(dest)
        return install.InstallResult(pip_python="fake", pip_version="0", command=[])

    return _install, calls


def native_layout_for(target) -> Callable[[Path], None]:
    """gamma with an extension module tagged for the target's minor and machine."""
    abi = target.abi

    def layout(dest: Path) -> None:
        pure_layout(dest)
        fake_wheel(
            dest,
            "gamma",
            "3.0",
            {
                "gamma/__init__.py": "",
                f"gamma/_fast.{abi.replace('cp', 'cpython-')}-{target.machine}-linux-gnu.so": b"x",
            },
            pure=False,
            tags=(f"{abi}-{abi}-manylinux_2_17_{target.machine}",),
            top_level=["gamma"],
        )

    return layout


THREE_TARGETS = [("python3.12", "x86_64"), ("python3.13", "x86_64"), ("python3.13", "arm64")]


@needs_312_313
def test_a_pure_matrix_is_one_variant_with_bytecode_for_each_minor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(install, "resolve", fake_resolver({"alpha": "1.0", "beta-tools": "2.0"}))
    fake, calls = counting_installer(lambda target: pure_layout)
    monkeypatch.setattr(install, "install", fake)
    lines: list[str] = []
    index = build_matrix("alpha==1.0\n", targets=THREE_TARGETS, out_dir=tmp_path / "out", echo=lines.append)
    assert len(calls) == 1, "identical pure resolutions are installed once"
    (variant,) = index.variants
    assert variant.id == "python3.12-python3.13-any"
    assert variant.pure_python
    assert variant.compatible_runtimes == ["python3.12", "python3.13"]
    assert variant.compatible_architectures == ["arm64", "x86_64"]
    assert [(t.runtime, t.architecture) for t in variant.targets] == [
        ("python3.12", "x86_64"),
        ("python3.13", "arm64"),
        ("python3.13", "x86_64"),
    ]
    assert variant.packages == [{"name": "alpha", "version": "1.0"}, {"name": "beta-tools", "version": "2.0"}]
    assert (variant.zip, variant.manifest) == (f"{variant.id}/layer.zip", f"{variant.id}/manifest.json")
    assert index.variant_for("python3.12", "arm64") == variant  # compatible, though not a target
    assert index.variant_for("python3.11", "x86_64") is None
    assert VariantIndex.read(tmp_path / "out" / "variants.json") == index
    folder = tmp_path / "out" / variant.id
    assert sorted(p.name for p in folder.iterdir()) == ["layer.zip", "manifest.json", "sbom.cdx.json"]
    manifest = Manifest.read(folder / "manifest.json")
    assert manifest.sha256 == variant.sha256 == sha256_file(folder / "layer.zip")
    assert manifest.bytecode.python_versions == ["3.12", "3.13"]
    assert [(r.python_version, r.ran, r.recompiled) for r in manifest.smoke_test.runs] == [
        ("3.12", True, []),
        ("3.13", True, []),
    ]
    assert manifest.build_key == compute_matrix_key([t.build_key for t in variant.targets]) == index.matrix_key
    with zipfile.ZipFile(folder / "layer.zip") as zf:
        names = zf.namelist()
    assert "python/alpha/__pycache__/core.cpython-312.pyc" in names
    assert "python/alpha/__pycache__/core.cpython-313.pyc" in names
    assert "layershift: matrix" in "\n".join(lines)


@needs_312_313
def test_native_results_get_a_layer_per_architecture_sharing_minors_when_they_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(install, "resolve", fake_resolver({"alpha": "1.0", "gamma": "3.0"}, pure=False))
    fake, calls = counting_installer(native_layout_for)
    monkeypatch.setattr(install, "install", fake)
    monkeypatch.setattr(build_module, "check_shared_objects", _elf_check_that())
    index = build_matrix("gamma==3.0\n", targets=THREE_TARGETS, out_dir=tmp_path / "out")
    assert sorted(calls) == sorted(THREE_TARGETS)
    assert [v.id for v in index.variants] == ["python3.13-arm64", "python3.12-python3.13-x86_64"]
    arm, x86 = index.variants
    assert (arm.compatible_architectures, arm.compatible_runtimes) == (["arm64"], ["python3.13"])
    assert (x86.compatible_architectures, x86.compatible_runtimes) == (["x86_64"], ["python3.12", "python3.13"])
    assert index.variant_for("python3.12", "x86_64") == x86
    assert index.variant_for("python3.12", "arm64") is None
    with zipfile.ZipFile(tmp_path / "out" / x86.zip) as zf:
        names = zf.namelist()
    for minor in ("3.12", "3.13"):
        tag = minor.replace(".", "")
        assert f"python/lib/python{minor}/site-packages/gamma/_fast.cpython-{tag}-x86_64-linux-gnu.so" in names
        assert f"python/lib/python{minor}/site-packages/alpha/__pycache__/core.cpython-{tag}.pyc" in names
    manifest = Manifest.read(tmp_path / "out" / x86.manifest)
    assert manifest.layouts == ["python/lib/python3.12/site-packages", "python/lib/python3.13/site-packages"]
    assert {p.name: p.python_versions for p in manifest.packages}["gamma"] == ["3.12", "3.13"]
    assert manifest.binaries.checks == ["elf", "import"]
    arm_manifest = Manifest.read(tmp_path / "out" / arm.manifest)
    assert arm_manifest.binaries.checks == ["elf"]
    assert "did not run" in (arm_manifest.binaries.import_note or "")


def _wheel_digest(name: str, abi: str) -> str:
    """A stand-in wheel sha256: the pure wheel is one file for every target, a native one differs per ABI."""
    return hashlib.sha256(f"{name}-{abi if name == 'gamma' else 'py3'}".encode()).hexdigest()


@needs_312_313
def test_the_manifest_records_the_sha256_of_every_wheel_installed_and_the_zip_does_not_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(install, "resolve", fake_resolver({"alpha": "1.0", "gamma": "3.0"}, pure=False))
    monkeypatch.setattr(build_module, "check_shared_objects", _elf_check_that())
    targets = [("python3.12", "x86_64"), ("python3.13", "x86_64")]
    unreported, _ = counting_installer(native_layout_for)
    monkeypatch.setattr(install, "install", unreported)
    (without,) = build_matrix("gamma==3.0\n", targets=targets, out_dir=tmp_path / "without", use_cache=False).variants

    def reporting(reqs, target, dest, work):
        result = unreported(reqs, target, dest, work)
        result.wheels = {name: {"url": "", "sha256": _wheel_digest(name, target.abi)} for name in ("alpha", "gamma")}
        return result

    monkeypatch.setattr(install, "install", reporting)
    (variant,) = build_matrix("gamma==3.0\n", targets=targets, out_dir=tmp_path / "with", use_cache=False).variants
    hashes = {p.name: p.hashes for p in Manifest.read(tmp_path / "with" / variant.manifest).packages}
    assert hashes["alpha"] == [f"sha256:{_wheel_digest('alpha', 'cp312')}"], "one wheel served both minors"
    assert hashes["gamma"] == sorted(f"sha256:{_wheel_digest('gamma', abi)}" for abi in ("cp312", "cp313"))
    assert hashes["beta-tools"] == [], "pip reported no wheel for it: no hash is made up"
    # What pip reports goes into the manifest only: the layer zip is byte-identical.
    assert variant.sha256 == without.sha256
    assert (tmp_path / "with" / variant.zip).read_bytes() == (tmp_path / "without" / without.zip).read_bytes()


@needs_312_313
def test_native_minors_over_the_budget_together_get_a_layer_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(install, "resolve", fake_resolver({"alpha": "1.0", "gamma": "3.0"}, pure=False))
    fake, _calls = counting_installer(native_layout_for)
    monkeypatch.setattr(install, "install", fake)
    monkeypatch.setattr(build_module, "check_shared_objects", _elf_check_that())
    probe = build_layer("gamma==3.0\n", runtime="python3.13", architecture="x86_64", out_dir=tmp_path / "probe")
    # room for one minor's site-packages, not for two
    monkeypatch.setattr(build_module, "UNZIPPED_BUDGET_BYTES", int(probe.unzipped_bytes * 1.5))
    index = build_matrix("gamma==3.0\n", targets=THREE_TARGETS[:2], out_dir=tmp_path / "out", use_cache=False)
    assert [v.id for v in index.variants] == ["python3.12-x86_64", "python3.13-x86_64"]
    assert [v.compatible_runtimes for v in index.variants] == [["python3.12"], ["python3.13"]]


def test_a_matrix_of_one_target_gives_build_layers_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "install", fake_installer(pure_layout))

    def never(*args, **kwargs):
        raise AssertionError("one target needs no resolution")

    monkeypatch.setattr(install, "resolve", never)
    manifest = build_layer(
        "alpha==1.0\n", runtime="python3.13", architecture="x86_64", out_dir=tmp_path / "single", use_cache=False
    )
    index = build_matrix(
        "alpha==1.0\n", targets=[("python3.13", "x86_64")], out_dir=tmp_path / "matrix", use_cache=False
    )
    (variant,) = index.variants
    assert variant.id == "python3.13-any"
    assert variant.sha256 == manifest.sha256
    assert (tmp_path / "matrix" / variant.zip).read_bytes() == (tmp_path / "single" / "layer.zip").read_bytes()
    key = compute_build_key(_reqs("alpha==1.0\n"), "python3.13", "x86_64")
    assert manifest.build_key == variant.targets[0].build_key == key
    assert index.matrix_key == compute_matrix_key([key])


@needs_312_313
def test_sourceless_pure_minors_are_variants_of_their_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "resolve", fake_resolver({"alpha": "1.0", "beta-tools": "2.0"}))
    fake, calls = counting_installer(lambda target: pure_layout)
    monkeypatch.setattr(install, "install", fake)
    index = build_matrix("alpha==1.0\n", targets=THREE_TARGETS, out_dir=tmp_path, profile="sourceless")
    assert [v.id for v in index.variants] == ["python3.12-any", "python3.13-any"]
    assert len(calls) == 2
    with zipfile.ZipFile(tmp_path / index.variants[1].zip) as zf:
        assert "python/alpha/core.pyc" in zf.namelist()


def test_different_pure_resolutions_declare_only_their_own_architectures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def resolve(reqs, target, work):
        extra = {"uvloop-shim": "1.0"} if target.architecture == "arm64" else {}
        return install.Resolution(target, {"alpha": "1.0", **extra}, pure=True)

    monkeypatch.setattr(install, "resolve", resolve)
    fake, _calls = counting_installer(lambda target: pure_layout)
    monkeypatch.setattr(install, "install", fake)
    targets = [("python3.13", "x86_64"), ("python3.13", "arm64")]
    index = build_matrix("alpha==1.0\n", targets=targets, out_dir=tmp_path)
    assert sorted((v.id, tuple(v.compatible_architectures)) for v in index.variants) == [
        ("python3.13-arm64", ("arm64",)),
        ("python3.13-x86_64", ("x86_64",)),
    ]
    assert index.variant_for("python3.13", "arm64").id == "python3.13-arm64"


def test_a_matrix_is_served_from_the_cache_without_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "resolve", fake_resolver({"alpha": "1.0", "beta-tools": "2.0"}))
    fake, _calls = counting_installer(lambda target: pure_layout)
    monkeypatch.setattr(install, "install", fake)
    kwargs = {"targets": THREE_TARGETS, "cache_dir": tmp_path / "cache"}
    first = build_matrix("alpha==1.0\n", out_dir=tmp_path / "a", **kwargs)

    def never(*args, **kwargs):
        raise AssertionError("pip must not run on a cache hit")

    monkeypatch.setattr(install, "install", never)
    monkeypatch.setattr(install, "resolve", never)
    second = build_matrix(
        "alpha==1.0\n", out_dir=tmp_path / "b", targets=list(reversed(THREE_TARGETS)), cache_dir=tmp_path / "cache"
    )
    assert second.matrix_key == first.matrix_key
    assert [v.sha256 for v in second.variants] == [v.sha256 for v in first.variants]
    (variant,) = second.variants
    assert Manifest.read(tmp_path / "b" / variant.manifest).cache_hit
    assert (tmp_path / "b" / variant.zip).read_bytes() == (tmp_path / "a" / variant.zip).read_bytes()


def test_matrix_key_is_order_independent() -> None:
    keys = [compute_build_key(_reqs(), r, a) for r, a in THREE_TARGETS]
    assert compute_matrix_key(keys) == compute_matrix_key(list(reversed(keys))) == compute_matrix_key(keys + keys)
    assert compute_matrix_key(keys) == hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()
    assert compute_matrix_key(keys[:1]) != keys[0]
    assert compute_matrix_key(keys[:2]) != compute_matrix_key(keys)
    assert parse_targets(" python3.12/x86_64, python3.13/arm64 ") == [("python3.12", "x86_64"), ("python3.13", "arm64")]
    with pytest.raises(InvalidLayerSpec, match="runtime/architecture"):
        parse_targets("python3.13")


def test_the_audit_policy_is_part_of_the_build_key() -> None:
    base = compute_build_key(_reqs(), "python3.13", "x86_64")
    assert base == compute_build_key(_reqs(), "python3.13", "x86_64", audit_policy=AuditPolicy(fail_on="none"))
    strict = compute_build_key(_reqs(), "python3.13", "x86_64", audit_policy=AuditPolicy(fail_on="high"))
    failing = compute_build_key(
        _reqs(), "python3.13", "x86_64", audit_policy=AuditPolicy(fail_on="high", unavailable="fail")
    )
    assert len({base, strict, failing}) == 3


# ---------------------------------------------------------------- the vulnerability gate


def _finding(package: str, version: str, vid: str, severity: str | None, fixes: tuple[str, ...] = ("9.9",)) -> dict:
    return {
        "package": package,
        "version": version,
        "id": vid,
        "aliases": [f"CVE-2099-{vid[-1]}"],
        "fix_versions": list(fixes),
        "description": "",
        "severity": severity,
        "severity_source": f"GHSA-{vid[-1]} database_specific.severity" if severity else "OSV could not be reached",
    }


def _audit_returns(monkeypatch: pytest.MonkeyPatch, *findings: dict, status: str | None = None) -> list[dict]:
    """``run_audit`` answers with these findings (or ``status``); returns the package sets it was asked about."""
    asked: list[dict] = []

    def _run(packages):
        asked.append(dict(packages))
        if status is not None:
            return audit_module.AuditReport(status, note="the vulnerability service could not be reached")
        return audit_module.AuditReport(
            "vulnerable" if findings else "ok", [dict(f) for f in findings], audited=len(packages)
        )

    monkeypatch.setattr(audit_module, "run_audit", _run)
    return asked


def _gated_build(tmp_path: Path, policy: AuditPolicy, name: str = "out", **kwargs) -> Manifest:
    return build_layer(
        "alpha==1.0\n",
        runtime="python3.13",
        architecture="x86_64",
        out_dir=tmp_path / name,
        audit_policy=policy,
        cache_dir=tmp_path / "cache",
        **kwargs,
    )


def test_a_vulnerability_at_the_threshold_fails_the_build_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(install, "install", fake_installer(pure_layout))
    _audit_returns(
        monkeypatch,
        _finding("alpha", "1.0", "PYSEC-1", "high", ("1.1", "2.0")),
        _finding("beta-tools", "2.0", "PYSEC-2", "low"),
    )
    with pytest.raises(BuildFailed) as info:
        _gated_build(tmp_path, AuditPolicy(fail_on="high"))
    message = str(info.value)
    assert "the vulnerability gate (fail_on = high) stops this layer: 1 known vulnerability" in message
    assert (
        "alpha 1.0: PYSEC-1 (CVE-2099-1), fixed in 1.1, 2.0; severity high (GHSA-1 database_specific.severity)"
        in message
    )
    assert "beta-tools" not in message  # low is under the threshold
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_findings_under_the_threshold_pass_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "install", fake_installer(pure_layout))
    _audit_returns(monkeypatch, _finding("alpha", "1.0", "PYSEC-1", "moderate"))
    manifest = _gated_build(tmp_path, AuditPolicy(fail_on="high"))
    assert manifest.audit.status == "vulnerable"
    assert manifest.audit.findings[0]["severity"] == "moderate"
    assert any("below the gate's fail_on = high" in w and "PYSEC-1 (moderate)" in w for w in manifest.warnings)
    with pytest.raises(BuildFailed, match=r"fail_on = moderate"):
        _gated_build(tmp_path, AuditPolicy(fail_on="moderate"), name="strict")


def test_an_unknown_severity_fails_closed_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "install", fake_installer(pure_layout))
    _audit_returns(monkeypatch, _finding("alpha", "1.0", "PYSEC-7", None, fixes=()))
    with pytest.raises(BuildFailed) as info:
        _gated_build(tmp_path, AuditPolicy(fail_on="critical"))
    assert (
        "alpha 1.0: PYSEC-7 (CVE-2099-7), no fixed version published; severity unknown (OSV could not be "
        "reached): treated as critical, the threshold (fail closed)"
    ) in str(info.value)
    assert _gated_build(tmp_path, AuditPolicy(fail_on="none"), name="off").audit.status == "vulnerable"


@pytest.mark.parametrize("unavailable", ["fail", "warn"])
def test_an_audit_that_cannot_run_fails_or_warns_as_the_policy_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unavailable: str
) -> None:
    monkeypatch.setattr(install, "install", fake_installer(pure_layout))
    _audit_returns(monkeypatch, status="unavailable")
    policy = AuditPolicy(fail_on="high", unavailable=unavailable)
    if unavailable == "fail":
        with pytest.raises(BuildFailed, match=r"audit could not run .*unavailable = \"fail\""):
            _gated_build(tmp_path, policy)
        return
    manifest = _gated_build(tmp_path, policy)
    assert manifest.audit.status == "unavailable"
    assert any("the gate (fail_on = high) was not applied" in w for w in manifest.warnings)


def test_the_gate_holds_on_a_cache_hit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "install", fake_installer(pure_layout))
    asked = _audit_returns(monkeypatch)
    first = _gated_build(tmp_path, AuditPolicy(fail_on="high"), name="a")
    assert first.audit.status == "ok" and len(asked) == 1

    def never(*args, **kwargs):
        raise AssertionError("pip must not run on a cache hit")

    monkeypatch.setattr(install, "install", never)
    # an advisory published since: the cached layer is audited again and refused
    asked = _audit_returns(monkeypatch, _finding("alpha", "1.0", "PYSEC-9", "critical"))
    with pytest.raises(BuildFailed, match=r"alpha 1\.0: PYSEC-9 .*severity critical"):
        _gated_build(tmp_path, AuditPolicy(fail_on="high"), name="b")
    assert asked == [{"alpha": "1.0", "beta-tools": "2.0"}]
    assert not (tmp_path / "b").exists()
    # the service down on the cache hit: the build's own findings are gated, unavailable decides
    _audit_returns(monkeypatch, status="unavailable")
    hit = _gated_build(tmp_path, AuditPolicy(fail_on="high"), name="c")
    assert hit.cache_hit and hit.audit.status == "unavailable"
    assert "findings are the build's" in (hit.audit.note or "")
    # a policy with no gate has another build key: not this cache entry, and nothing to audit again
    assert compute_build_key(_reqs("alpha==1.0\n"), "python3.13", "x86_64") != first.build_key


def test_the_gate_holds_on_a_cache_hit_of_the_build_job(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(install, "install", fake_installer(pure_layout))
    _audit_returns(monkeypatch)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="artifacts")
        s3.put_object(Bucket="artifacts", Key="layers/api/requirements.txt", Body=b"alpha==1.0\n")
        policy = AuditPolicy()
        key = compute_matrix_key(
            [compute_build_key(_reqs("alpha==1.0\n"), "python3.13", "x86_64", audit_policy=policy)]
        )
        env = _job_env("artifacts", key, LAYERSHIFT_AUDIT_FAIL_ON="high", LAYERSHIFT_NO_CACHE="true")
        assert build_job.run(env) == 0
        capsys.readouterr()
        _audit_returns(monkeypatch, _finding("alpha", "1.0", "PYSEC-9", "high"))
        del env["LAYERSHIFT_NO_CACHE"]
        assert build_job.run(env) == 1
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("layershift build job failed: BuildFailed: the vulnerability gate (fail_on = high)")
        record = s3.get_object(Bucket="artifacts", Key=f"{STAGED}build-failure.json")["Body"].read()
        assert "PYSEC-9" in json.loads(record)["message"]


def test_severity_comes_from_osv_ghsa_first_then_cvss(monkeypatch: pytest.MonkeyPatch) -> None:
    records = {
        "PYSEC-1": {"id": "PYSEC-1", "severity": []},
        "GHSA-aaaa": {"id": "GHSA-aaaa", "database_specific": {"severity": "MODERATE"}},
        "PYSEC-2": {
            "id": "PYSEC-2",
            "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
        },
        "PYSEC-3": {"id": "PYSEC-3"},
    }
    monkeypatch.setattr(audit_module, "fetch_advisory", lambda vid: records.get(vid))
    report = audit_module.AuditReport(
        "vulnerable",
        [
            {"package": "a", "version": "1", "id": "PYSEC-1", "aliases": ["GHSA-aaaa"]},
            {"package": "b", "version": "1", "id": "PYSEC-2", "aliases": []},
            {"package": "c", "version": "1", "id": "PYSEC-3", "aliases": []},
            {"package": "d", "version": "1", "id": "PYSEC-404", "aliases": []},
        ],
    )
    audit_module.add_severities(report)
    found = [(f["severity"], f["severity_source"]) for f in report.findings]
    assert found == [
        ("moderate", "GHSA-aaaa database_specific.severity"),
        ("critical", "PYSEC-2 CVSS 9.8"),
        (None, "the advisory records no severity"),
        (None, "OSV could not be reached for its severity"),
    ]
    assert audit_module.cvss3_base_score("CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:N/I:N/A:H") == 5.9
    assert audit_module.cvss3_base_score("CVSS:3.1/AV:N/AC:L/PR:L/UI:N/S:C/C:H/I:H/A:H") == 9.9
    assert audit_module.cvss3_base_score("AV:N/AC:L/Au:N/C:P/I:P/A:P") is None  # CVSS v2: not rated here


def test_the_job_reads_the_audit_policy_from_its_environment() -> None:
    assert build_job.audit_policy({}) is None
    assert build_job.audit_policy(
        {"LAYERSHIFT_AUDIT_FAIL_ON": "critical", "LAYERSHIFT_AUDIT_UNAVAILABLE": "fail"}
    ) == AuditPolicy(fail_on="critical", unavailable="fail")
    assert build_job.audit_policy({"LAYERSHIFT_AUDIT_UNAVAILABLE": "fail"}) == AuditPolicy(
        fail_on="none", unavailable="fail"
    )
    with pytest.raises(build_job.JobConfigError, match="LAYERSHIFT_AUDIT_FAIL_ON='severe'"):
        build_job.audit_policy({"LAYERSHIFT_AUDIT_FAIL_ON": "severe"})


def test_layer_toml_audit_defaults_come_from_the_template_parameters() -> None:
    from layershift_core.settings import Settings
    from layershift_core.spec import parse_layer_spec

    defaults = Settings(bucket="bkt", table="tbl").spec_defaults
    assert parse_layer_spec(None, defaults).audit == AuditPolicy(fail_on="high", unavailable="warn")
    strict = Settings(bucket="bkt", table="tbl", audit_fail_on="moderate", audit_unavailable="fail").spec_defaults
    assert parse_layer_spec(None, strict).audit == AuditPolicy(fail_on="moderate", unavailable="fail")
    spec = parse_layer_spec(b'[audit]\nfail_on = "critical"\n', strict)
    assert spec.audit == AuditPolicy(fail_on="critical", unavailable="fail")
    with pytest.raises(InvalidLayerSpec, match=r"audit\.fail_on"):
        parse_layer_spec(b'[audit]\nfail_on = "severe"\n', defaults)


# ---------------------------------------------------------------- the build job's matrix


class _RecordingS3:
    """An S3 client that records the order of uploads."""

    def __init__(self, client) -> None:
        self._client = client
        self.uploaded: list[str] = []

    def upload_file(self, filename, bucket, key, ExtraArgs=None):
        self.uploaded.append(key)
        return self._client.upload_file(filename, bucket, key, ExtraArgs=ExtraArgs)

    def __getattr__(self, name):
        return getattr(self._client, name)


@mock_aws
def test_the_build_job_builds_a_matrix_and_uploads_variants_json_last(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(install, "resolve", fake_resolver({"alpha": "1.0", "gamma": "3.0"}, pure=False))
    fake, _calls = counting_installer(native_layout_for)
    monkeypatch.setattr(install, "install", fake)
    monkeypatch.setattr(build_module, "check_shared_objects", _elf_check_that())
    s3 = _RecordingS3(boto3.client("s3", region_name="us-east-1"))
    s3.create_bucket(Bucket="artifacts")
    s3.put_object(Bucket="artifacts", Key="layers/api/requirements.txt", Body=b"gamma==3.0\n")
    targets = [("python3.13", "x86_64"), ("python3.13", "arm64")]
    key = compute_matrix_key([compute_build_key(_reqs("gamma==3.0\n"), r, a) for r, a in targets])
    env = _job_env("artifacts", key, LAYERSHIFT_TARGETS="python3.13/x86_64,python3.13/arm64")
    assert build_job.run(env, s3_client=s3) == 0
    prefix = STAGED
    assert s3.uploaded[-1] == prefix + "variants.json"
    assert sorted(s3.uploaded[:-1]) == sorted(
        f"{prefix}{vid}/{name}"
        for vid in ("python3.13-arm64", "python3.13-x86_64")
        for name in ("layer.zip", "manifest.json", "sbom.cdx.json")
    )
    index = VariantIndex.model_validate_json(
        s3.get_object(Bucket="artifacts", Key=prefix + "variants.json")["Body"].read()
    )
    assert index.matrix_key == key
    for variant in index.variants:
        zipped = s3.get_object(Bucket="artifacts", Key=prefix + variant.zip)
        assert hashlib.sha256(zipped["Body"].read()).hexdigest() == variant.sha256
        assert zipped["Metadata"] == {}
    capsys.readouterr()

    def never(*args, **kwargs):
        raise AssertionError("pip must not run on a cache hit")

    monkeypatch.setattr(install, "install", never)
    monkeypatch.setattr(install, "resolve", never)
    assert build_job.run(env, s3_client=s3) == 0
    assert "layershift: cache hit for build key" in capsys.readouterr().out
    # a staged zip gone changes nothing: the builder's local cache serves the matrix again
    s3.delete_object(Bucket="artifacts", Key=prefix + index.variants[0].zip)
    assert build_job.run(env, s3_client=s3) == 0
    out = capsys.readouterr().out
    assert "build job: cache hit" not in out and "layershift: cache hit for build key" in out
    s3.head_object(Bucket="artifacts", Key=prefix + index.variants[0].zip)
    # the key the workflow expects is the matrix key
    assert (
        build_job.run(
            {**env, "LAYERSHIFT_BUILD_KEY": compute_build_key(_reqs("gamma==3.0\n"), *targets[0])}, s3_client=s3
        )
        == 1
    )
    assert "build key mismatch" in capsys.readouterr().err
    assert build_job.run({**env, "LAYERSHIFT_TARGETS": "python3.13"}, s3_client=s3) == 2


def test_an_optional_extra_the_smoke_test_reports_is_a_manifest_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(install, "install", fake_installer(pure_layout))
    monkeypatch.setattr(build_module, "find_interpreter", lambda version: sys.executable)
    extra = (
        "beta (beta-tools 2.0) needs aiohttp, which is not installed: the extra 'd'. Install beta-tools[d] to use beta"
    )

    def smoke(layer_root, prefix, modules, interpreter, raise_on_failure=True, **kwargs):
        return SmokeReport(ran=True, modules=modules, import_seconds=0.01, optional_extras=[extra])

    monkeypatch.setattr(build_module, "run_smoke_test", smoke)
    manifest = build_layer("alpha==1.0\n", runtime="python3.13", architecture="x86_64", out_dir=tmp_path)
    assert extra in manifest.notes
