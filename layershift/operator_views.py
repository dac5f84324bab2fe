"""How the operator commands show what `operator_data` read: rich tables and trees on a terminal,
plain lines when stdout is not one (a pipe, a log, CI), and JSON for scripts (`--output json`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.tree import Tree


def console() -> Console:
    return Console(file=sys.stdout, highlight=False)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def _when(iso: str | None) -> str:
    return iso.replace("T", " ")[:19] if iso else "-"


def _promoted(promoted: dict[str, int]) -> str:
    if not promoted:
        return "(none yet)"
    if len(promoted) == 1:
        ((variant, version),) = promoted.items()
        return f"{version}" + (f" ({variant})" if variant else "")
    return ", ".join(f"{variant or '?'}: {version}" for variant, version in promoted.items())


_OUTCOME_STYLE = {"promoted": "green", "rolled_back": "red", "rolled back": "red", "rejected": "red"}


def _styled(outcome: str) -> str:
    style = _OUTCOME_STYLE.get(outcome, "yellow" if outcome.startswith("running") else "")
    return f"[{style}]{outcome}[/{style}]" if style else outcome


# -- ls -----------------------------------------------------------------------------------------
LS_COLUMNS = ("LAYER", "PROMOTED", "LOCK", "LAST ROLLOUT", "OUTCOME", "STARTED")


def _ls_cells(row: dict[str, Any]) -> list[str]:
    last = row["last_rollout"] or {}
    lock = row["lock"]
    return [
        row["layer"],
        _promoted(row["promoted"]),
        f"{lock['owner']} since {_when(lock['since'])}" if lock else "-",
        last.get("rollout_id", "-"),
        last.get("outcome", "-"),
        _when(last.get("started_at")),
    ]


def show_ls(rows: list[dict[str, Any]], out: Console) -> None:
    if not rows:
        print("no layers yet: push one with `layershift push requirements.txt --layer NAME`")
        return
    if not out.is_terminal:
        lines = [list(LS_COLUMNS), *(_ls_cells(row) for row in rows)]
        widths = [max(len(line[i]) for line in lines) for i in range(len(LS_COLUMNS))]
        for line in lines:
            print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        return
    table = Table(*LS_COLUMNS, title="layers", title_justify="left")
    for row in rows:
        cells = _ls_cells(row)
        cells[4] = _styled(cells[4])
        table.add_row(*cells)
    out.print(table)


# -- history ------------------------------------------------------------------------------------
HISTORY_COLUMNS = ("ROLLOUT", "STARTED", "DURATION", "OUTCOME", "PUSHED BY", "SOURCE", "VERDICT / REASON")


def _identity(pusher: str | None) -> str:
    """An IAM ARN without its partition, service and account (`assumed-role/ops/alice`)."""
    if not pusher:
        return "-"
    return pusher.split(":", 5)[5] if pusher.startswith("arn:") and pusher.count(":") >= 5 else pusher


def _history_cells(row: dict[str, Any]) -> list[str]:
    source = f"commit {row['commit_id']}" if row["commit_id"] else f"s3 {row['requirements_version'] or '-'}"
    if row["attempt"]:
        source += f" (retry {row['attempt']})"
    why = row["reason"] or row["verdict_detail"] or row["verdict"] or "-"
    return [
        row["rollout_id"],
        _when(row["started_at"]),
        _duration(row["duration_seconds"]),
        row["outcome"],
        _identity(row["pushed_by"]),
        source,
        why,
    ]


def show_history(layer: str, rows: list[dict[str, Any]], out: Console) -> None:
    if not rows:
        print(f"no rollouts of layer {layer!r} yet")
        return
    if not out.is_terminal:
        for row in rows:
            cells = _history_cells(row)
            print(f"{cells[0]}  {cells[1]}  {cells[2]:>6}  {cells[3]}")
            print(f"    pushed by {row['pushed_by'] or '-'}; {cells[5]}")
            print(f"    {cells[6][:300]}")
        return
    # The verdict or reason is prose: it goes under the table, one wrapped paragraph per rollout.
    table = Table(*HISTORY_COLUMNS[:-1], title=f"rollouts of {layer}, newest first", title_justify="left")
    for row in rows:
        cells = _history_cells(row)
        cells[3] = _styled(cells[3])
        cells[5] = cells[5] if len(cells[5]) <= 24 else cells[5][:23] + "…"
        table.add_row(*cells[:-1])
    out.print(table)
    for row in rows:
        why = _history_cells(row)[-1]
        if why != "-":
            out.print(f"[bold]{row['rollout_id']}[/bold]: {why[:400]}", highlight=False)


# -- status -------------------------------------------------------------------------------------
def status_lines(status: dict[str, Any]) -> Iterator[str]:
    from layershift_core.notify import usage_line

    layer = status["layer"]
    yield f"layer {layer}"
    if status["lock"]:
        yield f"  LOCKED by {status['lock']['owner']} since {status['lock']['since']}"
    if status["waiting_for_approval"]:
        rollout = status["waiting_for_approval"]
        yield f"  rollout {rollout} may be waiting for approval: layershift approve|reject {layer}"
    yield f"  promoted: {status['promoted_arn'] or '(none yet)'}"
    for variant, arn in status["promoted_variants"].items():
        yield f"    {variant}: {arn}"
    yield f"  last {len(status['versions'])} version(s), newest first:"
    for version in status["versions"]:
        variant = f"  {version['variant']}" if version["variant"] else ""
        yield f"    version {version['version']}: {version['status']}{variant}  build {version['build_key'][:12]}"
    yield f"  last {len(status['rollouts'])} rollout(s), newest first:"
    for rollout in status["rollouts"]:
        reason = f"  {rollout['reason'][:160]}" if rollout["reason"] else ""
        yield f"    rollout {rollout['rollout_id']}: {rollout['status']}{reason}"
        if rollout["status"] == "waiting_for_lock" and rollout["waiting_for"]:
            yield f"      waits for the lock that rollout {rollout['waiting_for']} holds"
        if rollout["verdict"]:
            detail = (rollout["verdict_detail"] or "")[:200]
            yield f"      last canary verdict at {rollout['weight'] or '?'}%: {detail}"
        if rollout["usage"]:
            yield f"      spent: {usage_line(rollout['usage'])}"


def show_status(statuses: list[dict[str, Any]], executions: list[dict[str, Any]], out: Console) -> None:
    if not statuses:
        print("no layers yet: push one with `layershift push requirements.txt --layer NAME`")
    for status in statuses:
        for line in status_lines(status):
            if out.is_terminal:
                out.print(line, markup=False, highlight=False, soft_wrap=True)
            else:
                print(line)
    print("recent executions:")
    for execution in executions:
        print(f"  {execution['startDate']:%Y-%m-%d %H:%M:%S}  {execution['status']:<9}  {execution['name']}")


# -- get: the tree ------------------------------------------------------------------------------
_STATE_MARK = {"done": "✔", "running": "◌", "pending": "·", "failed": "✘"}
_STATE_STYLE = {"done": "green", "running": "yellow", "pending": "dim", "failed": "red"}


def _step_label(step: dict[str, Any]) -> str:
    label = f"step {step['index'] + 1}: {step['wave']} wave at {step['weight']}% for {step['bake_seconds']}s"
    if step["verdict"]:
        label += f": {step['verdict']} after {step['checks']} check(s)"
    if step.get("approval"):
        label += f"; approval {step['approval']}"
    return label


def _function_label(function: dict[str, Any]) -> str:
    weight = function["weight"]
    on_new = f", {weight:g}% on v{function['new_version']}" if weight is not None else ""
    variant = f" [{function['variant']}]" if function["variant"] else ""
    return (
        f"{function['function']}:{function['alias']}  v{function['old_version']} → v{function['new_version']}"
        f"{on_new}{variant}"
    )


# Functions drawn per step: a fleet's step lists the first ones; -o json has them all.
FUNCTIONS_SHOWN = 20


def tree_outline(tree: dict[str, Any]) -> Iterator[tuple[int, str, str | None]]:
    """The tree as (depth, text, state) rows: what both the plain and the rich rendering draw."""
    head = f"rollout {tree['rollout_id']} of layer {tree['layer']}: {tree['outcome'].upper()} ({tree['status']})"
    head += f", started {_when(tree['started_at'])}"
    if tree["duration_seconds"] is not None:
        head += f", took {_duration(tree['duration_seconds'])}"
    elif tree["current_state"]:
        head += f", now in {tree['current_state']}"
    yield 0, head, None
    for phase in tree["phases"]:
        detail = f": {phase['detail']}" if phase["detail"] else ""
        yield 1, f"{phase['name']}{detail}", phase["state"]
        for version in phase.get("layer_versions", []):
            how = "reused" if version["reused"] else "published"
            yield 2, f"version {version['version']} ({version['variant']}) {how}: {version['arn']}", None
        for skipped in phase.get("skipped", []):
            yield 2, f"skipped {skipped['function']}: {skipped['reason']}", None
        for step in phase.get("steps", []):
            yield 2, _step_label(step), step["state"]
            if step["verdict_detail"]:
                yield 3, f"verdict: {step['verdict_detail'][:240]}", None
            for function in step["functions"][:FUNCTIONS_SHOWN]:
                yield 3, _function_label(function), None
            if len(step["functions"]) > FUNCTIONS_SHOWN:
                yield 3, f"… and {len(step['functions']) - FUNCTIONS_SHOWN} more (-o json lists every one)", None
        ended = phase.get("functions", [])  # where promotion or rollback left each alias
        for function in ended[:FUNCTIONS_SHOWN]:
            where = "100% on" if function.get("weight") == 100 else "back on"
            yield 2, f"{function['function']}:{function['alias']}  {where} v{function['version']}", None
        if len(ended) > FUNCTIONS_SHOWN:
            yield 2, f"… and {len(ended) - FUNCTIONS_SHOWN} more (-o json lists every one)", None
    if tree["error"]:
        yield 1, f"{tree['error']}: {(tree['cause'] or '')[:400]}", "failed"


def tree_text(tree: dict[str, Any]) -> str:
    lines = []
    for depth, text, state in tree_outline(tree):
        mark = f"{_STATE_MARK[state]} " if state else ""
        lines.append(f"{'  ' * depth}{mark}{text}" + (f"  [{state}]" if state else ""))
    return "\n".join(lines)


def tree_renderable(tree: dict[str, Any]) -> Tree:
    from rich.text import Text

    root: Tree | None = None
    parents: list[Tree] = []
    for depth, text, state in tree_outline(tree):
        label = Text(f"{_STATE_MARK[state]} {text}" if state else text, style=_STATE_STYLE.get(state or "", ""))
        if root is None:
            root = Tree(Text(text, style="bold"))
            parents = [root]
            continue
        node = parents[depth - 1].add(label)
        parents = [*parents[:depth], node]
    assert root is not None
    return root


def show_tree(tree: dict[str, Any], out: Console) -> None:
    if out.is_terminal:
        out.print(tree_renderable(tree))
    else:
        print(tree_text(tree))


# -- a progress display for long waits ------------------------------------------------------------
@contextmanager
def progress_lines(out: Console, what: str) -> Iterator[Callable[[str], None]]:
    """An ``emit`` for `follow`: on a terminal, each line prints above a spinner that shows the last
    step and the time elapsed; elsewhere, plain lines."""
    if not out.is_terminal:
        yield print
        return
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=out, transient=True
    ) as progress:
        task = progress.add_task(what)

        def emit(line: str) -> None:
            progress.console.print(line, markup=False, highlight=False)
            progress.update(task, description=f"{what}: {line.strip()[:80]}")

        yield emit
