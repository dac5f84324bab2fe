"""The typed boundaries of the rollout workflow.

Every Lambda task receives the execution state and returns it with its own section filled in, so
the state reads top to bottom in the Step Functions console: `request` (what was pushed),
`rollout` (the validated request), `candidates`, `matrix` (what to build), `layer_versions` (one per
variant), `sharing` (the grants they carry), `plan`, then `outcome`. The plan
itself lives in S3 and DynamoDB; the state carries only its key and counts, far below Step
Functions' 256 KB payload limit.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from .builder.audit import AuditPolicy

LAYER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
LayerName = Annotated[str, Field(pattern=LAYER_NAME_PATTERN)]


def _function_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
        raise ValueError("a function name is 1-64 letters, digits, '-' or '_' (the name, not an ARN)")
    return value


FunctionName = Annotated[str, AfterValidator(_function_name)]
AlarmName = Annotated[str, Field(min_length=1, max_length=255)]
Runtime = Literal["python3.11", "python3.12", "python3.13"]
Architecture = Literal["x86_64", "arm64"]


class Model(BaseModel):
    """Base for models that cross a boundary: unknown fields are kept, so a task passes through
    what later tasks added."""

    model_config = ConfigDict(extra="allow")


class TrafficStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: int = Field(ge=1, le=99, description="percent of the alias's traffic on the new version")
    bake_seconds: int = Field(ge=0, le=86_400, description="how long to watch before the next step")


class CanaryAnalysis(BaseModel):
    """Thresholds of the version-scoped canary analysis: the new version against the old one."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_error_rate_delta: float = Field(
        default=0.02, ge=0, le=1, description="new error rate minus old error rate above which the step fails"
    )
    max_p99_duration_ratio: float = Field(
        default=1.5, ge=1, le=100, description="new p99 duration over old p99 duration above which the step fails"
    )
    min_p99_increase_ms: float = Field(
        default=25, ge=0, le=900_000, description="and the increase in ms a p99 regression must also exceed"
    )
    min_invocations: int = Field(
        default=20, ge=1, le=1_000_000, description="new-version invocations needed for a verdict"
    )
    max_extension_seconds: int = Field(
        default=600, ge=0, le=86_400, description="how long an inconclusive bake may be extended"
    )
    inconclusive: Literal["promote", "rollback"] = Field(
        default="rollback", description="what an inconclusive verdict leads to once the extension is used up"
    )


ACCOUNT_ID_PATTERN = r"^[0-9]{12}$"
ORGANIZATION_ID_PATTERN = r"^o-[a-z0-9]{10,32}$"
# Each statement of a layer version's policy takes about 250 bytes of Lambda's 20 KB policy limit;
# past this many accounts, sharing with the organization is the way.
MAX_SHARED_ACCOUNTS = 50


def _account_id(value: str) -> str:
    if not re.fullmatch(ACCOUNT_ID_PATTERN, value):
        raise ValueError('an AWS account id is 12 digits, as a string (e.g. "111122223333")')
    return value


def _organization_id(value: str) -> str:
    if not re.fullmatch(ORGANIZATION_ID_PATTERN, value):
        raise ValueError(
            'an AWS Organizations id is "o-" and 10 to 32 lower-case letters or digits (e.g. "o-a1b2c3d4e5")'
        )
    return value


AccountId = Annotated[str, AfterValidator(_account_id)]
OrganizationId = Annotated[str, AfterValidator(_organization_id)]


class ShareSpec(BaseModel):
    """layer.toml's [share]: who besides this account may use the layer's versions (lambda:GetLayerVersion)."""

    model_config = ConfigDict(extra="forbid")

    accounts: list[AccountId] = Field(
        default_factory=list, max_length=MAX_SHARED_ACCOUNTS, description="other AWS accounts, by 12-digit id"
    )
    organization: OrganizationId | None = Field(
        default=None, description="every account of this AWS Organizations organization"
    )
    public: bool = Field(default=False, description="every AWS account; only where AllowPublicLayers is true")


class LayerSpec(BaseModel):
    """layer.toml, resolved against the template's defaults."""

    model_config = ConfigDict(extra="forbid")

    runtimes: list[Runtime] = Field(
        default_factory=list, description="runtimes to build for; empty: those of the layer's functions"
    )
    architectures: list[Architecture] = Field(
        default_factory=list, description="architectures to build for; empty: those of the layer's functions"
    )
    allow_ranges: bool = False
    profile: Literal["default", "sourceless", "slim-runtime"] = "default"
    license: str | None = Field(default=None, max_length=512)
    alias: str = Field(pattern=r"^[A-Za-z0-9_-]{1,128}$")
    functions: list[FunctionName] = Field(
        default_factory=list, max_length=100, description="extra target functions by name (tag the rest)"
    )
    strategy: str
    steps: list[TrafficStep]
    poll_seconds: int = Field(ge=1, le=3_600)
    alarms: list[AlarmName] = Field(default_factory=list, max_length=100)
    final_bake_seconds: int = Field(default=0, ge=0, le=86_400, description="bake at 100% before promotion")
    analysis: CanaryAnalysis = Field(default_factory=CanaryAnalysis)
    pilots: list[FunctionName] = Field(
        default_factory=list, max_length=100, description="pilot-wave functions, besides those tagged"
    )
    approval: bool = Field(default=False, description="wait for `layershift approve` before 100%")
    approval_timeout_seconds: int = Field(default=86_400, ge=60, le=31_536_000)
    tolerated_failure_percent: float = Field(
        default=5.0,
        ge=0,
        le=100,
        description="share of the targets that may be skipped because they cannot be prepared; past it, all roll back",
    )
    audit: AuditPolicy = Field(
        default_factory=AuditPolicy, description="the vulnerability gate of the build ([audit] fail_on, unavailable)"
    )
    share: ShareSpec = Field(
        default_factory=ShareSpec, description="the grants every version of the layer carries ([share])"
    )

    @field_validator("alias")
    @classmethod
    def _alias_is_not_a_version(cls, value: str) -> str:
        if value.isdigit():
            raise ValueError("an alias name cannot be all digits (that is a version number)")
        return value


class RolloutRequest(Model):
    """What started the execution: a pushed requirements file, pinned to its S3 object version."""

    layer: str = Field(max_length=1024)
    bucket: str
    requirements_key: str
    requirements_version: str | None = None
    config_key: str | None = None
    config_version: str | None = None
    source: Literal["s3", "codecommit", "cli"] = "s3"
    commit_id: str | None = None
    pushed_by: str | None = Field(default=None, description="the pusher's identity, as the upload recorded it")
    attempt: int = Field(default=0, ge=0, description="a deliberate retry of the same bytes (layershift retry)")


class BuildEnvironmentVariable(BaseModel):
    Name: str
    Value: str
    Type: Literal["PLAINTEXT"] = "PLAINTEXT"


class FanOut(BaseModel):
    """How per-function work is spread over Distributed Map child executions (template parameters)."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(default=25, ge=1, le=1000, description="functions per child execution")
    concurrency: int = Field(default=10, ge=1, le=1000, description="child executions at once per Map Run")


class ValidatedRollout(Model):
    rollout_id: str
    layer: LayerName
    spec: LayerSpec
    requirements_uri: str
    fanout: FanOut = Field(default_factory=FanOut)


def platform_label(runtime: str, architecture: str) -> str:
    """``python3.13/arm64``: how a (runtime, architecture) pair is named in plans and messages."""
    return f"{runtime}/{architecture}"


class BuildTarget(BaseModel):
    """One (runtime, architecture) the rollout serves, with the build key of its inputs."""

    model_config = ConfigDict(extra="forbid")

    runtime: Runtime
    architecture: Architecture
    build_key: str

    @property
    def label(self) -> str:
        return platform_label(self.runtime, self.architecture)


class BuildMatrix(Model):
    """FindReusableBuild's answer: every target of the rollout, and those no published version serves yet."""

    source: Literal["spec", "consumers", "defaults"] = Field(
        description="where the targets come from: layer.toml, the layer's functions, or the template's defaults"
    )
    targets: list[BuildTarget] = Field(min_length=1)
    to_build: list[BuildTarget] = Field(default_factory=list)
    build_needed: bool = Field(default=False, description="whether to_build is not empty (for ReuseOrBuild)")
    matrix_key: str = Field(description="the build key of to_build as one CodeBuild job")
    artifact_prefix: str = Field(description="where that job writes variants.json and each variant's files")
    build_environment: list[BuildEnvironmentVariable] = Field(default_factory=list)


class LayerVersionRef(Model):
    """One published layer version of the rollout: the variant serving some of its targets."""

    arn: str
    version: int
    build_key: str
    compatible_runtimes: list[str] = Field(default_factory=list)
    compatible_architectures: list[str] = Field(default_factory=list)
    unzipped_bytes: int = 0
    variant: str = ""
    targets: list[str] = Field(default_factory=list, description="the platform labels it serves in this rollout")
    reused: bool = False
    manifest_key: str | None = None

    def serves(self, runtime: str | None, architecture: str) -> bool:
        if self.targets:
            return platform_label(str(runtime), architecture) in self.targets
        runtimes_ok = not self.compatible_runtimes or runtime in self.compatible_runtimes
        return runtimes_ok and (not self.compatible_architectures or architecture in self.compatible_architectures)


def variant_for(versions: list[LayerVersionRef], runtime: str | None, architecture: str) -> LayerVersionRef | None:
    """The layer version of ``versions`` that serves a function of this runtime and architecture."""
    return next((version for version in versions if version.serves(runtime, architecture)), None)


class Verdict(StrEnum):
    TARGET = "target"
    SKIPPED = "skipped"


class Wave(StrEnum):
    PILOT = "pilot"
    MAIN = "main"

    @property
    def rank(self) -> int:
        """Waves go in this order: pilots first."""
        return list(Wave).index(self)


class ShiftStep(BaseModel):
    """One item of the ShiftTraffic Map: a weight for one wave, held for a bake."""

    model_config = ConfigDict(extra="forbid")

    wave: Wave
    weight: int = Field(ge=1, le=100)
    bake_seconds: int = Field(ge=0, le=86_400)
    approval: bool = False
    targets_key: str | None = Field(default=None, description="the items of this step's Map Runs: its touched targets")


class TargetPlan(Model):
    function_name: str
    alias: str
    verdict: Verdict
    wave: Wave = Wave.MAIN
    reason: str | None = None
    old_version: str | None = None
    current_layers: list[str] = Field(default_factory=list)
    new_layers: list[str] = Field(default_factory=list)
    revision_id: str | None = None
    new_version: str | None = None
    platform: str | None = Field(default=None, description="the function's runtime/architecture")
    variant: str | None = Field(default=None, description="the layer variant it moves to (the plan's layer_versions)")


class RolloutPlan(Model):
    rollout_id: str
    layer: str
    layer_versions: list[LayerVersionRef]
    alias: str
    steps: list[TrafficStep]
    targets: list[TargetPlan]

    @property
    def active(self) -> list[TargetPlan]:
        return [t for t in self.targets if t.verdict is Verdict.TARGET]


class PlanSummary(Model):
    plan_key: str
    targets_key: str = Field(description="the active targets, one item each: what every later Map Run reads")
    target_count: int
    skipped_count: int
    pilot_count: int = 0
    steps: list[TrafficStep]
    shift_steps: list[ShiftStep] = Field(default_factory=list)
    step_count: int = 0
    variant_counts: dict[str, int] = Field(default_factory=dict, description="active targets per layer variant")


class ShareSummary(Model):
    """ShareLayerVersions' answer: the layer's versions now carry exactly [share]'s grants."""

    layer_versions: int = Field(default=0, description="versions of the layer reconciled")
    grants: int = Field(default=0, description="grants each version carries")
    added: int = Field(default=0, description="grants added, over every version")
    removed: int = Field(default=0, description="statements removed, over every version")


class CandidateList(Model):
    """FindCandidates' answer: the functions to assess, one item each in S3."""

    key: str
    count: int
    platforms: dict[str, int] = Field(
        default_factory=dict, description="candidates per runtime/architecture, from ListFunctions"
    )


class MapRunRef(Model):
    """A Distributed Map state's result with a ResultWriter: where its children's results are."""

    MapRunArn: str
    ResultWriterDetails: dict[str, str]


class Progress(Model):
    """Where the rollout is in its traffic schedule."""

    index: int = 0


class Preflight(Model):
    """What was true before the first shift: the gating alarms already in ALARM do not gate."""

    checked_at: float
    alarms_in_alarm: list[str] = Field(default_factory=list)


class ErrorInfo(Model):
    Error: str
    Cause: str | None = None


class Outcome(Model):
    status: Literal["promoted", "rolled_back", "rejected", "rollback_incomplete"]
    error: str | None = None
    cause: str | None = None
    restored: list[str] = Field(default_factory=list)
    unrestored: list[str] = Field(default_factory=list)


class LockWait(Model):
    """AcquireLayerLock found the layer held by another rollout: the workflow waits
    (WaitForLayerLock) and asks again, until ``lock_wait_seconds`` after ``waiting_since``."""

    holder: str
    holder_since: str | None = None
    waiting_since: float = Field(description="epoch seconds of the first attempt that found the layer locked")
    retry_seconds: int = Field(ge=1, description="the Wait state's SecondsPath")
    attempts: int = Field(default=1, ge=1)


class CanaryVerdict(StrEnum):
    HEALTHY = "healthy"
    FAILING = "failing"
    INCONCLUSIVE = "inconclusive"


class StepState(Model):
    """The traffic step being applied and baked (the execution state's ``bake``): small on purpose."""

    rollout_id: str
    layer: str
    plan_key: str
    alarms: list[str]
    poll_seconds: int
    step: ShiftStep
    step_index: int
    analysis: CanaryAnalysis = Field(default_factory=CanaryAnalysis)
    preflight: Preflight | None = None
    rollout_started_at: float | None = None
    started_at: float | None = None
    wait_seconds: int = 0
    bake_complete: bool = False
    extended_seconds: int = 0
    checks: int = 0
    verdict: CanaryVerdict | None = None
    verdict_detail: str | None = None


class RestoreSummary(Model):
    """What the restore of a rollout's targets did (RestoreStateMachine's output)."""

    restored: int = 0
    unrestored_count: int = 0
    unrestored: list[dict[str, Any]] = Field(default_factory=list, description="the first few, with their fixes")
    unrestored_key: str | None = Field(default=None, description="every one of them, in S3")
    failed_batches: int = 0
    last_alias_restored_at: float | None = None


class RestoreResult(Model):
    """The parent's RestoreAliases state: the nested execution and its summary."""

    execution_arn: str | None = None
    summary: RestoreSummary = Field(default_factory=RestoreSummary)


class RolloutState(Model):
    """The execution state: each task fills in its own section."""

    request: RolloutRequest
    rollout: ValidatedRollout | None = None
    lock_wait: LockWait | None = None
    matrix: BuildMatrix | None = None
    layer_versions: list[LayerVersionRef] = Field(default_factory=list)
    sharing: ShareSummary | None = None
    candidates: CandidateList | None = None
    plan: PlanSummary | None = None
    preflight: Preflight | None = None
    map_run: MapRunRef | None = None
    progress: Progress | None = None
    bake: StepState | None = None
    restore: RestoreResult | None = None
    error: ErrorInfo | None = None
    outcome: Outcome | None = None
    # The last two tasks say they did their part; the reaper (reaper.py) does what they could not.
    notified: bool = False
    lock_released: bool = False


class ExecutionStatusChange(BaseModel):
    """The detail of Step Functions' "Execution Status Change" event (EventBridge)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    execution_arn: str = Field(alias="executionArn")
    state_machine_arn: str | None = Field(default=None, alias="stateMachineArn")
    name: str
    status: Literal["RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED", "PENDING_REDRIVE"]
    output: str | None = None


class NotifyRequest(Model):
    event: Literal["promoted", "rolled_back", "rejected", "rollback_incomplete"]
    state: RolloutState
    execution_arn: str | None = Field(default=None, description="$$.Execution.Id: its history counts the transitions")
