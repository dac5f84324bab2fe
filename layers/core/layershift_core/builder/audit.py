"""The vulnerability audit of a layer's distributions, and the gate that can fail a build on it.

Finding: pip-audit, where it is installed and its service (PyPI's JSON API) answers. The result is
``ok`` (no known vulnerability), ``vulnerable`` (with findings) or ``unavailable`` (pip-audit
missing, the service unreachable, or nothing could be audited).

Severity: pip-audit's JSON carries none, and neither do PyPI's ``vulnerabilities``. Each finding's
advisory is looked up in OSV (``https://api.osv.dev/v1/vulns/<id>``, then its aliases): a GitHub
advisory's ``database_specific.severity`` (LOW, MODERATE, HIGH, CRITICAL) where there is one, else
the base score of a CVSS v3 vector in ``severity``, rated as CVSS does (0.1-3.9 low, 4.0-6.9
moderate, 7.0-8.9 high, 9.0-10 critical). When neither can be had (OSV unreachable, or an
advisory without either), the severity is unknown, and the gate treats it as at its threshold:
it fails closed, and its message says so.

The gate (:class:`AuditPolicy`, layer.toml ``[audit]``): ``fail_on`` is the lowest severity that
fails the build (``none``: never); ``unavailable`` says whether an audit that could not run fails
the build or only warns.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from layershift_core.builder import sandbox
from layershift_core.errors import BuildFailed

AUDIT_TIMEOUT_SECONDS = 180
OSV_URL = "https://api.osv.dev/v1/vulns/"
OSV_TIMEOUT_SECONDS = 10
OK = "ok"
VULNERABLE = "vulnerable"
UNAVAILABLE = "unavailable"

FailOn = Literal["none", "low", "moderate", "high", "critical"]
SEVERITIES = ("low", "moderate", "high", "critical")
_RANK = {"none": 0, "low": 1, "moderate": 2, "high": 3, "critical": 4}
_GHSA_LABELS = {"low": "low", "moderate": "moderate", "medium": "moderate", "high": "high", "critical": "critical"}


class AuditPolicy(BaseModel):
    """When the audit fails a build (layer.toml ``[audit]``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fail_on: FailOn = "high"
    unavailable: Literal["fail", "warn"] = "warn"

    @property
    def gates(self) -> bool:
        """Whether this policy can fail a build at all."""
        return self.fail_on != "none" or self.unavailable == "fail"


# What a build without a policy does: audit, record, never fail.
NO_GATE = AuditPolicy(fail_on="none", unavailable="warn")


def effective_policy(policy: AuditPolicy | None) -> AuditPolicy:
    """``policy``, or :data:`NO_GATE` when there is none."""
    return NO_GATE if policy is None else policy


@dataclass
class AuditReport:
    """What the audit found."""

    status: str
    findings: list[dict[str, Any]] = field(default_factory=list)
    audited: int = 0
    skipped: int = 0
    note: str | None = None


def pip_audit_available() -> bool:
    """Whether ``python -m pip_audit`` can run with this interpreter."""
    return importlib.util.find_spec("pip_audit") is not None


def _command(requirements: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip_audit",
        "--requirement",
        str(requirements),
        "--no-deps",
        "--disable-pip",
        "--format",
        "json",
        "--progress-spinner",
        "off",
    ]


def parse_output(data: dict[str, Any]) -> AuditReport:
    """An AuditReport from pip-audit's JSON output (severities not looked up yet)."""
    findings: list[dict[str, Any]] = []
    audited = 0
    skipped: list[str] = []
    for dep in data.get("dependencies", []):
        if dep.get("skip_reason"):
            skipped.append(str(dep["skip_reason"]))
            continue
        audited += 1
        for vuln in dep.get("vulns", []):
            findings.append(
                {
                    "package": dep.get("name"),
                    "version": dep.get("version"),
                    "id": vuln.get("id"),
                    "aliases": vuln.get("aliases", []),
                    "fix_versions": vuln.get("fix_versions", []),
                    "description": (vuln.get("description") or "")[:500],
                    "severity": None,
                    "severity_source": None,
                }
            )
    if audited == 0:
        reason = skipped[0] if skipped else "pip-audit audited nothing"
        return AuditReport(UNAVAILABLE, audited=0, skipped=len(skipped), note=reason)
    note = f"{len(skipped)} distribution(s) could not be audited: {skipped[0]}" if skipped else None
    return AuditReport(VULNERABLE if findings else OK, findings, audited, len(skipped), note)


# ---------------------------------------------------------------- severity


_CVSS3_WEIGHTS: dict[str, dict[str, float]] = {
    "AV": {"N": 0.85, "A": 0.62, "L": 0.55, "P": 0.2},
    "AC": {"L": 0.77, "H": 0.44},
    "UI": {"N": 0.85, "R": 0.62},
    "C": {"H": 0.56, "L": 0.22, "N": 0.0},
    "I": {"H": 0.56, "L": 0.22, "N": 0.0},
    "A": {"H": 0.56, "L": 0.22, "N": 0.0},
}


def _roundup(value: float) -> float:
    """CVSS v3.1's Roundup: the smallest number with one decimal that is >= value."""
    scaled = round(value * 100_000)
    if scaled % 10_000 == 0:
        return scaled / 100_000
    return (math.floor(scaled / 10_000) + 1) / 10.0


def cvss3_base_score(vector: str) -> float | None:
    """The base score of a ``CVSS:3.x/AV:../AC:../...`` vector, or None when it is not one."""
    parts = vector.strip().split("/")
    if not parts or not parts[0].startswith("CVSS:3"):
        return None
    metrics = dict(part.split(":", 1) for part in parts[1:] if ":" in part)
    try:
        scope_changed = {"U": False, "C": True}[metrics["S"]]
        privileges = {"N": 0.85, "L": 0.68 if scope_changed else 0.62, "H": 0.5 if scope_changed else 0.27}[
            metrics["PR"]
        ]
        av, ac, ui = (_CVSS3_WEIGHTS[m][metrics[m]] for m in ("AV", "AC", "UI"))
        c, i, a = (_CVSS3_WEIGHTS[m][metrics[m]] for m in ("C", "I", "A"))
    except KeyError:
        return None
    iss = 1 - (1 - c) * (1 - i) * (1 - a)
    impact = 7.52 * (iss - 0.029) - 3.25 * (iss - 0.02) ** 15 if scope_changed else 6.42 * iss
    if impact <= 0:
        return 0.0
    exploitability = 8.22 * av * ac * privileges * ui
    total = 1.08 * (impact + exploitability) if scope_changed else impact + exploitability
    return _roundup(min(total, 10.0))


def rating(score: float) -> str | None:
    """CVSS's qualitative rating of a score, in GitHub's words (``medium`` is ``moderate``)."""
    if score >= 9.0:
        return "critical"
    if score >= 7.0:
        return "high"
    if score >= 4.0:
        return "moderate"
    if score > 0:
        return "low"
    return None


def severity_of_record(record: dict[str, Any]) -> tuple[str | None, str | None]:
    """(severity, where it came from) of one OSV record, or (None, None)."""
    label = str((record.get("database_specific") or {}).get("severity") or "").strip().lower()
    if label in _GHSA_LABELS:
        return _GHSA_LABELS[label], f"{record.get('id')} database_specific.severity"
    for entry in record.get("severity") or []:
        score = cvss3_base_score(str(entry.get("score", "")))
        if score is not None and (level := rating(score)) is not None:
            return level, f"{record.get('id')} CVSS {score:.1f}"
    return None, None


def fetch_advisory(vuln_id: str) -> dict[str, Any] | None:
    """The OSV record of ``vuln_id``, or None when OSV cannot be reached or does not know it. Never raises."""
    import urllib.error  # here, not at the top: the control plane's functions import this module for AuditPolicy
    import urllib.request

    request = urllib.request.Request(OSV_URL + vuln_id, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=OSV_TIMEOUT_SECONDS) as response:
            data = json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return data if isinstance(data, dict) else None


def lookup_severity(finding: dict[str, Any]) -> tuple[str | None, str]:
    """(severity, source) of a finding, trying its id and then its aliases in OSV.

    The source says where the severity came from, or why there is none.
    """
    reached = False
    for vuln_id in [finding.get("id"), *(finding.get("aliases") or [])]:
        if not vuln_id:
            continue
        record = fetch_advisory(str(vuln_id))
        if record is None:
            continue
        reached = True
        severity, source = severity_of_record(record)
        if severity is not None:
            return severity, str(source)
    if reached:
        return None, "the advisory records no severity"
    return None, "OSV could not be reached for its severity"


def add_severities(report: AuditReport) -> AuditReport:
    """Fill each finding's ``severity`` and ``severity_source`` that is not filled yet."""
    from concurrent.futures import ThreadPoolExecutor

    pending = [f for f in report.findings if not f.get("severity")]
    if not pending:
        return report
    with ThreadPoolExecutor(max_workers=min(8, len(pending))) as pool:
        looked_up = list(pool.map(lookup_severity, pending))
    for finding, (severity, source) in zip(pending, looked_up, strict=True):
        finding["severity"] = severity
        finding["severity_source"] = source
    return report


def run_audit(packages: dict[str, str]) -> AuditReport:
    """Audit ``{name: version}`` with pip-audit and look up each finding's severity; never raises."""
    if not packages:
        return AuditReport(OK, note="nothing to audit")
    if not pip_audit_available():
        return AuditReport(UNAVAILABLE, note="pip-audit is not installed where the builder runs")
    with tempfile.TemporaryDirectory(prefix="layershift-audit-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text("".join(f"{n}=={v}\n" for n, v in sorted(packages.items())), encoding="utf-8")
        try:
            with sandbox.package_environment() as env:
                proc = subprocess.run(
                    _command(requirements),
                    capture_output=True,
                    text=True,
                    timeout=AUDIT_TIMEOUT_SECONDS,
                    check=False,
                    env=env,
                )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return AuditReport(UNAVAILABLE, note=f"pip-audit did not finish: {type(exc).__name__}")
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        return AuditReport(UNAVAILABLE, note=f"pip-audit failed (exit {proc.returncode}): {tail[:300]}")
    return add_severities(parse_output(data))


# ---------------------------------------------------------------- the gate


def _describe(finding: dict[str, Any], policy: AuditPolicy) -> str:
    aliases = f" ({', '.join(finding['aliases'])})" if finding.get("aliases") else ""
    fixes = finding.get("fix_versions") or []
    fixed = f"fixed in {', '.join(fixes)}" if fixes else "no fixed version published"
    severity = finding.get("severity")
    if severity:
        rated = f"severity {severity}" + (f" ({finding['severity_source']})" if finding.get("severity_source") else "")
    else:
        why = finding.get("severity_source") or "no severity known"
        rated = f"severity unknown ({why}): treated as {policy.fail_on}, the threshold (fail closed)"
    return f"{finding['package']} {finding['version']}: {finding['id']}{aliases}, {fixed}; {rated}"


def blocking(report: AuditReport, policy: AuditPolicy) -> list[dict[str, Any]]:
    """The findings at or above the policy's threshold; a finding of unknown severity counts as at it."""
    if policy.fail_on == "none" or report.status != VULNERABLE:
        return []
    threshold = _RANK[policy.fail_on]
    return [f for f in report.findings if not f.get("severity") or _RANK.get(str(f["severity"]), 4) >= threshold]


def gate(report: AuditReport, policy: AuditPolicy) -> None:
    """Raise BuildFailed when ``policy`` does not let the layer through with this audit.

    The message names each package, version, advisory, severity and the versions that fix it.
    """
    found = blocking(report, policy)
    if found:
        lines = [_describe(f, policy) for f in found]
        raise BuildFailed(
            f"the vulnerability gate (fail_on = {policy.fail_on}) stops this layer: {len(found)} known "
            f"vulnerabilit{'y' if len(found) == 1 else 'ies'} at or above {policy.fail_on}:\n" + "\n".join(lines)
        )
    if report.status == UNAVAILABLE and policy.unavailable == "fail":
        raise BuildFailed(
            f"the vulnerability audit could not run ({report.note or 'no reason given'}), and the policy says "
            'unavailable = "fail"'
        )


def warning(report: AuditReport, policy: AuditPolicy) -> str | None:
    """The build warning for findings that do not fail it, or for an audit that could not run."""
    if report.status == VULNERABLE:
        shown = ", ".join(
            f"{f['package']} {f['version']} {f['id']} ({f.get('severity') or 'severity unknown'})"
            for f in report.findings
        )
        gate_text = "the gate is off" if policy.fail_on == "none" else f"below the gate's fail_on = {policy.fail_on}"
        return f"known vulnerabilities ({gate_text}): {shown}"
    if report.status == UNAVAILABLE and policy.fail_on != "none":
        return (
            f"the vulnerability audit could not run ({report.note}); "
            f"the gate (fail_on = {policy.fail_on}) was not applied"
        )
    return None
