"""`layershift`: build, validate and push layers; see rollouts (status, ls, history, get --watch);
approve, reject, abort or retry them; free a dead rollout's lock; delete the versions nothing runs
(gc); run the demo."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from layershift_core.builder import command as build_command
from layershift_core.errors import NothingWaiting, UnlockRefused

from . import controlplane, lifecycle_gc, lifecycle_lock, lifecycle_usage, operator_commands, operator_views
from .controlplane import ControlPlane, ControlPlaneNotFound, NothingToRetry


def _project_root() -> Path:
    here = Path.cwd()
    for folder in (here, *here.parents):
        if (folder / "template.yaml").exists() and (folder / "statemachines").is_dir():
            return folder
    return Path(__file__).resolve().parent.parent


def _add_target(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--local", action="store_true", help="the control plane started by `layershift local`")
    group.add_argument("--stack", help="a deployed stack's name (default: samconfig.toml's stack_name)")
    parser.add_argument("--region", help="AWS region of the stack")


def _control_plane(args: argparse.Namespace) -> ControlPlane:
    if args.local:
        state_file = os.environ.get("LAYERSHIFT_LOCAL_STATE") or _project_root() / controlplane.LOCAL_STATE_FILE
        return controlplane.from_local(Path(state_file))
    stack = args.stack or controlplane.stack_name_from_samconfig(_project_root() / "samconfig.toml")
    if not stack:
        raise ControlPlaneNotFound("name the stack with --stack (or set stack_name in samconfig.toml), or use --local")
    return controlplane.from_stack(stack, args.region)


def cmd_push(args: argparse.Namespace) -> int:
    cp = _control_plane(args)
    requirements = Path(args.file).read_bytes()
    config = Path(args.config).read_bytes() if args.config else None
    result = controlplane.push(cp, args.layer, requirements, config)
    print(f"pushed layers/{args.layer}/requirements.txt (version {result.requirements_version})")
    if result.existing_status not in (None, "RUNNING"):
        # The trigger starts nothing for bytes that already have an execution: that one is not this push's.
        print(
            f"nothing new started: these bytes already rolled out as {result.execution_name} "
            f"({result.existing_status}), before this push. To roll them out again: layershift retry {args.layer}"
        )
        return 1 if args.wait else 0
    if result.existing_status == "RUNNING":
        print(f"these bytes are already rolling out: execution {result.execution_arn} (started before this push)")
    else:
        print(f"execution: {result.execution_arn}")
    return operator_commands.follow_to_the_end(cp, result) if args.wait else 0


def cmd_validate(args: argparse.Namespace) -> int:
    from layershift_core.errors import LayershiftError
    from layershift_core.spec import SpecDefaults
    from layershift_core.validation import check_files, check_layer_name

    try:
        if args.layer is not None:
            check_layer_name(args.layer)
        checked = check_files(
            Path(args.file).read_bytes(),
            Path(args.config).read_bytes() if args.config else None,
            SpecDefaults(),
            requirements_source=args.file,
            config_source=args.config or "layer.toml",
        )
    except (OSError, LayershiftError) as exc:
        print(f"layershift: {exc}", file=sys.stderr)
        return 1
    steps = ", ".join([*(f"{step.weight}% for {step.bake_seconds}s" for step in checked.spec.steps), "100%"])
    targets = (
        ", ".join(f"{label} (build key {key[:12]})" for label, key in checked.build_keys.items())
        if checked.build_keys
        else "the runtimes and architectures of the layer's functions"
    )
    print(
        f"{args.file}: OK, {len(checked.requirements.requirements)} requirement(s), builds for {targets}, steps {steps}"
    )
    return 0


def _execution_arn(cp: ControlPlane, rollout_id: str) -> str:
    return controlplane.execution_arn(cp, rollout_id)


def _follow_if_asked(args: argparse.Namespace, cp: ControlPlane, rollout_id: str) -> int:
    if not args.wait:
        return 0
    with operator_views.progress_lines(operator_views.console(), f"rollout {rollout_id}") as emit:
        described = controlplane.follow(cp, _execution_arn(cp, rollout_id), emit=emit)
    return 0 if described["status"] == "SUCCEEDED" else 1


def cmd_approve(args: argparse.Namespace) -> int:
    cp = _control_plane(args)
    rollout = controlplane.approve(cp, args.layer)
    print(f"approved rollout {rollout} of {args.layer}: it goes on to 100%")
    return _follow_if_asked(args, cp, rollout)


def cmd_reject(args: argparse.Namespace) -> int:
    cp = _control_plane(args)
    rollout = controlplane.reject(cp, args.layer, args.reason)
    print(f"rejected rollout {rollout} of {args.layer}: it rolls back")
    _follow_if_asked(args, cp, rollout)
    return 0


def cmd_abort(args: argparse.Namespace) -> int:
    cp = _control_plane(args)
    running = controlplane.abort(cp, args.layer, args.reason)
    if not running:
        print(f"layershift: no rollout of layer {args.layer!r} is running", file=sys.stderr)
        return 1
    for execution in running:
        print(f"abort requested for rollout {execution['name']}: it stops and every alias it touched is restored")
    for execution in running:
        _follow_if_asked(args, cp, execution["name"])
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    from layershift_core.lock import LIVE_EXECUTION_STATUSES, unlock_layer

    cp = _control_plane(args)
    with cp.domain_clients():
        result = unlock_layer(cp.settings(), args.layer, force=args.force, reason=args.reason)
    print(f"layer {result.layer} was locked by rollout {result.owner} since {result.acquired_at}")
    status = result.execution_status or "not found (no execution of that name)"
    print(f"  its execution {result.execution_arn or '(unknown state machine)'}: {status}")
    print(f"unlocked {result.layer}: the next push, or a rollout waiting for the lock, takes it")
    if result.forced and result.execution_status in LIVE_EXECUTION_STATUSES:
        print(f"  (--force) rollout {result.owner} stops at its next step with LockLost and rolls back")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from .replay import print_report, replay

    return print_report(replay(_control_plane(args), dry_run=args.dry_run), args.dry_run)


def cmd_build(args: argparse.Namespace) -> int:
    from layershift_core.builder.command import run

    return run(args)


def cmd_demo(args: argparse.Namespace) -> int:
    if args.git:
        from .demo_git import run as run_git

        return run_git(_project_root())
    from .demo import run

    return run(_project_root(), keep_running=args.keep_running)


def cmd_local(args: argparse.Namespace) -> int:
    from .local.deploy import deploy_control_plane
    from .local.lambda_limits import AwsLimits
    from .local.server import LocalAws

    root = _project_root()
    limits = AwsLimits(settle_seconds=args.settle_seconds) if args.aws_limits else None
    with LocalAws(state_dir=root / ".layershift" / "local", aws_limits=limits) as aws:
        stack = deploy_control_plane(aws, root)
        cp = controlplane.from_outputs(stack.outputs, aws.region, aws.endpoint_url)
        cp.save_local(root / controlplane.LOCAL_STATE_FILE)
        print(f"local control plane on {aws.endpoint_url}; bucket {cp.bucket}")
        if limits is not None:
            print(
                f"AWS limits: {limits.control_rate:g} control-plane requests/s, "
                f"GetFunction {limits.get_function_rate:g}/s, {limits.settle_seconds:g} s for an update to settle"
            )
        print("push with: layershift push requirements.txt --layer NAME --local --wait   (Ctrl-C stops)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layershift", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="build a layer zip, manifest and SBOM locally (what CodeBuild runs)")
    build_command.add_arguments(build)
    build.set_defaults(func=cmd_build)

    push = sub.add_parser("push", help="upload a requirements file; the upload starts a rollout")
    push.add_argument("file")
    push.add_argument("--layer", required=True)
    push.add_argument("--config", help="layer.toml to upload beside it")
    push.add_argument("--wait", action="store_true", help="follow the rollout until it ends")
    _add_target(push)
    push.set_defaults(func=cmd_push)

    validate = sub.add_parser(
        "validate", help="check a requirements file and layer.toml offline, as a push would be checked"
    )
    validate.add_argument("file")
    validate.add_argument("--config", help="the layer.toml that goes beside it")
    validate.add_argument("--layer", help="the layer name to check too")
    validate.set_defaults(func=cmd_validate)

    operator_commands.register(sub, _add_target, _control_plane)
    lifecycle_usage.register(sub, _add_target, _control_plane)
    lifecycle_lock.register(sub, _add_target, _control_plane)
    lifecycle_gc.register(sub, _add_target, _control_plane)

    for name, help_text, reason, func in (
        ("approve", "let a rollout waiting for approval go on to 100%%", None, cmd_approve),
        ("reject", "refuse a rollout waiting for approval: it rolls back", "rejected at the approval", cmd_reject),
        (
            "abort",
            "stop a running rollout at any point; every alias it touched is restored",
            "aborted from the command line",
            cmd_abort,
        ),
    ):
        signal = sub.add_parser(name, help=help_text)
        signal.add_argument("layer")
        if reason is not None:
            signal.add_argument("--reason", default=reason, help="recorded with the rollback")
        signal.add_argument("--wait", action="store_true", help="follow the rollout until it ends")
        _add_target(signal)
        signal.set_defaults(func=func)

    unlock = sub.add_parser(
        "unlock", help="free a layer's lock left by a rollout whose execution no longer runs (it is checked)"
    )
    unlock.add_argument("layer")
    unlock.add_argument("--force", action="store_true", help="free it even if the holder's execution still runs")
    unlock.add_argument("--reason", default="unlocked from the command line", help="recorded on the holder's rollout")
    _add_target(unlock)
    unlock.set_defaults(func=cmd_unlock)

    replay = sub.add_parser("replay", help="re-drive the events waiting in the dead-letter queue to their targets")
    replay.add_argument("--dry-run", action="store_true", help="list the waiting events, re-drive nothing")
    _add_target(replay)
    replay.set_defaults(func=cmd_replay)

    demo = sub.add_parser("demo", help="a promotion and an automatic rollback on the local emulated AWS")
    demo.add_argument("--keep-running", action="store_true")
    demo.add_argument("--git", action="store_true", help="a rollout started by a git push to the local CodeCommit")
    demo.set_defaults(func=cmd_demo)

    local = sub.add_parser("local", help="run the local emulated AWS with the control plane deployed")
    local.add_argument(
        "--aws-limits",
        action="store_true",
        help="model Lambda's shared 15 requests/s control-plane rate, GetFunction's 100/s, and update settle times",
    )
    local.add_argument(
        "--settle-seconds", type=float, default=2.0, help="with --aws-limits: how long an update stays InProgress"
    )
    local.set_defaults(func=cmd_local)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ControlPlaneNotFound as exc:
        print(f"layershift: {exc}", file=sys.stderr)
        return 2
    except (NothingWaiting, UnlockRefused, NothingToRetry) as exc:
        print(f"layershift: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
