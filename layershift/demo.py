"""`layershift demo`: a whole rollout story on the local emulated AWS, with real builds from PyPI.

1. Start the local AWS and deploy the control plane from template.yaml.
2. Push the first version of a shared layer; with no consumer yet it is promoted at once.
3. Create three consumer functions on that version behind `live` aliases, each with an error alarm.
4. Drive traffic at the aliases for the rest of the demo.
5. Push a good change: it goes 10%, 50%, then is promoted.
6. Push a change that breaks one consumer: the canary analysis sees the new version's error rate
   rise against the old version's at the first 10% check, and the rollout rolls back every alias
   on its own, before the consumers' (coarser) error alarms fire.

Exit status 0 only when both endings were seen and the invariants held after each.
"""

from __future__ import annotations

import io
import threading
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .controlplane import ControlPlane, follow, from_outputs, push, wait_for_execution
from .invariants import check_invariants

LAYER = "demo-shared"
# A mixed fleet: each consumer's runtime and architecture. The layer is built for what they run on.
PLATFORMS = {
    "orders": ("python3.13", "x86_64"),
    "invoices": ("python3.12", "x86_64"),
    "reports": ("python3.13", "arm64"),
}
CONSUMERS = tuple(PLATFORMS)
ALIAS = "live"


def say(text: str) -> None:
    print(text, flush=True)


def _zip_dir(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*.py")):
            archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


ALARM_THRESHOLD = 30


def put_error_alarm(cp: ControlPlane, alarm_name: str, function: str, alias: str) -> None:
    """An alarm on the alias's errors per minute: a typical outage alarm, coarse for a 10% canary."""
    cp.client("cloudwatch").put_metric_alarm(
        AlarmName=alarm_name,
        AlarmDescription=f"{function}:{alias} reports errors",
        Namespace="AWS/Lambda",
        MetricName="Errors",
        Dimensions=[{"Name": "FunctionName", "Value": function}, {"Name": "Resource", "Value": f"{function}:{alias}"}],
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=ALARM_THRESHOLD,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
        TreatMissingData="notBreaching",
    )


def create_alarms(cp: ControlPlane) -> None:
    """One error alarm per consumer alias: the gates named in examples/demo/layer.toml."""
    for name in CONSUMERS:
        put_error_alarm(cp, f"demo-{name}-errors", name, ALIAS)
    names = ", ".join(f"demo-{name}-errors" for name in CONSUMERS)
    say(f"  alarms: {names} (Errors >= {ALARM_THRESHOLD} in 60 s on each alias)")


def create_consumers(cp: ControlPlane, examples: Path, layer_arn: str) -> None:
    iam, lam = cp.client("iam"), cp.client("lambda")
    role = iam.create_role(
        RoleName="demo-consumer-role",
        AssumeRolePolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow",'
        '"Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}',
    )["Role"]["Arn"]
    for name, (runtime, architecture) in PLATFORMS.items():
        lam.create_function(
            FunctionName=name,
            Runtime=runtime,
            Architectures=[architecture],
            Role=role,
            Handler="app.handler",
            Code={"ZipFile": _zip_dir(examples / "consumers" / name)},
            Layers=[layer_arn],
            Timeout=10,
            Tags={"team": "demo", "layershift:layer": LAYER},
        )
        lam.get_waiter("function_active_v2").wait(FunctionName=name)
        version = lam.publish_version(FunctionName=name)["Version"]
        lam.create_alias(FunctionName=name, Name=ALIAS, FunctionVersion=version)
        say(f"  consumer {name} ({runtime}, {architecture}): version {version} behind alias {ALIAS!r}")


@dataclass
class Traffic:
    """Steady invocations of every consumer's alias, counted by executed version."""

    cp: ControlPlane
    rate_per_second: float = 8.0
    counts: Counter[tuple[str, str, bool]] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="demo-traffic", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        lam = self.cp.client("lambda")
        interval = 1 / self.rate_per_second
        while not self._stop.is_set():
            for name in CONSUMERS:
                response = lam.invoke(FunctionName=name, Qualifier=ALIAS, Payload=b"{}")
                version = response.get("ExecutedVersion", "?")
                self.counts[(name, version, "FunctionError" in response)] += 1
            self._stop.wait(interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)

    def report(self) -> str:
        rows = [
            f"{name} v{version}: {count} {'errors' if failed else 'ok'}"
            for (name, version, failed), count in sorted(self.counts.items())
        ]
        self.counts.clear()
        return "; ".join(rows) or "no traffic"


def run_push(cp: ControlPlane, title: str, requirements: Path, config: Path) -> tuple[str, list[str]]:
    say(f"\n== {title}: push {requirements.name}")
    result = push(cp, LAYER, requirements.read_bytes(), config.read_bytes())
    say(
        f"  uploaded layers/{LAYER}/requirements.txt (version {result.requirements_version}); "
        f"execution {result.execution_name}"
    )
    wait_for_execution(cp, result.execution_arn)
    described = follow(cp, result.execution_arn, emit=lambda line: say(f"  {line}"))
    problems = check_invariants(cp, result.execution_arn)
    say(f"  invariants: {'all hold' if not problems else '; '.join(problems)}")
    verdict = last_verdict(cp, result.execution_name)
    if verdict:
        say(f"  canary verdict: {verdict}")
    return described["status"], problems


def last_verdict(cp: ControlPlane, rollout_id: str) -> str | None:
    """The canary analysis's last verdict of a rollout, with its numbers, from the registry."""
    item = (
        cp.client("dynamodb")
        .get_item(TableName=cp.table, Key={"pk": {"S": f"LAYER#{LAYER}"}, "sk": {"S": f"ROLLOUT#{rollout_id}"}})
        .get("Item", {})
    )
    if "verdict" not in item:
        return None
    weight = item.get("weight", {}).get("S", "?")
    return f"{item['verdict']['S']} at {weight}%: {item.get('verdict_detail', {}).get('S', '')}"


def rollout_reason(cp: ControlPlane) -> str:
    """Why the layer's most recent rollout ended as it did (the registry's reason)."""
    items = cp.client("dynamodb").query(
        TableName=cp.table,
        KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
        ExpressionAttributeValues={":pk": {"S": f"LAYER#{LAYER}"}, ":prefix": {"S": "ROLLOUT#"}},
    )["Items"]
    latest = max(items, key=lambda item: item.get("updated_at", {}).get("S", ""), default={})
    return latest.get("reason", {}).get("S", "")


def run(project_root: Path, keep_running: bool = False) -> int:
    from .local.deploy import deploy_control_plane
    from .local.server import LocalAws

    examples = project_root / "examples" / "demo"
    config = examples / "layer.toml"
    started = time.monotonic()
    with LocalAws(state_dir=project_root / ".layershift" / "local") as aws:
        say(f"== local AWS on {aws.endpoint_url}; deploying the control plane from template.yaml")
        stack = deploy_control_plane(aws, project_root)
        cp = from_outputs(stack.outputs, aws.region, aws.endpoint_url)
        cp.save_local()
        say(f"  {len(stack.physical_ids)} resources; state machine {cp.state_machine_arn}")

        # Alarms first: layer.toml names them, and validation refuses alarms that do not exist.
        create_alarms(cp)
        endings: dict[str, Any] = {}
        failures: list[str] = []
        status, problems = run_push(
            cp, "first layer version (no consumers yet)", examples / "requirements-v1.txt", config
        )
        if status != "SUCCEEDED" or problems:
            say(f"  FAILED: the first layer version ended {status}; {'; '.join(problems)}")
            return 1
        first_arn = cp.client("ssm").get_parameter(Name=f"/layershift/{LAYER}/arn")["Parameter"]["Value"]

        say(f"\n== consumers on {first_arn}")
        create_consumers(cp, examples, first_arn)
        traffic = Traffic(cp)
        traffic.start()
        try:
            time.sleep(2)
            say(f"  traffic: {traffic.report()}")
            status, problems = run_push(cp, "good change", examples / "requirements-v2-good.txt", config)
            endings["good"] = status
            failures += problems
            say(f"  traffic during the rollout: {traffic.report()}")
            status, problems = run_push(cp, "breaking change", examples / "requirements-v3-bad.txt", config)
            endings["bad"] = status
            failures += problems
            bad_reason = rollout_reason(cp)
            if "canary analysis" not in bad_reason:
                failures.append(f"the breaking change was not caught by the canary analysis: {bad_reason}")
            say(f"  traffic during the rollout: {traffic.report()}")
        finally:
            traffic.stop()

        if endings.get("good") != "SUCCEEDED":
            failures.append(f"the good change ended {endings.get('good')}, not promoted")
        if endings.get("bad") != "FAILED":
            failures.append(f"the breaking change ended {endings.get('bad')}, not rolled back")
        say(f"\n== demo finished in {time.monotonic() - started:.0f}s")
        if failures:
            for failure in failures:
                say(f"  FAILED: {failure}")
            return 1
        say("  one promotion, one automatic rollback by the canary analysis, invariants held after every rollout")
        if keep_running:
            say("  the local control plane keeps running for `layershift status --local`; Ctrl-C ends it")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return 0
