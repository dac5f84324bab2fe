"""Fixtures for testing the local emulated AWS as an honest stand-in for AWS."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from layershift.local.server import LocalAws

from .support import TRUST_POLICY, versioned_handler


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAws]:
    state = tmp_path_factory.mktemp("local-aws")
    with LocalAws(state_dir=state, wait_scale=0.01, alarm_interval=None) as local:
        yield local


@pytest.fixture(scope="module")
def role_arn(aws: LocalAws) -> str:
    return aws.client("iam").create_role(RoleName="emulator-tests", AssumeRolePolicyDocument=TRUST_POLICY)["Role"][
        "Arn"
    ]


@pytest.fixture
def make_function(aws: LocalAws, role_arn: str) -> Callable[..., str]:
    """Create a function from zip bytes; returns its (unique) name."""

    def make(code: bytes, **extra: Any) -> str:
        name = f"fn-{uuid.uuid4().hex[:8]}"
        aws.client("lambda").create_function(
            FunctionName=name,
            Runtime=extra.pop("Runtime", "python3.13"),
            Role=role_arn,
            Handler=extra.pop("Handler", "app.handler"),
            Code={"ZipFile": code},
            **extra,
        )
        return name

    return make


@pytest.fixture
def two_versions(aws: LocalAws, make_function: Callable[..., str]) -> str:
    """A function with version 1 (tag "old") and version 2 (tag "new"), alias live -> 1."""
    lam = aws.client("lambda")
    name = make_function(versioned_handler("old"))
    lam.publish_version(FunctionName=name)
    lam.update_function_code(FunctionName=name, ZipFile=versioned_handler("new"))
    lam.publish_version(FunctionName=name)
    lam.create_alias(FunctionName=name, Name="live", FunctionVersion="1")
    return name
