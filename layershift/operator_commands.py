"""The operator's commands: `status`, `ls`, `history`, `get [--watch]` and `retry`.

`cli.build_parser` registers them with `register`; each reads through `operator_data` and shows
through `operator_views`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from . import controlplane, operator_data, operator_tree, operator_views
from .controlplane import ControlPlane, HistoryTail

# How often `get --watch` reads the aliases' live routing (GetAlias per target).
LIVE_REFRESH_SECONDS = 15.0

AddTarget = Callable[[argparse.ArgumentParser], None]
ControlPlaneOf = Callable[[argparse.Namespace], ControlPlane]


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", "-o", choices=("text", "json"), default="text", help="json: one document, for scripts"
    )


def cmd_status(args: argparse.Namespace, cp: ControlPlane) -> int:
    items = operator_data.registry_items(cp, args.layer)
    statuses = [operator_data.layer_status(cp, layer, found, args.recent) for layer, found in items.items()]
    recent = list(controlplane.executions(cp, limit=args.limit))
    if args.output == "json":
        operator_views.print_json(
            {
                "layers": statuses,
                "executions": [
                    {"name": e["name"], "status": e["status"], "started_at": e["startDate"].isoformat()} for e in recent
                ],
            }
        )
        return 0
    operator_views.show_status(statuses, recent, operator_views.console())
    return 0


def cmd_ls(args: argparse.Namespace, cp: ControlPlane) -> int:
    executions = operator_data.executions_by_name(cp)
    rows = [
        operator_data.layer_summary(cp, layer, items, executions)
        for layer, items in operator_data.registry_items(cp).items()
    ]
    if args.output == "json":
        operator_views.print_json(rows)
    else:
        operator_views.show_ls(rows, operator_views.console())
    return 0


def cmd_history(args: argparse.Namespace, cp: ControlPlane) -> int:
    items = operator_data.registry_items(cp, args.layer).get(args.layer, [])
    rows = operator_data.layer_history(cp, args.layer, items, operator_data.executions_by_name(cp), args.limit)
    if args.output == "json":
        operator_views.print_json(rows)
    else:
        operator_views.show_history(args.layer, rows, operator_views.console())
    return 0


class _RolloutWatch:
    """One rollout's tree, rebuilt from the history's new events at each refresh."""

    def __init__(self, cp: ControlPlane, layer: str, rollout_id: str) -> None:
        self.cp, self.layer, self.rollout_id = cp, layer, rollout_id
        self.arn = controlplane.execution_arn(cp, rollout_id)
        self.tail = HistoryTail(cp, self.arn)
        self.events: list[dict[str, Any]] = []
        self.plan: dict[str, Any] | None = None
        self.live: dict[str, dict[str, float]] = {}
        self.live_read_at = -LIVE_REFRESH_SECONDS

    def snapshot(self) -> dict[str, Any]:
        described = self.cp.client("stepfunctions").describe_execution(executionArn=self.arn)
        self.events += self.tail.new_events()
        if self.plan is None:
            self.plan = operator_data.load_plan(self.cp, self.layer, self.rollout_id)
        live = None
        if described["status"] == "RUNNING" and self.plan is not None:
            # GetAlias draws on the account's Lambda control-plane rate, which the rollout itself needs:
            # the live weights are read again at most every LIVE_REFRESH_SECONDS.
            if time.monotonic() - self.live_read_at >= LIVE_REFRESH_SECONDS:
                self.live = operator_data.live_alias_weights(self.cp, self.plan)
                self.live_read_at = time.monotonic()
            live = self.live
        return operator_tree.rollout_tree(self.layer, self.rollout_id, described, self.events, self.plan, live)


def cmd_get(args: argparse.Namespace, cp: ControlPlane) -> int:
    rollout_id = args.rollout or operator_data.current_rollout(cp, args.layer)
    if rollout_id is None:
        print(f"layershift: layer {args.layer!r} has no rollout yet", file=sys.stderr)
        return 1
    sfn = cp.client("stepfunctions")
    try:
        sfn.describe_execution(executionArn=controlplane.execution_arn(cp, rollout_id))
    except sfn.exceptions.ExecutionDoesNotExist:
        print(f"layershift: no execution {rollout_id!r} (rollout of layer {args.layer!r})", file=sys.stderr)
        return 1
    watch = _RolloutWatch(cp, args.layer, rollout_id)
    tree = watch.snapshot()
    if args.watch:
        tree = _watch(watch, tree, args)
    if args.output == "json":
        operator_views.print_json(tree)
    elif not args.watch:
        operator_views.show_tree(tree, operator_views.console())
    if args.watch:  # like push --wait: the exit code says how the watched rollout ended
        return 0 if tree["status"] == "SUCCEEDED" else 1
    return 0


def _watch(watch: _RolloutWatch, tree: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Refresh the tree until the execution ends (or --timeout passes). On a terminal it redraws in
    place; elsewhere each changed tree is printed once, after a separator line."""
    out = operator_views.console()
    deadline = time.monotonic() + args.timeout
    json_only = args.output == "json"

    def ended(current: dict[str, Any]) -> bool:
        return current["status"] != "RUNNING" or time.monotonic() > deadline

    if out.is_terminal and not json_only:
        from rich.live import Live

        with Live(operator_views.tree_renderable(tree), console=out, refresh_per_second=4) as live:
            while not ended(tree):
                time.sleep(args.interval)
                tree = watch.snapshot()
                live.update(operator_views.tree_renderable(tree))
        return tree
    shown = ""
    while True:
        text = operator_views.tree_text(tree)
        if text != shown and not json_only:
            print(("--\n" if shown else "") + text, flush=True)
            shown = text
        if ended(tree):
            return tree
        time.sleep(args.interval)
        tree = watch.snapshot()


def cmd_retry(args: argparse.Namespace, cp: ControlPlane) -> int:
    result = controlplane.retry(cp, args.layer)
    print(
        f"retrying layers/{args.layer}/requirements.txt: uploaded again as version {result.requirements_version}, "
        f"a new rollout of the same bytes"
    )
    print(f"execution: {result.execution_arn}")
    return follow_to_the_end(cp, result) if args.wait else 0


def follow_to_the_end(cp: ControlPlane, result: controlplane.PushResult) -> int:
    """Follow the execution a push started, with a progress display; 0 when it was promoted."""
    controlplane.wait_for_execution(cp, result.execution_arn)
    with operator_views.progress_lines(operator_views.console(), f"rollout {result.execution_name}") as emit:
        described = controlplane.follow(cp, result.execution_arn, emit=emit)
    return 0 if described["status"] == "SUCCEEDED" else 1


def register(sub: Any, add_target: AddTarget, control_plane_of: ControlPlaneOf) -> None:
    """Add the operator's subcommands to the CLI's subparsers."""

    def bound(command: Callable[[argparse.Namespace, ControlPlane], int]) -> Callable[[argparse.Namespace], int]:
        return lambda args: command(args, control_plane_of(args))

    status = sub.add_parser("status", help="each layer's lock, promoted ARNs, last versions and last rollouts")
    status.add_argument("--layer")
    status.add_argument("--limit", type=int, default=10, help="recent executions to list")
    status.add_argument("--recent", type=int, default=5, help="versions and rollouts to list per layer")
    _add_output(status)
    add_target(status)
    status.set_defaults(func=bound(cmd_status))

    ls = sub.add_parser("ls", help="one row per layer: promoted version, lock holder, last rollout and its outcome")
    _add_output(ls)
    add_target(ls)
    ls.set_defaults(func=bound(cmd_ls))

    history = sub.add_parser(
        "history", help="a layer's rollouts, newest first: outcome, duration, pusher, source, verdict"
    )
    history.add_argument("layer")
    history.add_argument("--limit", type=int, default=20)
    _add_output(history)
    add_target(history)
    history.set_defaults(func=bound(cmd_history))

    get = sub.add_parser(
        "get", help="the current (or last) rollout of a layer as a tree: phase, step, functions, weights, verdicts"
    )
    get.add_argument("layer")
    get.add_argument("--rollout", help="another rollout of the layer (its id, the execution name)")
    get.add_argument(
        "--watch", "-w", action="store_true", help="refresh until the execution ends; exit 1 unless it was promoted"
    )
    get.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes with --watch")
    get.add_argument("--timeout", type=float, default=3600, help="stop watching after this many seconds")
    _add_output(get)
    add_target(get)
    get.set_defaults(func=bound(cmd_get))

    retry = sub.add_parser(
        "retry", help="roll out the layer's current bytes again (a push of the same bytes starts nothing)"
    )
    retry.add_argument("layer")
    retry.add_argument("--wait", action="store_true", help="follow the rollout until it ends")
    add_target(retry)
    retry.set_defaults(func=bound(cmd_retry))
