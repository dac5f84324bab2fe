"""The fault harness's plan for the state machine's Lambda integration: which invoke fails, and how often."""

import json
from pathlib import Path

from layershift.local import integration_faults


def _plan(tmp_path: Path, fault: str, function: str = "ShiftTraffic") -> Path:
    plan = tmp_path / "plan.json"
    site = {"function": function, "service": "states", "operation": "lambda:invoke", "fault": fault}
    plan.write_text(json.dumps({"record": str(tmp_path / "calls.jsonl"), "faults": {"orders-deps": site}}))
    return plan


def _payload(layer: str) -> bytes:
    return json.dumps({"rollout_id": "r", "layer": layer, "step": {"wave": "main", "weight": 10}}).encode()


def test_the_layer_is_found_in_every_payload_shape_a_task_gets() -> None:
    assert integration_faults.layer_of(b'{"request": {"layer": "a"}}') == "a"
    assert integration_faults.layer_of(b'{"state": {"request": {"layer": "b"}}, "rollout_id": "x"}') == "b"
    assert integration_faults.layer_of(b'{"kind": "bake", "token": "t", "step": {"layer": "c"}}') == "c"
    assert integration_faults.layer_of(b"{}") is None
    assert integration_faults.layer_of(b"not json") is None


def test_transient_faults_hit_the_first_attempt_only_and_permanent_ones_every_attempt(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "throttle")
    assert integration_faults.fault_for(plan, "ShiftTraffic", _payload("orders-deps")) == "throttle"
    assert integration_faults.fault_for(plan, "ShiftTraffic", _payload("orders-deps")) is None
    assert integration_faults.fault_for(plan, "CheckHealth", _payload("orders-deps")) is None
    assert integration_faults.fault_for(plan, "ShiftTraffic", _payload("another-layer")) is None

    plan = _plan(tmp_path, "denied")
    assert [integration_faults.fault_for(plan, "ShiftTraffic", _payload("orders-deps")) for _ in range(3)] == [
        "denied"
    ] * 3
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert [c["injected"] for c in calls] == ["throttle", None, None, None, "denied", "denied", "denied"]
    assert {c["operation"] for c in calls} == {"lambda:invoke"}
