"""`layershift lock export` and `layershift lock check`: the promoted layer versions as a file under
version control, and the CI check that no consumer template pins another version.

`cli.build_parser` registers them with `register`; the domain work is `layershift_core.lockfile`.
Exit codes: 0 OK, 1 a template pins a layer version other than the promoted one, 2 bad input (a
missing or unreadable template, a broken lock file, a control plane whose records disagree).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from layershift_core import lockfile
from layershift_core.errors import LockExportFailed, LockFileInvalid, TemplateUnreadable
from layershift_core.pins import find_pins

from .controlplane import ControlPlane, ControlPlaneNotFound

AddTarget = Callable[[argparse.ArgumentParser], None]
ControlPlaneOf = Callable[[argparse.Namespace], ControlPlane]

BAD_INPUT = 2


def _summary(lock: lockfile.LockFile) -> list[str]:
    if not lock.layers:
        return ["  no layer has a promoted version yet"]
    lines = []
    for name, layer in sorted(lock.layers.items()):
        for variant in layer.variants:
            serves = ", ".join(variant.promoted_for) or ", ".join(variant.compatible_runtimes)
            line = f"  {name}: {variant.arn} ({variant.variant or serves}), {len(variant.packages)} package(s)"
            if variant.used_by is not None:
                used = variant.used_by
                line += f", used by {used.functions} function(s): {used.latest} $LATEST, {used.aliases} alias(es)"
            lines.append(line)
    return lines


def cmd_export(args: argparse.Namespace, control_plane_of: ControlPlaneOf) -> int:
    cp = control_plane_of(args)
    try:
        with cp.domain_clients():
            lock = lockfile.export(cp.settings(), args.layer)
    except LockExportFailed as exc:
        print(f"layershift: nothing written: {exc}", file=sys.stderr)
        return BAD_INPUT
    text = lockfile.dumps(lock)
    versions = sum(len(layer.variants) for layer in lock.layers.values())
    head = f"{len(lock.layers)} layer(s), {versions} promoted version(s)"
    if args.file == "-":
        sys.stdout.write(text)
        print(f"locked {head}", *_summary(lock), sep="\n", file=sys.stderr)
        return 0
    try:
        Path(args.file).write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"layershift: cannot write {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return BAD_INPUT
    print(f"wrote {args.file}: {head}", *_summary(lock), sep="\n")
    return 0


def _lock_to_check_against(
    args: argparse.Namespace, control_plane_of: ControlPlaneOf, texts: list[str]
) -> tuple[lockfile.LockFile, str]:
    """The lock file, or the control plane's lock of the promoted layers the templates pin (only
    those: another layer's records do not make this check fail)."""
    if args.lock is not None:
        return lockfile.load(Path(args.lock)), args.lock
    try:
        cp = control_plane_of(args)
    except ControlPlaneNotFound as exc:
        raise ControlPlaneNotFound(f"{exc}; or check offline against a lock file with --lock FILE") from None
    pinned = {
        pin.layer_name.removeprefix(cp.layer_name_prefix)
        for text in texts
        for pin in find_pins(text)
        if pin.layer_name.startswith(cp.layer_name_prefix)
    }
    with cp.domain_clients():
        promoted = [layer for layer in sorted(pinned) if lockfile.promoted_parameters(layer)]
        return lockfile.export(cp.settings(), promoted, usage=False), "the control plane"


def cmd_check(args: argparse.Namespace, control_plane_of: ControlPlaneOf) -> int:
    if args.lock is not None and (args.local or args.stack):
        print("layershift: --lock checks offline against the lock file; leave out --local and --stack", file=sys.stderr)
        return BAD_INPUT
    templates = [Path(name) for name in args.templates]
    try:
        # an unreadable template fails before the control plane is asked anything
        texts = [lockfile.read_template(path) for path in templates]
        lock, source = _lock_to_check_against(args, control_plane_of, texts)
        findings = lockfile.check(templates, lock)
    except (LockFileInvalid, TemplateUnreadable, LockExportFailed) as exc:
        print(f"layershift: {exc}", file=sys.stderr)
        return BAD_INPUT
    for finding in findings:
        print(finding.message(), file=sys.stderr)
    if findings:
        files = len({finding.source for finding in findings})
        print(
            f"layershift: {len(findings)} pin(s) of a layer version that is not the promoted one, in {files} "
            f"template(s): a deploy of them reverts the layer",
            file=sys.stderr,
        )
        return 1
    print(
        f"OK: {len(templates)} template(s) pin no version of the {len(lock.layers)} locked layer(s) "
        f"other than the promoted one ({source})"
    )
    return 0


def register(sub: Any, add_target: AddTarget, control_plane_of: ControlPlaneOf) -> None:
    """Add `lock export` and `lock check` to the CLI's subparsers."""
    lock = sub.add_parser(
        "lock", help="the promoted layer versions as a lock file; check consumer templates against it in CI"
    )
    commands = lock.add_subparsers(dest="lock_command", required=True)

    export = commands.add_parser(
        "export",
        help="write each promoted layer version (per variant): ARN, build key, sha256, packages with hashes, users",
    )
    export.add_argument("--layer", action="append", help="only this layer (repeat for several; default: every layer)")
    export.add_argument(
        "--file",
        default=lockfile.DEFAULT_FILE,
        help=f"where to write it, '-' for stdout (default {lockfile.DEFAULT_FILE})",
    )
    add_target(export)
    export.set_defaults(func=lambda args: cmd_export(args, control_plane_of))

    check = commands.add_parser(
        "check",
        help="fail (exit 1) when a template pins a layer version other than the promoted one, naming each pin",
    )
    check.add_argument("templates", nargs="+", metavar="TEMPLATE", help="SAM or CloudFormation templates, YAML or JSON")
    check.add_argument(
        "--lock",
        metavar="FILE",
        help="check offline against this lock file (no AWS access); default: ask the control plane",
    )
    add_target(check)
    check.set_defaults(func=lambda args: cmd_check(args, control_plane_of))
