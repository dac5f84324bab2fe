"""Ratios between variants of one run, and the Markdown report."""

from __future__ import annotations

from bench.measure import LAMBDA_UNZIPPED_LIMIT

REFERENCES = ("naive", "naive-matching")
FLOOR = "in-place floor"
RATIO_METRICS = {
    "unzipped": "unzipped_bytes",
    "zipped": "zipped_bytes",
    "import": "import_seconds",
    "build_cold": "build_cold_seconds",
    "build_warm": "build_warm_seconds",
}


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference <= 0:
        return None
    return round(value / reference, 3)


def compute_ratios(variants: dict[str, dict]) -> dict[str, dict]:
    """For every variant: its metrics over naive's and naive-matching's, and its import time over the floor."""
    out: dict[str, dict] = {}
    floor = variants.get(FLOOR, {}).get("import_seconds")
    for name, row in variants.items():
        entry: dict[str, dict | float | None] = {}
        for ref in REFERENCES:
            base = variants.get(ref, {})
            entry[f"to_{ref.replace('-', '_')}"] = {
                metric: ratio(row.get(key), base.get(key)) for metric, key in RATIO_METRICS.items()
            }
        entry["import_to_floor"] = ratio(row.get("import_seconds"), floor)
        out[name] = entry
    return out


def mb(size: int | None) -> str:
    return "n/a" if size is None else f"{size / 1_000_000:.1f} MB"


def seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def failures_cell(row: dict) -> str:
    failed = row.get("import_failed_modules")
    if failed is None:
        return "n/a"
    if not failed:
        return "0"
    return f"**{len(failed)}**: {', '.join(failed)}"


def _under(row: dict) -> str:
    size = row.get("unzipped_bytes")
    if size is None:
        return "n/a"
    return "yes" if size <= LAMBDA_UNZIPPED_LIMIT else "**NO**"


def _repro(row: dict) -> str:
    value = row.get("reproducible")
    return "n/a" if value is None else ("yes" if value else "no")


def _import_cell(row: dict) -> str:
    cell = seconds(row.get("import_seconds"))
    if row.get("import_failed_modules"):
        cell += " †"
    return cell


def set_markdown(result: dict) -> str:
    """The tables of one set: absolute numbers, then ratios from the same run."""
    variants: dict[str, dict] = result["variants"]
    ratios: dict[str, dict] = result["ratios"]
    lines = [
        f"### `{result['set']}` ({len(result.get('modules', []))} top-level modules checked)",
        "",
        "| variant | unzipped | zipped | under 250 MB | import failures | cold import (median) | recompiled "
        "| build, cold pip cache | build, warm pip cache | reproducible zip |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for name, row in variants.items():
        if row.get("status") != "ok":
            lines.append(f"| {name} | {row.get('status')} |  |  |  |  |  |  |  |  |")
            notes.append(f"{name}: {row.get('note') or row.get('status')}")
            continue
        lines.append(
            f"| {name} | {mb(row.get('unzipped_bytes'))} | {mb(row.get('zipped_bytes'))} | {_under(row)} "
            f"| {failures_cell(row)} | {_import_cell(row)} | {row.get('recompiled', 'n/a')} "
            f"| {seconds(row.get('build_cold_seconds'))} | {seconds(row.get('build_warm_seconds'))} | {_repro(row)} |"
        )
        if row.get("from_runtime"):
            notes.append(f"{name}: imported from the runtime's SDK stand-in: {', '.join(row['from_runtime'])}")
        notes += [f"{name}: {note}" for note in row.get("notes", [])]
    lines += [
        "",
        "| variant | unzipped / naive | unzipped / naive-matching | zipped / naive | zipped / naive-matching "
        "| import / naive | import / naive-matching | import / in-place floor | build warm / naive "
        "| build warm / naive-matching | build cold / naive-matching |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in variants.items():
        if row.get("status") != "ok":
            continue
        r = ratios.get(name, {})
        to_n = r.get("to_naive", {})
        to_m = r.get("to_naive_matching", {})
        mark = " †" if row.get("import_failed_modules") else ""
        lines.append(
            f"| {name} | {times(to_n.get('unzipped'))} | {times(to_m.get('unzipped'))} | {times(to_n.get('zipped'))} "
            f"| {times(to_m.get('zipped'))} | {times(to_n.get('import'))}{mark} | {times(to_m.get('import'))}{mark} "
            f"| {times(r.get('import_to_floor'))}{mark} | {times(to_n.get('build_warm'))} "
            f"| {times(to_m.get('build_warm'))} | {times(to_m.get('build_cold'))} |"
        )
    noop = result.get("noop")
    if noop:
        if noop.get("seconds") is None:
            lines += ["", f"No-op rebuild (layershift, same build key): {noop.get('note', 'not measured')}"]
        else:
            verdict = "PASS" if noop.get("seconds", 99) < 1 and not noop.get("pip_ran") else "FAIL"
            lines += [
                "",
                f"No-op rebuild (layershift, same build key, cache on): {seconds(noop.get('seconds'))}, "
                f"pip ran: {'yes' if noop.get('pip_ran') else 'no'}, same sha256: "
                f"{'yes' if noop.get('same_sha256') else 'no'}, cache fields: {noop.get('cache') or '{}'} ({verdict})",
            ]
    if any(row.get("import_failed_modules") for row in variants.values()):
        notes.append("† some top-level modules failed to import, so this import time covers less work")
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    return "\n".join(lines)


def markdown(results: dict) -> str:
    env = results["environment"]
    head = [
        "# Layer build benchmark",
        "",
        f"Target {env['runtime']} / {env['architecture']}; naive ran pip with {env['host_python_version']} "
        f"({env['host_python']}); naive-matching and the imports used {env['target_python_version']} "
        f"({env['target_python']}). {env['runs']} import runs per variant (median). "
        f"Cold builds: {'skipped (--skip-cold)' if env['skip_cold'] else 'fresh pip cache'}. "
        f"Warm build times: the median of {env.get('warm_builds', 1)} builds per variant, interleaved across "
        "variants (slim and powertools: one, their rules timed on naive-matching's install). "
        f"Started {env['started']}, took {env.get('total_minutes', '?')} min.",
        f"Zips extracted keeping their timestamps and imported at: {env.get('layer_root', '?')}. "
        f"Runtime SDK stand-in on sys.path after the layer: {env.get('runtime_sdk') or 'none'}.",
        f"Command: `{env['command']}`",
        "",
        "",
    ]
    return "\n".join(head) + "\n\n".join(set_markdown(r) for r in results["sets"]) + "\n"
