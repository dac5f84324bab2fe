"""``layershift build``: build a layer zip locally from a requirements file (or every variant of a matrix)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import get_args

from layershift_core.builder.audit import AuditPolicy, FailOn
from layershift_core.builder.build import build_layer, build_matrix
from layershift_core.builder.key import PROFILES
from layershift_core.builder.matrix import parse_targets
from layershift_core.builder.platforms import ARCHITECTURES, RUNTIMES
from layershift_core.errors import LayershiftError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the build options to a parser (the CLI's ``build`` sub-command uses this too)."""
    parser.add_argument("-r", "--requirements", required=True, type=Path, help="requirements file to build")
    parser.add_argument("--runtime", default="python3.13", choices=sorted(RUNTIMES), help="Lambda runtime")
    parser.add_argument(
        "--arch",
        "--architecture",
        dest="arch",
        default="x86_64",
        choices=sorted(ARCHITECTURES),
        help="Lambda architecture",
    )
    parser.add_argument(
        "-o",
        "--out",
        "--output",
        dest="out",
        required=True,
        type=Path,
        help="folder for layer.zip and manifest.json",
    )
    parser.add_argument("--allow-ranges", action="store_true", help="accept version ranges, not only == pins")
    parser.add_argument("--profile", default="default", choices=sorted(PROFILES), help="build profile")
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="build even when the build cache holds this build key (the result is still cached)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="build cache folder (default: $LAYERSHIFT_BUILD_CACHE or ~/.cache/layershift/builds)",
    )
    parser.add_argument(
        "--targets",
        default=None,
        help="build a matrix instead of one layer: comma-separated runtime/architecture "
        "(e.g. python3.12/x86_64,python3.13/arm64); OUTDIR gets variants.json and a folder per variant",
    )
    parser.add_argument(
        "--audit-fail-on",
        choices=get_args(FailOn),
        default=None,
        help="fail the build on a known vulnerability of this severity or above (default: none, never)",
    )
    parser.add_argument(
        "--audit-unavailable",
        choices=("fail", "warn"),
        default="warn",
        help="whether a vulnerability audit that cannot run fails the build (default: warn)",
    )
    parser.add_argument(
        "--fail-on-vulnerability",
        action="store_true",
        help="the same as --audit-fail-on low: fail on any known vulnerability",
    )


def run(args: argparse.Namespace) -> int:
    """Run a build from parsed arguments; 0 on success, 1 on failure (message on stderr)."""
    try:
        data = args.requirements.read_bytes()
    except OSError as exc:
        print(f"layershift build: cannot read {args.requirements}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        common = {
            "out_dir": args.out,
            "allow_ranges": args.allow_ranges,
            "profile": args.profile,
            "cache_dir": getattr(args, "cache_dir", None),
            "use_cache": not getattr(args, "no_cache", False),
            "audit_policy": policy(args),
        }
        if getattr(args, "targets", None):
            build_matrix(data, targets=parse_targets(args.targets), **common)
        else:
            build_layer(data, runtime=args.runtime, architecture=args.arch, **common)
    except LayershiftError as exc:
        print(f"layershift build: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def policy(args: argparse.Namespace) -> AuditPolicy | None:
    """The vulnerability gate the options ask for; None (audit, never fail) when they ask for none."""
    fail_on = getattr(args, "audit_fail_on", None) or ("low" if getattr(args, "fail_on_vulnerability", False) else None)
    unavailable = getattr(args, "audit_unavailable", "warn") or "warn"
    if fail_on is None and unavailable == "warn":
        return None
    return AuditPolicy(fail_on=fail_on or "none", unavailable=unavailable)


def main(argv: list[str] | None = None) -> int:
    """``layershift build -r REQS --runtime python3.13 --arch x86_64 -o OUTDIR [--profile P] [--no-cache]``
    (or ``--targets python3.12/x86_64,python3.13/arm64`` for a matrix)."""
    parser = argparse.ArgumentParser(prog="layershift build", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
