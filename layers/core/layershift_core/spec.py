"""layer.toml: the optional spec pushed beside requirements.txt.

```toml
[build]
runtimes = ["python3.13"]        # leave out to build for the runtimes the layer's functions use
architectures = ["x86_64", "arm64"]   # likewise for their architectures
allow_ranges = false
profile = "default"             # or "sourceless" (bytecode only), "slim-runtime" (drops what Lambda ships)
license = "MIT"

[targets]
alias = "live"
functions = ["orders"]          # in addition to every function that already uses the layer

[rollout]
strategy = "Canary10Percent5Minutes"   # or: steps = [{weight = 10, bake_seconds = 60}, ...]
poll_seconds = 30
alarms = ["orders-errors"]
final_bake_seconds = 300        # hold 100% this long before the old version is let go
pilots = ["orders"]             # the pilot wave, besides functions tagged layershift:wave=pilot
approval = true                 # wait for `layershift approve` before 100%
approval_timeout_seconds = 86400
tolerated_failure_percent = 5    # targets that may be skipped because they cannot be prepared, in %

[analysis]                      # the new version against the old one, per function
max_error_rate_delta = 0.02     # new error rate minus old error rate
max_p99_duration_ratio = 1.5    # new p99 duration over old p99 duration ...
min_p99_increase_ms = 25        # ... and more than this many ms slower
min_invocations = 20            # new-version invocations needed for a verdict
max_extension_seconds = 600     # how long an inconclusive bake may be extended
inconclusive = "rollback"       # or "promote", once the extension is used up

[audit]                         # the vulnerability gate of the build
fail_on = "high"                # none, low, moderate, high or critical: a known vulnerability at or above
                                # it fails the build before publication (unknown severity counts as at it)
unavailable = "warn"            # or "fail": when the audit cannot run or reach its service

[share]                         # who else may use every version of the layer (lambda:GetLayerVersion)
accounts = ["111122223333"]     # AWS account ids (this account needs none: it is left out)
organization = "o-a1b2c3d4e5"   # every account of an AWS Organizations organization
public = false                  # every AWS account: refused unless the template's AllowPublicLayers is "true"
```
Leave [share] out and no other account may use the layer: each rollout makes every version of the
layer carry exactly these grants, and removes any other statement (see ``sharing.py``).
Every key is optional; what is missing comes from the template's defaults. Without runtimes or
architectures, a rollout builds for those of the layer's functions (see ``targets.py``); the
template's DefaultRuntime and DefaultArchitecture apply only when no function uses the layer yet.
"""

from __future__ import annotations

import re
import tomllib
from itertools import pairwise
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .builder.audit import AuditPolicy
from .errors import InvalidLayerSpec
from .models import MAX_SHARED_ACCOUNTS, AccountId, CanaryAnalysis, LayerSpec, OrganizationId, TrafficStep
from .requirements import decode_text

MAX_SPEC_BYTES = 64 * 1024

_CANARY = re.compile(r"^Canary(\d{1,2})Percent(\d{1,3})Minutes?$")
_LINEAR = re.compile(r"^Linear(\d{1,2})PercentEvery(\d{1,3})Minutes?$")


class Floors(BaseModel):
    """The least every layer.toml must ask for, set by the control plane's operators (template
    parameters Floor*); a pusher cannot go below them."""

    min_steps: int = Field(default=0, ge=0)
    min_bake_seconds: int = Field(default=0, ge=0)
    required_alarms: list[str] = []
    require_analysis: bool = False
    require_approval: bool = False


class SpecDefaults(BaseModel):
    floors: Floors = Floors()
    runtime: str = "python3.13"
    architecture: str = "x86_64"
    alias: str = "live"
    strategy: str = "Canary10Percent5Minutes"
    poll_seconds: int = 30
    final_bake_seconds: int = 0
    tolerated_failure_percent: float = 5.0
    analysis: CanaryAnalysis = CanaryAnalysis()
    audit: AuditPolicy = AuditPolicy()
    allow_public: bool = False
    own_account: str = ""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Build(_Section):
    runtimes: list[str] | None = None
    architectures: list[str] | None = None
    allow_ranges: bool = False
    profile: str = "default"
    license: str | None = None


class _Targets(_Section):
    alias: str | None = None
    functions: list[str] = []


class _Rollout(_Section):
    strategy: str | None = None
    steps: list[dict[str, Any]] | None = None
    poll_seconds: int | None = None
    alarms: list[str] = []
    final_bake_seconds: int | None = None
    pilots: list[str] = []
    approval: bool | None = None
    approval_timeout_seconds: int | None = None
    tolerated_failure_percent: float | int | None = None


class _Analysis(_Section):
    enabled: bool | None = None
    max_error_rate_delta: float | None = None
    max_p99_duration_ratio: float | None = None
    min_p99_increase_ms: float | None = None
    min_invocations: int | None = None
    max_extension_seconds: int | None = None
    inconclusive: str | None = None


class _Audit(_Section):
    fail_on: str | None = None
    unavailable: str | None = None


class _Share(_Section):
    accounts: list[AccountId] = []
    organization: OrganizationId | None = None
    public: bool = False
    # Not a setting: named here so that asking for it gets its own answer (``_check_share``).
    organizational_units: Any = None


class _File(_Section):
    build: _Build = _Build()
    targets: _Targets = _Targets()
    rollout: _Rollout = _Rollout()
    analysis: _Analysis = _Analysis()
    audit: _Audit = _Audit()
    share: _Share = _Share()


def strategy_steps(strategy: str) -> list[TrafficStep]:
    """The traffic steps before 100% for a CodeDeploy-style strategy name."""
    if strategy == "AllAtOnce":
        return []
    if match := _CANARY.match(strategy):
        weight, minutes = int(match[1]), int(match[2])
        if 1 <= weight <= 99:
            return [TrafficStep(weight=weight, bake_seconds=minutes * 60)]
    if match := _LINEAR.match(strategy):
        weight, minutes = int(match[1]), int(match[2])
        if 1 <= weight <= 50:
            return [TrafficStep(weight=w, bake_seconds=minutes * 60) for w in range(weight, 100, weight)]
    raise InvalidLayerSpec(
        f"rollout.strategy: {strategy!r} is not a strategy; use AllAtOnce, CanaryNPercentMMinutes "
        "(e.g. Canary10Percent5Minutes), LinearNPercentEveryMMinutes (e.g. Linear10PercentEvery1Minute) "
        "or an explicit rollout.steps list"
    )


def _field_path(*loc: Any) -> str:
    """``("rollout", "steps", 0, "weight")`` → ``rollout.steps[0].weight``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


_MESSAGES = {
    "extra_forbidden": "is not a known key",
    "missing": "is required",
    "model_type": "should be a table",
    "dict_type": "should be a table",
    "list_type": "should be an array",
    "bool_type": "should be true or false",
}


def _problem(source: str, exc: ValidationError, *prefix: Any) -> InvalidLayerSpec:
    """The first validation error, as `<source>: <field path>: <what is wrong> (got <value>)`."""
    error = exc.errors()[0]
    kind = error["type"]
    message = _MESSAGES.get(kind) or (str(error["ctx"]["error"]) if kind == "value_error" else error["msg"])
    got = "" if kind in ("missing", "extra_forbidden") else f" (got {_short(error.get('input'))})"
    return InvalidLayerSpec(f"{source}: {_field_path(*prefix, *error['loc'])}: {message}{got}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _deepest_line(text: str) -> int:
    """The line where brackets and braces nest deepest (strings are not told apart: a hint for an error)."""
    depth = deepest = 0
    line = deepest_line = 1
    for char in text:
        if char == "\n":
            line += 1
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest, deepest_line = depth, line
        elif char in "]}":
            depth -= 1
    return deepest_line


_SECTION_OF = {
    field: section
    for section, model in (("build", _Build), ("targets", _Targets), ("rollout", _Rollout))
    for field in model.model_fields
}


def _matrix_list(source: str, key: str, values: list[str] | None) -> list[str]:
    """``build.runtimes`` or ``build.architectures`` without repeats; absent means "the consumers'"."""
    if values is None:
        return []
    if not values:
        raise InvalidLayerSpec(
            f"{source}: build.{key}: is empty; leave it out to build for the {key} of the layer's functions"
        )
    return list(dict.fromkeys(values))


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def _check_floors(source: str, floors: Floors, strategy: str, steps: list[TrafficStep], parsed: _File) -> None:
    """Refuse a spec that asks for less than a floor, naming the floor and its template parameter."""
    if len(steps) < floors.min_steps:
        given = "rollout.steps" if strategy == "Custom" else f"rollout.strategy {strategy!r}"
        raise InvalidLayerSpec(
            f"{source}: {given}: {len(steps)} traffic step(s) before 100%, below this control plane's floor of "
            f"{floors.min_steps} (template parameter FloorMinSteps)"
        )
    for index, step in enumerate(steps):
        if step.bake_seconds < floors.min_bake_seconds:
            where = f"rollout.steps[{index}].bake_seconds" if strategy == "Custom" else f"rollout.strategy {strategy!r}"
            raise InvalidLayerSpec(
                f"{source}: {where}: a bake of {step.bake_seconds} s at {step.weight}%, below this control plane's "
                f"floor of {floors.min_bake_seconds} s per step (template parameter FloorMinBakeSeconds)"
            )
    if floors.require_analysis and parsed.analysis.enabled is False:
        raise InvalidLayerSpec(
            f"{source}: analysis.enabled: false, but this control plane requires canary analysis on every rollout "
            "(template parameter FloorRequireAnalysis)"
        )
    if floors.require_approval and parsed.rollout.approval is False:
        raise InvalidLayerSpec(
            f"{source}: rollout.approval: false, but this control plane requires approval before 100% on every "
            "rollout (template parameter FloorRequireApproval)"
        )


def _check_share(source: str, share: _Share, defaults: SpecDefaults) -> dict[str, Any]:
    """[share] as the spec keeps it: accounts without repeats or this account, and what Lambda cannot grant refused."""
    if share.organizational_units is not None:
        raise InvalidLayerSpec(
            f"{source}: share.organizational_units: Lambda layer permissions cannot be scoped to an organizational "
            "unit (AddLayerVersionPermission takes an account or an organization id only); share with the whole "
            "organization (share.organization) or list the accounts (share.accounts)"
        )
    if share.public and not defaults.allow_public:
        raise InvalidLayerSpec(
            f"{source}: share.public: true would let every AWS account use the layer, and this control plane does "
            'not allow public layer versions (template parameter AllowPublicLayers is "false"); share with '
            "share.accounts or share.organization instead"
        )
    accounts = [account for account in dict.fromkeys(share.accounts) if account != defaults.own_account]
    if len(accounts) > MAX_SHARED_ACCOUNTS:
        raise InvalidLayerSpec(
            f"{source}: share.accounts: {len(accounts)} accounts, more than the {MAX_SHARED_ACCOUNTS} a layer "
            "version's policy holds; share with their organization (share.organization) instead"
        )
    return {"accounts": accounts, "organization": share.organization, "public": share.public}


def parse_layer_spec(text: str | bytes | None, defaults: SpecDefaults, source: str = "layer.toml") -> LayerSpec:
    """Parse and validate layer.toml; raise InvalidLayerSpec naming the offending line or field.

    Values must have their TOML type: ``weight = "10"`` or ``approval = 1`` are refused, not converted.
    """
    raw: dict[str, Any] = {}
    if text:
        decoded = decode_text(text, source=source, max_bytes=MAX_SPEC_BYTES, error=InvalidLayerSpec)
        try:
            raw = tomllib.loads(decoded)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidLayerSpec(f"{source}: not valid TOML: {exc}") from None
        except RecursionError:
            raise InvalidLayerSpec(
                f"{source} line {_deepest_line(decoded)}: not valid TOML: arrays or tables are nested too deeply"
            ) from None
    try:
        parsed = _File.model_validate(raw, strict=True)
    except ValidationError as exc:
        raise _problem(source, exc) from None

    rollout = parsed.rollout
    if rollout.strategy is not None and rollout.steps is not None:
        raise InvalidLayerSpec(f"{source}: rollout.steps: rollout.strategy is set too; the two are exclusive, set one")
    if rollout.steps is not None:
        if not rollout.steps:
            raise InvalidLayerSpec(
                f'{source}: rollout.steps: is empty; to go straight to 100% set rollout.strategy = "AllAtOnce"'
            )
        steps: list[TrafficStep] = []
        for index, given in enumerate(rollout.steps):
            try:
                steps.append(TrafficStep.model_validate(given, strict=True))
            except ValidationError as exc:
                raise _problem(source, exc, "rollout", "steps", index) from None
        strategy = "Custom"
    else:
        strategy = _given(rollout.strategy, defaults.strategy)
        try:
            steps = strategy_steps(strategy)
        except InvalidLayerSpec as exc:
            raise InvalidLayerSpec(f"{source}: {exc}") from None
    for index, (before, step) in enumerate(pairwise(steps), start=1):
        if step.weight <= before.weight:
            raise InvalidLayerSpec(
                f"{source}: rollout.steps[{index}].weight: weights must rise strictly, and {step.weight} "
                f"does not rise above rollout.steps[{index - 1}].weight ({before.weight})"
            )

    _check_floors(source, defaults.floors, strategy, steps, parsed)
    candidate = {
        "runtimes": _matrix_list(source, "runtimes", parsed.build.runtimes),
        "architectures": _matrix_list(source, "architectures", parsed.build.architectures),
        "allow_ranges": parsed.build.allow_ranges,
        "profile": parsed.build.profile,
        "license": parsed.build.license,
        "alias": _given(parsed.targets.alias, defaults.alias),
        "functions": parsed.targets.functions,
        "strategy": strategy,
        "steps": steps,
        "poll_seconds": _given(rollout.poll_seconds, defaults.poll_seconds),
        "alarms": list(dict.fromkeys([*rollout.alarms, *defaults.floors.required_alarms])),
        "final_bake_seconds": _given(rollout.final_bake_seconds, defaults.final_bake_seconds),
        "pilots": rollout.pilots,
        "approval": _given(rollout.approval, defaults.floors.require_approval),
        "tolerated_failure_percent": float(
            _given(rollout.tolerated_failure_percent, defaults.tolerated_failure_percent)
        ),
        "analysis": {
            **defaults.analysis.model_dump(),
            **parsed.analysis.model_dump(exclude_none=True),
        },
        "audit": {
            **defaults.audit.model_dump(),
            **parsed.audit.model_dump(exclude_none=True),
        },
        "share": _check_share(source, parsed.share, defaults),
    }
    if rollout.approval_timeout_seconds is not None:
        candidate["approval_timeout_seconds"] = rollout.approval_timeout_seconds
    try:
        return LayerSpec.model_validate(candidate, strict=True)
    except ValidationError as exc:
        section = _SECTION_OF.get(str(exc.errors()[0]["loc"][0]))
        raise _problem(source, exc, *([section] if section else [])) from None
