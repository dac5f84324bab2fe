"""The control plane's configuration, read once from the function environment."""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import BaseModel, Field

from .spec import SpecDefaults


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
    lock_lease_seconds: int = Field(default=24 * 3600, ge=60)
    codecommit_repository: str | None = None
    codecommit_branch: str = "main"

    @property
    def spec_defaults(self) -> SpecDefaults:
        return SpecDefaults(
            runtime=self.default_runtime,
            architecture=self.default_architecture,
            alias=self.default_alias,
            strategy=self.default_strategy,
            poll_seconds=self.poll_seconds,
        )


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
    "lock_lease_seconds": "LAYERSHIFT_LOCK_LEASE_SECONDS",
    "codecommit_repository": "LAYERSHIFT_CODECOMMIT_REPOSITORY",
    "codecommit_branch": "LAYERSHIFT_CODECOMMIT_BRANCH",
}


@lru_cache(maxsize=1)
def load_settings() -> Settings:
    values = {field: os.environ[name] for field, name in _ENV.items() if os.environ.get(name)}
    return Settings.model_validate(values)
