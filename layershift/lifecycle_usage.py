"""`layershift usage [--layer L] [--output json]`: who runs which version of each layer, who drifts
from the promoted version and why, and which consumer stacks pin an old version."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from layershift_core.layer_usage import LayerUsage, UsageReport, VersionUsage, usage_report

from . import operator_views
from .controlplane import ControlPlane

AddTarget = Callable[[argparse.ArgumentParser], None]
ControlPlaneOf = Callable[[argparse.Namespace], ControlPlane]


def report_lines(report: UsageReport) -> list[str]:
    """The report as plain lines: per layer, its versions and users, then drift and pinned stacks."""
    lines = [f"{report.functions_seen} function(s) in the account, seen {report.taken_at}"]
    if not report.complete:
        lines.append("INCOMPLETE: " + "; ".join(report.problems))
    for layer in report.layers:
        lines += _layer_lines(layer)
    return lines


def _layer_lines(layer: LayerUsage) -> list[str]:
    lines = ["", f"layer {layer.layer}"]
    promoted = sorted(set(layer.promoted.values()))
    lines.append("  promoted: " + (", ".join(promoted) if promoted else "(none yet)"))
    for version in layer.versions:
        label = f"  v{version.version}" + (f" {version.variant}" if version.variant else "")
        label += f" [{_standing(version)}]"
        lines.append(f"{label}: {len(version.functions)} function(s)")
        if version.latest:
            lines.append(f"      $LATEST: {', '.join(version.latest)}")
        if version.aliases:
            lines.append(f"      aliases: {', '.join(version.aliases)}")
        if version.grants:
            lines.append(f"      shared with: {', '.join(version.grants)}")
    if layer.drift:
        lines.append(f"  not on the promoted version: {len(layer.drift)}")
        for drift in layer.drift:
            lines.append(f"    {drift.function}: {drift.reason}")
            lines += [f"      runs {run}" for run in drift.runs]
    for pin in layer.pinned_stacks:
        lines.append(
            f"  stack {pin.stack} line {pin.line} pins {pin.pinned}; promoted is {pin.promoted or '(none)'}; "
            f"use {pin.hint}"
        )
    return lines


def _standing(version: VersionUsage) -> str:
    """PROMOTED for the version the parameters name now; else what its last rollout made of it."""
    if version.promoted:
        return "PROMOTED"
    if version.status == "promoted":
        return "superseded"
    return version.status or "not published by layershift"


def cmd_usage(args: argparse.Namespace, cp: ControlPlane) -> int:
    with cp.domain_clients():
        report = usage_report(cp.settings(), args.layer, stacks=not args.no_stacks)
    if args.output == "json":
        operator_views.print_json(report.model_dump(mode="json"))
    else:
        print("\n".join(report_lines(report)))
    return 0 if report.complete else 1


def register(sub: Any, add_target: AddTarget, control_plane_of: ControlPlaneOf) -> None:
    usage = sub.add_parser(
        "usage",
        help="which functions, $LATEST and aliases run each version of each layer; drift from the promoted "
        "version with its reason; consumer stacks that pin an old version",
    )
    usage.add_argument("--layer", help="one layer (default: every layer of the control plane)")
    usage.add_argument("--no-stacks", action="store_true", help="do not read the CloudFormation stacks' templates")
    usage.add_argument(
        "--output", "-o", choices=("text", "json"), default="text", help="json: one document, for scripts"
    )
    add_target(usage)
    usage.set_defaults(func=lambda args: cmd_usage(args, control_plane_of(args)))
