"""Shared fixtures: every test runs with dummy credentials, so nothing can reach a real account."""

import os

import pytest


@pytest.fixture(autouse=True)
def _no_real_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    if not os.environ.get("AWS_SAM_STACK_NAME"):
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "LayershiftTests")


@pytest.fixture(autouse=True)
def _private_build_cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Layer builds cache into a folder of the test's own, never the user's ~/.cache."""
    monkeypatch.setenv("LAYERSHIFT_BUILD_CACHE", str(tmp_path_factory.mktemp("build-cache")))
