"""Tenancy: a push of one layer reaches only the functions opted in for it, and keeps only the other
layers the tenant role may attach; the floors of the control plane are not the pusher's to lower."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.stub import Stubber

from layershift_core import aws
from layershift_core.errors import InvalidLayerSpec, InvalidRequest
from layershift_core.models import RolloutRequest
from layershift_core.planner import foreign_layer_problem, opt_in_problem, replace_layer
from layershift_core.settings import Settings
from layershift_core.spec import Floors, SpecDefaults, parse_layer_spec
from layershift_core.validation import check_request

OWN = "arn:aws:lambda:us-east-1:111111111111"
A = f"{OWN}:layer:ls-a"


@pytest.mark.parametrize("value", ["a", "b a", "a b", "x a y"])
def test_a_function_whose_tag_names_the_layer_is_opted_in(value: str) -> None:
    assert opt_in_problem({"layershift:layer": value}, "a", allow_managed=False) is None


@pytest.mark.parametrize("value", ["b", "ab", "a-old", "b,a", "A"])
def test_a_function_tagged_for_another_layer_is_not(value: str) -> None:
    problem = opt_in_problem({"layershift:layer": value}, "a", allow_managed=True)
    assert problem is not None and "not for 'a'" in problem


def test_managed_true_alone_opts_in_only_where_the_control_plane_allows_it() -> None:
    managed = {"layershift:managed": "true"}
    refused = opt_in_problem(managed, "a", allow_managed=False)
    assert refused is not None and "AllowManagedOptIn is false" in refused
    assert opt_in_problem(managed, "a", allow_managed=True) is None
    untagged = opt_in_problem({}, "a", allow_managed=True)
    assert untagged is not None and "tag it layershift:layer=a" in untagged


def test_only_layers_of_this_account_or_allowed_third_parties_are_kept() -> None:
    vendor = "arn:aws:lambda:us-east-1:464622532012:layer:Datadog-Extension:65"
    assert foreign_layer_problem([f"{OWN}:layer:team-utils:3"], OWN, []) is None
    problem = foreign_layer_problem([vendor], OWN, [])
    assert problem is not None and vendor in problem and "ThirdPartyLayerArns" in problem
    assert foreign_layer_problem([vendor], OWN, ["arn:aws:lambda:*:464622532012:layer:Datadog-*:*"]) is None
    assert foreign_layer_problem([vendor], OWN, ["arn:aws:lambda:*:464622532012:layer:Other:*"]) is not None


def test_a_same_named_layer_of_another_account_is_not_replaced() -> None:
    theirs = "arn:aws:lambda:us-east-1:222222222222:layer:ls-a:9"
    assert replace_layer([theirs, f"{A}:1"], f"{A}:2") == [theirs, f"{A}:2"]
    assert replace_layer([theirs], f"{A}:2") == [theirs, f"{A}:2"]


FLOORS = SpecDefaults(
    strategy="Canary10Percent5Minutes",
    floors=Floors(min_steps=1, min_bake_seconds=120, required_alarms=["fleet-errors"], require_analysis=True),
)


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ('[rollout]\nstrategy = "AllAtOnce"', "FloorMinSteps"),
        ("[rollout]\nsteps = [{weight = 10, bake_seconds = 60}]", "FloorMinBakeSeconds"),
        ('[rollout]\nstrategy = "Linear50PercentEvery1Minute"', "FloorMinBakeSeconds"),
        ("[analysis]\nenabled = false", "FloorRequireAnalysis"),
    ],
)
def test_a_spec_below_a_floor_is_refused_naming_it(toml: str, named: str) -> None:
    with pytest.raises(InvalidLayerSpec, match=named):
        parse_layer_spec(toml, FLOORS)


def test_required_alarms_gate_every_rollout_and_approval_is_required_where_the_floor_says() -> None:
    spec = parse_layer_spec('[rollout]\nalarms = ["team-latency"]', FLOORS)
    assert spec.alarms == ["team-latency", "fleet-errors"]
    assert spec.approval is False
    strict = FLOORS.model_copy(update={"floors": Floors(require_approval=True)})
    assert parse_layer_spec("", strict).approval is True
    with pytest.raises(InvalidLayerSpec, match="FloorRequireApproval"):
        parse_layer_spec("[rollout]\napproval = false", strict)


def test_the_changing_tasks_act_in_a_session_tagged_with_their_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tenant session names the layer (the tag IAM compares with each function's), one per layer, reused
    until close to its end."""
    role = "arn:aws:iam::111111111111:role/ls-tenant"
    sts = boto3.client("sts", region_name="us-east-1")
    monkeypatch.setattr(aws, "client", lambda service: sts if service == "sts" else pytest.fail(service))
    monkeypatch.setattr(aws, "_tenant_clients", {})

    def session(layer: str, minutes: int) -> None:
        expected = {
            "RoleArn": role,
            "RoleSessionName": f"layershift-{layer}",
            "DurationSeconds": 900,
            "Tags": [{"Key": "layershift:layer", "Value": layer}],
        }
        expires = datetime.now(UTC) + timedelta(minutes=minutes)
        answer = {"AccessKeyId": f"ASIA{layer.upper():0<16}", "SecretAccessKey": "s", "SessionToken": "t"}
        stubber.add_response("assume_role", {"Credentials": {**answer, "Expiration": expires}}, expected)

    with Stubber(sts) as stubber:
        session("a", 15)
        session("b", 15)
        first = aws.tenant_lambda(role, "a")
        assert aws.tenant_lambda(role, "a") is first  # reused: no second AssumeRole
        assert aws.tenant_lambda(role, "b") is not first
        stubber.assert_no_pending_responses()
        session("a", 15)
        aws._tenant_clients[(role, "a")] = (datetime.now(UTC).timestamp() + 60, first)  # about to end
        assert aws.tenant_lambda(role, "a") is not first
        stubber.assert_no_pending_responses()


def test_a_layer_that_would_publish_under_the_control_planes_own_layer_name_is_refused() -> None:
    settings = Settings(bucket="bkt", table="tbl", layer_name_prefix="ls-", own_layer_name="ls-core")
    request = RolloutRequest(layer="core", bucket="bkt", requirements_key="layers/core/requirements.txt")
    with pytest.raises(InvalidRequest, match="'core' is reserved: it would publish as 'ls-core'"):
        check_request(request, settings)
    other = RolloutRequest(layer="corelib", bucket="bkt", requirements_key="layers/corelib/requirements.txt")
    check_request(other, settings)  # only the exact name
