"""The control plane's configuration, read once from the function environment."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, Field

from .builder.audit import AuditPolicy, FailOn
from .models import CanaryAnalysis, FanOut
from .spec import Floors, SpecDefaults


class Settings(BaseModel):
    bucket: str = Field(min_length=3)
    table: str = Field(min_length=3)
    topic_arn: str | None = None
    state_machine_arn: str | None = None
    default_alias: str = "live"
    default_runtime: str = "python3.13"
    default_architecture: str = "x86_64"
    default_strategy: str = "Canary10Percent5Minutes"
    poll_seconds: int = Field(default=30, ge=1)
    final_bake_seconds: int = Field(default=0, ge=0)
    canary_max_error_rate_delta: float = 0.02
    canary_max_p99_duration_ratio: float = 1.5
    canary_min_p99_increase_ms: float = 25
    canary_min_invocations: int = 20
    canary_max_extension_seconds: int = 600
    canary_inconclusive: Literal["promote", "rollback"] = "rollback"
    lock_lease_seconds: int = Field(default=24 * 3600, ge=60)
    lock_wait_seconds: int = Field(default=3600, ge=0, le=86_400)
    # Days an ended rollout's registry items are kept before DynamoDB's TTL deletes them (history.py):
    # at least the 14 days its execution can be redriven, whose steps read its record.
    registry_retention_days: int = Field(default=90, ge=15)
    codecommit_repository: str | None = None
    codecommit_branch: str = "main"
    restore_state_machine_arn: str | None = None
    tenant_role_arn: str | None = None
    fanout_batch_size: int = Field(default=25, ge=1, le=1000)
    fanout_concurrency: int = Field(default=10, ge=1, le=1000)
    tolerated_failure_percent: float = Field(default=5.0, ge=0, le=100)
    audit_fail_on: FailOn = "high"
    audit_unavailable: Literal["fail", "warn"] = "warn"
    layer_name_prefix: str = ""
    own_layer_name: str = ""
    own_lambda_arn: str = Field(default="", pattern=r"^$|^arn:[a-z-]+:lambda:[a-z0-9-]+:[0-9]{12}$")
    allow_managed_opt_in: bool = False
    third_party_layer_arns: str = ""
    floor_min_steps: int = Field(default=0, ge=0)
    floor_min_bake_seconds: int = Field(default=0, ge=0)
    floor_required_alarms: str = ""
    floor_require_analysis: bool = False
    floor_require_approval: bool = False
    allow_public_layers: bool = False

    @property
    def own_account(self) -> str:
        """This account's id, from ``own_lambda_arn`` (empty outside the template)."""
        return self.own_lambda_arn.split(":")[4] if self.own_lambda_arn else ""

    @property
    def third_party_layers(self) -> list[str]:
        """ThirdPartyLayerArns: the ArnLike patterns of other accounts' layers a target may keep."""
        return _names(self.third_party_layer_arns)

    def published_name(self, layer: str) -> str:
        """The Lambda layer name a layer publishes under: the stack's prefix and the layer."""
        return self.layer_name_prefix + layer

    @property
    def fanout(self) -> FanOut:
        return FanOut(batch_size=self.fanout_batch_size, concurrency=self.fanout_concurrency)

    @property
    def spec_defaults(self) -> SpecDefaults:
        return SpecDefaults(
            floors=Floors(
                min_steps=self.floor_min_steps,
                min_bake_seconds=self.floor_min_bake_seconds,
                required_alarms=_names(self.floor_required_alarms),
                require_analysis=self.floor_require_analysis,
                require_approval=self.floor_require_approval,
            ),
            runtime=self.default_runtime,
            architecture=self.default_architecture,
            alias=self.default_alias,
            strategy=self.default_strategy,
            poll_seconds=self.poll_seconds,
            final_bake_seconds=self.final_bake_seconds,
            tolerated_failure_percent=self.tolerated_failure_percent,
            analysis=CanaryAnalysis(
                max_error_rate_delta=self.canary_max_error_rate_delta,
                max_p99_duration_ratio=self.canary_max_p99_duration_ratio,
                min_p99_increase_ms=self.canary_min_p99_increase_ms,
                min_invocations=self.canary_min_invocations,
                max_extension_seconds=self.canary_max_extension_seconds,
                inconclusive=self.canary_inconclusive,
            ),
            audit=AuditPolicy(fail_on=self.audit_fail_on, unavailable=self.audit_unavailable),
            allow_public=self.allow_public_layers,
            own_account=self.own_account,
        )


def _names(joined: str) -> list[str]:
    """A comma-joined template list (CommaDelimitedList through !Join) as its entries."""
    return [name.strip() for name in joined.split(",") if name.strip()]


_ENV = {
    "bucket": "LAYERSHIFT_BUCKET",
    "table": "LAYERSHIFT_TABLE",
    "topic_arn": "LAYERSHIFT_TOPIC_ARN",
    "state_machine_arn": "LAYERSHIFT_STATE_MACHINE_ARN",
    "default_alias": "LAYERSHIFT_DEFAULT_ALIAS",
    "default_runtime": "LAYERSHIFT_DEFAULT_RUNTIME",
    "default_architecture": "LAYERSHIFT_DEFAULT_ARCHITECTURE",
    "default_strategy": "LAYERSHIFT_DEFAULT_STRATEGY",
    "poll_seconds": "LAYERSHIFT_POLL_SECONDS",
    "final_bake_seconds": "LAYERSHIFT_FINAL_BAKE_SECONDS",
    "canary_max_error_rate_delta": "LAYERSHIFT_CANARY_MAX_ERROR_RATE_DELTA",
    "canary_max_p99_duration_ratio": "LAYERSHIFT_CANARY_MAX_P99_DURATION_RATIO",
    "canary_min_p99_increase_ms": "LAYERSHIFT_CANARY_MIN_P99_INCREASE_MS",
    "canary_min_invocations": "LAYERSHIFT_CANARY_MIN_INVOCATIONS",
    "canary_max_extension_seconds": "LAYERSHIFT_CANARY_MAX_EXTENSION_SECONDS",
    "canary_inconclusive": "LAYERSHIFT_CANARY_INCONCLUSIVE",
    "lock_lease_seconds": "LAYERSHIFT_LOCK_LEASE_SECONDS",
    "lock_wait_seconds": "LAYERSHIFT_LOCK_WAIT_SECONDS",
    "registry_retention_days": "LAYERSHIFT_REGISTRY_RETENTION_DAYS",
    "codecommit_repository": "LAYERSHIFT_CODECOMMIT_REPOSITORY",
    "codecommit_branch": "LAYERSHIFT_CODECOMMIT_BRANCH",
    "restore_state_machine_arn": "LAYERSHIFT_RESTORE_STATE_MACHINE_ARN",
    "tenant_role_arn": "LAYERSHIFT_TENANT_ROLE_ARN",
    "fanout_batch_size": "LAYERSHIFT_FANOUT_BATCH_SIZE",
    "fanout_concurrency": "LAYERSHIFT_FANOUT_CONCURRENCY",
    "tolerated_failure_percent": "LAYERSHIFT_TOLERATED_FAILURE_PERCENT",
    "audit_fail_on": "LAYERSHIFT_AUDIT_FAIL_ON",
    "audit_unavailable": "LAYERSHIFT_AUDIT_UNAVAILABLE",
    "layer_name_prefix": "LAYERSHIFT_LAYER_NAME_PREFIX",
    "own_layer_name": "LAYERSHIFT_OWN_LAYER_NAME",
    "own_lambda_arn": "LAYERSHIFT_OWN_LAMBDA_ARN",
    "allow_managed_opt_in": "LAYERSHIFT_ALLOW_MANAGED_OPT_IN",
    "third_party_layer_arns": "LAYERSHIFT_THIRD_PARTY_LAYER_ARNS",
    "floor_min_steps": "LAYERSHIFT_FLOOR_MIN_STEPS",
    "floor_min_bake_seconds": "LAYERSHIFT_FLOOR_MIN_BAKE_SECONDS",
    "floor_required_alarms": "LAYERSHIFT_FLOOR_REQUIRED_ALARMS",
    "floor_require_analysis": "LAYERSHIFT_FLOOR_REQUIRE_ANALYSIS",
    "floor_require_approval": "LAYERSHIFT_FLOOR_REQUIRE_APPROVAL",
    "allow_public_layers": "LAYERSHIFT_ALLOW_PUBLIC_LAYERS",
}


@lru_cache(maxsize=1)
def load_settings() -> Settings:
    values = {field: os.environ[name] for field, name in _ENV.items() if os.environ.get(name)}
    return Settings.model_validate(values)
