"""What the operator views read: the registry page by page, versions apart from rollouts, and
rollout outcomes joined from the registry and the executions."""

import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from rich.console import Console

from layershift.controlplane import ControlPlane
from layershift.operator_data import layer_status, registry_items, rollout_row
from layershift.operator_views import FUNCTIONS_SHOWN, show_tree

ROOT = Path(__file__).resolve().parents[2]


class _Paginator:
    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages = pages

    def paginate(self, **_: Any) -> list[dict[str, Any]]:
        return self.pages


class _PagedTable:
    """DynamoDB as it answers a big table: several pages, each with a LastEvaluatedKey but the last."""

    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages = pages
        self.operations: list[str] = []

    def get_paginator(self, operation: str) -> _Paginator:
        self.operations.append(operation)
        return _Paginator(self.pages)


def _item(layer: str, sk: str, **fields: str) -> dict[str, Any]:
    return {"pk": {"S": f"LAYER#{layer}"}, "sk": {"S": sk}, **{k: {"S": v} for k, v in fields.items()}}


def test_the_registry_is_read_page_by_page() -> None:
    table = _PagedTable(
        [
            {"Items": [_item("a", "VERSION#000001", status="promoted")], "LastEvaluatedKey": {"pk": {"S": "x"}}},
            {"Items": [_item("b", "LOCK", owner="b-1"), _item("a", "ROLLOUT#a-1", status="promoted")]},
        ]
    )
    cp = ControlPlane(bucket="b", table="t", state_machine_arn="arn:aws:states:us-east-1:1:stateMachine:m")
    cp._clients["dynamodb"] = table
    found = registry_items(cp)
    assert table.operations == ["scan"]
    assert {layer: sorted(i["sk"] for i in items) for layer, items in found.items()} == {
        "a": ["ROLLOUT#a-1", "VERSION#000001"],
        "b": ["LOCK"],
    }
    registry_items(cp, "a")
    assert table.operations == ["scan", "query"]


@mock_aws
def test_status_lists_the_last_versions_and_the_last_rollouts_apart() -> None:
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    ddb.create_table(
        TableName="t",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"} for key in ("pk", "sk")],
        BillingMode="PAY_PER_REQUEST",
    )
    for n in range(1, 8):  # versions updated after every rollout: a mixed "last 5" would show versions only
        ddb.put_item(TableName="t", Item=_item("a", f"ROLLOUT#a-{n}", status="promoted", updated_at=f"2026-01-0{n}"))
    for n in range(1, 8):
        item = _item("a", f"VERSION#{n:06d}", status="promoted", build_key="k" * 20, updated_at=f"2026-02-0{n}")
        ddb.put_item(TableName="t", Item=item | {"version": {"N": str(n)}})
    cp = ControlPlane(
        bucket="b", table="t", state_machine_arn="arn:aws:states:us-east-1:1:stateMachine:m", region="us-east-1"
    )
    status = layer_status(cp, "a", registry_items(cp, "a")["a"], recent=5)
    assert [v["version"] for v in status["versions"]] == [7, 6, 5, 4, 3]
    assert [r["rollout_id"] for r in status["rollouts"]] == ["a-7", "a-6", "a-5", "a-4", "a-3"]


def test_a_rollout_row_joins_the_record_and_the_execution() -> None:
    started, stopped = datetime(2026, 1, 1, 12, 0, tzinfo=UTC), datetime(2026, 1, 1, 12, 1, 30, tzinfo=UTC)
    execution = {"status": "FAILED", "startDate": started, "stopDate": stopped}
    record = {"status": "rolled_back", "reason": "RolloutUnhealthy: ...", "pushed_by": "arn:aws:iam::1:user/ops"}
    row = rollout_row("a", "a-1", record | {"commit_id": "", "attempt": "2"}, execution)
    assert (row["outcome"], row["duration_seconds"], row["attempt"], row["commit_id"]) == ("rolled_back", 90.0, 2, None)
    running = rollout_row("a", "a-2", {"status": "shifting"}, {"status": "RUNNING", "startDate": started})
    assert (running["outcome"], running["duration_seconds"]) == ("running (shifting)", None)
    assert rollout_row("a", "a-3", None, execution)["outcome"] == "failed"


def test_the_cli_dependencies_stay_out_of_the_control_planes_layer() -> None:
    layer = (ROOT / "layers/core/requirements.txt").read_text().lower()
    assert "rich" not in layer
    assert '"rich>=' in (ROOT / "pyproject.toml").read_text()


def _tree() -> dict[str, Any]:
    function = {"function": "orders", "alias": "live", "old_version": "4", "new_version": "5", "variant": None}
    step = {"index": 0, "wave": "main", "weight": 25, "bake_seconds": 60, "state": "running", "checks": 2}
    step |= {"verdict": "healthy", "verdict_detail": "healthy: 1 function", "functions": [function | {"weight": 25.0}]}
    phases = [{"name": n, "state": "done", "detail": None} for n in ("validate", "build", "plan")]
    phases += [{"name": "traffic", "state": "running", "detail": None, "steps": [step]}]
    phases += [{"name": "promote", "state": "pending", "detail": None}]
    return {
        "layer": "deps",
        "rollout_id": "deps-1",
        "status": "RUNNING",
        "outcome": "running",
        "current_state": "BakeAndWatch",
        "started_at": "2026-01-01T12:00:00+00:00",
        "duration_seconds": None,
        "error": None,
        "cause": None,
        "phases": phases,
    }


def test_the_tree_is_drawn_by_rich_on_a_terminal_and_as_plain_lines_elsewhere(
    capsys: pytest.CaptureFixture[str],
) -> None:
    terminal = Console(file=io.StringIO(), force_terminal=True, width=100, color_system=None)
    show_tree(_tree(), terminal)
    drawn = terminal.file.getvalue()  # type: ignore[attr-defined]
    assert "├── ◌ traffic" in drawn and "orders:live  v4 → v5, 25% on v5" in drawn
    show_tree(_tree(), Console(file=io.StringIO()))  # not a terminal: plain lines on stdout
    plain = capsys.readouterr().out.splitlines()
    assert plain[0].startswith("rollout deps-1 of layer deps: RUNNING (RUNNING)")
    assert "    ◌ step 1: main wave at 25% for 60s: healthy after 2 check(s)  [running]" in plain
    assert "      orders:live  v4 → v5, 25% on v5" in plain


def test_a_fleets_step_draws_its_first_functions_and_counts_the_rest(capsys: pytest.CaptureFixture[str]) -> None:
    tree = _tree()
    (step,) = tree["phases"][3]["steps"]
    step["functions"] = [step["functions"][0] | {"function": f"fn-{n:03d}"} for n in range(FUNCTIONS_SHOWN + 5)]
    show_tree(tree, Console(file=io.StringIO()))
    plain = capsys.readouterr().out
    assert "fn-019:live" in plain and "fn-020:live" not in plain
    assert "… and 5 more (-o json lists every one)" in plain
