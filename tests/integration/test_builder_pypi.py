"""Real builds from PyPI: small sets, built twice, for both layouts; and an sdist-only pin."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from layershift.local.server import LocalAws
from layershift_core.builder import (
    Manifest,
    VariantIndex,
    build_job,
    build_layer,
    build_matrix,
    compute_build_key,
    compute_matrix_key,
    install,
)
from layershift_core.builder.platforms import find_interpreter, host_can_run, target_for
from layershift_core.errors import SdistOnlyPackage
from layershift_core.requirements import parse_requirements

pytestmark = pytest.mark.network

PURE = "six==1.16.0\npyjwt==2.10.0\n"
BINARY = "orjson==3.10.11\nsix==1.16.0\n"
HAS_313 = find_interpreter("3.13") is not None


def _build(text: str, out: Path, arch: str = "x86_64", profile: str = "default") -> Manifest:
    return build_layer(text, runtime="python3.13", architecture=arch, out_dir=out, profile=profile, use_cache=False)


def test_pure_python_set_is_reproducible(tmp_path: Path) -> None:
    first = _build(PURE, tmp_path / "a")
    second = _build(PURE, tmp_path / "b")
    assert first.sha256 == second.sha256
    assert first.layout == "python"
    assert first.compatible_architectures == ["arm64", "x86_64"]
    assert first.package_versions() == {"pyjwt": "2.10.0", "six": "1.16.0"}
    assert first.top_level_modules == ["jwt", "six"]
    assert Manifest.read(tmp_path / "a" / "manifest.json") == first
    with zipfile.ZipFile(tmp_path / "a" / "layer.zip") as zf:
        names = zf.namelist()
    assert "python/jwt/__init__.py" in names
    assert "python/six.py" in names
    if HAS_313:
        assert "python/jwt/__pycache__/__init__.cpython-313.pyc" in names
        assert first.smoke_test.ran
        assert first.smoke_test.recompiled == []


def test_binary_wheel_set_is_reproducible(tmp_path: Path) -> None:
    first = _build(BINARY, tmp_path / "a")
    second = _build(BINARY, tmp_path / "b")
    assert first.sha256 == second.sha256
    assert first.layout == "python/lib/python3.13/site-packages"
    assert first.compatible_architectures == ["x86_64"]
    orjson = next(p for p in first.packages if p.name == "orjson")
    assert orjson.version == "3.10.11"
    assert any("cp313" in tag and "manylinux" in tag and "x86_64" in tag for tag in orjson.wheel_tags)
    if HAS_313:
        assert first.smoke_test.ran
        assert first.smoke_test.modules == 2


def test_arm64_binary_build_uses_aarch64_wheels(tmp_path: Path) -> None:
    manifest = _build(BINARY, tmp_path, arch="arm64")
    orjson = next(p for p in manifest.packages if p.name == "orjson")
    assert all("aarch64" in tag for tag in orjson.wheel_tags)
    assert manifest.compatible_architectures == ["arm64"]
    # the ELF check ran on the aarch64 objects with its figures; the import could not, and says why
    binaries = manifest.binaries
    assert binaries.checked >= 1 and binaries.needed >= 1
    assert binaries.resolved_system + binaries.resolved_in_layer == binaries.needed
    assert binaries.max_glibc is not None
    if not host_can_run(target_for("python3.13", "arm64")):
        assert binaries.checks in (["elf"], ["elf", "import (qemu)"])
        if binaries.checks == ["elf"]:
            assert not manifest.smoke_test.ran
            assert "did not run" in (binaries.import_note or "")
            assert "aarch64 shared objects cannot load" in (binaries.import_note or "")
    if shutil.which("aarch64-linux-gnu-strip"):  # stripped with the cross tool, kept as the ELF check passed
        assert manifest.stripped.ran and manifest.stripped.files >= 1 and not manifest.stripped.restored


def test_a_matrix_shares_one_pure_layer_and_builds_native_ones_per_architecture(tmp_path: Path) -> None:
    targets = [("python3.12", "x86_64"), ("python3.13", "x86_64"), ("python3.13", "arm64")]
    pure = build_matrix(PURE, targets=targets, out_dir=tmp_path / "pure", use_cache=False)
    assert [v.id for v in pure.variants] == ["python3.12-python3.13-any"]
    assert pure.variants[0].compatible_architectures == ["arm64", "x86_64"]
    native = build_matrix(BINARY, targets=targets, out_dir=tmp_path / "native", use_cache=False)
    assert [v.id for v in native.variants] == ["python3.13-arm64", "python3.12-python3.13-x86_64"]
    with zipfile.ZipFile(tmp_path / "native" / native.variants[1].zip) as zf:
        names = zf.namelist()
    assert any(n.startswith("python/lib/python3.12/site-packages/orjson/orjson.cpython-312-x86_64") for n in names)
    assert any(n.startswith("python/lib/python3.13/site-packages/orjson/orjson.cpython-313-x86_64") for n in names)
    single = _build(BINARY, tmp_path / "single", arch="arm64")
    assert native.variant_for("python3.13", "arm64").sha256 == single.sha256


def test_sdist_only_pin_fails_naming_the_package(tmp_path: Path) -> None:
    with pytest.raises(SdistOnlyPackage) as info:
        _build("six==1.16.0\ndocopt==0.6.2\n", tmp_path / "out")
    assert "docopt==0.6.2" in str(info.value)
    assert "source distribution" in str(info.value)
    assert not (tmp_path / "out" / "layer.zip").exists()


def test_build_job_end_to_end(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, local_aws: LocalAws) -> None:
    """The job against the session's local S3 (an in-process moto mock would reset the server the
    worker's other integration tests share)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", local_aws.endpoint_url)
    s3 = local_aws.client("s3")
    s3.create_bucket(Bucket="build-job-artifacts")
    s3.put_object(Bucket="build-job-artifacts", Key="layers/auth/requirements.txt", Body=PURE.encode())
    key = compute_matrix_key([compute_build_key(parse_requirements(PURE), "python3.13", "x86_64")])
    env = {
        "LAYERSHIFT_REQUIREMENTS_URI": "s3://build-job-artifacts/layers/auth/requirements.txt",
        "LAYERSHIFT_TARGETS": "python3.13/x86_64",
        "LAYERSHIFT_STAGING_URI": "s3://build-job-artifacts/staging/",
        "CODEBUILD_BUILD_ARN": "arn:aws:codebuild:us-east-1:123456789012:build/LayerBuildProject:1",
        "LAYERSHIFT_EXPORT_FILE": str(tmp_path / "variants.sha256"),
        "LAYERSHIFT_BUILD_KEY": key,
        "LAYERSHIFT_ALLOW_RANGES": "false",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert build_job.main() == 0
    staged = f"staging/{env['CODEBUILD_BUILD_ARN']}/"
    listing = s3.get_object(Bucket="build-job-artifacts", Key=f"{staged}variants.json")["Body"].read()
    assert (tmp_path / "variants.sha256").read_text().strip() == hashlib.sha256(listing).hexdigest()
    index = VariantIndex.model_validate_json(listing)
    [variant] = index.variants
    manifest = Manifest.model_validate_json(
        s3.get_object(Bucket="build-job-artifacts", Key=f"{staged}{variant.manifest}")["Body"].read()
    )
    body = s3.get_object(Bucket="build-job-artifacts", Key=f"{staged}{variant.zip}")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == manifest.sha256 == variant.files[variant.zip]
    assert manifest.smoke_test.network
    assert manifest.package_versions() == {"pyjwt": "2.10.0", "six": "1.16.0"}


@pytest.mark.skipif(not HAS_313, reason="needs a python3.13 interpreter")
def test_sourceless_profile_is_reproducible_and_imports_without_recompiling(tmp_path: Path) -> None:
    first = _build(BINARY, tmp_path / "a", profile="sourceless")
    second = _build(BINARY, tmp_path / "b", profile="sourceless")
    assert first.sha256 == second.sha256
    assert first.bytecode.layout == "sourceless"
    with zipfile.ZipFile(tmp_path / "a" / "layer.zip") as zf:
        names = zf.namelist()
    site = first.layout
    assert f"{site}/six.pyc" in names
    assert first.bytecode.sources_kept == []
    assert not [n for n in names if n.endswith(".py")]
    assert first.smoke_test.ran
    assert first.smoke_test.modules == 2
    assert first.smoke_test.recompiled == []
    default = _build(BINARY, tmp_path / "c")
    assert first.unzipped_bytes < default.unzipped_bytes


@pytest.mark.skipif(not HAS_313, reason="needs a python3.13 interpreter")
def test_default_profile_prunes_strips_and_records_it(tmp_path: Path) -> None:
    manifest = _build(BINARY, tmp_path)
    assert manifest.pruned.categories["type stubs"].files >= 1  # orjson ships __init__.pyi
    assert manifest.stripped.ran
    assert not manifest.stripped.restored
    assert manifest.smoke_test.recompiled == []
    assert manifest.audit.status in {"ok", "vulnerable", "unavailable"}
    doc = json.loads((tmp_path / "sbom.cdx.json").read_text())
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.5"
    orjson = next(c for c in doc["components"] if c["name"] == "orjson")
    assert orjson["purl"] == "pkg:pypi/orjson@3.10.11"
    assert orjson["hashes"][0]["alg"] == "SHA-256" and len(orjson["hashes"][0]["content"]) == 64
    with zipfile.ZipFile(tmp_path / "layer.zip") as zf:
        assert not any(n.endswith(".pyi") for n in zf.namelist())


def test_slim_runtime_profile_leaves_out_six(tmp_path: Path) -> None:
    manifest = _build(PURE, tmp_path, profile="slim-runtime")
    assert manifest.package_versions() == {"pyjwt": "2.10.0"}
    assert [p.name for p in manifest.runtime_packages_removed] == ["six"]
    with zipfile.ZipFile(tmp_path / "layer.zip") as zf:
        assert not any("six" in n for n in zf.namelist())


def test_rebuild_with_unchanged_key_is_a_cache_hit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache_dir = tmp_path / "cache"
    first = build_layer(PURE, runtime="python3.13", architecture="x86_64", out_dir=tmp_path / "a", cache_dir=cache_dir)

    def never(*args, **kwargs):
        raise AssertionError("pip must not run on a cache hit")

    monkeypatch.setattr(install, "install", never)
    second = build_layer(PURE, runtime="python3.13", architecture="x86_64", out_dir=tmp_path / "b", cache_dir=cache_dir)
    assert second.cache_hit and second.sha256 == first.sha256
