"""The layer build benchmark: every reference set built with every variant, measured the same way.

Run ``python -m bench.run --help`` (or ``make bench``); bench/README.md explains each column.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "layers" / "core") not in sys.path:
    sys.path.insert(0, str(REPO / "layers" / "core"))

from bench import measure, report, variants  # noqa: E402
from layershift_core.builder.platforms import find_interpreter  # noqa: E402

RUNTIME = "python3.13"
ARCHITECTURE = "x86_64"
PYTHON_VERSION = "3.13"
ALL_VARIANTS = (
    "naive",
    "naive-matching",
    "slim",
    "powertools",
    "in-place floor",
    "layershift",
    "layershift-sourceless",
)
LAYERSHIFT_PROFILES = {"layershift": "default", "layershift-sourceless": "sourceless"}
OPTIONAL_VARIANTS = {"layershift-slim-runtime": "slim-runtime"}
# The Lambda runtime ships the AWS SDK; this stands in for it, after the layer on sys.path.
RUNTIME_SDK = "boto3==1.35.68"
# Where Lambda extracts layers; zips are measured there when a private mount namespace allows it.
LAMBDA_OPT = Path("/opt")

_STARTED = time.monotonic()


def progress(message: str) -> None:
    elapsed = int(time.monotonic() - _STARTED)
    print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {message}", flush=True)


def python_version(interpreter: str) -> str:
    out = subprocess.run(
        [interpreter, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def real_executable(interpreter: str) -> str:
    out = subprocess.run([interpreter, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True)
    return out.stdout.strip() or interpreter


def find_host_python() -> str:
    """The machine's default ``python3``: BENCH_HOST_PYTHON, else the first on BENCH_HOST_PATH or PATH
    outside this virtual environment."""
    if os.environ.get("BENCH_HOST_PYTHON"):
        return os.environ["BENCH_HOST_PYTHON"]
    skip = {Path(sys.prefix, "bin").resolve(), (REPO / ".venv" / "bin").resolve()}
    search = os.environ.get("BENCH_HOST_PATH") or os.environ.get("PATH", "")
    for entry in search.split(os.pathsep):
        if not entry or Path(entry).resolve() in skip:
            continue
        candidate = Path(entry) / "python3"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return real_executable(str(candidate))
    raise SystemExit("no python3 found on PATH for the naive variant; set BENCH_HOST_PYTHON")


def find_target_python() -> str:
    """A python3.13 with pip: BENCH_TARGET_PYTHON, this interpreter, or python3.13 on PATH / pyenv."""
    if os.environ.get("BENCH_TARGET_PYTHON"):
        return os.environ["BENCH_TARGET_PYTHON"]
    if sys.version_info[:2] == (3, 13):
        return sys.executable
    found = find_interpreter("3.13")
    if found:
        return found
    raise SystemExit("python3.13 not found; the benchmark targets python3.13 (set BENCH_TARGET_PYTHON)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--sets", default=None, help="comma-separated set names (default: every *.txt in --sets-dir)")
    parser.add_argument(
        "--sets-dir", type=Path, default=REPO.parent / "shared" / "bench" / "requirements", help="reference sets"
    )
    parser.add_argument(
        "--variants",
        default=",".join(ALL_VARIANTS),
        help=f"comma-separated, from: {', '.join([*ALL_VARIANTS, *OPTIONAL_VARIANTS])} "
        "(naive-matching is always built: it is the reference and the source of the module list)",
    )
    parser.add_argument("--runs", type=int, default=7, help="fresh import processes per variant (median reported)")
    parser.add_argument(
        "--warm-builds",
        type=int,
        default=3,
        help="warm builds of each timed variant, interleaved across variants (median reported)",
    )
    parser.add_argument(
        "--skip-cold", action="store_true", help="reuse one pip cache (OUT/pip-cache) and skip cold build times"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="results folder")
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument(
        "--runtime-sdk",
        default=RUNTIME_SDK,
        help="requirement installed as the Lambda runtime's own SDK, on sys.path after the layer ('' for none)",
    )
    parser.add_argument(
        "--no-opt", action="store_true", help="import zips from their extraction folder instead of binding it at /opt"
    )
    args = parser.parse_args(argv)
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in wanted if v not in ALL_VARIANTS and v not in OPTIONAL_VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s): {', '.join(unknown)}")
    args.variant_list = wanted
    if args.sets:
        args.set_list = [s.strip() for s in args.sets.split(",") if s.strip()]
    else:
        args.set_list = sorted(p.stem for p in args.sets_dir.glob("*.txt"))
        if not args.set_list:
            parser.error(f"no requirement sets (*.txt) in {args.sets_dir}; name the folder with --sets-dir")
    missing = [s for s in args.set_list if not (args.sets_dir / f"{s}.txt").is_file()]
    if missing:
        parser.error(f"no such set in {args.sets_dir}: {', '.join(missing)}")
    return args


def install_runtime_sdk(requirement: str, target_python: str, dest: Path, log: Path) -> Path | None:
    """The runtime's SDK stand-in, installed in place by the target interpreter (valid bytecode)."""
    if not requirement:
        return None
    marker = dest / ".bench-installed"
    if marker.is_file() and marker.read_text() == requirement:
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    cmd = [target_python, "-m", "pip", "install", "--target", str(dest), requirement]
    variants.run_pip(cmd, dest.parent / "pip-cache-runtime", log)
    marker.write_text(requirement)
    return dest


class SetRun:
    """Builds and measures one reference set."""

    def __init__(self, args: argparse.Namespace, name: str, work: Path, env: dict, runtime_dir: Path | None):
        self.args = args
        self.name = name
        self.work = work / name
        self.env = env
        self.runtime_dir = runtime_dir
        self.requirements = args.sets_dir / f"{name}.txt"
        self.log = args.out / "logs" / f"{name}.log"
        self.rows: dict[str, dict] = {}
        self.builds: dict[str, variants.Build] = {}
        self.noop: dict | None = None
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.write_text(f"# {name}: {self.requirements}\n")

    def say(self, message: str) -> None:
        progress(f"{self.name}: {message}")

    def pip_cache(self, variant: str) -> Path:
        if self.args.skip_cold:
            return self.args.out / "pip-cache"
        return self.work / f"pip-cache-{variant}"

    def row(self, name: str, first: variants.Build, second: variants.Build) -> dict:
        """The row of a variant built twice from clean: the first build cold, the second warm."""
        errors = [b.error for b in (first, second) if b.error]
        if errors:
            return {"status": "error", "note": errors[0]}
        return {
            "status": "ok",
            "unzipped_bytes": second.unzipped_bytes,
            "zipped_bytes": second.zipped_bytes,
            "build_cold_seconds": None if self.args.skip_cold else round(first.seconds, 3),
            "build_warm_seconds": round(second.seconds, 3),
            "reproducible": None if first.sha256 is None else first.sha256 == second.sha256,
            "sha256": [first.sha256, second.sha256],
            "extra": second.extra,
            "notes": list(dict.fromkeys(first.notes + second.notes)),
        }

    def _pip_pair(self, variant: str, interpreter: str) -> tuple[variants.Build, variants.Build]:
        cache = self.pip_cache(variant)
        builds = []
        for i, label in enumerate(("cold" if not self.args.skip_cold else "first", "warm"), start=1):
            self.say(f"{variant}: build {i}/2 ({label} pip cache)")
            try:
                build = variants.pip_zip_build(
                    variant,
                    interpreter,
                    self.requirements,
                    self.work / f"{variant}-{i}",
                    cache,
                    self.log,
                    PYTHON_VERSION,
                )
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                build = variants.Build(variant=variant, error=str(exc))
            builds.append(build)
        return builds[0], builds[1]

    def build_naive(self) -> None:
        first, second = self._pip_pair("naive", self.env["host_python"])
        self.rows["naive"] = self.row("naive", first, second)
        self.builds["naive"] = second
        for build in (first, second):
            if build.site is not None:
                shutil.rmtree(build.site.parent, ignore_errors=True)
        if first.zip_path:
            first.zip_path.unlink(missing_ok=True)

    def build_naive_matching(self) -> None:
        cache = self.pip_cache("naive-matching")
        derived = [v for v in ("slim", "powertools") if v in self.args.variant_list]
        pairs: dict[str, list[variants.Build]] = {v: [] for v in ("naive-matching", *derived)}
        for i, label in enumerate(("cold" if not self.args.skip_cold else "first", "warm"), start=1):
            self.say(f"naive-matching: build {i}/2 ({label} pip cache)")
            try:
                base = variants.pip_zip_build(
                    "naive-matching",
                    self.env["target_python"],
                    self.requirements,
                    self.work / f"naive-matching-{i}",
                    cache,
                    self.log,
                    PYTHON_VERSION,
                )
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                base = variants.Build(variant="naive-matching", error=str(exc))
            pairs["naive-matching"].append(base)
            for variant in derived:
                self.say(f"{variant}: build {i}/2 (rules applied to naive-matching install {i})")
                pairs[variant].append(variants.derived_build(variant, base, self.work / f"{variant}-{i}", self.log))
            if i == 1 and base.site is not None:
                shutil.rmtree(base.site.parent, ignore_errors=True)
                base.zip_path.unlink(missing_ok=True)
        for variant, (first, second) in pairs.items():
            self.rows[variant] = self.row(variant, first, second)
            self.builds[variant] = second
            if first.zip_path and variant != "naive-matching":
                first.zip_path.unlink(missing_ok=True)
        if "in-place floor" in self.args.variant_list:
            floor = variants.in_place_build(pairs["naive-matching"][1])
            self.builds["in-place floor"] = floor
            self.rows["in-place floor"] = (
                {"status": "error", "note": floor.error}
                if floor.error
                else {
                    "status": "ok",
                    "unzipped_bytes": floor.unzipped_bytes,
                    "notes": [
                        "the install folder used in place, pip's own bytecode; an import-time floor, not a layer"
                    ],
                }
            )

    def build_layershift(self, variant: str, profile: str) -> None:
        if profile not in variants.known_profiles():
            self.say(f"{variant}: skipped, the builder has no profile {profile!r} yet")
            self.rows[variant] = {"status": "skipped", "note": f"the builder has no profile {profile!r}"}
            return
        caps = variants.builder_capabilities()
        text = self.requirements.read_text(encoding="utf-8")
        pip_cache = self.pip_cache(variant)
        builds = []
        for i, label in enumerate(("cold" if not self.args.skip_cold else "first", "warm"), start=1):
            self.say(f"{variant}: build {i}/2 ({label} pip cache, empty build cache)")
            build = variants.layershift_build(
                variant,
                text,
                profile,
                self.work / f"{variant}-{i}",
                pip_cache,
                self.work / f"{variant}-buildcache-{i}",
                self.log,
                RUNTIME,
                ARCHITECTURE,
            )
            if build.error:
                self.say(f"{variant}: build {i} failed: {build.error}")
            builds.append(build)
        first, second = builds
        self.rows[variant] = self.row(variant, first, second)
        if not caps["cache_dir"] and not caps["use_cache"] and not caps["no_cache"]:
            self.rows[variant]["notes"] = [
                *self.rows[variant].get("notes", []),
                "the builder has no build cache option yet; every build is a real build",
            ]
        self.builds[variant] = second
        if first.zip_path:
            first.zip_path.unlink(missing_ok=True)
        if variant == "layershift":
            self.noop = self.measure_noop(text, profile, second, caps)

    def measure_noop(self, text: str, profile: str, previous: variants.Build, caps: dict) -> dict:
        if not caps["cache_dir"]:
            return {"seconds": None, "note": "not measured: build_layer has no cache_dir parameter yet"}
        if previous.error:
            return {"seconds": None, "note": "not measured: the build before it failed"}
        self.say("layershift: no-op rebuild (same build key, build cache on)")
        empty_pip_cache = self.work / "pip-cache-noop"
        empty_pip_cache.mkdir()
        build = variants.layershift_build(
            "layershift",
            text,
            profile,
            self.work / "layershift-noop",
            empty_pip_cache,
            self.work / "layershift-buildcache-2",
            self.log,
            RUNTIME,
            ARCHITECTURE,
        )
        pip_ran = any(empty_pip_cache.iterdir())
        result = {
            "seconds": round(build.seconds, 3),
            "pip_ran": pip_ran,
            "same_sha256": build.sha256 is not None and build.sha256 == previous.sha256,
            "cache": build.extra.get("cache", {}),
            "error": build.error,
        }
        if build.zip_path:
            shutil.rmtree(build.zip_path.parent, ignore_errors=True)
        return result

    def time_warm_builds(self) -> None:
        """More warm builds of every timed variant, interleaved: round r builds each variant once, so
        network and load that drift during the run fall on every variant alike. The row reports the
        median of all its warm builds."""
        timed = [
            v
            for v in ("naive", "naive-matching", *LAYERSHIFT_PROFILES, *OPTIONAL_VARIANTS)
            if v in self.args.variant_list and self.rows.get(v, {}).get("status") == "ok"
        ]
        samples = {v: [self.rows[v]["build_warm_seconds"]] for v in timed}
        profiles = {**LAYERSHIFT_PROFILES, **OPTIONAL_VARIANTS}
        text = self.requirements.read_text(encoding="utf-8")
        for round_number in range(2, self.args.warm_builds + 1):
            for variant in timed:
                self.say(f"{variant}: warm build {round_number}/{self.args.warm_builds} (timing only)")
                scratch = self.work / f"timing-{variant}"
                if variant in profiles:
                    build = variants.layershift_build(
                        variant,
                        text,
                        profiles[variant],
                        scratch,
                        self.pip_cache(variant),
                        self.work / f"timing-{variant}-buildcache-{round_number}",
                        self.log,
                        RUNTIME,
                        ARCHITECTURE,
                    )
                else:
                    interpreter = self.env["host_python" if variant == "naive" else "target_python"]
                    try:
                        build = variants.pip_zip_build(
                            variant,
                            interpreter,
                            self.requirements,
                            scratch,
                            self.pip_cache(variant),
                            self.log,
                            PYTHON_VERSION,
                        )
                    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                        build = variants.Build(variant=variant, error=str(exc))
                if build.error is None and build.seconds is not None:
                    samples[variant].append(round(build.seconds, 3))
                if build.zip_path is not None:
                    build.zip_path.unlink(missing_ok=True)
                shutil.rmtree(scratch, ignore_errors=True)
                shutil.rmtree(self.work / f"timing-{variant}-buildcache-{round_number}", ignore_errors=True)
        for variant, seconds in samples.items():
            self.rows[variant]["build_warm_samples"] = seconds
            self.rows[variant]["build_warm_seconds"] = round(statistics.median(seconds), 3)

    def measure(self, modules: list[str]) -> None:
        """Cold imports of every variant, interleaved: round r runs each variant once, so load that
        drifts during the measurement falls on every variant alike."""
        back = [self.runtime_dir] if self.runtime_dir else []
        prepared: dict[str, tuple[list[Path], tuple[Path, Path] | None, Path | None]] = {}
        for variant, build in self.builds.items():
            row = self.rows.get(variant, {})
            if variant not in self.args.variant_list or row.get("status") != "ok":
                continue
            if build.zip_path is None:
                prepared[variant] = ([build.site], None, None)
                continue
            extracted = self.work / f"x-{variant}"
            measure.extract_keeping_times(build.zip_path, extracted)
            if self.env["layer_root"] == str(LAMBDA_OPT):
                front = measure.layer_paths(LAMBDA_OPT, PYTHON_VERSION)
                prepared[variant] = (front, (extracted, LAMBDA_OPT), extracted)
            else:
                prepared[variant] = (measure.layer_paths(extracted, PYTHON_VERSION), None, extracted)
        self.say(f"{len(prepared)} variants: {self.args.runs} interleaved rounds of importing {len(modules)} modules")
        runs: dict[str, list[measure.ImportRun]] = {variant: [] for variant in prepared}
        failed: dict[str, str] = {}
        try:
            for _ in range(max(1, self.args.runs)):
                for variant, (front, mount, _extracted) in prepared.items():
                    if variant in failed:
                        continue
                    try:
                        runs[variant].append(
                            measure.import_once(self.env["target_python"], front, modules, back, mount=mount)
                        )
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:
                        failed[variant] = str(exc)
        finally:
            for _front, _mount, extracted in prepared.values():
                if extracted is not None:
                    shutil.rmtree(extracted, ignore_errors=True)
        for variant, (front, _mount, _extracted) in prepared.items():
            row = self.rows[variant]
            if variant in failed or not runs[variant]:
                row["notes"] = [*row.get("notes", []), f"import measurement failed: {failed.get(variant)}"]
                continue
            result = measure.summarise_imports(runs[variant], front)
            row.update(
                import_seconds=round(result.median_seconds, 4),
                import_all_seconds=result.all_seconds,
                recompiled=result.recompiled,
                recompiled_examples=result.recompiled_examples,
                import_failures=result.failures,
                import_failed_modules=result.failed_modules,
                from_runtime=result.from_runtime,
            )
            self.say(
                f"{variant}: {result.median_seconds:.2f} s, {result.recompiled} recompiled, "
                f"{len(result.failures)} failed {result.failed_modules or ''}"
            )

    def run(self) -> dict:
        wanted = self.args.variant_list
        if "naive" in wanted:
            self.build_naive()
        self.build_naive_matching()
        for variant, profile in {**LAYERSHIFT_PROFILES, **OPTIONAL_VARIANTS}.items():
            if variant in wanted:
                self.build_layershift(variant, profile)
        self.time_warm_builds()
        base = self.builds.get("naive-matching")
        modules = measure.top_level_modules(base.site) if base and base.site else []
        self.say(f"{len(modules)} top-level modules: {', '.join(modules)}")
        self.measure(modules)
        ordered = {v: self.rows[v] for v in (*ALL_VARIANTS, *OPTIONAL_VARIANTS) if v in self.rows and v in wanted}
        table = {v: r for v, r in ordered.items() if r.get("status") == "ok"}
        result = {
            "set": self.name,
            "requirements": str(self.requirements),
            "modules": modules,
            "variants": ordered,
            "ratios": report.compute_ratios(table),
            "noop": self.noop,
        }
        shutil.rmtree(self.work, ignore_errors=True)
        return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    host = find_host_python()
    target = find_target_python()
    env = {
        "runtime": RUNTIME,
        "architecture": ARCHITECTURE,
        "host_python": host,
        "host_python_version": python_version(host),
        "target_python": target,
        "target_python_version": python_version(target),
        "runs": args.runs,
        "skip_cold": args.skip_cold,
        "warm_builds": args.warm_builds,
        "variants": args.variant_list,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]),
    }
    if not env["target_python_version"].startswith(PYTHON_VERSION + "."):
        raise SystemExit(f"{target} is Python {env['target_python_version']}, not {PYTHON_VERSION}")
    progress(f"naive pip runs on {host} ({env['host_python_version']})")
    progress(f"target interpreter {target} ({env['target_python_version']})")
    progress(f"sets: {', '.join(args.set_list)}; variants: {', '.join(args.variant_list)}; {args.runs} import runs")
    work_parent = args.work_dir or Path(tempfile.mkdtemp(prefix="layershift-bench-"))
    work_parent.mkdir(parents=True, exist_ok=True)
    runtime_dir = None
    if args.runtime_sdk:
        progress(f"installing the runtime SDK stand-in {args.runtime_sdk}")
        runtime_dir = install_runtime_sdk(
            args.runtime_sdk, target, args.out / "runtime-sdk" / "site", args.out / "logs" / "runtime-sdk.log"
        )
    env["runtime_sdk"] = args.runtime_sdk or None
    if args.no_opt or not measure.can_mount_at(LAMBDA_OPT):
        env["layer_root"] = "extraction folder"
        progress(
            "zips are imported from their extraction folder, not /opt: bytecode compiled for /opt pays a "
            "file-name fix-up there that it does not pay on Lambda"
        )
    else:
        env["layer_root"] = str(LAMBDA_OPT)
        progress("zips are imported at /opt, as on Lambda (extraction bound over /opt in a private mount namespace)")
    results = {"environment": env, "sets": []}
    try:
        for name in args.set_list:
            results["sets"].append(SetRun(args, name, work_parent, env, runtime_dir).run())
            env["total_minutes"] = round((time.monotonic() - _STARTED) / 60, 1)
            write_results(args.out, results)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_parent, ignore_errors=True)
    print()
    print(report.markdown(results))
    progress(f"wrote {args.out / 'results.md'} and {args.out / 'results.json'}")
    return 0


def write_results(out: Path, results: dict) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    (out / "results.md").write_text(report.markdown(results), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
