"""pip-audit of the resolved distributions, where pip-audit is installed and the network allows.

The result is ``ok`` (no known vulnerability), ``vulnerable`` (with findings) or ``unavailable``
(pip-audit missing, the vulnerability service unreachable, or nothing could be audited). An
unavailable audit never fails a build; a vulnerable one fails it only when the caller asks.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layershift_core.errors import BuildFailed

AUDIT_TIMEOUT_SECONDS = 180
OK = "ok"
VULNERABLE = "vulnerable"
UNAVAILABLE = "unavailable"


@dataclass
class AuditReport:
    """What pip-audit found."""

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
    """An AuditReport from pip-audit's JSON output."""
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
                }
            )
    if audited == 0:
        reason = skipped[0] if skipped else "pip-audit audited nothing"
        return AuditReport(UNAVAILABLE, audited=0, skipped=len(skipped), note=reason)
    note = f"{len(skipped)} distribution(s) could not be audited: {skipped[0]}" if skipped else None
    return AuditReport(VULNERABLE if findings else OK, findings, audited, len(skipped), note)


def run_audit(packages: dict[str, str]) -> AuditReport:
    """Audit ``{name: version}`` with pip-audit; never raises."""
    if not packages:
        return AuditReport(OK, note="nothing to audit")
    if not pip_audit_available():
        return AuditReport(UNAVAILABLE, note="pip-audit is not installed where the builder runs")
    with tempfile.TemporaryDirectory(prefix="layershift-audit-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text("".join(f"{n}=={v}\n" for n, v in sorted(packages.items())), encoding="utf-8")
        try:
            proc = subprocess.run(
                _command(requirements), capture_output=True, text=True, timeout=AUDIT_TIMEOUT_SECONDS, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return AuditReport(UNAVAILABLE, note=f"pip-audit did not finish: {type(exc).__name__}")
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        return AuditReport(UNAVAILABLE, note=f"pip-audit failed (exit {proc.returncode}): {tail[:300]}")
    return parse_output(data)


def gate(report: AuditReport) -> None:
    """Raise BuildFailed naming each vulnerable package and advisory."""
    if report.status != VULNERABLE:
        return
    lines = [
        f"{f['package']} {f['version']}: {f['id']}"
        + (f" ({', '.join(f['aliases'])})" if f.get("aliases") else "")
        + (f", fixed in {', '.join(f['fix_versions'])}" if f.get("fix_versions") else "")
        for f in report.findings
    ]
    raise BuildFailed("pip-audit found known vulnerabilities:\n" + "\n".join(lines))
