"""The fleet benchmark (``make scale``): one promotion and one alarm-driven rollback per fleet size,
on the local AWS with Lambda's limits modelled (``--aws-limits``), measured from the executions'
own histories, the rollout's usage record, S3 and the emulated limits.

For each N it reports: wall time against the ideal (the rollout's own Lambda requests ÷ its budget),
throttles absorbed, requests by operation, state transitions, the parent's history events, the
largest state payload, the plan bytes written, and the time from the rollback decision to every
alias restored against the restore's requests ÷ the budget. The consumers are never invoked: the
control-plane path is the real one for each of them.

    .venv/bin/python -m bench.scale --sizes 100,1000        # make scale
    .venv/bin/python -m bench.scale --sizes 5000            # make scale SCALE_ARGS="--sizes 5000"
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.config import Config

from layershift.controlplane import (
    ControlPlane,
    from_outputs,
    history_events,
    push,
    rollout_usage,
    wait_for_end,
    wait_for_execution,
)
from layershift.invariants import check_invariants
from layershift.local import lambda_limits
from layershift.local.deploy import deploy_control_plane
from layershift.local.lambda_limits import AwsLimits
from layershift.local.server import LocalAws
from layershift_core.cleanup import CleanupPolicy, clean_up
from layershift_core.layer_usage import usage_report
from layershift_core.usage import USAGE, lambda_calls

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "Layershift/Scale"
PROMOTION_STEPS = "[{weight = 10, bake_seconds = 2}, {weight = 50, bake_seconds = 2}]"
_DETAIL_FIELDS = {
    "executionStartedEventDetails": "input",
    "executionSucceededEventDetails": "output",
    "stateEnteredEventDetails": "input",
    "stateExitedEventDetails": "output",
    "taskScheduledEventDetails": "parameters",
    "taskSucceededEventDetails": "output",
}


def say(text: str) -> None:
    print(text, flush=True)


# -- the fleet -----------------------------------------------------------------------------------------


def _zip(text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", text)
    return buffer.getvalue()


def make_fleet(aws: LocalAws, layer: str, size: int, layer_name: str) -> None:
    """``size`` consumers of a first version of ``layer`` (published as ``layer_name``, the stack's
    prefixed name), each opted in for it by its ``layershift:layer`` tag and behind ``live`` (no limits yet)."""
    lam, iam = aws.client("lambda"), aws.client("iam")
    try:
        role = iam.get_role(RoleName="scale-consumer")["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        role = iam.create_role(RoleName="scale-consumer", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    bootstrap = lam.publish_layer_version(
        LayerName=layer_name,
        Content={"ZipFile": _zip("# bootstrap")},
        CompatibleRuntimes=["python3.13"],
        CompatibleArchitectures=["x86_64"],
    )["LayerVersionArn"]
    code = _zip("def handler(event, context):\n    return {}\n")
    for index in range(size):
        name = f"{layer}-{index:05d}"
        lam.create_function(
            FunctionName=name,
            Runtime="python3.13",
            Role=role,
            Handler="app.handler",
            Code={"ZipFile": code},
            Layers=[bootstrap],
            Tags={"layershift:layer": layer},
        )
        version = lam.publish_version(FunctionName=name)["Version"]
        lam.create_alias(FunctionName=name, Name="live", FunctionVersion=version)
    aws.client("cloudwatch").put_metric_alarm(
        AlarmName=f"{layer}-broken",
        Namespace=NAMESPACE,
        MetricName="Broken",
        Dimensions=[{"Name": "Layer", "Value": layer}],
        Statistic="Sum",
        Period=10,
        EvaluationPeriods=1,
        Threshold=0,
        ComparisonOperator="GreaterThanThreshold",
        TreatMissingData="notBreaching",
    )


def layer_toml(steps: str, alarm: str, poll: int) -> str:
    return f'[rollout]\nsteps = {steps}\npoll_seconds = {poll}\nalarms = ["{alarm}"]\n[analysis]\nenabled = false\n'


# -- measuring ---------------------------------------------------------------------------------------------


def children(cp: ControlPlane, arn: str) -> list[str]:
    """Every child execution of the execution's Map Runs, and its restore execution with its own."""
    sfn = cp.client("stepfunctions")
    found: list[str] = []
    for run in sfn.list_map_runs(executionArn=arn)["mapRuns"]:
        token: dict[str, str] = {}
        while True:
            page = sfn.list_executions(mapRunArn=run["mapRunArn"], maxResults=1000, **token)
            found += [execution["executionArn"] for execution in page["executions"]]
            if not page.get("nextToken"):
                break
            token = {"nextToken": page["nextToken"]}
    return found


def restore_of(history: list[dict[str, Any]]) -> str | None:
    for event in history:
        output = (event.get("taskSucceededEventDetails") or {}).get("output") or ""
        if '"ExecutionArn"' in output:
            return json.loads(output).get("ExecutionArn")
    return None


def transitions(history: list[dict[str, Any]]) -> int:
    """States entered, each retry counted again: what Step Functions bills a Standard workflow for."""
    kinds = Counter(event["type"] for event in history)
    entered = sum(n for kind, n in kinds.items() if kind.endswith("StateEntered"))
    scheduled = kinds["TaskScheduled"] + kinds["LambdaFunctionScheduled"]
    return entered + max(0, scheduled - kinds["TaskStateEntered"])


def largest_payload(histories: list[list[dict[str, Any]]]) -> tuple[int, str]:
    largest, where = 0, ""
    for history in histories:
        for event in history:
            for field, key in _DETAIL_FIELDS.items():
                value = (event.get(field) or {}).get(key)
                if value and len(value.encode()) > largest:
                    name = (event.get(field) or {}).get("name") or event["type"]
                    largest, where = len(value.encode()), name
    return largest, where


def throttle_failures(histories: list[list[dict[str, Any]]]) -> int:
    failed = 0
    for history in histories:
        for event in history:
            details = event.get("taskFailedEventDetails") or event.get("lambdaFunctionFailedEventDetails") or {}
            if any(word in (details.get("error") or "") for word in ("TooManyRequests", "Throttl")):
                failed += 1
    return failed


def written_bytes(cp: ControlPlane, layer: str, rollout_id: str) -> tuple[int, int]:
    """(plan and items, Map Run results): every object version the rollout wrote under its prefix."""
    s3 = cp.client("s3")
    plan = results = 0
    for page in s3.get_paginator("list_object_versions").paginate(
        Bucket=cp.bucket, Prefix=f"rollouts/{layer}/{rollout_id}/"
    ):
        for version in page.get("Versions", []):
            if "/results/" in version["Key"]:
                results += version["Size"]
            elif "/items/" in version["Key"] or version["Key"].endswith("/plan.json"):
                plan += version["Size"]
    return plan, results


def _epoch(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


def first_entered(history: list[dict[str, Any]], state: str) -> float | None:
    for event in history:
        if (event.get("stateEnteredEventDetails") or {}).get("name") == state:
            return _epoch(event["timestamp"])
    return None


def bake_seconds(history: list[dict[str, Any]]) -> float:
    """Time spent baking: from each StartBake's end to its step being over (StepHealthy or a failure)."""
    total, started = 0.0, None
    for event in history:
        name = (event.get("stateExitedEventDetails") or {}).get("name")
        if name == "StartBake":
            started = _epoch(event["timestamp"])
        entered = (event.get("stateEnteredEventDetails") or {}).get("name")
        if started is not None and entered in {"StepHealthy", "AnythingToRestore"}:
            total += _epoch(event["timestamp"]) - started
            started = None
    return total


def measure(
    aws: LocalAws, cp: ControlPlane, layer: str, arn: str, described: dict[str, Any], budget: dict[str, float]
) -> dict[str, Any]:
    rollout_id = arn.rsplit(":", 1)[-1]
    parent = history_events(cp, arn)
    child_arns = children(cp, arn)
    restore = restore_of(parent)
    if restore:
        child_arns += [restore, *children(cp, restore)]
    child_histories = [history_events(cp, child) for child in child_arns]
    usage = rollout_usage(cp, layer, rollout_id)
    requests = lambda_calls(usage)
    control = sum(n for op, n in requests.items() if op != "GetFunction")
    ideal = max(control / budget["control"], requests.get("GetFunction", 0) / budget["get_function"])
    start, stop = _epoch(described["startDate"]), _epoch(described["stopDate"])
    fanout_start = first_entered(parent, "FindCandidates") or start
    baked = bake_seconds(parent)
    plan_bytes, result_bytes = written_bytes(cp, layer, rollout_id)
    payload, payload_at = largest_payload([parent, *child_histories])
    return {
        "status": described["status"],
        "error": described.get("error"),
        "wall_seconds": round(stop - start, 1),
        "fanout_wall_seconds": round(stop - fanout_start, 1),
        "bake_seconds": round(baked, 1),
        "lambda_requests": dict(sorted(requests.items())),
        "control_plane_requests": control,
        "get_function_requests": requests.get("GetFunction", 0),
        "ideal_seconds": round(ideal, 1),
        "ratio_to_ideal": round((stop - fanout_start - baked) / ideal, 2) if ideal else None,
        "throttles_absorbed": int(usage.get("throttles", 0)),
        "task_failures_from_throttling": throttle_failures([parent, *child_histories]),
        "get_metric_data_calls": int(usage.get("cloudwatch:GetMetricData", 0)),
        "child_executions": len(child_arns),
        "transitions_parent": transitions(parent),
        "transitions_children": sum(transitions(history) for history in child_histories),
        "recorded_transitions_parent": int(usage.get("transitions_parent", 0)),
        "recorded_transitions_children": int(usage.get("transitions_children", 0)),
        "parent_history_events": len(parent),
        "largest_payload_bytes": payload,
        "largest_payload_state": payload_at,
        "plan_bytes_written": plan_bytes,
        "result_bytes_written": result_bytes,
        "seconds_waiting_for_budget": round(usage.get("pacing_seconds", 0.0), 1),
        "_parent": parent,
    }


# -- one size ------------------------------------------------------------------------------------------


class Neighbour:
    """Another deployer of the account, spending ``rate`` control-plane requests a second (ListFunctions)
    while the rollouts run: together they ask for more than the quota, so requests are refused."""

    def __init__(self, aws: LocalAws, rate: float) -> None:
        self.aws, self.rate = aws, rate
        self.stop = threading.Event()
        self.sent = self.refused = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        lam = self.aws.client("lambda", config=Config(retries={"total_max_attempts": 1}))
        next_at = time.monotonic()
        while not self.stop.is_set():
            self.sent += 1
            try:
                lam.list_functions(MaxItems=1)
            except lam.exceptions.TooManyRequestsException:
                self.refused += 1
            next_at += 1 / self.rate
            time.sleep(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Neighbour:
        if self.rate > 0:
            self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)


def measure_ended(
    aws: LocalAws,
    cp: ControlPlane,
    layer: str,
    arn: str,
    described: dict[str, Any],
    budget: dict[str, float],
    other: Neighbour,
) -> dict[str, Any]:
    """``measure`` an ended run, with what the limits refused meanwhile and the invariants; the limits go off."""
    refused = sum(lambda_limits.stats()["refused"].values())
    aws.set_aws_limits(None)
    run = measure(aws, cp, layer, arn, described, budget)
    run["refused_by_limits"] = refused
    run["neighbour"] = {"requests": other.sent, "refused": other.refused}
    run["invariant_violations"] = check_invariants(cp, arn)
    return run


def run_size(
    aws: LocalAws, cp: ControlPlane, size: int, limits: AwsLimits | None, budget: dict[str, float], neighbour: float
) -> dict:
    layer = f"scale{size}"
    say(f"== N = {size}: creating the fleet (limits off)")
    started = time.monotonic()
    make_fleet(aws, layer, size, cp.layer_name_prefix + layer)
    say(f"   {size} consumers in {time.monotonic() - started:.0f} s")
    alarm = f"{layer}-broken"
    aws.set_aws_limits(limits)

    say("   promotion: six==1.16.0")
    with Neighbour(aws, neighbour) as other:
        pushed = push(cp, layer, b"six==1.16.0\n", layer_toml(PROMOTION_STEPS, alarm, 2).encode())
        wait_for_execution(cp, pushed.execution_arn)
        described = wait_for_end(cp, pushed.execution_arn, poll=5.0, timeout=6 * 3600)
    promotion = measure_ended(aws, cp, layer, pushed.execution_arn, described, budget, other)
    say(f"   {promotion['status']} in {promotion['wall_seconds']} s; ideal {promotion['ideal_seconds']} s")

    say("   rollback: six==1.15.0, the alarm fires during the first bake")
    aws.set_aws_limits(limits)
    with Neighbour(aws, neighbour) as other:
        pushed = push(
            cp, layer, b"six==1.15.0\n", layer_toml("[{weight = 10, bake_seconds = 3600}]", alarm, 10).encode()
        )
        wait_for_execution(cp, pushed.execution_arn)
        sfn = cp.client("stepfunctions")
        while True:
            names = {
                (e.get("stateEnteredEventDetails") or {}).get("name") for e in history_events(cp, pushed.execution_arn)
            }
            if (
                "BakeAndWatch" in names
                or sfn.describe_execution(executionArn=pushed.execution_arn)["status"] != "RUNNING"
            ):
                break
            time.sleep(5)
        before = lambda_calls(rollout_usage(cp, layer, pushed.execution_arn.rsplit(":", 1)[-1]))
        aws.client("cloudwatch").put_metric_data(
            Namespace=NAMESPACE,
            MetricData=[{"MetricName": "Broken", "Dimensions": [{"Name": "Layer", "Value": layer}], "Value": 1}],
        )
        described = wait_for_end(cp, pushed.execution_arn, poll=5.0, timeout=6 * 3600)
    rollback = measure_ended(aws, cp, layer, pushed.execution_arn, described, budget, other)
    parent = rollback["_parent"]
    decided = next(
        _epoch(e["timestamp"])
        for e in parent
        if (e.get("stateEnteredEventDetails") or {}).get("name") == "AnythingToRestore"
    )
    summary = next(
        json.loads(e["stateExitedEventDetails"]["output"])["restore"]["summary"]
        for e in parent
        if (e.get("stateExitedEventDetails") or {}).get("name") == "RestoreAliases"
    )
    after = rollback["lambda_requests"]
    restore_requests = {
        op: after.get(op, 0) - before.get(op, 0) for op in after if after.get(op, 0) != before.get(op, 0)
    }
    restore_control = sum(n for op, n in restore_requests.items() if op != "GetFunction")
    restore_ideal = max(
        restore_control / budget["control"], restore_requests.get("GetFunction", 0) / budget["get_function"]
    )
    rollback["restore"] = {
        "restored": summary["restored"],
        "unrestored": summary["unrestored_count"],
        "decision_to_aliases_restored_seconds": round(summary["last_alias_restored_at"] - decided, 1)
        if summary.get("last_alias_restored_at")
        else None,
        "lambda_requests": dict(sorted(restore_requests.items())),
        "ideal_seconds": round(restore_ideal, 1),
    }
    restored_in = rollback["restore"]["decision_to_aliases_restored_seconds"]
    say(f"   {rollback['status']} ({rollback['error']}); aliases restored {restored_in} s after the decision")
    for run in (promotion, rollback):
        run.pop("_parent")
    lifecycle = measure_lifecycle(cp, layer, size, budget)
    return {"size": size, "promotion": promotion, "rollback": rollback, "lifecycle": lifecycle}


def measure_lifecycle(cp: ControlPlane, layer: str, size: int, budget: dict[str, float]) -> dict[str, Any]:
    """After the rollouts: ``layershift usage`` and ``layershift gc --dry-run`` of the layer, from the
    command line's domain code, their Lambda requests paced by the stack's budget: wall time against the
    ideal (control-plane requests ÷ the budget), requests by operation, and whether they agree with the
    fleet (every function on the promoted version; nothing in use planned for deletion)."""
    found: dict[str, Any] = {}
    policy = CleanupPolicy(layer=layer, keep=1, grace_hours=0)
    for name, run in (
        ("usage", lambda: usage_report(cp.settings(), layer, stacks=False)),
        ("gc_dry_run", lambda: clean_up(cp.settings(), policy, dry_run=True)),
    ):
        USAGE.take()
        started = time.monotonic()
        with cp.domain_clients():
            answer = run()
        seconds = time.monotonic() - started
        requests = lambda_calls(USAGE.take())
        control = sum(n for op, n in requests.items() if op != "GetFunction")
        found[name] = {
            "wall_seconds": round(seconds, 1),
            "ideal_seconds": round(control / budget["control"], 1),
            "lambda_requests": dict(sorted(requests.items())),
            "answer": answer,
        }
    report, cleanup = found["usage"].pop("answer"), found["gc_dry_run"].pop("answer")
    (usage,) = report.layers
    promoted = [v for v in usage.versions if v.promoted]
    found["usage"] |= {
        "complete": report.complete,
        "on_promoted": len(promoted[0].functions) if promoted else 0,
        "drifted": len(usage.drift),
    }
    in_use = {version.arn for version in usage.versions if version.functions}
    found["gc_dry_run"] |= {
        "deletions": len(cleanup.plan.deletions),
        "kept": len(cleanup.plan.kept),
        "in_use_planned": len({d.arn for d in cleanup.plan.deletions} & in_use),
        "bytes": cleanup.plan.bytes_freed,
    }
    say(
        f"   usage: {found['usage']['on_promoted']} of {size} on the promoted version, "
        f"{found['usage']['wall_seconds']} s (ideal {found['usage']['ideal_seconds']} s), "
        f"{found['usage']['lambda_requests']}"
    )
    say(
        f"   gc --dry-run: {found['gc_dry_run']['deletions']} to delete, {found['gc_dry_run']['kept']} kept, "
        f"{found['gc_dry_run']['wall_seconds']} s (ideal {found['gc_dry_run']['ideal_seconds']} s), "
        f"{found['gc_dry_run']['lambda_requests']}"
    )
    return found


# -- the report ------------------------------------------------------------------------------------------


def acceptance(result: dict[str, Any]) -> dict[str, bool]:
    promotion, rollback, lifecycle = result["promotion"], result["rollback"], result["lifecycle"]
    restore = rollback["restore"]
    return {
        "promoted and rolled back, 0 invariant violations": promotion["status"] == "SUCCEEDED"
        and rollback["status"] == "FAILED"
        and not promotion["invariant_violations"]
        and not rollback["invariant_violations"],
        "0 failures caused by throttling": promotion["task_failures_from_throttling"] == 0
        and rollback["task_failures_from_throttling"] == 0,
        "promotion within 1.5x of its requests / budget": (promotion["ratio_to_ideal"] or 0) <= 1.5,
        "rollback decision to aliases restored within 1.5x of its requests / budget + 10 s": (
            restore["decision_to_aliases_restored_seconds"] or 1e9
        )
        <= 1.5 * restore["ideal_seconds"] + 10,
        "parent history at most 2,000 events": max(
            promotion["parent_history_events"], rollback["parent_history_events"]
        )
        <= 2000,
        "no state payload over 64 KB": max(promotion["largest_payload_bytes"], rollback["largest_payload_bytes"])
        <= 65536,
        "usage complete, every function on the promoted version": lifecycle["usage"]["complete"]
        and lifecycle["usage"]["on_promoted"] == result["size"]
        and lifecycle["usage"]["drifted"] == 0,
        "gc plans no version in use": lifecycle["gc_dry_run"]["in_use_planned"] == 0,
    }


def _row(size: int, kind: str, run: dict[str, Any]) -> str:
    cells = [
        str(size),
        kind,
        str(run["status"]),
        f"{run['wall_seconds']} s ({run['fanout_wall_seconds']} s, {run['bake_seconds']} s)",
        f"{run['control_plane_requests']} + {run['get_function_requests']} GetFunction: {run['ideal_seconds']} s",
        f"{run['ratio_to_ideal']}x",
        f"{run['throttles_absorbed']} ({run['refused_by_limits']})",
        f"{run['transitions_parent']} + {run['transitions_children']} "
        f"({run['recorded_transitions_parent']} + {run['recorded_transitions_children']})",
        str(run["child_executions"]),
        str(run["parent_history_events"]),
        f"{run['largest_payload_bytes']} B ({run['largest_payload_state']})",
        f"{run['plan_bytes_written']} ({run['plan_bytes_written'] // size})",
    ]
    return "| " + " | ".join(cells) + " |"


def markdown(results: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    lines = [
        f"# Fleet benchmark, {settings['date']}",
        "",
        f"Local AWS with Lambda's limits: {settings['limits']}. Budget: {settings['budget']['control']:g} "
        f"control-plane requests/s, {settings['budget']['get_function']:g} GetFunction/s. Batches of "
        f"{settings['batch_size']}, {settings['concurrency']} child executions at once. Another deployer: "
        f"{settings['neighbour']:g} requests/s.",
        "",
        "| N | run | status | wall (fan-out, bakes) | ideal: requests / budget | ratio | throttles absorbed "
        "(refused by the limits) | transitions parent + children (recorded) | child executions | parent events "
        "| largest payload | plan bytes (per function) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for kind in ("promotion", "rollback"):
            lines.append(_row(result["size"], kind, result[kind]))
    lines += [
        "",
        "Rollback: from the decision (the alarm's SendTaskFailure ending the bake) to every alias restored.",
        "",
    ]
    lines += [
        "| N | restored | decision → aliases restored | restore requests / budget | requests |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        restore = result["rollback"]["restore"]
        lines.append(
            f"| {result['size']} | {restore['restored']} ({restore['unrestored']} not) | "
            f"{restore['decision_to_aliases_restored_seconds']} s | {restore['ideal_seconds']} s | "
            f"{', '.join(f'{op} {n}' for op, n in restore['lambda_requests'].items())} |"
        )
    lines += ["", "Requests by operation:", ""]
    for result in results:
        for kind in ("promotion", "rollback"):
            requests = result[kind]["lambda_requests"]
            lines.append(f"- N = {result['size']}, {kind}: " + ", ".join(f"{op} {n}" for op, n in requests.items()))
    lines += ["", "Acceptance:", ""]
    for result in results:
        for check, held in acceptance(result).items():
            lines.append(f"- N = {result['size']}: {'yes' if held else 'NO'}: {check}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000", help="fleet sizes, comma-separated (default 100,1000)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="where scale.md and scale.json go")
    parser.add_argument("--budget", type=float, default=10, help="LambdaRequestsPerSecond (default 10)")
    parser.add_argument("--get-function-budget", type=float, default=50, help="GetFunctionRequestsPerSecond")
    parser.add_argument("--batch-size", type=int, default=25, help="FanOutBatchSize")
    parser.add_argument("--concurrency", type=int, default=10, help="FanOutConcurrency")
    parser.add_argument("--settle-seconds", type=float, default=2.0, help="how long an update stays InProgress")
    parser.add_argument("--no-limits", action="store_true", help="the local AWS without Lambda's limits (to compare)")
    parser.add_argument(
        "--neighbour", type=float, default=0, help="another deployer's control-plane requests/s during the rollouts"
    )
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",") if size]
    limits = None if args.no_limits else AwsLimits(settle_seconds=args.settle_seconds)
    budget = {"control": args.budget, "get_function": args.get_function_budget}
    parameters = {
        "LambdaRequestsPerSecond": f"{args.budget:g}",
        "GetFunctionRequestsPerSecond": f"{args.get_function_budget:g}",
        "FanOutBatchSize": str(args.batch_size),
        "FanOutConcurrency": str(args.concurrency),
        "PollSeconds": "5",
    }
    results = []
    with tempfile.TemporaryDirectory(prefix="layershift-scale-") as state, LocalAws(ROOT, state_dir=state) as aws:
        stack = deploy_control_plane(aws, ROOT, parameters=parameters)
        cp = from_outputs(stack.outputs, aws.region, aws.endpoint_url)
        for size in sizes:
            results.append(run_size(aws, cp, size, limits, budget, args.neighbour))
    settings = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "limits": "off"
        if limits is None
        else (
            f"{limits.control_rate:g} control-plane requests/s, GetFunction {limits.get_function_rate:g}/s, "
            f"{limits.settle_seconds:g} s update settle time"
        ),
        "budget": budget,
        "batch_size": args.batch_size,
        "concurrency": args.concurrency,
        "neighbour": args.neighbour,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps({"settings": settings, "results": results}, indent=2, default=str))
    report = markdown(results, settings)
    (out / "scale.md").write_text(report)
    print(report)
    return 0 if all(all(acceptance(result).values()) for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
