"""The benchmark's measurement code, on tiny synthetic layers: no network, no real builds."""

from __future__ import annotations

import importlib.util
import os
import py_compile
import sys
import time
import zipfile
from pathlib import Path

import pytest

from bench import measure, report, variants

ODD = time.mktime((2024, 5, 6, 7, 8, 9, 0, 0, -1))  # a local time with an odd second
EVEN = ODD + 1


def _module(site: Path, rel: str, source: str, mtime: float, mode: str | None = "timestamp") -> Path:
    path = site / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")
    os.utime(path, (mtime, mtime))
    if mode is not None:
        invalidation = {
            "timestamp": py_compile.PycInvalidationMode.TIMESTAMP,
            "unchecked-hash": py_compile.PycInvalidationMode.UNCHECKED_HASH,
        }[mode]
        py_compile.compile(
            str(path), cfile=importlib.util.cache_from_source(str(path)), invalidation_mode=invalidation, doraise=True
        )
    return path


def _layer(tmp_path: Path, mtime: float, mode: str | None) -> Path:
    root = tmp_path / "build"
    site = root / "python"
    _module(site, "pkg/__init__.py", "from pkg import inner\n", mtime, mode)
    _module(site, "pkg/inner.py", "VALUE = 1\n", mtime, mode)
    _module(site, "solo.py", "X = 2\n", mtime, mode)
    zip_path = tmp_path / "layer.zip"
    measure.plain_zip(root, zip_path)
    return zip_path


def _imports(tmp_path: Path, zip_path: Path, modules: list[str]) -> measure.ImportRun:
    dest = tmp_path / "opt"
    measure.extract_keeping_times(zip_path, dest)
    return measure.import_once(sys.executable, measure.layer_paths(dest, "3.13"), modules)


def test_zip_round_trip_keeps_times_at_two_second_resolution(tmp_path):
    zip_path = _layer(tmp_path, ODD, None)
    dest = tmp_path / "opt"
    measure.extract_keeping_times(zip_path, dest)
    assert int((dest / "python" / "solo.py").stat().st_mtime) == int(ODD) - 1
    with zipfile.ZipFile(zip_path) as zf:
        assert "python/pkg/" in zf.namelist()


def test_odd_second_sources_make_timestamp_bytecode_stale(tmp_path):
    run = _imports(tmp_path, _layer(tmp_path, ODD, "timestamp"), ["pkg", "solo"])
    assert run.failures == []
    assert len(run.recompiled) == 3


def test_even_second_sources_keep_timestamp_bytecode_valid(tmp_path):
    run = _imports(tmp_path, _layer(tmp_path, EVEN, "timestamp"), ["pkg", "solo"])
    assert run.recompiled == []


def test_unchecked_hash_bytecode_survives_any_timestamp(tmp_path):
    run = _imports(tmp_path, _layer(tmp_path, ODD, "unchecked-hash"), ["pkg", "solo"])
    assert run.recompiled == []


def test_no_bytecode_counts_every_module(tmp_path):
    run = _imports(tmp_path, _layer(tmp_path, EVEN, None), ["pkg", "solo"])
    assert len(run.recompiled) == 3


def test_import_failures_are_named_and_others_still_import(tmp_path):
    root = tmp_path / "build"
    _module(root / "python", "broken/__init__.py", "import not_shipped_anywhere\n", EVEN, None)
    _module(root / "python", "fine.py", "\n", EVEN, None)
    zip_path = tmp_path / "layer.zip"
    measure.plain_zip(root, zip_path)
    run = _imports(tmp_path, zip_path, ["broken", "fine"])
    assert [f["module"] for f in run.failures] == ["broken"]
    assert run.failures[0]["missing"] == "not_shipped_anywhere"


def test_modules_found_after_the_layer_are_reported(tmp_path):
    layer = tmp_path / "layer"
    runtime = tmp_path / "runtime"
    _module(layer, "mine.py", "\n", EVEN, None)
    _module(runtime, "sdk.py", "\n", EVEN, None)
    result = measure.measure_imports(sys.executable, [layer], ["mine", "sdk"], runs=3, back=[runtime])
    assert result.runs == 3 and len(result.all_seconds) == 3
    assert result.failures == [] and result.from_runtime == ["sdk"]
    assert result.recompiled == 2


def test_top_level_modules_from_top_level_txt_and_record(tmp_path):
    site = tmp_path / "site"
    (site / "a-1.0.dist-info").mkdir(parents=True)
    (site / "a-1.0.dist-info" / "top_level.txt").write_text("alpha\nghost\n")
    (site / "alpha").mkdir()
    (site / "b-2.0.dist-info").mkdir()
    (site / "b-2.0.dist-info" / "RECORD").write_text(
        "beta.py,sha256=x,1\n"
        "_speed.cpython-313-x86_64-linux-gnu.so,,\n"
        "gamma/__init__.py,,\n"
        "b-2.0.dist-info/RECORD,,\n"
        "../../bin/tool,,\n"
        "b.libs/libz.so,,\n"
    )
    (site / "beta.py").write_text("")
    (site / "_speed.cpython-313-x86_64-linux-gnu.so").write_bytes(b"")
    (site / "gamma").mkdir()
    assert measure.top_level_modules(site) == ["_speed", "alpha", "beta", "gamma"]


def test_unzipped_bytes_counts_entry_sizes(tmp_path):
    root = tmp_path / "build"
    (root / "python").mkdir(parents=True)
    (root / "python" / "data.bin").write_bytes(b"\0" * 5000)
    zip_path = tmp_path / "l.zip"
    measure.plain_zip(root, zip_path)
    assert measure.zip_unzipped_bytes(zip_path) == 5000 == measure.tree_bytes(root)
    assert zip_path.stat().st_size < 5000


def _tree(site: Path) -> None:
    for rel in (
        "boto3/__init__.py",
        "boto3-1.0.dist-info/RECORD",
        "dateutil/__init__.py",
        "python_dateutil-2.9.dist-info/RECORD",
        "pkg/__init__.py",
        "pkg/__pycache__/__init__.cpython-313.pyc",
        "pkg/tests/test_x.py",
        "pkg/old.pyo",
        "pkg-1.0.dist-info/RECORD",
        "pkg/_ext.so",
    ):
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(b"x")


def _files(site: Path) -> set[str]:
    return {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}


def test_slim_rules(tmp_path):
    site = tmp_path / "python"
    _tree(site)
    variants.apply_slim(site, tmp_path / "log")
    assert _files(site) == {
        "boto3/__init__.py",
        "dateutil/__init__.py",
        "pkg/__init__.py",
        "pkg/tests/test_x.py",
        "pkg/_ext.so",
    }


def test_powertools_rules(tmp_path):
    site = tmp_path / "python"
    _tree(site)
    variants.apply_powertools(site, tmp_path / "log")
    assert _files(site) == {"pkg/__init__.py", "pkg-1.0.dist-info/RECORD", "pkg/_ext.so"}
    assert (site / "pkg" / "tests").is_dir()  # find -type f -delete leaves the folder


def _row(unzipped, zipped, import_s, warm, cold, failed=None):
    return {
        "status": "ok",
        "unzipped_bytes": unzipped,
        "zipped_bytes": zipped,
        "import_seconds": import_s,
        "build_warm_seconds": warm,
        "build_cold_seconds": cold,
        "import_failed_modules": failed or [],
        "recompiled": 0,
    }


def test_ratios_and_table_show_failures():
    rows = {
        "naive": _row(200, 100, 2.0, 10.0, 20.0),
        "naive-matching": _row(100, 50, 1.0, 8.0, 16.0),
        "slim": _row(60, 30, 0.5, 9.0, 17.0, failed=["numpy", "pandas"]),
        "in-place floor": {"status": "ok", "unzipped_bytes": 100, "import_seconds": 0.5},
        "layershift": _row(70, 40, 0.55, 12.0, 20.0),
    }
    ratios = report.compute_ratios(rows)
    assert ratios["layershift"]["to_naive_matching"]["unzipped"] == 0.7
    assert ratios["layershift"]["to_naive"]["zipped"] == 0.4
    assert ratios["layershift"]["import_to_floor"] == 1.1
    assert ratios["layershift"]["to_naive_matching"]["build_warm"] == 1.5
    assert ratios["in-place floor"]["to_naive"]["zipped"] is None
    result = {"set": "data", "modules": ["numpy"], "variants": rows, "ratios": ratios, "noop": None}
    text = report.set_markdown(result)
    assert "**2**: numpy, pandas" in text
    assert "0.50 s †" in text
    assert "| layershift | 0.35x | 0.70x |" in text


def test_skipped_variant_is_listed_with_its_reason():
    rows = {"layershift-sourceless": {"status": "skipped", "note": "the builder has no profile 'sourceless'"}}
    text = report.set_markdown({"set": "aws", "variants": rows, "ratios": {}, "noop": None})
    assert "| layershift-sourceless | skipped |" in text
    assert "no profile 'sourceless'" in text


def test_layer_is_imported_at_the_mount_point_when_possible(tmp_path):
    mount_point = Path("/opt")
    if not measure.can_mount_at(mount_point):
        pytest.skip("no private mount namespace here")
    zip_path = _layer(tmp_path, EVEN, "timestamp")
    dest = tmp_path / "x"
    measure.extract_keeping_times(zip_path, dest)
    front = measure.layer_paths(mount_point, "3.13")
    run = measure.import_once(sys.executable, front, ["solo"], mount=(dest, mount_point))
    assert run.failures == []
    assert not (mount_point / "python" / "solo.py").exists()  # the bind mount stayed private
