"""`layershift usage` and the scheduled usage report: who runs which version of each layer, who is
behind the promoted version and why, and which consumer stacks pin an old layer version.

The facts come from one paced inventory (``inventory.scan``), one Resource Groups Tagging query
(the functions opted in for each layer), the promoted SSM parameters, the registry's version
records and the last rollout's plan of each layer (in S3), and the original templates of the
account's CloudFormation stacks.

A function drifts when its ``$LATEST`` or an alias's version runs a version of the layer other than
the promoted one for its runtime and architecture, or when it is opted in for the layer and does
not run it at all. Its reason comes from the last rollout's plan: skipped there (with the plan's
reason), the rollout rolled back, not opted in, or, when the plan moved it and it is no longer
there, "changed outside layershift".
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

from .artifacts import write_json
from .aws import client
from .inventory import LATEST, FunctionUse, Inventory, layer_arn_parts, scan
from .lockfile import promoted_parameters
from .models import RolloutPlan, Verdict
from .observability import logger
from .pins import find_pins, resolve_hint
from .planner import TARGET_TAG, load_plan, opted_in_functions, own_lambda_arn, published_layer_arn
from .registry import Registry
from .settings import Settings
from .sharing import current_grants

REPORT_PREFIX = "reports/usage/"
ROOT_PARAMETER = "arn"
# Stacks whose template is current; the others are being deleted or never were created.
_LIVE_STACKS = [
    "CREATE_COMPLETE",
    "UPDATE_COMPLETE",
    "UPDATE_ROLLBACK_COMPLETE",
    "IMPORT_COMPLETE",
    "IMPORT_ROLLBACK_COMPLETE",
    "ROLLBACK_COMPLETE",
]


class VersionUsage(BaseModel):
    """One version of a layer: who runs it, and what the registry says of it."""

    arn: str
    version: int
    variant: str = ""
    status: str = ""  # the registry's: published, rolling_out, promoted, rolled_back ... ("" if unknown)
    promoted: bool = False
    functions: list[str] = []  # every function that runs it, through $LATEST or an alias
    latest: list[str] = []  # functions whose $LATEST runs it
    aliases: list[str] = []  # function:alias that route traffic to it (weight in brackets when split)
    grants: list[str] = []  # other accounts and organizations allowed to use it


class Drift(BaseModel):
    """A function not on the promoted version of the layer, and why."""

    function: str
    runs: list[str] = []  # the layer versions it runs (``$LATEST`` or an alias: which)
    promoted: str | None = None
    reason: str


class PinnedStack(BaseModel):
    """A consumer stack whose template pins a layer version other than the promoted one."""

    stack: str
    pinned: str
    line: int
    promoted: str | None
    hint: str


class LayerUsage(BaseModel):
    layer: str
    promoted: dict[str, str] = {}  # SSM parameter -> layer version ARN
    versions: list[VersionUsage] = []
    drift: list[Drift] = []
    pinned_stacks: list[PinnedStack] = []


class UsageReport(BaseModel):
    taken_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    complete: bool = True
    functions_seen: int = 0
    problems: list[str] = []
    layers: list[LayerUsage] = []


# -- the facts ------------------------------------------------------------------------------------------


def promoted_for(promoted: dict[str, str], layer: str, function: FunctionUse) -> str | None:
    """The promoted version for the function's runtime and architecture, else the layer's default."""
    return promoted.get(f"/layershift/{layer}/{function.runtime}/{function.architecture}/arn") or promoted.get(
        f"/layershift/{layer}/{ROOT_PARAMETER}"
    )


def last_plan(
    settings: Settings, layer: str, rollouts: list[dict[str, Any]]
) -> tuple[dict[str, Any], RolloutPlan] | None:
    """The newest rollout of the layer that wrote a plan, and the plan."""
    planned = [r for r in rollouts if r.get("plan_key")]
    if not planned:
        return None
    newest = max(planned, key=lambda r: str(r.get("updated_at") or ""))
    try:
        return newest, load_plan(settings.bucket, str(newest["plan_key"]))
    except (ClientError, ValueError):  # unreadable or invalid (a pydantic error is a ValueError): no reasons
        logger.warning("plan unreadable", extra={"layer": layer, "key": newest.get("plan_key")})
        return None


# -- drift ---------------------------------------------------------------------------------------------


def drift_reason(layer: str, function: str, opted: list[str], last: tuple[dict[str, Any], RolloutPlan] | None) -> str:
    """Why a function is not on the promoted version, from the last rollout's plan."""
    if last is None:
        return "no rollout of this layer has planned it" if layer in opted else _not_opted_in(layer, opted)
    record, plan = last
    rollout_id = record.get("rollout_id") or plan.rollout_id
    target = next((t for t in plan.targets if t.function_name == function), None)
    if target is None:
        if layer not in opted:
            return _not_opted_in(layer, opted)
        return f"opted in after the last rollout ({rollout_id}) planned its targets"
    if target.verdict is Verdict.SKIPPED:
        return f"skipped by rollout {rollout_id}: {target.reason}"
    status = str(record.get("status") or "")
    if status != "promoted":
        why = f": {record['reason']}" if record.get("reason") else ""
        return f"rollout {rollout_id} did not promote it ({status or 'unknown'}{why})"
    return f"changed outside layershift: rollout {rollout_id} promoted it, and it no longer runs that version"


def _not_opted_in(layer: str, opted: list[str]) -> str:
    if opted:
        return f"not opted in: its {TARGET_TAG} tag names {', '.join(opted)}, not {layer}"
    return f"not opted in: it has no {TARGET_TAG} tag, so no rollout changes it"


def _layer_of(arn: str, prefix: str) -> str | None:
    """The layershift layer of a layer version ARN of this control plane, else None."""
    parts = layer_arn_parts(arn)
    if parts is None or not parts[0].startswith(prefix):
        return None
    return parts[0].removeprefix(prefix)


# -- the report ----------------------------------------------------------------------------------------


def _version_usage(
    arn: str, record: dict[str, Any] | None, users: list[tuple[str, str]], promoted: set[str]
) -> VersionUsage:
    parts = layer_arn_parts(arn)
    grants = current_grants(parts[0], parts[1]) if parts else []
    return VersionUsage(
        grants=sorted(grant.describe() for grant in grants),
        arn=arn,
        version=parts[1] if parts else 0,
        variant=str((record or {}).get("variant") or ""),
        status=str((record or {}).get("status") or ""),
        promoted=arn in promoted,
        functions=sorted({name for name, _ in users}),
        latest=sorted(name for name, how in users if how == LATEST),
        aliases=sorted(f"{name}:{how.removeprefix('alias ')}" for name, how in users if how != LATEST),
    )


def layer_report(
    settings: Settings,
    layer: str,
    inventory: Inventory,
    tags: dict[str, list[str]],
    layer_prefix: str,
) -> LayerUsage:
    registry = Registry(settings.table)
    promoted = promoted_parameters(layer)
    records = {str(r["arn"]): r for r in registry.versions(layer) if r.get("arn")}
    users = inventory.users_by_version()
    used = {arn for arn in users if _layer_of(arn, layer_prefix) == layer}
    versions = [
        _version_usage(arn, records.get(arn), users.get(arn, []), set(promoted.values()))
        for arn in sorted(
            set(records) | used | set(promoted.values()), key=lambda a: (layer_arn_parts(a) or ("", 0))[1]
        )
    ]
    last = last_plan(settings, layer, registry.rollouts(layer))
    drift: list[Drift] = []
    for function in inventory.functions:
        runs = [(arn, how) for arn, how in function.uses() if _layer_of(arn, layer_prefix) == layer]
        opted = tags.get(function.name, [])
        if not runs and layer not in opted:
            continue
        wanted = promoted_for(promoted, layer, function)
        if runs and all(arn == wanted for arn, _ in runs) and any(how == LATEST for _, how in runs):
            continue  # $LATEST and every alias on the promoted version (a $LATEST without it would drop it)
        shown = [f"{how}: {arn}" for arn, how in runs] or ["nothing: it does not use the layer"]
        drift.append(
            Drift(
                function=function.name,
                runs=shown,
                promoted=wanted,
                reason=drift_reason(layer, function.name, opted, last),
            )
        )
    return LayerUsage(layer=layer, promoted=promoted, versions=versions, drift=drift)


def pinned_stacks(settings: Settings, report: UsageReport, deadline: float | None = None) -> None:
    """Add each consumer stack whose original template pins a version of a reported layer other than
    the promoted one (ListStacks, then GetTemplate per live stack: CloudFormation's budget, not Lambda's)."""
    by_name = {settings.published_name(usage.layer): usage for usage in report.layers}
    cfn = client("cloudformation")
    for page in cfn.get_paginator("list_stacks").paginate(StackStatusFilter=_LIVE_STACKS):
        for summary in page["StackSummaries"]:
            if deadline is not None and time.time() > deadline:
                report.complete = False
                report.problems.append("the consumer stacks' templates were not all read before the deadline")
                return
            name = summary["StackName"]
            try:
                body = cfn.get_template(StackName=name, TemplateStage="Original")["TemplateBody"]
            except cfn.exceptions.ClientError as exc:  # deleted since it was listed
                logger.warning("template unreadable", extra={"stack": name, "error": str(exc)})
                continue
            text = body if isinstance(body, str) else json.dumps(body, indent=1)
            for pin in find_pins(text, source=name):
                usage = by_name.get(pin.layer_name)
                if usage is None:
                    continue
                wanted = usage.promoted.get(f"/layershift/{usage.layer}/{ROOT_PARAMETER}")
                if any(pin.matches(arn) for arn in usage.promoted.values()):
                    continue
                usage.pinned_stacks.append(
                    PinnedStack(
                        stack=name, pinned=pin.text, line=pin.line, promoted=wanted, hint=resolve_hint(usage.layer)
                    )
                )


def usage_report(
    settings: Settings, layer: str | None = None, *, deadline: float | None = None, stacks: bool = True
) -> UsageReport:
    """The usage of every layer of this control plane (or one), as Lambda, the registry and
    CloudFormation say now."""
    layer_prefix = f"{own_lambda_arn(settings)}:layer:{settings.layer_name_prefix}"
    tags = opted_in_functions()
    layers = [layer] if layer else Registry(settings.table).layers()
    also = {name for name, named in tags.items() if set(named) & set(layers)}
    inventory = scan([published_layer_arn(settings, name) for name in layers], also=also, deadline=deadline)
    report = UsageReport(
        complete=inventory.complete, functions_seen=inventory.functions_seen, problems=list(inventory.problems)
    )
    report.layers = [layer_report(settings, name, inventory, tags, layer_prefix) for name in layers]
    if stacks:
        pinned_stacks(settings, report, deadline)
    return report


def publish_report(settings: Settings, report: UsageReport) -> str:
    """The report to S3 (``reports/usage/<time>.json`` and ``latest.json``) and, per layer version, the
    number of functions that run it as a CloudWatch metric. Returns the dated key."""
    from aws_lambda_powertools.metrics import MetricUnit

    from .observability import emit

    stamp = report.taken_at.replace(":", "").replace("-", "")
    key = f"{REPORT_PREFIX}{stamp}.json"
    body = report.model_dump(mode="json")
    write_json(settings.bucket, key, body)
    write_json(settings.bucket, f"{REPORT_PREFIX}latest.json", body)
    for layer in report.layers:
        for version in layer.versions:
            emit(
                "FunctionsOnLayerVersion",
                MetricUnit.Count,
                len(version.functions),
                Layer=layer.layer,
                Version=str(version.version),
            )
        emit("DriftedFunctions", MetricUnit.Count, len(layer.drift), Layer=layer.layer)
        emit("PinnedStacks", MetricUnit.Count, len(layer.pinned_stacks), Layer=layer.layer)
    return key


class UsageReportRequest(BaseModel):
    """ReportUsage's input: its schedule's event (every field ignored), or ``{"layer": ...}`` for one layer."""

    model_config = ConfigDict(extra="ignore")

    layer: str | None = None
    stacks: bool = True


class UsageReportResult(BaseModel):
    key: str
    complete: bool
    layers: int
    functions_seen: int
    drifted: int
    pinned_stacks: int


# What ReportUsage leaves itself to write the report after the scan, of its 900 s.
_WRITE_SECONDS = 60.0


def report_usage(request: UsageReportRequest, settings: Settings, seconds_left: float) -> UsageReportResult:
    """ReportUsage: the report, scanned before the task's deadline, written to S3 and CloudWatch."""
    deadline = time.time() + max(1.0, seconds_left - _WRITE_SECONDS)
    report = usage_report(settings, request.layer, deadline=deadline, stacks=request.stacks)
    key = publish_report(settings, report)
    logger.info("usage reported", extra={"key": key, "complete": report.complete, "problems": report.problems[:10]})
    return UsageReportResult(
        key=key,
        complete=report.complete,
        layers=len(report.layers),
        functions_seen=report.functions_seen,
        drifted=sum(len(layer.drift) for layer in report.layers),
        pinned_stacks=sum(len(layer.pinned_stacks) for layer in report.layers),
    )
