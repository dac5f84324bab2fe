"""The tenancy escapes are denied by the template's IAM policies as deployed, evaluated for real by
@cloud-copilot/iam-simulate (tests/iam): a tenant session reaching another layer's functions or
attaching an unknown layer, the build writing outside its own staging prefix, a pusher writing the
control plane's records or approving. Each group has its positive controls, so a policy that
denies everything fails here too.

Two control planes: the session's (AllowManagedOptIn "false", no ThirdPartyLayerArns, no
approvers) and one deployed here with managed opt-in, a third-party layer pattern and an approver.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from layershift.local.deploy import DeployedStack, deploy_control_plane
from layershift.local.server import LocalAws
from tests.iam.deployed import DeployedAccount
from tests.iam.expectations import ALLOWED, DENIED, EXPLICITLY_DENIED, Expect, unmet
from tests.iam.principals import RoleSession
from tests.iam.simulator import Context, Policy, require_evaluator

from .support import ROOT, STACK_PARAMETERS

pytestmark = [pytest.mark.integration]

LAYER = "common"
MUTATIONS = ("lambda:UpdateFunctionConfiguration", "lambda:PublishVersion", "lambda:UpdateAlias")
VENDOR_PATTERN = "arn:aws:lambda:us-east-1:999999999999:layer:vendor-extension:*"
OPT_IN_STACK = "iam-opt-in"

# layershift:layer tags of a target, and whether a session for LAYER may change the function.
LAYER_TAGS = {
    "common": ALLOWED,
    "billing common": ALLOWED,
    "common billing": ALLOWED,
    "billing common tracing": ALLOWED,
    "billing": DENIED,
    "commonplace": DENIED,  # a longer name that starts with the layer's
    "common-extra": DENIED,
    "uncommon": DENIED,  # a longer name that ends with it
    "billing common-extra": DENIED,
}


@dataclass(frozen=True)
class Plane:
    """One deployed control plane and the account it lives in."""

    stack: DeployedStack
    account: DeployedAccount

    def role(self, logical_id: str) -> str:
        return self.stack.arns[logical_id]

    def session(self, logical_id: str, name: str = "session", **tags: str) -> RoleSession:
        return RoleSession(self.role(logical_id), name, self.account.account_id, tuple(sorted(tags.items())))

    def tenant(self, layer: str = LAYER) -> RoleSession:
        return RoleSession(
            self.role("TenantRole"), f"layershift-{layer}", self.account.account_id, (("layershift:layer", layer),)
        )

    @property
    def bucket(self) -> str:
        return self.stack.outputs["ArtifactBucketName"]

    @property
    def bucket_policy(self) -> Policy | None:
        return self.account.bucket_policy(self.bucket)

    def object(self, key: str) -> str:
        return f"arn:aws:s3:::{self.bucket}/{key}"

    def function(self, name: str = "victim", qualifier: str | None = None) -> str:
        return self.account.arn("lambda", f"function:{name}" + (f":{qualifier}" if qualifier else ""))

    def layer(self, name: str, version: int = 3) -> str:
        return self.account.arn("lambda", f"layer:{name}:{version}")


def _plane(stack: DeployedStack, local_aws: LocalAws) -> Plane:
    account = DeployedAccount(local_aws.client, local_aws.account_id, local_aws.region, stack.bucket_policies)
    return Plane(stack, account)


@pytest.fixture(scope="module")
def default_plane(deployed_stack: DeployedStack, local_aws: LocalAws) -> Plane:
    require_evaluator()
    return _plane(deployed_stack, local_aws)


@pytest.fixture(scope="module")
def approver_person(local_aws: LocalAws) -> str:
    """Someone ApproverPrincipalArns names, allowed by their own policy to assume an approver role."""
    iam = local_aws.client("iam")
    role = iam.create_role(RoleName="iam-approver-person", AssumeRolePolicyDocument="{}")["Role"]
    _allow(local_aws, "iam-approver-person", ["sts:AssumeRole"], ["*"])
    return str(role["Arn"])


@pytest.fixture(scope="module")
def opt_in_plane(local_aws: LocalAws, approver_person: str) -> Iterator[Plane]:
    """A second control plane with managed opt-in, a vendor layer pattern and an approver. Only its IAM
    is used: its rules are disabled, so no event of the session reaches its functions."""
    require_evaluator()
    parameters = {
        **STACK_PARAMETERS,
        "AllowManagedOptIn": "true",
        "ThirdPartyLayerArns": VENDOR_PATTERN,
        "ApproverPrincipalArns": approver_person,
    }
    stack = deploy_control_plane(local_aws, ROOT, stack_name=OPT_IN_STACK, parameters=parameters)
    events = local_aws.client("events")
    for rule in events.list_rules(NamePrefix=f"{OPT_IN_STACK}-")["Rules"]:
        events.disable_rule(Name=rule["Name"])
    yield _plane(stack, local_aws)


def _allow(local_aws: LocalAws, role: str, actions: list[str], resources: list[str]) -> None:
    statement = {"Effect": "Allow", "Action": actions, "Resource": resources}
    document = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    local_aws.client("iam").put_role_policy(RoleName=role, PolicyName="grants", PolicyDocument=document)


def _outsider(local_aws: LocalAws, name: str, actions: list[str], resources: list[str]) -> RoleSession:
    """A role of the account outside the control plane, with the grants given."""
    arn = local_aws.client("iam").create_role(RoleName=name, AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    _allow(local_aws, name, actions, resources)
    return RoleSession(arn, "outsider", local_aws.account_id)


@pytest.fixture(scope="module")
def pusher(local_aws: LocalAws) -> RoleSession:
    """A role that may push layers: it reads, writes and deletes anything in every bucket."""
    return _outsider(local_aws, "iam-pusher", ["s3:PutObject", "s3:DeleteObject", "s3:GetObject"], ["arn:aws:s3:::*/*"])


@pytest.fixture(scope="module")
def operator(local_aws: LocalAws) -> RoleSession:
    """A role that may assume (and tag a session of) every role of the account, by its own policy."""
    return _outsider(local_aws, "iam-operator", ["sts:AssumeRole", "sts:TagSession"], ["*"])


def _mutation(plane: Plane, session: RoleSession, action: str, tags: dict[str, str], case: str, outcome: str) -> Expect:
    """``action`` on a function tagged ``tags``, attaching only this stack's own new layer."""
    context: Context = {f"aws:ResourceTag/{key}": value for key, value in tags.items()}
    resource = plane.function(qualifier="live" if action == "lambda:UpdateAlias" else None)
    if action == "lambda:UpdateFunctionConfiguration":
        context["lambda:Layer"] = [plane.layer(f"{plane.stack.stack_name}-{LAYER}")]
    return Expect(f"{case}: {action}", session.request(plane.account, action, resource, context), outcome)


def _assert_met(expectations: list[Expect]) -> None:
    problems = unmet(expectations)
    assert not problems, f"{len(problems)} of {len(expectations)} IAM decisions are not as the design says:\n" + (
        "\n".join(problems)
    )


def test_a_tenant_session_changes_only_the_functions_opted_in_for_its_layer(
    default_plane: Plane, opt_in_plane: Plane
) -> None:
    expectations = []
    for action in MUTATIONS:
        for tag, outcome in LAYER_TAGS.items():
            for plane in (default_plane, opt_in_plane):
                tenant = plane.tenant()
                case = f"{plane.stack.stack_name}: session for '{LAYER}' on a function tagged layershift:layer='{tag}'"
                expectations.append(_mutation(plane, tenant, action, {"layershift:layer": tag}, case, outcome))
        managed = {"layershift:managed": "true"}
        expectations += [
            _mutation(default_plane, default_plane.tenant(), action, managed, "managed only, opt-in off", DENIED),
            _mutation(opt_in_plane, opt_in_plane.tenant(), action, managed, "managed only, opt-in on", ALLOWED),
            _mutation(default_plane, default_plane.tenant(), action, {}, "untagged, opt-in off", DENIED),
            _mutation(opt_in_plane, opt_in_plane.tenant(), action, {}, "untagged, opt-in on", DENIED),
        ]
    _assert_met(expectations)


def test_a_target_keeps_only_this_accounts_layers_and_the_allowed_third_party_ones(
    default_plane: Plane, opt_in_plane: Plane
) -> None:
    foreign = {
        "another account's layer": "arn:aws:lambda:us-east-1:999999999999:layer:evil:1",
        "this account's layer in another region": "arn:aws:lambda:eu-west-1:123456789012:layer:common:1",
        "the vendor's layer": "arn:aws:lambda:us-east-1:999999999999:layer:vendor-extension:7",
    }
    expectations = []
    for plane in (default_plane, opt_in_plane):
        own = plane.layer(f"{plane.stack.stack_name}-{LAYER}")
        for case, kept, outcome in [
            ("the new layer only", [own], ALLOWED),
            ("beside another layer of this account", [plane.layer("team-utils", 9), own], ALLOWED),
            *[(f"beside {name}", [arn, own], EXPLICITLY_DENIED) for name, arn in foreign.items()],
        ]:
            if plane is opt_in_plane and case == "beside the vendor's layer":
                outcome = ALLOWED  # ThirdPartyLayerArns allows it there
            context: Context = {"aws:ResourceTag/layershift:layer": LAYER, "lambda:Layer": kept}
            action = "lambda:UpdateFunctionConfiguration"
            request = plane.tenant().request(plane.account, action, plane.function(), context)
            expectations.append(Expect(f"{plane.stack.stack_name}: {case}", request, outcome))
    _assert_met(expectations)


def test_only_the_function_changing_role_becomes_a_tenant_and_it_changes_nothing_itself(
    default_plane: Plane, operator: RoleSession
) -> None:
    plane = default_plane
    tenant_role = plane.role("TenantRole")
    trust = plane.account.trust_policy(tenant_role)
    tagged: Context = {"aws:RequestTag/layershift:layer": LAYER, "aws:TagKeys": ["layershift:layer"]}
    chosen: Context = {
        "aws:RequestTag/layershift:layer": LAYER,
        "aws:RequestTag/layershift:managed": "true",
        "aws:TagKeys": ["layershift:layer", "layershift:managed"],
    }
    changer = plane.session("ChangeFunctionsRole", "layershift-PrepareVersionsFunction")
    publisher = plane.session("PublishLayerFunctionRole")

    def assume(session: RoleSession, context: Context, case: str, outcome: str) -> list[Expect]:
        return [
            Expect(f"{case}: {action}", session.request(plane.account, action, tenant_role, context, trust), outcome)
            for action in ("sts:AssumeRole", "sts:TagSession")
        ]

    expectations = [
        *assume(changer, tagged, "the function-changing role, tagged with the layer", ALLOWED),
        Expect(
            "the function-changing role, no session tag: sts:AssumeRole",
            changer.request(plane.account, "sts:AssumeRole", tenant_role, {}, trust),
            DENIED,
        ),
        *assume(changer, chosen, "the function-changing role, with a managed tag of its choosing", DENIED),
        *assume(operator, tagged, "a role of the account allowed sts:AssumeRole on every role", DENIED),
        *assume(publisher, tagged, "another control-plane function's role", DENIED),
    ]
    for action in MUTATIONS:
        tags = {"layershift:layer": LAYER}
        expectations.append(_mutation(plane, changer, action, tags, "the function-changing role itself", DENIED))
    _assert_met(expectations)


def test_the_build_writes_only_its_own_staging_prefix(default_plane: Plane) -> None:
    """codebuild:buildArn is set by CodeBuild on every request of the build's session; the service
    authorization reference does not list it for S3, so these requests are evaluated as given."""
    plane = default_plane
    project = f"arn:aws:codebuild:us-east-1:{plane.account.account_id}:build/{plane.stack.names['LayerBuildProject']}"
    own, other = f"{project}:11111111-1111-1111-1111-111111111111", f"{project}:22222222-2222-2222-2222-222222222222"
    build = plane.session("LayerBuildRole", "AWSCodeBuild-11111111-1111-1111-1111-111111111111")
    context: Context = {"codebuild:buildArn": own}
    expectations = [
        Expect(
            f"the build's PutObject of {key}",
            build.request(
                plane.account, "s3:PutObject", plane.object(key), context, plane.bucket_policy, context_as_given=True
            ),
            outcome,
        )
        for key, outcome in [
            (f"staging/{own}/variants.json", ALLOWED),
            (f"staging/{other}/variants.json", DENIED),
            ("staging/variants.json", DENIED),
            (f"rollouts/{LAYER}/x/plan.json", DENIED),
            (f"artifacts/{LAYER}/x/layer.zip", DENIED),
            (f"layers/{LAYER}/requirements.txt", DENIED),
        ]
    ]
    _assert_met(expectations)


def test_only_the_control_plane_writes_rollouts_and_artifacts(default_plane: Plane, pusher: RoleSession) -> None:
    plane = default_plane

    def write(session: RoleSession, action: str, key: str, case: str, outcome: str) -> Expect:
        request = session.request(plane.account, action, plane.object(key), {}, plane.bucket_policy)
        return Expect(f"{case or session.role_arn}: {action} {key}", request, outcome)

    expectations = [
        write(pusher, "s3:PutObject", f"layers/{LAYER}/requirements.txt", "a pusher pushes", ALLOWED),
        write(pusher, "s3:PutObject", f"rollouts/{LAYER}/x/plan.json", "a pusher", EXPLICITLY_DENIED),
        write(pusher, "s3:PutObject", f"artifacts/{LAYER}/x/layer.zip", "a pusher", EXPLICITLY_DENIED),
        write(pusher, "s3:DeleteObject", f"rollouts/{LAYER}/x/plan.json", "a pusher", EXPLICITLY_DENIED),
        write(pusher, "s3:DeleteObject", f"artifacts/{LAYER}/x/layer.zip", "a pusher", EXPLICITLY_DENIED),
        write(plane.session("PlanRolloutFunctionRole"), "s3:PutObject", f"rollouts/{LAYER}/x/plan.json", "", ALLOWED),
        write(plane.session("PublishLayerFunctionRole"), "s3:PutObject", f"artifacts/{LAYER}/x/layer.zip", "", ALLOWED),
    ]
    _assert_met(expectations)


def test_only_the_approver_role_may_approve(
    opt_in_plane: Plane, approver_person: str, pusher: RoleSession, operator: RoleSession
) -> None:
    plane = opt_in_plane
    approve = plane.stack.arns["ApproveRolloutFunction"]
    approver_role = plane.role("ApproverRole")
    trust = plane.account.trust_policy(approver_role)
    person = RoleSession(approver_person, "person", plane.account.account_id)

    def invoke(session: RoleSession, case: str, outcome: str) -> Expect:
        return Expect(case, session.request(plane.account, "lambda:InvokeFunction", approve), outcome)

    expectations = [
        invoke(plane.session("ApproverRole", "approver"), "the approver role invokes ApproveRollout", ALLOWED),
        invoke(pusher, "a pusher invokes ApproveRollout", DENIED),
        Expect(
            "an approver named in ApproverPrincipalArns assumes the approver role",
            person.request(plane.account, "sts:AssumeRole", approver_role, {}, trust),
            ALLOWED,
        ),
        Expect(
            "a role of the account allowed sts:AssumeRole on every role assumes the approver role",
            operator.request(plane.account, "sts:AssumeRole", approver_role, {}, trust),
            DENIED,
        ),
    ]
    others = [
        logical_id
        for logical_id, kind in plane.stack.types.items()
        if kind == "AWS::IAM::Role" and logical_id != "ApproverRole"
    ]
    assert len(others) > 20, f"the stack's roles were not found: {others}"
    expectations += [invoke(plane.session(role), f"{role} invokes ApproveRollout", DENIED) for role in others]
    _assert_met(expectations)


def test_only_the_sharing_function_changes_layer_grants_and_only_on_this_stacks_layers(default_plane: Plane) -> None:
    """[share] is granted by ShareLayerVersionsFunction alone, on the versions of <prefix><layer> names only:
    a layer of the account outside the stack's prefix cannot be made public through the control plane."""
    plane = default_plane
    sharer = plane.session("ShareLayerVersionsFunctionRole")
    publisher = plane.session("PublishLayerFunctionRole")
    own = plane.layer(f"{plane.stack.stack_name}-{LAYER}")
    outside = plane.layer("team-utils", 9)
    expectations = []
    for action in (
        "lambda:AddLayerVersionPermission",
        "lambda:RemoveLayerVersionPermission",
        "lambda:GetLayerVersionPolicy",
    ):
        expectations += [
            Expect(
                f"the sharing function, a layer of this stack: {action}",
                sharer.request(plane.account, action, own, {}),
                ALLOWED,
            ),
            Expect(
                f"the sharing function, a layer outside the stack's prefix: {action}",
                sharer.request(plane.account, action, outside, {}),
                DENIED,
            ),
            Expect(
                f"another control-plane function: {action}", publisher.request(plane.account, action, own, {}), DENIED
            ),
        ]
    _assert_met(expectations)
