"""layer.toml: the optional spec pushed beside requirements.txt.

```toml
[build]
runtimes = ["python3.13"]
architectures = ["x86_64"]
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

[analysis]                      # the new version against the old one, per function
max_error_rate_delta = 0.02     # new error rate minus old error rate
max_p99_duration_ratio = 1.5    # new p99 duration over old p99 duration ...
min_p99_increase_ms = 25        # ... and more than this many ms slower
min_invocations = 20            # new-version invocations needed for a verdict
max_extension_seconds = 600     # how long an inconclusive bake may be extended
inconclusive = "rollback"       # or "promote", once the extension is used up
```
Every key is optional; what is missing comes from the template's defaults.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import InvalidLayerSpec
from .models import CanaryAnalysis, LayerSpec, TrafficStep

MAX_SPEC_BYTES = 64 * 1024

_CANARY = re.compile(r"^Canary(\d{1,2})Percent(\d{1,3})Minutes?$")
_LINEAR = re.compile(r"^Linear(\d{1,2})PercentEvery(\d{1,3})Minutes?$")


class SpecDefaults(BaseModel):
    runtime: str = "python3.13"
    architecture: str = "x86_64"
    alias: str = "live"
    strategy: str = "Canary10Percent5Minutes"
    poll_seconds: int = 30
    final_bake_seconds: int = 0
    analysis: CanaryAnalysis = CanaryAnalysis()


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
    approval: bool = False
    approval_timeout_seconds: int | None = None


class _Analysis(_Section):
    enabled: bool | None = None
    max_error_rate_delta: float | None = None
    max_p99_duration_ratio: float | None = None
    min_p99_increase_ms: float | None = None
    min_invocations: int | None = None
    max_extension_seconds: int | None = None
    inconclusive: str | None = None


class _File(_Section):
    build: _Build = _Build()
    targets: _Targets = _Targets()
    rollout: _Rollout = _Rollout()
    analysis: _Analysis = _Analysis()


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


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def parse_layer_spec(text: str | bytes | None, defaults: SpecDefaults, source: str = "layer.toml") -> LayerSpec:
    """Parse and validate layer.toml; raise InvalidLayerSpec naming the offending field."""
    raw: dict[str, Any] = {}
    if text:
        if isinstance(text, bytes):
            if len(text) > MAX_SPEC_BYTES:
                raise InvalidLayerSpec(f"{source}: {len(text)} bytes is over the {MAX_SPEC_BYTES}-byte limit")
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidLayerSpec(f"{source}: not valid UTF-8 at byte {exc.start}") from None
        if "\x00" in text:
            raise InvalidLayerSpec(f"{source}: contains a NUL byte")
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidLayerSpec(f"{source}: not valid TOML: {exc}") from None
    try:
        parsed = _File.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidLayerSpec(f"{source}: {_field_path(first['loc'])}: {first['msg']}") from None

    rollout = parsed.rollout
    if rollout.strategy and rollout.steps is not None:
        raise InvalidLayerSpec(f"{source}: rollout.strategy and rollout.steps are exclusive; set one")
    try:
        if rollout.steps is not None:
            steps = [TrafficStep.model_validate(step) for step in rollout.steps]
            strategy = "Custom"
        else:
            strategy = rollout.strategy or defaults.strategy
            steps = strategy_steps(strategy)
    except InvalidLayerSpec as exc:
        raise InvalidLayerSpec(f"{source}: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        index = next((i for i, s in enumerate(rollout.steps or []) if _invalid(s)), 0)
        raise InvalidLayerSpec(
            f"{source}: rollout.steps[{index}].{_field_path(first['loc'])}: {first['msg']}"
        ) from None
    weights = [step.weight for step in steps]
    if weights != sorted(set(weights)):
        raise InvalidLayerSpec(f"{source}: rollout.steps: weights must rise strictly, got {weights}")

    candidate = {
        "runtimes": parsed.build.runtimes or [defaults.runtime],
        "architectures": parsed.build.architectures or [defaults.architecture],
        "allow_ranges": parsed.build.allow_ranges,
        "profile": parsed.build.profile,
        "license": parsed.build.license,
        "alias": parsed.targets.alias or defaults.alias,
        "functions": parsed.targets.functions,
        "strategy": strategy,
        "steps": steps,
        "poll_seconds": rollout.poll_seconds if rollout.poll_seconds is not None else defaults.poll_seconds,
        "alarms": rollout.alarms,
        "final_bake_seconds": (
            rollout.final_bake_seconds if rollout.final_bake_seconds is not None else defaults.final_bake_seconds
        ),
        "pilots": rollout.pilots,
        "approval": rollout.approval,
        "analysis": {
            **defaults.analysis.model_dump(),
            **parsed.analysis.model_dump(exclude_none=True),
        },
    }
    if rollout.approval_timeout_seconds is not None:
        candidate["approval_timeout_seconds"] = rollout.approval_timeout_seconds
    try:
        return LayerSpec.model_validate(candidate)
    except ValidationError as exc:
        first = exc.errors()[0]
        section = {
            "runtimes": "build",
            "architectures": "build",
            "allow_ranges": "build",
            "license": "build",
            "profile": "build",
            "alias": "targets",
            "functions": "targets",
            "analysis": "",
        }.get(str(first["loc"][0]), "rollout")
        value = first.get("input")
        prefix = f"{section}." if section else ""
        raise InvalidLayerSpec(
            f"{source}: {prefix}{_field_path(first['loc'])}: {first['msg']} (got {value!r})"
        ) from None


def _invalid(step: dict[str, Any]) -> bool:
    try:
        TrafficStep.model_validate(step)
    except ValidationError:
        return True
    return False
