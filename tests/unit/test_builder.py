"""The builder's offline parts: build key, platforms, zip, pruning, layout, manifest, job and command.

pip is replaced by a fake that lays out wheels on disk, so these tests need no network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import zipfile
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from layershift_core.builder import (
    BUILDER_VERSION,
    Manifest,
    build_job,
    build_layer,
    command,
    compute_build_key,
    install,
)
from layershift_core.builder import build as build_module
from layershift_core.builder.distributions import scan
from layershift_core.builder.platforms import find_interpreter, target_for
from layershift_core.builder.prune import prune
from layershift_core.builder.zipper import FIXED_DATE_TIME, sha256_file, write_zip
from layershift_core.errors import (
    BuildFailed,
    ImportSmokeTestFailed,
    InvalidLayerSpec,
    InvalidRequirements,
    SizeBudgetExceeded,
)
from layershift_core.requirements import RequirementSet, parse_requirements

HAS_313 = find_interpreter("3.13") is not None


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
        {"gamma/__init__.py": "", "gamma.libs/libfoo.so.1": b"\x7fELF", "gamma/tests/x.py": ""},
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


def test_builds_are_byte_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "install", fake_installer(binary_layout))
    first = build_layer("alpha==1.0\n", runtime="python3.13", architecture="x86_64", out_dir=tmp_path / "a")
    second = build_layer("alpha==1.0\n", runtime="python3.13", architecture="x86_64", out_dir=tmp_path / "b")
    assert first.sha256 == second.sha256
    assert (tmp_path / "a" / "layer.zip").read_bytes() == (tmp_path / "b" / "layer.zip").read_bytes()


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


def _job_env(bucket: str, key: str, **extra: str) -> dict[str, str]:
    env = {
        "LAYERSHIFT_REQUIREMENTS_URI": f"s3://{bucket}/layers/api/requirements.txt",
        "LAYERSHIFT_RUNTIME": "python3.13",
        "LAYERSHIFT_ARCH": "x86_64",
        "LAYERSHIFT_OUTPUT_URI": f"s3://{bucket}/artifacts/api/{key}/",
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
    key = compute_build_key(_reqs(text), "python3.13", "x86_64")
    for name, value in _job_env("artifacts", key).items():
        monkeypatch.setenv(name, value)
    assert build_job.main() == 0
    manifest = Manifest.model_validate_json(
        s3.get_object(Bucket="artifacts", Key=f"artifacts/api/{key}/manifest.json")["Body"].read()
    )
    zipped = s3.get_object(Bucket="artifacts", Key=f"artifacts/api/{key}/layer.zip")
    body = zipped["Body"].read()
    assert manifest.build_key == key
    assert hashlib.sha256(body).hexdigest() == manifest.sha256
    assert zipped["Metadata"]["sha256"] == manifest.sha256
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
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="artifacts", Prefix="artifacts/").get("Contents", [])]
    assert keys == [f"artifacts/api/{'0' * 64}/build-failure.json"]
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
    del env["LAYERSHIFT_RUNTIME"]
    assert build_job.run(env) == 2
    assert "LAYERSHIFT_RUNTIME is not set" in capsys.readouterr().err


def test_build_failed_is_the_base_of_build_errors() -> None:
    assert issubclass(SizeBudgetExceeded, BuildFailed)
    assert issubclass(ImportSmokeTestFailed, BuildFailed)
