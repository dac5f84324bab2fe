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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The summary lines tests record (`record_property("summary", ...)`): the hostile corpus's and
    the fault matrix's. A property reaches the report from an xdist worker too, where output does not."""
    reports = [report for key in ("passed", "failed") for report in terminalreporter.stats.get(key, [])]
    for report in reports:
        for name, value in getattr(report, "user_properties", []):
            if name == "summary" and report.when == "call":
                terminalreporter.write_line(str(value))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The fault matrix, the longest test by far, runs first: under pytest-xdist (`make test`) it
    starts at once and the other tests fill the time beside it."""
    items.sort(key=lambda item: item.get_closest_marker("faults") is None)


try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # pragma: no cover - xdist is a dev dependency; without it tests run serially
    LoadScopeScheduling = None

if LoadScopeScheduling is not None:
    # Tests that run as one unit of work on one worker (see TierScheduling).
    ONE_UNIT = ("tests/emulator/", "tests/integration/test_iam_tenancy_escapes.py")

    class TierScheduling(LoadScopeScheduling):
        """Every test is a unit of work of its own, except the emulator tier: its tests start local
        AWS instances of their own, one at a time per process, so they run as one unit on one
        worker. xdist hands out the biggest unit first, so that worker runs them before any
        integration test starts the session's shared local AWS there. The IAM escapes share a second
        control plane that their module deploys: as one unit, it is deployed once."""

        def _split_scope(self, nodeid: str) -> str:
            return next((unit for unit in ONE_UNIT if nodeid.startswith(unit)), nodeid)

    def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> LoadScopeScheduling:
        return TierScheduling(config, log)
