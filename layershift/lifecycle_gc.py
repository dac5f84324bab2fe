"""`layershift gc`: delete the layer versions and layershift-published function versions nothing runs.

`cli.build_parser` registers it with `register`. The rules and the re-checks are the domain's
(`layershift_core.cleanup`); this prints the plan (the dry run prints the same plan and stops).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from layershift_core.cleanup import FUNCTION_VERSION, LAYER_VERSION, CleanupPlan, CleanupPolicy, CleanupResult

from .controlplane import ControlPlane

AddTarget = Callable[[argparse.ArgumentParser], None]
ControlPlaneOf = Callable[[argparse.Namespace], ControlPlane]


def _keep(text: str) -> int:
    try:
        keep = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--keep takes a whole number, not {text!r}") from None
    if keep < 1:
        raise argparse.ArgumentTypeError(
            f"--keep {keep}: at least the newest version of each layer, promoted variant and function "
            "must stay (use 1 or more)"
        )
    return keep


def _hours(text: str) -> float:
    try:
        hours = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--grace-hours takes a number of hours, not {text!r}") from None
    if hours < 0:
        raise argparse.ArgumentTypeError(f"--grace-hours {hours:g}: a grace period cannot be negative")
    return hours


def mebibytes(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MiB ({size} bytes)"


def plan_lines(plan: CleanupPlan) -> list[str]:
    """The plan as text: the same lines for a dry run and a real run."""
    policy = plan.policy
    scope = f"layer {policy.layer}" if policy.layer else "every layer"
    lines = [f"gc plan for {scope}: keep the newest {policy.keep}, grace {policy.grace_hours:g} h"]
    if plan.refused:
        return [*lines, f"refused: {plan.refused}"]
    for kind, title in ((LAYER_VERSION, "layer versions"), (FUNCTION_VERSION, "function versions")):
        deletions = [d for d in plan.deletions if d.kind == kind]
        kept = [k for k in plan.kept if k.kind == kind]
        lines.append(f"{title}: {len(deletions)} to delete, {len(kept)} kept beyond the newest {policy.keep}")
        lines += [f"  delete {d.arn} ({d.code_size} bytes): {d.reason}" for d in deletions]
        lines += [f"  keep   {k.arn}: {'; '.join(k.reasons)}" for k in kept]
    lines.append(
        f"frees {mebibytes(plan.bytes_freed)}: layer versions {mebibytes(plan.bytes_of(LAYER_VERSION))}, "
        f"function versions {mebibytes(plan.bytes_of(FUNCTION_VERSION))}"
    )
    return lines


def cmd_gc(args: argparse.Namespace, cp: ControlPlane) -> int:
    from layershift_core.cleanup import clean_up

    policy = CleanupPolicy(
        keep=args.keep, grace_hours=args.grace_hours, include_shared=args.include_shared, layer=args.layer
    )
    with cp.domain_clients():
        result = clean_up(cp.settings(), policy, dry_run=args.dry_run)
    if args.output == "json":
        document: dict[str, Any] = result.model_dump(mode="json")
        document |= {
            "dry_run": args.dry_run,
            "planned_bytes": result.plan.bytes_freed,
            "bytes_freed": result.bytes_freed,
        }
        print(json.dumps(document, indent=2))
    else:
        _print_text(result, args.dry_run, cp.bucket)
    return 1 if result.plan.refused else 0


def _print_text(result: CleanupResult, dry_run: bool, bucket: str) -> None:
    print("\n".join(plan_lines(result.plan)))
    if dry_run:
        print("dry run: nothing deleted")
        return
    for outcome in result.outcomes:
        if outcome.status != "deleted":
            print(f"  {outcome.status}: {outcome.arn}: {outcome.detail}")
    deleted = sum(1 for outcome in result.outcomes if outcome.status == "deleted")
    print(f"deleted {deleted} of {len(result.plan.deletions)}, freed {mebibytes(result.bytes_freed)}")
    if result.record_key:
        print(f"recorded in s3://{bucket}/{result.record_key}")


def register(sub: Any, add_target: AddTarget, control_plane_of: ControlPlaneOf) -> None:
    """Add `gc` to the CLI's subparsers."""
    gc = sub.add_parser(
        "gc",
        help="delete layer versions and layershift-published function versions beyond the newest N that nothing runs",
    )
    gc.add_argument("--layer", help="only this layer and the function versions of its rollouts")
    gc.add_argument(
        "--keep", type=_keep, default=3, help="newest versions kept per layer, promoted variant and function (>= 1)"
    )
    gc.add_argument("--grace-hours", type=_hours, default=72.0, help="versions younger than this are kept")
    gc.add_argument("--dry-run", action="store_true", help="print the plan, delete nothing")
    gc.add_argument(
        "--include-shared",
        action="store_true",
        help="also delete layer versions granted to other accounts or the organization (their use is not visible)",
    )
    gc.add_argument("--output", "-o", choices=("text", "json"), default="text", help="json: one document, for scripts")
    add_target(gc)
    gc.set_defaults(func=lambda args: cmd_gc(args, control_plane_of(args)))
