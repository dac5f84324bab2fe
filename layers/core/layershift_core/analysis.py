"""Version-scoped canary analysis: each function's new version judged against its old one.

During a weighted step the alias runs both versions side by side, and Lambda reports each one
under ``{FunctionName, Resource="<fn>:<alias>", ExecutedVersion}``. Comparing the two versions'
rates is what an alarm on the whole alias cannot do: at 5% weight a new version failing every
call moves the alias error rate by 5 points at most, and an old version that was already
erroring would hold any alias alarm in ALARM before the first shift.

Windows: GetMetricData has one StartTime and EndTime per call, so every distinct window costs a
call of its own (all the queries for that window together, up to 500 a call). ``fetch_pair``
therefore makes one call when the old and new windows align to the same periods and two
otherwise. Each window is widened outward to whole periods of the granularity CloudWatch keeps
at the window's age (1 minute up to 15 days, 5 minutes up to 63 days, 1 hour beyond; CloudWatch
would round StartTime down to it anyway) and read as one period spanning it, so a Sum is the
window's total and p99 is the window's p99.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from pydantic import BaseModel, Field

from .aws import client
from .models import CanaryAnalysis, CanaryVerdict, TargetPlan
from .observability import logger

NAMESPACE = "AWS/Lambda"
MAX_QUERIES_PER_CALL = 500
# Rates are ratios of counts: float subtraction must not turn a delta equal to a limit into a breach.
_TOLERANCE = 1e-9
# The summary goes into the execution state and an SNS message: name this many functions at most.
_SUMMARY_FUNCTIONS = 5
# (VersionStats field, metric name, statistic)
_METRICS = (
    ("invocations", "Invocations", "Sum"),
    ("errors", "Errors", "Sum"),
    ("throttles", "Throttles", "Sum"),
    ("p99_ms", "Duration", "p99"),
)

Window = tuple[datetime, datetime]


class VersionStats(BaseModel):
    """One version's traffic behind the alias over a window."""

    version: str | None = None
    invocations: int = Field(default=0, ge=0)
    errors: int = Field(default=0, ge=0)
    throttles: int = Field(default=0, ge=0)
    p99_ms: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.invocations if self.invocations else 0.0

    @property
    def throttle_rate(self) -> float:
        """Throttled requests among all requests: a throttled request is not an invocation."""
        requests = self.invocations + self.throttles
        return self.throttles / requests if requests else 0.0


class FunctionAnalysis(BaseModel):
    """One function's verdict, with the numbers it rests on."""

    function_name: str
    alias: str
    old_version: str
    new_version: str
    old: VersionStats
    new: VersionStats
    verdict: CanaryVerdict
    reasons: list[str]


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole if whole else 0.0:.1f}%"


# --- reading the metrics ---


class _Series(NamedTuple):
    """One version of one function over one window; ``key`` names its queries."""

    key: str
    function_name: str
    alias: str
    version: str
    window: Window


def _aligned(window: Window, now: datetime) -> tuple[datetime, datetime, int]:
    """The window widened to whole periods CloudWatch keeps at its age, and its length as one period.

    An empty window (start == end, a check at the very start of a step) becomes its one period."""
    start, end = window
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("analysis windows need timezone-aware datetimes")
    if end < start:
        raise ValueError(f"analysis window ends ({end.isoformat()}) before it starts ({start.isoformat()})")
    age = now - start
    step = 60 if age <= timedelta(days=15) else 300 if age <= timedelta(days=63) else 3600
    first = math.floor(start.timestamp() / step) * step
    last = max(math.ceil(end.timestamp() / step) * step, first + step)
    return datetime.fromtimestamp(first, tz=UTC), datetime.fromtimestamp(last, tz=UTC), last - first


def _queries(series: _Series, period: int) -> list[dict]:
    dimensions = [
        {"Name": "FunctionName", "Value": series.function_name},
        {"Name": "Resource", "Value": f"{series.function_name}:{series.alias}"},
        {"Name": "ExecutedVersion", "Value": series.version},
    ]
    return [
        {
            "Id": f"{series.key}_{field}",
            "MetricStat": {
                "Metric": {"Namespace": NAMESPACE, "MetricName": metric, "Dimensions": dimensions},
                "Period": period,
                "Stat": stat,
            },
        }
        for field, metric, stat in _METRICS
    ]


def _read(queries: list[dict], start: datetime, end: datetime) -> dict[str, list[float]]:
    """Every query's values, in calls of at most 500 queries, through every page."""
    values: dict[str, list[float]] = {query["Id"]: [] for query in queries}
    paginator = client("cloudwatch").get_paginator("get_metric_data")
    for first in range(0, len(queries), MAX_QUERIES_PER_CALL):
        batch = queries[first : first + MAX_QUERIES_PER_CALL]
        for page in paginator.paginate(MetricDataQueries=batch, StartTime=start, EndTime=end):
            for result in page["MetricDataResults"]:
                values[result["Id"]].extend(result["Values"])
    return values


def _stats(values: dict[str, list[float]], series: _Series) -> VersionStats:
    """Counts add up over the periods; p99 is that of the single period, or if CloudWatch split
    the window after all, the worst period's (an upper bound, never an understatement)."""
    counts = {field: round(sum(values[f"{series.key}_{field}"])) for field, _, stat in _METRICS if stat == "Sum"}
    p99 = values[f"{series.key}_p99_ms"]
    return VersionStats(version=series.version, **counts, p99_ms=max(p99) if p99 else None)


def _fetch(series: Iterable[_Series]) -> dict[str, VersionStats]:
    """Stats for every series, with one GetMetricData call per distinct aligned window."""
    now = datetime.now(UTC)
    by_window: dict[tuple[datetime, datetime, int], list[_Series]] = defaultdict(list)
    for one in series:
        by_window[_aligned(one.window, now)].append(one)
    stats: dict[str, VersionStats] = {}
    for (start, end, period), members in by_window.items():
        values = _read([query for one in members for query in _queries(one, period)], start, end)
        stats.update({one.key: _stats(values, one) for one in members})
    return stats


def fetch_version_stats(function_name: str, alias: str, version: str, start: datetime, end: datetime) -> VersionStats:
    """One version's invocations, errors, throttles and p99 duration behind the alias, over [start, end]."""
    return _fetch([_Series("version", function_name, alias, version, (start, end))])["version"]


def _versions(target: TargetPlan) -> tuple[str, str]:
    if not target.old_version or not target.new_version:
        raise ValueError(f"{target.function_name} has no old and new version to compare")
    return target.old_version, target.new_version


def _pair(key: str, target: TargetPlan, old_window: Window, new_window: Window) -> tuple[_Series, _Series]:
    old_version, new_version = _versions(target)
    return (
        _Series(f"{key}_old", target.function_name, target.alias, old_version, old_window),
        _Series(f"{key}_new", target.function_name, target.alias, new_version, new_window),
    )


def fetch_pair(target: TargetPlan, old_window: Window, new_window: Window) -> tuple[VersionStats, VersionStats]:
    """The old version's stats over ``old_window`` and the new version's over ``new_window``.

    One GetMetricData call when both windows align to the same period, two otherwise."""
    old, new = _pair("f", target, old_window, new_window)
    stats = _fetch([old, new])
    return stats[old.key], stats[new.key]


# --- judging ---


class _Check(NamedTuple):
    failed: bool
    reason: str


def _name(role: str, stats: VersionStats) -> str:
    return f"{role} version {stats.version}" if stats.version else f"{role} version"


class _Rate(NamedTuple):
    """One version's rate, with the counts it comes from, for a sentence."""

    name: str
    rate: float
    part: int
    whole: int

    def __str__(self) -> str:
        return f"{_percent(self.part, self.whole)} ({self.part}/{self.whole})"


def _error_rate(role: str, stats: VersionStats) -> _Rate:
    return _Rate(_name(role, stats), stats.error_rate, stats.errors, stats.invocations)


def _throttle_rate(role: str, stats: VersionStats) -> _Rate:
    return _Rate(_name(role, stats), stats.throttle_rate, stats.throttles, stats.invocations + stats.throttles)


def _rate_check(what: str, old: _Rate, new: _Rate, limit: float) -> _Check:
    """New rate minus old rate against the limit, in percentage points."""
    delta = new.rate - old.rate
    failed = delta > limit + _TOLERANCE
    return _Check(
        failed,
        f"{new.name} {what} {new} vs {old.name} {old}: "
        f"{100 * delta:+.1f} points, {'over' if failed else 'within'} the {100 * limit:.1f}-point limit",
    )


# Below 100 samples a p99 is the slowest call: one cold or unlucky invocation, not a distribution.
P99_MIN_SAMPLES = 100


def _latency_check(old: VersionStats, new: VersionStats, thresholds: CanaryAnalysis) -> _Check:
    """New p99 over old p99, when the old version ran often enough for its p99 to be a baseline.

    A p99 regression must be large both relatively and absolutely: a 1 ms handler that takes
    4 ms on a new version's first calls is over a 3x ratio, and nobody would roll back for it."""
    if new.p99_ms is None or old.p99_ms is None:
        missing = _name("new" if new.p99_ms is None else "old", new if new.p99_ms is None else old)
        return _Check(False, f"p99 duration not compared: no Duration p99 for the {missing}")
    needed = max(thresholds.min_invocations, P99_MIN_SAMPLES)
    for side, stats in (("new", new), ("old", old)):
        if stats.invocations < needed:
            return _Check(
                False,
                f"p99 duration not compared: the {_name(side, stats)} ran {stats.invocations} of the "
                f"{needed} invocations a p99 needs",
            )
    if old.p99_ms <= 0:
        return _Check(False, f"p99 duration not compared: the {_name('old', old)} p99 is 0 ms")
    ratio = new.p99_ms / old.p99_ms
    limit = thresholds.max_p99_duration_ratio
    increase = new.p99_ms - old.p99_ms
    floor = thresholds.min_p99_increase_ms
    over_ratio = ratio > limit + _TOLERANCE
    failed = over_ratio and increase > floor + _TOLERANCE
    numbers = f"{_name('new', new)} p99 duration {new.p99_ms:.1f} ms vs {_name('old', old)} {old.p99_ms:.1f} ms"
    if over_ratio and not failed:
        verdict = f"{ratio:.2f}x, but only {increase:+.1f} ms, within the {floor:g} ms an increase must exceed"
    else:
        verdict = f"{ratio:.2f}x ({increase:+.1f} ms), {'over' if failed else 'within'} the {limit:g}x limit"
    return _Check(failed, f"{numbers}: {verdict}")


def judge(old: VersionStats, new: VersionStats, thresholds: CanaryAnalysis) -> tuple[CanaryVerdict, list[str]]:
    """The new version against the old one: the verdict and the sentences, with numbers, behind it.

    Only a new version doing worse than the old one fails: the old version's own errors, throttles
    or slowness never do (they would block the rollout of the very fix). Failing gives the
    failing checks, in the order errors, throttles, p99; healthy gives every check.
    """
    if new.invocations < thresholds.min_invocations:
        return CanaryVerdict.INCONCLUSIVE, [
            f"too little traffic: {new.invocations} of the {thresholds.min_invocations} new-version invocations needed"
        ]
    limit = thresholds.max_error_rate_delta
    checks = [
        _rate_check("error rate", _error_rate("old", old), _error_rate("new", new), limit),
        _rate_check("throttle rate", _throttle_rate("old", old), _throttle_rate("new", new), limit),
        _latency_check(old, new, thresholds),
    ]
    failing = [check.reason for check in checks if check.failed]
    if failing:
        return CanaryVerdict.FAILING, failing
    return CanaryVerdict.HEALTHY, [check.reason for check in checks]


# --- the cohort: batches, the pool, the verdict ---


class Pool(BaseModel):
    """Functions with too little new-version traffic for a verdict of their own, judged as one group:
    their new versions' calls against their old versions' calls."""

    functions: int = 0
    old: VersionStats = Field(default_factory=VersionStats)
    new: VersionStats = Field(default_factory=VersionStats)

    def add(self, old: VersionStats, new: VersionStats) -> None:
        self.functions += 1
        self.old = _sum(self.old, old)
        self.new = _sum(self.new, new)

    def merge(self, other: Pool) -> None:
        self.functions += other.functions
        self.old = _sum(self.old, other.old)
        self.new = _sum(self.new, other.new)


def _sum(one: VersionStats, other: VersionStats) -> VersionStats:
    """Counts add up; a percentile does not, so a sum has none."""
    return VersionStats(
        invocations=one.invocations + other.invocations,
        errors=one.errors + other.errors,
        throttles=one.throttles + other.throttles,
    )


class BatchAnalysis(BaseModel):
    """One batch of the cohort at one check: sums, the pool, the first failing functions, and each
    function's verdict (a word per function, a few KB for a batch of 62)."""

    functions: int = 0
    failing_count: int = 0
    failing: list[FunctionAnalysis] = Field(default_factory=list, description="the first few, with their numbers")
    pool: Pool = Field(default_factory=Pool)
    old: VersionStats = Field(default_factory=VersionStats, description="every function's old version, summed")
    new: VersionStats = Field(default_factory=VersionStats, description="every function's new version, summed")
    verdicts: dict[str, CanaryVerdict] = Field(default_factory=dict, description="each function's own verdict")


def analyse_batch(
    targets: list[TargetPlan], thresholds: CanaryAnalysis, old_window: Window, new_window: Window
) -> BatchAnalysis:
    """Every target's new version over ``new_window`` against its old version over ``old_window``.

    All of them are read together, one GetMetricData call per window and 500 queries (4 per
    version). A function with too little new-version traffic joins the pool instead of a verdict."""
    pairs = [_pair(f"f{index}", target, old_window, new_window) for index, target in enumerate(targets)]
    stats = _fetch([one for pair in pairs for one in pair])
    batch = BatchAnalysis(functions=len(targets))
    for target, (old_series, new_series) in zip(targets, pairs, strict=True):
        old, new = stats[old_series.key], stats[new_series.key]
        batch.old, batch.new = _sum(batch.old, old), _sum(batch.new, new)
        verdict, reasons = judge(old, new, thresholds)
        batch.verdicts[target.function_name] = verdict
        if verdict is CanaryVerdict.INCONCLUSIVE:
            batch.pool.add(old, new)
        elif verdict is CanaryVerdict.FAILING:
            batch.failing_count += 1
            if len(batch.failing) < _SUMMARY_FUNCTIONS:
                batch.failing.append(
                    FunctionAnalysis(
                        function_name=target.function_name,
                        alias=target.alias,
                        old_version=old_series.version,
                        new_version=new_series.version,
                        old=old,
                        new=new,
                        verdict=verdict,
                        reasons=reasons,
                    )
                )
    return batch


class CohortAnalysis(BaseModel):
    """The verdict on every function a step touched.

    Failing when any function fails on its own numbers, or when the pool does; inconclusive only when
    the pool of functions with too little traffic of their own has too little traffic as a whole."""

    verdict: CanaryVerdict
    functions: int = 0
    failing_count: int = 0
    failing: list[FunctionAnalysis] = Field(default_factory=list)
    pool: Pool = Field(default_factory=Pool)
    pool_verdict: CanaryVerdict | None = None
    pool_reasons: list[str] = Field(default_factory=list)
    old: VersionStats = Field(default_factory=VersionStats)
    new: VersionStats = Field(default_factory=VersionStats)
    reasons: list[str] = Field(default_factory=list, description="about the cohort as a whole")

    def summary(self) -> str:
        """One line for the Step Functions console and the SNS message: the verdict and its numbers."""
        if self.reasons:
            return f"{self.verdict}: {'; '.join(self.reasons)}"
        if self.failing_count:
            details = [f"{f.function_name}: {'; '.join(f.reasons)}" for f in self.failing[:_SUMMARY_FUNCTIONS]]
            if self.failing_count > len(details):
                details.append(f"and {self.failing_count - len(details)} more")
            return f"failing: {self.failing_count} of {self.functions} functions; " + "; ".join(details)
        pooled = (
            f"{self.pool.functions} of {self.functions} functions have too little traffic for a verdict of their own"
        )
        if self.pool_verdict is CanaryVerdict.FAILING:
            return f"failing: {pooled}, and as a pool: {'; '.join(self.pool_reasons)}"
        if self.pool_verdict is CanaryVerdict.INCONCLUSIVE:
            return f"inconclusive: {pooled}, and so does their pool: {'; '.join(self.pool_reasons)}"
        totals = (
            f"healthy: {self.functions} functions, new versions {_percent(self.new.errors, self.new.invocations)} "
            f"errors ({self.new.errors}/{self.new.invocations}) vs old versions "
            f"{_percent(self.old.errors, self.old.invocations)} ({self.old.errors}/{self.old.invocations})"
        )
        return totals + (f"; {self.pool.functions} judged as a pool" if self.pool.functions else "")


def _pool_reasons(reasons: list[str]) -> list[str]:
    return [reason.removeprefix("too little traffic: ") for reason in reasons]


def combine(batches: list[BatchAnalysis], thresholds: CanaryAnalysis) -> CohortAnalysis:
    """The cohort's verdict from its batches' analyses."""
    cohort = CohortAnalysis(verdict=CanaryVerdict.HEALTHY)
    for batch in batches:
        cohort.functions += batch.functions
        cohort.failing_count += batch.failing_count
        cohort.failing.extend(batch.failing[: max(0, _SUMMARY_FUNCTIONS - len(cohort.failing))])
        cohort.pool.merge(batch.pool)
        cohort.old, cohort.new = _sum(cohort.old, batch.old), _sum(cohort.new, batch.new)
    if cohort.pool.functions:
        cohort.pool_verdict, reasons = judge(cohort.pool.old, cohort.pool.new, thresholds)
        cohort.pool_reasons = _pool_reasons(reasons)
    if cohort.failing_count or cohort.pool_verdict is CanaryVerdict.FAILING:
        cohort.verdict = CanaryVerdict.FAILING
    elif cohort.pool_verdict is CanaryVerdict.INCONCLUSIVE:
        cohort.verdict = CanaryVerdict.INCONCLUSIVE
    logger.info("canary analysis", extra={"verdict": cohort.verdict.value, "summary": cohort.summary()})
    return cohort


def turned_off() -> CohortAnalysis:
    return CohortAnalysis(verdict=CanaryVerdict.HEALTHY, reasons=["canary analysis turned off"])


def analyse_cohort(
    targets: list[TargetPlan], thresholds: CanaryAnalysis, old_window: Window, new_window: Window
) -> CohortAnalysis:
    """The whole cohort in one batch (a cohort small enough for one invocation; the workflow reads
    its metrics batch by batch in child executions and ``combine``s them)."""
    if not thresholds.enabled:
        return turned_off()
    return combine([analyse_batch(targets, thresholds, old_window, new_window)], thresholds)
