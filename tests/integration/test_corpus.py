"""Popular packages with native code, built from PyPI into one python3.13 x86_64 layer.

The corpus (``corpus-requirements.txt``) must build with no import failure and no false refusal:
the build's own smoke test imports every distribution's top-level modules, and the ELF check finds
every shared object loadable on the runtime. One build, with pip's cache; the wall time is printed.

A second, small build is the false refusal this suite guards against: black alone, whose second
top-level module ``blackd`` needs the ``d`` extra's aiohttp.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from layershift_core.builder import Manifest, build_layer
from layershift_core.builder.distributions import scan
from layershift_core.builder.elf_check import check_shared_objects
from layershift_core.builder.platforms import find_interpreter, target_for
from layershift_core.builder.smoke import run_smoke_test
from layershift_core.requirements import parse_requirements

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(find_interpreter("3.13") is None, reason="the smoke test needs a python3.13 interpreter"),
]

CORPUS = Path(__file__).with_name("corpus-requirements.txt")
TARGET = target_for("python3.13", "x86_64")
SITE = TARGET.site_prefix(pure_python=False)


def _build(text: str, tmp_path: Path) -> tuple[Manifest, Path, float]:
    """Build ``text`` and unpack its zip; returns (manifest, unpacked layer, wall seconds of the build)."""
    started = time.monotonic()
    manifest = build_layer(
        text,
        runtime=TARGET.runtime,
        architecture=TARGET.architecture,
        out_dir=tmp_path / "out",
        cache_dir=tmp_path / "cache",
        use_cache=False,
        audit=False,
        echo=lambda line: None,
    )
    wall = time.monotonic() - started
    root = tmp_path / "layer"
    with zipfile.ZipFile(tmp_path / "out" / "layer.zip") as zf:
        zf.extractall(root)
    return manifest, root, wall


def test_the_corpus_builds_imports_and_passes_the_elf_check(tmp_path: Path) -> None:
    text = CORPUS.read_text(encoding="utf-8")
    pins = {canonicalize_name(r.name): str(r.specifier)[2:] for r in parse_requirements(text).requirements}
    manifest, root, wall = _build(text, tmp_path)

    # every pin is in the layer at its version, and nothing else
    assert manifest.package_versions() == pins
    assert manifest.layout == SITE

    # the smoke test ran and imported every distribution's top-level modules
    assert manifest.smoke_test.ran
    expected = sorted({m for p in manifest.packages for m in p.top_level_modules})
    assert all(p.top_level_modules for p in manifest.packages), [p.name for p in manifest.packages]
    assert manifest.top_level_modules == expected
    assert manifest.smoke_test.modules == len(expected)
    assert manifest.smoke_test.recompiled == []

    # again on the unpacked zip, for the report's details: no failure, no optional extra left out
    started = time.monotonic()
    smoke = run_smoke_test(root, SITE, expected, find_interpreter("3.13"), raise_on_failure=False)
    smoke_seconds = time.monotonic() - started
    assert smoke.failures == []
    assert smoke.optional_extras == []  # aiohttp, black's extra 'd', is in the corpus: blackd imports
    owners = {label.rsplit(" ", 1)[0] for labels in smoke.module_owners.values() for label in labels}
    assert owners == set(pins)

    # every shared object loads on the runtime's base image
    started = time.monotonic()
    elf = check_shared_objects(root, TARGET)
    elf_seconds = time.monotonic() - started
    assert elf.failures == []
    assert elf.checked > 100 and elf.resolved_in_layer > 0
    assert elf.max_glibc is not None and tuple(map(int, elf.max_glibc.split("."))) <= TARGET.glibc
    assert {dist.split(" ")[0] for dist in elf.objects.values() if dist} >= {"numpy", "pillow", "psycopg2-binary"}

    print(
        f"\ncorpus: {len(pins)} distributions, {len(expected)} modules; build {wall:.1f} s "
        f"({', '.join(f'{k} {v:.1f}' for k, v in manifest.timings.items())}); "
        f"smoke again {smoke_seconds:.1f} s; {elf.summary()} in {elf_seconds:.1f} s"
    )


def test_black_without_its_d_extra_builds_and_reports_blackd(tmp_path: Path) -> None:
    """The false refusal fixed: ``pip install black`` + ``import black`` works, so must the layer build."""
    black = next(line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.startswith("black=="))
    manifest, root, _ = _build(black + "\n", tmp_path)
    assert manifest.smoke_test.ran
    assert "blackd" in manifest.top_level_modules and "black" in manifest.top_level_modules
    dists = scan(root / SITE)
    assert "aiohttp" not in {d.name for d in dists}
    smoke = run_smoke_test(root, SITE, manifest.top_level_modules, find_interpreter("3.13"), raise_on_failure=False)
    version = str(next(iter(Requirement(black).specifier)).version)
    assert smoke.failures == []
    assert len(smoke.optional_extras) == 1
    assert smoke.optional_extras[0].startswith(f"blackd (black {version}) needs aiohttp, which is not installed")
    assert "the extra 'd'" in smoke.optional_extras[0]
