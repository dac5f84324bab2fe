"""The version-scoped canary analysis: the judgement on numbers, and the cohort read from CloudWatch."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID

from layershift.local import metrics
from layershift_core import analysis, aws
from layershift_core.analysis import (
    BatchAnalysis,
    FunctionAnalysis,
    VersionStats,
    analyse_batch,
    analyse_cohort,
    combine,
    fetch_pair,
    fetch_version_stats,
    judge,
)
from layershift_core.models import CanaryAnalysis, CanaryVerdict, TargetPlan, Verdict

THRESHOLDS = CanaryAnalysis()  # 2-point error delta, 1.5x p99, 20 invocations


def stats(version: str, invocations: int, errors: int = 0, throttles: int = 0, p99_ms: float | None = 100.0):
    return VersionStats(version=version, invocations=invocations, errors=errors, throttles=throttles, p99_ms=p99_ms)


# --- judge ---


def test_healthy_when_the_new_version_does_as_well_as_the_old():
    verdict, reasons = judge(stats("2", 1000, errors=5), stats("3", 100, errors=1, p99_ms=110.0), THRESHOLDS)

    assert verdict is CanaryVerdict.HEALTHY
    assert reasons == [
        "new version 3 error rate 1.0% (1/100) vs old version 2 0.5% (5/1000): +0.5 points, within the 2.0-point limit",
        "new version 3 throttle rate 0.0% (0/100) vs old version 2 0.0% (0/1000): +0.0 points, "
        "within the 2.0-point limit",
        "new version 3 p99 duration 110.0 ms vs old version 2 100.0 ms: 1.10x (+10.0 ms), within the 1.5x limit",
    ]


def test_new_errors_fail_at_the_error_check_with_the_numbers():
    verdict, reasons = judge(stats("2", 180), stats("3", 20, errors=9), THRESHOLDS)

    assert verdict is CanaryVerdict.FAILING
    assert reasons == [
        "new version 3 error rate 45.0% (9/20) vs old version 2 0.0% (0/180): +45.0 points, over the 2.0-point limit"
    ]


def test_every_failing_check_is_given_in_order():
    verdict, reasons = judge(stats("2", 200), stats("3", 100, errors=25, throttles=25, p99_ms=900.0), THRESHOLDS)

    assert verdict is CanaryVerdict.FAILING
    assert [reason.split(" ")[3] for reason in reasons] == ["error", "throttle", "p99"]
    assert "9.00x (+800.0 ms), over the 1.5x limit" in reasons[2]


def test_old_version_errors_never_fail_the_new_one():
    verdict, reasons = judge(stats("2", 200, errors=150), stats("3", 50, errors=0), THRESHOLDS)

    assert verdict is CanaryVerdict.HEALTHY
    assert reasons[0].startswith("new version 3 error rate 0.0% (0/50) vs old version 2 75.0% (150/200): -75.0 points")


def test_old_version_without_traffic_counts_as_rate_zero():
    assert judge(stats("2", 0, p99_ms=None), stats("3", 20, errors=1), THRESHOLDS)[0] is CanaryVerdict.FAILING
    verdict, reasons = judge(stats("2", 0, p99_ms=None), stats("3", 20), THRESHOLDS)
    assert verdict is CanaryVerdict.HEALTHY
    assert "p99 duration not compared: no Duration p99 for the old version 2" in reasons


def test_a_delta_equal_to_the_limit_passes():
    # 7% - 5% is 0.020000000000000004 in floating point
    verdict, reasons = judge(stats("2", 100, errors=5), stats("3", 100, errors=7), THRESHOLDS)

    assert verdict is CanaryVerdict.HEALTHY
    assert "+2.0 points, within the 2.0-point limit" in reasons[0]
    assert judge(stats("2", 100, errors=5), stats("3", 100, errors=8), THRESHOLDS)[0] is CanaryVerdict.FAILING


def test_too_little_new_traffic_is_inconclusive_even_with_errors():
    verdict, reasons = judge(stats("2", 500), stats("3", 7, errors=7), THRESHOLDS)

    assert verdict is CanaryVerdict.INCONCLUSIVE
    assert reasons == ["too little traffic: 7 of the 20 new-version invocations needed"]


def test_min_invocations_comes_from_the_thresholds():
    thresholds = CanaryAnalysis(min_invocations=5)

    assert judge(stats("2", 500), stats("3", 7), thresholds)[0] is CanaryVerdict.HEALTHY


def test_p99_regression_fails():
    verdict, reasons = judge(stats("2", 100, p99_ms=200.0), stats("3", 100, p99_ms=320.0), THRESHOLDS)

    assert verdict is CanaryVerdict.FAILING
    assert reasons == [
        "new version 3 p99 duration 320.0 ms vs old version 2 200.0 ms: 1.60x (+120.0 ms), over the 1.5x limit"
    ]
    assert judge(stats("2", 100, p99_ms=200.0), stats("3", 100, p99_ms=300.0), THRESHOLDS)[0] is CanaryVerdict.HEALTHY


def test_a_p99_regression_must_also_be_large_in_milliseconds():
    """A 1 ms handler at 18 ms is 18x, and no reason to roll back."""
    verdict, reasons = judge(stats("2", 100, p99_ms=1.0), stats("3", 100, p99_ms=18.0), THRESHOLDS)
    assert verdict is CanaryVerdict.HEALTHY
    assert "18.00x, but only +17.0 ms, within the 25 ms an increase must exceed" in reasons[-1]
    assert judge(stats("2", 100, p99_ms=1.0), stats("3", 100, p99_ms=27.0), THRESHOLDS)[0] is CanaryVerdict.FAILING


def test_p99_is_compared_only_with_enough_calls_on_both_sides():
    """Below 100 calls a p99 is the slowest call, one cold or unlucky invocation."""
    slow = stats("3", 100, p99_ms=5000.0)

    verdict, reasons = judge(stats("2", 99, p99_ms=100.0), slow, THRESHOLDS)
    assert verdict is CanaryVerdict.HEALTHY
    assert "p99 duration not compared: the old version 2 ran 99 of the 100 invocations a p99 needs" in reasons

    verdict, reasons = judge(stats("2", 1000, p99_ms=100.0), stats("3", 99, p99_ms=5000.0), THRESHOLDS)
    assert verdict is CanaryVerdict.HEALTHY
    assert "p99 duration not compared: the new version 3 ran 99 of the 100 invocations a p99 needs" in reasons

    verdict, reasons = judge(stats("2", 100, p99_ms=0.0), slow, THRESHOLDS)
    assert verdict is CanaryVerdict.HEALTHY
    assert "p99 duration not compared: the old version 2 p99 is 0 ms" in reasons


def test_a_slow_old_version_does_not_fail_a_faster_new_one():
    verdict, _ = judge(stats("2", 100, p99_ms=3000.0), stats("3", 30, p99_ms=100.0), THRESHOLDS)

    assert verdict is CanaryVerdict.HEALTHY


def test_new_throttles_fail_old_throttles_do_not():
    verdict, reasons = judge(stats("2", 200), stats("3", 40, throttles=10), THRESHOLDS)
    assert verdict is CanaryVerdict.FAILING
    assert reasons == [
        "new version 3 throttle rate 20.0% (10/50) vs old version 2 0.0% (0/200): +20.0 points, "
        "over the 2.0-point limit"
    ]

    assert judge(stats("2", 200, throttles=100), stats("3", 40), THRESHOLDS)[0] is CanaryVerdict.HEALTHY


def test_version_stats_rates():
    assert VersionStats().error_rate == 0 and VersionStats().throttle_rate == 0
    assert VersionStats(invocations=8, errors=2, throttles=2).error_rate == 0.25
    assert VersionStats(invocations=8, errors=2, throttles=2).throttle_rate == 0.2


# --- the cohort: batches, the pool, the summary ---


def batch_of(*functions: tuple[str, VersionStats, VersionStats]) -> BatchAnalysis:
    """A batch judged from given numbers, as analyse_batch judges what it reads."""
    batch = BatchAnalysis(functions=len(functions))
    for name, old, new in functions:
        verdict, reasons = judge(old, new, THRESHOLDS)
        batch.old, batch.new = analysis._sum(batch.old, old), analysis._sum(batch.new, new)
        batch.verdicts[name] = verdict
        if verdict is CanaryVerdict.INCONCLUSIVE:
            batch.pool.add(old, new)
        elif verdict is CanaryVerdict.FAILING:
            batch.failing_count += 1
            batch.failing.append(
                FunctionAnalysis(
                    function_name=name,
                    alias="live",
                    old_version="2",
                    new_version="3",
                    old=old,
                    new=new,
                    verdict=verdict,
                    reasons=reasons,
                )
            )
    return batch


def test_one_failing_function_fails_the_cohort_and_is_named_with_its_numbers():
    cohort = combine(
        [
            batch_of(("orders", stats("2", 100), stats("3", 40))),
            batch_of(("billing", stats("2", 100), stats("3", 20, errors=9)), ("search", stats("2", 9), stats("3", 7))),
        ],
        THRESHOLDS,
    )

    assert cohort.verdict is CanaryVerdict.FAILING
    assert cohort.summary() == (
        "failing: 1 of 3 functions; billing: new version 3 error rate 45.0% (9/20) vs old version 2 0.0% (0/100): "
        "+45.0 points, over the 2.0-point limit"
    )


def test_a_healthy_cohort_gives_the_totals_of_every_batch():
    cohort = combine(
        [
            batch_of(("a", stats("2", 1000, errors=3), stats("3", 100, errors=1))),
            batch_of(("b", stats("2", 1000, errors=5), stats("3", 100))),
        ],
        THRESHOLDS,
    )

    assert cohort.verdict is CanaryVerdict.HEALTHY
    assert cohort.summary() == "healthy: 2 functions, new versions 0.5% errors (1/200) vs old versions 0.4% (8/2000)"


def test_low_traffic_functions_are_judged_as_one_pool():
    """Eight functions with 5 new-version calls each cannot each have a verdict (20 needed); together
    they have 40, and their pool is healthy: the cohort is, instead of inconclusive."""
    quiet = [(f"fn{i}", stats("2", 50), stats("3", 5)) for i in range(8)]
    cohort = combine([batch_of(*quiet[:5]), batch_of(*quiet[5:])], THRESHOLDS)

    assert cohort.pool.functions == 8 and cohort.pool.new.invocations == 40
    assert cohort.pool_verdict is CanaryVerdict.HEALTHY and cohort.verdict is CanaryVerdict.HEALTHY
    assert cohort.summary().endswith("; 8 judged as a pool")


def test_a_pool_that_errors_fails_the_cohort():
    """No quiet function fails on its own (each too quiet to judge), but their pool does."""
    quiet = [(f"fn{i}", stats("2", 50), stats("3", 5, errors=2)) for i in range(6)]
    cohort = combine([batch_of(*quiet)], THRESHOLDS)

    assert cohort.failing_count == 0 and cohort.verdict is CanaryVerdict.FAILING
    assert cohort.summary().startswith(
        "failing: 6 of 6 functions have too little traffic for a verdict of their own, and as a pool: "
        "new version error rate 40.0% (12/30)"
    )


def test_only_a_pool_with_too_little_traffic_itself_is_inconclusive():
    cohort = combine(
        [batch_of(("busy", stats("2", 100), stats("3", 50)), ("quiet", stats("2", 100), stats("3", 7)))], THRESHOLDS
    )

    assert cohort.verdict is CanaryVerdict.INCONCLUSIVE
    assert cohort.summary() == (
        "inconclusive: 1 of 2 functions have too little traffic for a verdict of their own, and so does their pool: "
        "7 of the 20 new-version invocations needed"
    )


def test_the_summary_names_at_most_five_failing_functions():
    failing = [(f"fn{i}", stats("2", 100), stats("3", 20, errors=10)) for i in range(8)]
    cohort = combine([batch_of(*failing[:4]), batch_of(*failing[4:])], THRESHOLDS)

    summary = cohort.summary()
    assert summary.startswith("failing: 8 of 8 functions; fn0: new version 3 error rate 50.0%")
    assert "fn4" in summary and "fn5" not in summary
    assert summary.endswith("; and 3 more")


# --- against the emulated CloudWatch ---


@pytest.fixture
def cloudwatch() -> Iterator[None]:
    metrics.install()
    try:
        with mock_aws():
            aws.client.cache_clear()
            yield
    finally:
        aws.client.cache_clear()
        metrics.uninstall()


def invoke(function_name: str, version: str, count: int, errors: int = 0, durations: list[float] | None = None) -> None:
    for i in range(count):
        metrics.record_invocation(
            DEFAULT_ACCOUNT_ID,
            "us-east-1",
            function_name=function_name,
            resource=f"{function_name}:live",
            executed_version=version,
            duration_ms=durations[i] if durations else 50.0,
            errored=i < errors,
        )


def throttle(function_name: str, version: str, count: int) -> None:
    for _ in range(count):
        metrics.record_invocation(
            DEFAULT_ACCOUNT_ID,
            "us-east-1",
            function_name=function_name,
            resource=f"{function_name}:live",
            executed_version=version,
            duration_ms=0.0,
            errored=False,
            throttled=True,
        )


def target(name: str, old: str = "2", new: str = "3") -> TargetPlan:
    return TargetPlan(function_name=name, alias="live", verdict=Verdict.TARGET, old_version=old, new_version=new)


def windows() -> tuple[tuple[datetime, datetime], tuple[datetime, datetime]]:
    now = datetime.now(UTC)
    return (now - timedelta(hours=1), now), (now - timedelta(minutes=5), now)


def test_fetch_reads_each_version_apart(cloudwatch):
    invoke("orders", "2", 180, errors=2, durations=[float(i) for i in range(1, 181)])
    invoke("orders", "3", 20, errors=9, durations=[float(i) for i in range(101, 121)])
    throttle("orders", "3", 4)
    old_window, new_window = windows()

    old, new = fetch_pair(target("orders"), old_window, new_window)

    assert (old.invocations, old.errors, old.throttles, old.p99_ms) == (180, 2, 0, 179.0)  # rank ceil(178.2)
    assert (new.invocations, new.errors, new.throttles, new.p99_ms) == (20, 9, 4, 120.0)
    assert fetch_pair(target("orders"), new_window, new_window) == (old, new)
    assert fetch_version_stats("orders", "live", "3", *new_window) == new


def test_fetch_without_traffic_gives_zeros(cloudwatch):
    now = datetime.now(UTC)

    assert fetch_version_stats("quiet", "live", "7", now - timedelta(minutes=10), now) == VersionStats(version="7")


def test_analyse_cohort_fails_on_one_broken_function(cloudwatch):
    invoke("orders", "2", 180)
    invoke("orders", "3", 20, errors=9)
    invoke("search", "4", 200, errors=40)  # the old version is the one erroring
    invoke("search", "5", 30)
    invoke("billing", "2", 100)
    invoke("billing", "3", 7)

    targets = [target("orders"), target("search", "4", "5"), target("billing")]
    batch = analyse_batch(targets, THRESHOLDS, *windows())
    cohort = analyse_cohort(targets, THRESHOLDS, *windows())

    assert batch.verdicts == {
        "orders": CanaryVerdict.FAILING,
        "search": CanaryVerdict.HEALTHY,
        "billing": CanaryVerdict.INCONCLUSIVE,
    }
    assert cohort.verdict is CanaryVerdict.FAILING
    assert cohort.summary() == (
        "failing: 1 of 3 functions; orders: new version 3 error rate 45.0% (9/20) vs old version 2 0.0% (0/180): "
        "+45.0 points, over the 2.0-point limit"
    )


def test_analyse_cohort_inconclusive_then_healthy(cloudwatch):
    invoke("orders", "2", 100)
    invoke("orders", "3", 25)
    invoke("billing", "2", 100)
    invoke("billing", "3", 7)

    cohort = analyse_cohort([target("orders"), target("billing")], THRESHOLDS, *windows())
    assert cohort.verdict is CanaryVerdict.INCONCLUSIVE
    assert cohort.summary() == (
        "inconclusive: 1 of 2 functions have too little traffic for a verdict of their own, and so does their pool: "
        "7 of the 20 new-version invocations needed"
    )

    invoke("billing", "3", 13)
    cohort = analyse_cohort([target("orders"), target("billing")], THRESHOLDS, *windows())
    assert cohort.verdict is CanaryVerdict.HEALTHY
    assert cohort.summary() == "healthy: 2 functions, new versions 0.0% errors (0/45) vs old versions 0.0% (0/200)"


def test_analyse_cohort_spreads_queries_over_calls(cloudwatch, monkeypatch):
    monkeypatch.setattr(analysis, "MAX_QUERIES_PER_CALL", 6)
    for index in range(3):
        invoke(f"fn{index}", "2", 50)
        invoke(f"fn{index}", "3", 20 + index, errors=index)

    batch = analyse_batch([target(f"fn{index}") for index in range(3)], THRESHOLDS, *windows())

    # every query answered, though no call carried more than 6 of them
    assert (batch.old.invocations, batch.new.invocations, batch.new.errors) == (150, 63, 3)
    assert set(batch.verdicts.values()) == {CanaryVerdict.HEALTHY, CanaryVerdict.FAILING}


def test_turned_off_is_healthy_without_reading_metrics(monkeypatch):
    def no_aws(service: str):
        raise AssertionError(f"{service} was called")

    monkeypatch.setattr(analysis, "client", no_aws)

    cohort = analyse_cohort([target("orders")], CanaryAnalysis(enabled=False), *windows())

    assert cohort.verdict is CanaryVerdict.HEALTHY
    assert cohort.functions == 0
    assert cohort.summary() == "healthy: canary analysis turned off"


def test_a_target_without_versions_is_refused():
    with pytest.raises(ValueError, match="orders has no old and new version"):
        analyse_cohort([target("orders", new=None)], THRESHOLDS, *windows())
