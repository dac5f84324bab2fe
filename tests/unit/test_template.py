"""template.yaml: the resources, names, permissions and wiring the rest of layershift relies on."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from layershift.local.template import load_template, local_resource_names

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "template.yaml"
ASL_PATH = ROOT / "statemachines" / "rollout.asl.json"
RESTORE_ASL_PATH = ROOT / "statemachines" / "restore.asl.json"

# The contract: logical id -> function folder.
FUNCTIONS = {
    "StartRolloutFunction": "start_rollout",
    "ValidateRequestFunction": "validate_request",
    "AcquireLockFunction": "acquire_lock",
    "ReleaseLockFunction": "release_lock",
    "FindReusableBuildFunction": "find_reusable_build",
    "PublishLayerFunction": "publish_layer",
    "ShareLayerVersionsFunction": "share_layer_versions",
    "FindCandidatesFunction": "find_candidates",
    "AssessTargetsFunction": "assess_targets",
    "PlanRolloutFunction": "plan_rollout",
    "PrepareVersionsFunction": "prepare_versions",
    "RecordPreparedVersionsFunction": "record_prepared_versions",
    "ShiftAliasesFunction": "shift_aliases",
    "StartBakeFunction": "start_bake",
    "AnalyseCanaryFunction": "analyse_canary",
    "CheckHealthFunction": "check_health",
    "PromoteLayerFunction": "promote_layer",
    "RollBackFunction": "roll_back",
    "NotifyFunction": "notify",
    "WaitForSignalFunction": "wait_for_signal",
    "OnAlarmFunction": "on_alarm",
    "ReapRolloutFunction": "reap_rollout",
    "RestoreTargetsFunction": "restore_targets",
    "SummariseRestoreFunction": "summarise_restore",
    "CleanUpVersionsFunction": "clean_up_versions",
}
RESTORE_FUNCTIONS = ["RestoreTargetsFunction", "SummariseRestoreFunction"]
# Functions the rollout state machine invokes (EventBridge invokes StartRollout, OnAlarm and
# ReapRollout; the restore state machine its own two).
WORKFLOW_FUNCTIONS = sorted(
    set(FUNCTIONS)
    - {"StartRolloutFunction", "OnAlarmFunction", "ReapRolloutFunction", "CleanUpVersionsFunction", *RESTORE_FUNCTIONS}
)
CONTRACT_ENVIRONMENT = {
    "LAYERSHIFT_BUCKET",
    "LAYERSHIFT_TABLE",
    "LAYERSHIFT_TOPIC_ARN",
    "LAYERSHIFT_DEFAULT_ALIAS",
    "LAYERSHIFT_DEFAULT_RUNTIME",
    "LAYERSHIFT_DEFAULT_ARCHITECTURE",
    "LAYERSHIFT_DEFAULT_STRATEGY",
    "LAYERSHIFT_POLL_SECONDS",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOG_LEVEL",
    "LAYERSHIFT_LAMBDA_BUDGET",
    "LAYERSHIFT_GET_FUNCTION_BUDGET",
    "LAYERSHIFT_FANOUT_BATCH_SIZE",
    "LAYERSHIFT_FANOUT_CONCURRENCY",
    "LAYERSHIFT_TOLERATED_FAILURE_PERCENT",
}
LAYER_GRANT_ACTIONS = {
    "lambda:AddLayerVersionPermission",
    "lambda:RemoveLayerVersionPermission",
    "lambda:GetLayerVersionPolicy",
}
MUTATING_LAMBDA_ACTIONS = {"lambda:UpdateFunctionConfiguration", "lambda:PublishVersion", "lambda:UpdateAlias"}
# Actions that IAM only grants on Resource "*" (no resource-level permissions).
STAR_ONLY_ACTIONS = {
    "lambda:ListFunctions",
    "lambda:ListLayerVersions",
    "tag:GetResources",
    "cloudformation:DescribeStackResources",
    "cloudwatch:GetMetricData",
    "cloudwatch:GetMetricStatistics",
    "ssm:DescribeParameters",
    "states:SendTaskSuccess",
    "states:SendTaskFailure",
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(TEMPLATE_PATH)


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    return template["Resources"]


def _statements(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """Every inline policy statement of a SAM function/state machine or an IAM role."""
    props = resource["Properties"]
    found: list[dict[str, Any]] = []
    for policy in props.get("Policies", []):
        if isinstance(policy, dict) and "Fn::If" in policy:
            _, when_true, _ = policy["Fn::If"]
            policy = when_true
        if isinstance(policy, dict) and "Statement" in policy:
            found.extend(policy["Statement"])
        if isinstance(policy, dict) and "PolicyDocument" in policy:
            found.extend(policy["PolicyDocument"]["Statement"])
    return found


def _role_of(resources: dict[str, Any], logical_id: str) -> dict[str, Any]:
    """The resource holding a function's policies: the function (SAM generates its role), or the role it names."""
    role = resources[logical_id]["Properties"].get("Role")
    return resources[role["Fn::GetAtt"][0]] if role else resources[logical_id]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_template_is_sam_and_parses(template: dict[str, Any]) -> None:
    assert template["Transform"] == "AWS::Serverless-2016-10-31"
    assert template["Resources"]


@pytest.mark.parametrize(("logical_id", "folder"), sorted(FUNCTIONS.items()))
def test_every_contract_function_exists_with_its_folder(
    resources: dict[str, Any], template: dict[str, Any], logical_id: str, folder: str
) -> None:
    function = resources[logical_id]
    assert function["Type"] == "AWS::Serverless::Function"
    assert function["Properties"]["CodeUri"].rstrip("/") == f"functions/{folder}"
    assert (ROOT / "functions" / folder / "app.py").is_file(), f"functions/{folder}/app.py is missing"
    handler = function["Properties"].get("Handler", template["Globals"]["Function"].get("Handler"))
    assert handler == "app.handler"


@pytest.mark.parametrize("logical_id", sorted(FUNCTIONS))
def test_every_function_has_an_explicit_log_group_with_retention(resources: dict[str, Any], logical_id: str) -> None:
    groups = [
        resource
        for resource in resources.values()
        if resource["Type"] == "AWS::Logs::LogGroup"
        and resource["Properties"].get("LogGroupName") == {"Fn::Sub": f"/aws/lambda/${{{logical_id}}}"}
    ]
    assert len(groups) == 1, f"{logical_id} needs exactly one /aws/lambda/${{{logical_id}}} log group"
    assert groups[0]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_every_log_group_takes_its_retention_from_the_parameter(resources: dict[str, Any]) -> None:
    for logical_id, resource in resources.items():
        if resource["Type"] == "AWS::Logs::LogGroup":
            assert resource["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}, logical_id


def test_globals_carry_runtime_tracing_layer_and_contract_environment(template: dict[str, Any]) -> None:
    function_globals = template["Globals"]["Function"]
    assert function_globals["Runtime"] == "python3.13"
    assert function_globals["Architectures"] == ["x86_64"]
    assert function_globals["Tracing"] == "Active"
    assert function_globals["Timeout"] and function_globals["MemorySize"]
    assert function_globals["Layers"] == [{"Ref": "CoreLayer"}]
    assert set(function_globals["Environment"]["Variables"]) >= CONTRACT_ENVIRONMENT


def test_start_rollout_knows_the_state_machine(resources: dict[str, Any]) -> None:
    variables = resources["StartRolloutFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["LAYERSHIFT_STATE_MACHINE_ARN"] == {"Ref": "RolloutStateMachine"}


def test_no_managed_full_access_and_no_hard_coded_partition() -> None:
    text = TEMPLATE_PATH.read_text(encoding="utf-8")
    assert "FullAccess" not in text
    assert "arn:aws:" not in text, "build ARNs with ${AWS::Partition}"


def test_parameters_are_constrained(template: dict[str, Any]) -> None:
    parameters = template["Parameters"]
    for name in (
        "DefaultAlias",
        "DefaultRuntime",
        "DefaultArchitecture",
        "DefaultStrategy",
        "PollSeconds",
        "LogRetentionDays",
        "CodeCommitRepositoryName",
        "NotificationEmail",
    ):
        assert name in parameters
    for name, spec in parameters.items():
        assert {"AllowedPattern", "AllowedValues", "MinValue"} & set(spec), f"parameter {name} is unconstrained"
    assert parameters["DefaultRuntime"]["AllowedValues"] == ["python3.11", "python3.12", "python3.13"]
    assert parameters["DefaultArchitecture"]["AllowedValues"] == ["x86_64", "arm64"]
    for name in ("CodeCommitRepositoryName", "NotificationEmail"):
        assert parameters[name]["Default"] == ""
        assert re.fullmatch(parameters[name]["AllowedPattern"], "")
    strategy = parameters["DefaultStrategy"]["AllowedPattern"]
    for good in ("Canary10Percent5Minutes", "Linear10PercentEvery1Minute", "AllAtOnce"):
        assert re.fullmatch(strategy, good)
    assert not re.fullmatch(strategy, "Sometimes")


def test_optional_features_are_conditions(template: dict[str, Any], resources: dict[str, Any]) -> None:
    conditions = template["Conditions"]
    assert conditions["HasCodeCommit"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "CodeCommitRepositoryName"}, ""]}]}
    assert conditions["HasNotificationEmail"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "NotificationEmail"}, ""]}]}
    assert resources["NotificationEmailSubscription"]["Condition"] == "HasNotificationEmail"
    assert resources["CodeCommitTriggerRule"]["Condition"] == "HasCodeCommit"
    assert resources["CodeCommitTriggerPermission"]["Condition"] == "HasCodeCommit"


def test_artifact_bucket_is_versioned_encrypted_private_tls_only_and_eventbridge(resources: dict[str, Any]) -> None:
    props = resources["ArtifactBucket"]["Properties"]
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    algorithm = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert algorithm["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert props["NotificationConfiguration"] == {"EventBridgeConfiguration": {"EventBridgeEnabled": True}}
    # Lifecycle may only expire noncurrent versions: current pushed specs and artifacts are kept.
    for rule in props.get("LifecycleConfiguration", {}).get("Rules", []):
        assert not {"ExpirationInDays", "ExpirationDate", "Transitions", "Transition"} & set(rule), rule
        assert "ExpiredObjectDeleteMarker" not in rule
    policy = resources["ArtifactBucketPolicy"]["Properties"]
    assert policy["Bucket"] == {"Ref": "ArtifactBucket"}
    denies = [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    assert any(s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in denies)


def test_registry_table_and_topic(resources: dict[str, Any]) -> None:
    table = resources["RegistryTable"]["Properties"]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert resources["NotificationTopic"]["Properties"]["KmsMasterKeyId"] == {"Ref": "MessageKey"}


def test_core_layer_is_built_by_sam(resources: dict[str, Any]) -> None:
    layer = resources["CoreLayer"]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    assert layer["Properties"]["ContentUri"].rstrip("/") == "layers/core"
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.13"]
    assert layer["Metadata"]["BuildMethod"] == "python3.13"
    assert (ROOT / "layers" / "core" / "requirements.txt").is_file()


def test_layer_build_project_runs_the_build_job(resources: dict[str, Any]) -> None:
    project = resources["LayerBuildProject"]["Properties"]
    assert project["Source"]["Type"] == "NO_SOURCE"
    assert project["Artifacts"] == {"Type": "NO_ARTIFACTS"}
    assert project["Environment"]["Image"] == "aws/codebuild/amazonlinux-x86_64-standard:5.0"
    names = {variable["Name"]: variable["Value"] for variable in project["Environment"]["EnvironmentVariables"]}
    assert names == {"LAYERSHIFT_CORE_LAYER_ARN": {"Ref": "CoreLayer"}, "LAYERSHIFT_BUCKET": {"Ref": "ArtifactBucket"}}
    spec = yaml.safe_load(project["Source"]["BuildSpec"])
    assert str(spec["version"]) == "0.2"
    assert str(spec["phases"]["install"]["runtime-versions"]["python"]) == "3.13"
    install = "\n".join(spec["phases"]["install"]["commands"])
    assert "aws lambda get-layer-version-by-arn" in install and "Content.Location" in install
    build = "\n".join(spec["phases"]["build"]["commands"])
    assert "python3 -m layershift_core.builder.build_job" in build
    assert "PYTHONPATH=" in build
    assert project["LogsConfig"]["CloudWatchLogs"]["GroupName"] == {"Ref": "LayerBuildLogGroup"}


def test_layer_build_role_is_narrow(resources: dict[str, Any]) -> None:
    role = resources["LayerBuildRole"]
    statements = _statements(role)
    by_sid = {statement["Sid"]: statement for statement in statements}
    assert by_sid["OwnLogGroup"]["Resource"] == {"Fn::GetAtt": ["LayerBuildLogGroup", "Arn"]}
    assert by_sid["FetchBuilderLayer"] == {
        "Sid": "FetchBuilderLayer",
        "Effect": "Allow",
        "Action": ["lambda:GetLayerVersion"],
        "Resource": {"Ref": "CoreLayer"},
    }
    # The build runs package code: it reads the normalised requirements and writes its own staging
    # prefix only, never rollouts/* or artifacts/* (PublishLayerVersion verifies and copies).
    assert by_sid["ReadRolloutRequirements"]["Action"] == ["s3:GetObject"]
    assert json.dumps(by_sid["ReadRolloutRequirements"]["Resource"]).endswith('/rollouts/*/requirements.txt"}')
    assert by_sid["WriteOwnStaging"]["Action"] == ["s3:PutObject"]
    assert "/staging/${!codebuild:buildArn}/*" in json.dumps(by_sid["WriteOwnStaging"]["Resource"])
    writes = [s for s in statements if any(a.startswith("s3:Put") or a.startswith("s3:Delete") for a in s["Action"])]
    assert [s["Sid"] for s in writes] == ["WriteOwnStaging"]


@pytest.mark.parametrize(
    ("machine", "path", "functions", "others"),
    [
        (
            "RolloutStateMachine",
            ASL_PATH,
            WORKFLOW_FUNCTIONS,
            {
                "LayerBuildProjectName": {"Ref": "LayerBuildProject"},
                "ArtifactBucketName": {"Ref": "ArtifactBucket"},
                "RestoreStateMachineArn": {"Ref": "RestoreStateMachine"},
            },
        ),
        ("RestoreStateMachine", RESTORE_ASL_PATH, RESTORE_FUNCTIONS, {"ArtifactBucketName": {"Ref": "ArtifactBucket"}}),
    ],
)
def test_asl_placeholders_match_definition_substitutions(
    resources: dict[str, Any], machine: str, path: Path, functions: list[str], others: dict[str, Any]
) -> None:
    text = path.read_text(encoding="utf-8")
    json.loads(text)  # valid JSON before substitution
    placeholders = set(re.findall(r"\$\{([^}]+)\}", text))
    substitutions = resources[machine]["Properties"]["DefinitionSubstitutions"]
    assert placeholders == set(substitutions)
    expected = {f"{logical_id}Arn": {"Fn::GetAtt": [logical_id, "Arn"]} for logical_id in functions}
    assert substitutions == expected | others


def test_state_machine_invokes_only_its_functions_and_runs_the_build(resources: dict[str, Any]) -> None:
    machine = resources["RolloutStateMachine"]["Properties"]
    assert machine["DefinitionUri"] == "statemachines/rollout.asl.json"
    invoked = [
        policy["LambdaInvokePolicy"]["FunctionName"] for policy in machine["Policies"] if "LambdaInvokePolicy" in policy
    ]
    assert sorted(ref["Ref"] for ref in invoked) == WORKFLOW_FUNCTIONS
    statements = {statement["Sid"]: statement for statement in _statements(resources["RolloutStateMachine"])}
    assert set(statements["RunLayerBuild"]["Action"]) >= {
        "codebuild:StartBuild",
        "codebuild:StopBuild",
        "codebuild:BatchGetBuilds",
    }
    assert statements["RunLayerBuild"]["Resource"] == {"Fn::GetAtt": ["LayerBuildProject", "Arn"]}
    assert "StepFunctionsGetEventForCodeBuildStartBuildRule" in json.dumps(statements["CodeBuildSyncRule"])
    # the Map Runs start child executions of the machine itself, read their items and write their results
    assert statements["RunMapRunChildren"]["Action"] == ["states:StartExecution"]
    assert statements["RunMapRunChildren"]["Resource"]["Fn::Sub"].endswith(":stateMachine:${AWS::StackName}-rollout")
    assert machine["Name"] == {"Fn::Sub": "${AWS::StackName}-rollout"}
    assert statements["ReadMapRunItems"]["Resource"]["Fn::Sub"].endswith("/rollouts/*/items/*")
    assert statements["WriteMapRunResults"]["Resource"]["Fn::Sub"].endswith("/rollouts/*/results/*")
    assert statements["RestoreTheTargets"]["Resource"] == {"Ref": "RestoreStateMachine"}
    assert machine["Tracing"] == {"Enabled": True}
    destination = machine["Logging"]["Destinations"][0]["CloudWatchLogsLogGroup"]["LogGroupArn"]
    assert destination == {"Fn::GetAtt": ["RolloutStateMachineLogGroup", "Arn"]}


def test_s3_push_triggers_start_rollout(resources: dict[str, Any]) -> None:
    rule = resources["RolloutTriggerRule"]
    assert rule["Type"] == "AWS::Events::Rule"
    pattern = rule["Properties"]["EventPattern"]
    assert pattern["source"] == ["aws.s3"]
    assert pattern["detail-type"] == ["Object Created"]
    assert pattern["detail"]["bucket"]["name"] == [{"Ref": "ArtifactBucket"}]
    keys = pattern["detail"]["object"]["key"]
    # Only requirements.txt starts a rollout: `layershift push` uploads layer.toml first, so an
    # event for layer.toml alone would start a rollout of the old requirements.
    assert keys == [{"wildcard": "layers/*/requirements.txt"}]
    (target,) = rule["Properties"]["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["StartRolloutFunction", "Arn"]}
    permission = resources["RolloutTriggerPermission"]["Properties"]
    assert permission["Principal"] == "events.amazonaws.com"
    assert permission["FunctionName"] == {"Ref": "StartRolloutFunction"}
    assert permission["SourceArn"] == {"Fn::GetAtt": ["RolloutTriggerRule", "Arn"]}


@pytest.mark.parametrize("logical_id", sorted(FUNCTIONS))
def test_function_permissions_are_narrow(resources: dict[str, Any], logical_id: str) -> None:
    statements = _statements(_role_of(resources, logical_id))
    assert statements, f"{logical_id} has no policy statements"
    for statement in statements:
        actions = set(_as_list(statement["Action"]))
        assert all("*" not in action for action in actions), f"{logical_id}: wildcard action in {statement}"
        if statement["Resource"] == "*":
            assert actions <= STAR_ONLY_ACTIONS, f"{logical_id}: {actions - STAR_ONLY_ACTIONS} on Resource *"
        mutating = actions & MUTATING_LAMBDA_ACTIONS
        if mutating:
            assert "aws:ResourceTag/layershift:" in json.dumps(statement.get("Condition", {})), (
                f"{logical_id}: {mutating} must be limited to layershift-tagged functions"
            )
        if "lambda:PublishLayerVersion" in actions:  # only this stack's <prefix><layer> names
            template, values = statement["Resource"]["Fn::Sub"]
            assert template.endswith(":layer:${Prefix}*") and "LayerNamePrefix" in json.dumps(values)
        if actions & LAYER_GRANT_ACTIONS:  # only the versions of this stack's <prefix><layer> names
            template, values = statement["Resource"]["Fn::Sub"]
            assert template.endswith(":layer:${Prefix}*:*") and "LayerNamePrefix" in json.dumps(values)
        if "ssm:PutParameter" in actions:
            assert statement["Resource"] == {
                "Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/layershift/*"
            }


def test_outputs(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert outputs["StackName"]["Value"] == {"Ref": "AWS::StackName"}
    assert outputs["ArtifactBucketName"]["Value"] == {"Ref": "ArtifactBucket"}
    assert outputs["RegistryTableName"]["Value"] == {"Ref": "RegistryTable"}
    assert outputs["RolloutStateMachineArn"]["Value"] == {"Ref": "RolloutStateMachine"}
    assert outputs["RestoreStateMachineArn"]["Value"] == {"Ref": "RestoreStateMachine"}
    assert outputs["NotificationTopicArn"]["Value"] == {"Ref": "NotificationTopic"}
    assert outputs["CoreLayerArn"]["Value"] == {"Ref": "CoreLayer"}


def test_local_names_cover_every_unconditional_resource(template: dict[str, Any]) -> None:
    names = local_resource_names(template)
    unconditional = {lid for lid, resource in template["Resources"].items() if "Condition" not in resource}
    assert unconditional <= set(names)
    assert names["StartRolloutFunctionLogGroup"] == f"/aws/lambda/{names['StartRolloutFunction']}"
    assert names["CoreLayer"] == "layershift-core"
    generated = [lid for lid in FUNCTIONS if "Role" not in template["Resources"][lid]["Properties"]]
    assert all(f"{lid}Role" in names for lid in generated)
    assert len(names["ArtifactBucket"]) <= 63 and names["ArtifactBucket"] == names["ArtifactBucket"].lower()
    assert all(len(names[lid]) <= 64 for lid in FUNCTIONS)


def test_an_alarm_going_into_alarm_reaches_on_alarm(resources: dict[str, Any]) -> None:
    """Instant abort: every alarm state change into ALARM is delivered to OnAlarm, which may end a bake."""
    rule = resources["AlarmStateChangeRule"]
    pattern = rule["Properties"]["EventPattern"]
    assert pattern["source"] == ["aws.cloudwatch"]
    assert pattern["detail-type"] == ["CloudWatch Alarm State Change"]
    assert pattern["detail"]["state"]["value"] == ["ALARM"]
    (target,) = rule["Properties"]["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["OnAlarmFunction", "Arn"]}
    permission = resources["AlarmStateChangePermission"]["Properties"]
    assert permission["FunctionName"] == {"Ref": "OnAlarmFunction"}
    assert permission["SourceArn"] == {"Fn::GetAtt": ["AlarmStateChangeRule", "Arn"]}
    statements = resources["OnAlarmFunction"]["Properties"]["Policies"][0]["Statement"]
    ends_bake = next(s for s in statements if "states:SendTaskFailure" in s["Action"])
    assert ends_bake["Resource"] == "*"  # SendTask* have no resource-level permissions


def test_the_restore_state_machine_invokes_only_its_functions(resources: dict[str, Any]) -> None:
    machine = resources["RestoreStateMachine"]["Properties"]
    assert machine["DefinitionUri"] == "statemachines/restore.asl.json"
    invoked = [p["LambdaInvokePolicy"]["FunctionName"]["Ref"] for p in machine["Policies"] if "LambdaInvokePolicy" in p]
    assert sorted(invoked) == RESTORE_FUNCTIONS


def test_the_reaper_hears_both_state_machines_and_may_only_start_the_restore(resources: dict[str, Any]) -> None:
    pattern = resources["ExecutionEndedRule"]["Properties"]["EventPattern"]
    assert pattern["detail"]["stateMachineArn"] == [{"Ref": "RolloutStateMachine"}, {"Ref": "RestoreStateMachine"}]
    statements = {s["Sid"]: s for s in _statements(resources["ReapRolloutFunction"])}
    assert statements["RestoreTheTargets"] == {
        "Sid": "RestoreTheTargets",
        "Effect": "Allow",
        "Action": ["states:StartExecution"],
        "Resource": {"Ref": "RestoreStateMachine"},
    }
    assert not any(a.startswith("lambda:") for s in statements.values() for a in _as_list(s["Action"]))


def test_the_request_budget_is_a_share_of_lambdas_quota(template: dict[str, Any]) -> None:
    parameters = template["Parameters"]
    assert parameters["LambdaRequestsPerSecond"]["MaxValue"] == 15  # Lambda's control-plane quota
    assert parameters["LambdaRequestsPerSecond"]["Default"] < 15  # leaves room for the teams' own deploys
    assert parameters["GetFunctionRequestsPerSecond"]["MaxValue"] == 100


CHANGING_TASKS = ["PrepareVersionsFunction", "ShiftAliasesFunction", "RestoreTargetsFunction"]


@pytest.mark.parametrize("logical_id", CHANGING_TASKS)
def test_the_tasks_that_change_functions_do_so_only_as_the_tenant(resources: dict[str, Any], logical_id: str) -> None:
    """Their own role changes no function; they act as TenantRole, whose trust the session tag gates."""
    props = resources[logical_id]["Properties"]
    assert props["Role"] == {"Fn::GetAtt": ["ChangeFunctionsRole", "Arn"]}
    assert props["Environment"]["Variables"]["LAYERSHIFT_TENANT_ROLE_ARN"] == {"Fn::GetAtt": ["TenantRole", "Arn"]}
    own = {action for statement in _statements(resources["ChangeFunctionsRole"]) for action in statement["Action"]}
    assert not {action for action in own if action.startswith("lambda:")}
    (assume,) = resources["AssumeTenantRole"]["Properties"]["PolicyDocument"]["Statement"]
    assert set(assume["Action"]) == {"sts:AssumeRole", "sts:TagSession"}
    assert assume["Resource"] == {"Fn::GetAtt": ["TenantRole", "Arn"]}
    assert resources["AssumeTenantRole"]["Properties"]["Roles"] == [{"Ref": "ChangeFunctionsRole"}]


def test_the_tenant_role_changes_only_functions_opted_in_for_its_sessions_layer(resources: dict[str, Any]) -> None:
    role = resources["TenantRole"]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"AWS": {"Fn::GetAtt": ["ChangeFunctionsRole", "Arn"]}}
    assert trust["Condition"]["Null"] == {"aws:RequestTag/layershift:layer": "false"}
    assert trust["Condition"]["ForAllValues:StringEquals"] == {"aws:TagKeys": ["layershift:layer"]}
    document = role["Policies"][0]["PolicyDocument"]["Statement"]
    statements = {statement["Sid"]: statement for statement in document if "Sid" in statement}
    change = statements["ChangeFunctionsOptedInForTheLayer"]
    assert set(change["Action"]) == MUTATING_LAMBDA_ACTIONS
    tag = "${aws:PrincipalTag/layershift:layer}"
    assert change["Condition"] == {
        "StringLike": {"aws:ResourceTag/layershift:layer": [tag, f"{tag} *", f"* {tag}", f"* {tag} *"]}
    }
    (managed,) = [entry["Fn::If"] for entry in document if "Fn::If" in entry]
    assert managed[0] == "ManagedOptInAllowed" and managed[2] == {"Ref": "AWS::NoValue"}
    assert managed[1]["Condition"] == {"StringEquals": {"aws:ResourceTag/layershift:managed": "true"}}
    deny = statements["AttachOnlyKnownLayers"]
    assert deny["Effect"] == "Deny" and deny["Action"] == ["lambda:UpdateFunctionConfiguration"]
    assert "ThirdPartyLayerArns" in json.dumps(deny["Condition"]["ForAnyValue:StringNotLike"]["lambda:Layer"])
    # no other statement may change a function
    others = [s for sid, s in statements.items() if sid != change["Sid"] and s["Effect"] == "Allow"]
    assert not any(set(_as_list(s["Action"])) & MUTATING_LAMBDA_ACTIONS for s in others)


def _writers(resources: dict[str, Any], prefixes: tuple[str, ...]) -> set[str]:
    """The roles the template lets put or delete objects under any of ``prefixes`` of the bucket."""
    writers = set()
    for logical_id, resource in resources.items():
        if resource["Type"] not in ("AWS::Serverless::Function", "AWS::Serverless::StateMachine", "AWS::IAM::Role"):
            continue
        for statement in _statements(resource):
            if "Action" not in statement:  # a SAM policy template (LambdaInvokePolicy)
                continue
            writes = {"s3:PutObject", "s3:DeleteObject"} & set(_as_list(statement["Action"]))
            targets = json.dumps(statement["Resource"])
            if writes and any(f"/{prefix}/" in targets for prefix in prefixes):
                writers.add(logical_id if resource["Type"] == "AWS::IAM::Role" else f"{logical_id}Role")
    return writers


@pytest.mark.parametrize(
    ("sid", "prefixes"),
    [
        ("OnlyTheControlPlaneWritesRolloutsAndArtifacts", ("rollouts", "artifacts")),
        ("OnlyTheEndingsWriteHistory", ("history",)),
    ],
)
def test_only_the_control_plane_writes_its_records(
    resources: dict[str, Any], sid: str, prefixes: tuple[str, ...]
) -> None:
    """Every role the template lets write rollouts/, artifacts/ or history/ is exempt from the bucket's
    deny of that prefix, and no other."""
    statements = resources["ArtifactBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    deny = next(s for s in statements if s["Sid"] == sid)
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*"
    assert {"s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion"} <= set(deny["Action"])
    denied = json.dumps(deny["Resource"])
    assert all(f"/{prefix}/*" in denied for prefix in prefixes)
    exempt = {arn["Fn::GetAtt"][0] for arn in deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]}
    assert exempt == _writers(resources, prefixes)


def test_ended_rollouts_expire_after_the_retention_and_the_tasks_that_archive_them_know_it(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    """RegistryRetentionDays reaches every task that archives an ended rollout's record (the ones after
    its ending, and the reaper), and only they may write the archive."""
    parameter = template["Parameters"]["RegistryRetentionDays"]
    # a redriven execution (14 days after it ended, at most) still finds its record
    assert parameter["Type"] == "Number" and parameter["MinValue"] > 14 and parameter["Default"] == 90
    ending = {"NotifyFunction", "ReleaseLockFunction", "ReapRolloutFunction"}
    for logical_id in ending:
        variables = resources[logical_id]["Properties"]["Environment"]["Variables"]
        assert variables["LAYERSHIFT_REGISTRY_RETENTION_DAYS"] == {"Ref": "RegistryRetentionDays"}, logical_id
    assert _writers(resources, ("history",)) == {f"{logical_id}Role" for logical_id in ending}


# ---------------------------------------------------------------------------------------- hardening


def _of_type(resources: dict[str, Any], *types: str) -> dict[str, dict[str, Any]]:
    return {lid: resource for lid, resource in resources.items() if resource["Type"] in types}


def _key_statement_for(resources: dict[str, Any], key_ref: Any, service: str) -> dict[str, Any]:
    """The statement of the key ``key_ref`` names that lets ``service`` encrypt for it."""
    assert isinstance(key_ref, dict) and set(key_ref) == {"Ref"}, f"{key_ref} is not a key of this stack"
    key = resources[key_ref["Ref"]]
    assert key["Type"] == "AWS::KMS::Key"
    statements = key["Properties"]["KeyPolicy"]["Statement"]
    (statement,) = [s for s in statements if s["Principal"] == {"Service": service}]
    assert statement["Effect"] == "Allow"
    assert {"kms:Decrypt"} <= set(_as_list(statement["Action"]))
    assert any(a.startswith("kms:GenerateDataKey") for a in _as_list(statement["Action"]))
    return statement


def test_every_rule_target_has_a_dead_letter_queue_that_an_alarm_watches(resources: dict[str, Any]) -> None:
    """An event EventBridge cannot deliver lands in an encrypted queue, kept 14 days, whose first
    message raises an alarm on the notification topic."""
    rules = _of_type(resources, "AWS::Events::Rule")
    assert set(rules) >= {"RolloutTriggerRule", "AlarmStateChangeRule", "ExecutionEndedRule", "CodeCommitTriggerRule"}
    alarms = _of_type(resources, "AWS::CloudWatch::Alarm")
    for rule_id, rule in rules.items():
        for target in rule["Properties"]["Targets"]:
            dead_letter = target.get("DeadLetterConfig", {}).get("Arn")
            assert dead_letter, f"{rule_id} target {target['Id']} has no DeadLetterConfig"
            queue_id, attribute = dead_letter["Fn::GetAtt"]
            assert attribute == "Arn" and resources[queue_id]["Type"] == "AWS::SQS::Queue"
            queue = resources[queue_id]["Properties"]
            assert queue["MessageRetentionPeriod"] == 1209600
            encrypted = queue.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in queue
            assert encrypted, f"{queue_id} is not encrypted"
            if "KmsMasterKeyId" in queue:  # EventBridge needs the key's grant to send
                _key_statement_for(resources, queue["KmsMasterKeyId"], "events.amazonaws.com")
            watching = [
                alarm["Properties"]
                for alarm in alarms.values()
                if alarm["Properties"]["Namespace"] == "AWS/SQS"
                and alarm["Properties"]["MetricName"] == "ApproximateNumberOfMessagesVisible"
                and alarm["Properties"]["Dimensions"]
                == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [queue_id, "QueueName"]}}]
            ]
            assert len(watching) == 1, f"{queue_id} needs one alarm on ApproximateNumberOfMessagesVisible"
            (alarm,) = watching
            assert alarm["ComparisonOperator"] == "GreaterThanThreshold" and alarm["Threshold"] == 0
            assert alarm["TreatMissingData"] == "notBreaching"
            assert {"Ref": "NotificationTopic"} in alarm["AlarmActions"]


def test_the_alarm_can_reach_the_topic(resources: dict[str, Any]) -> None:
    """CloudWatch cannot publish to a topic under the AWS managed key aws/sns: the topic's key must
    grant it, or the dead-letter alarm would never notify."""
    key_ref = resources["NotificationTopic"]["Properties"]["KmsMasterKeyId"]
    assert key_ref != "alias/aws/sns"
    statement = _key_statement_for(resources, key_ref, "cloudwatch.amazonaws.com")
    assert statement["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    key = resources[key_ref["Ref"]]["Properties"]
    assert key["EnableKeyRotation"] is True
    # the wildcard statement is the AWS managed keys' own: this account only, through SNS or SQS only
    (anyone,) = [s for s in key["KeyPolicy"]["Statement"] if s["Principal"] == {"AWS": "*"}]
    condition = anyone["Condition"]["StringEquals"]
    assert condition["kms:CallerAccount"] == {"Ref": "AWS::AccountId"}
    assert {json.dumps(service) for service in condition["kms:ViaService"]} == {
        json.dumps({"Fn::Sub": "sns.${AWS::Region}.${AWS::URLSuffix}"}),
        json.dumps({"Fn::Sub": "sqs.${AWS::Region}.${AWS::URLSuffix}"}),
    }


def test_only_the_stacks_rules_may_send_to_the_dead_letter_queue(resources: dict[str, Any]) -> None:
    rules = _of_type(resources, "AWS::Events::Rule")
    queues = {
        target["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0]
        for rule in rules.values()
        for target in rule["Properties"]["Targets"]
    }
    for queue_id in queues:
        policies = [
            policy["Properties"]
            for policy in _of_type(resources, "AWS::SQS::QueuePolicy").values()
            if {"Ref": queue_id} in policy["Properties"]["Queues"]
        ]
        assert len(policies) == 1, f"{queue_id} needs one queue policy"
        (statement,) = policies[0]["PolicyDocument"]["Statement"]
        assert statement["Effect"] == "Allow"
        assert statement["Principal"] == {"Service": "events.amazonaws.com"}
        assert _as_list(statement["Action"]) == ["sqs:SendMessage"]
        assert statement["Resource"] == {"Fn::GetAtt": [queue_id, "Arn"]}
        sources = statement["Condition"]["ArnEquals"]["aws:SourceArn"]
        expected = []
        for rule_id, rule in rules.items():
            arn = {"Fn::GetAtt": [rule_id, "Arn"]}
            condition = rule.get("Condition")
            expected.append({"Fn::If": [condition, arn, {"Ref": "AWS::NoValue"}]} if condition else arn)
        assert sorted(map(json.dumps, sources)) == sorted(map(json.dumps, expected))


def test_functions_the_rules_invoke_keep_what_they_fail_on(resources: dict[str, Any]) -> None:
    """EventBridge invokes its targets asynchronously: what a function still fails on after Lambda's
    retries goes to the same dead-letter queue (the rule's DeadLetterConfig covers only delivery)."""
    for rule in _of_type(resources, "AWS::Events::Rule").values():
        for target in rule["Properties"]["Targets"]:
            function_id = target["Arn"]["Fn::GetAtt"][0]
            dead_letter = resources[function_id]["Properties"].get("DeadLetterQueue")
            assert dead_letter == {"Type": "SQS", "TargetArn": target["DeadLetterConfig"]["Arn"]}, function_id


def test_the_alarm_rule_hears_only_this_account(resources: dict[str, Any]) -> None:
    pattern = resources["AlarmStateChangeRule"]["Properties"]["EventPattern"]
    assert pattern["account"] == [{"Ref": "AWS::AccountId"}]


def test_no_state_machine_logs_its_execution_data(resources: dict[str, Any]) -> None:
    """Task tokens travel in the execution data: it never goes to CloudWatch Logs."""
    machines = _of_type(resources, "AWS::Serverless::StateMachine", "AWS::StepFunctions::StateMachine")
    assert set(machines) >= {"RolloutStateMachine", "RestoreStateMachine"}
    for logical_id, machine in machines.items():
        logging = machine["Properties"].get("Logging") or machine["Properties"].get("LoggingConfiguration")
        assert logging is not None, f"{logical_id} has no logging"
        assert logging["IncludeExecutionData"] is False, logical_id


def test_every_log_group_is_retained(resources: dict[str, Any]) -> None:
    groups = _of_type(resources, "AWS::Logs::LogGroup")
    assert len(groups) >= len(FUNCTIONS) + 3
    for logical_id, group in groups.items():
        assert group.get("DeletionPolicy") == "Retain", logical_id
        assert group.get("UpdateReplacePolicy") == "Retain", logical_id


def test_the_registry_table_cannot_be_deleted_by_accident(resources: dict[str, Any]) -> None:
    table = resources["RegistryTable"]
    assert table["Properties"]["DeletionProtectionEnabled"] is True
    assert table["DeletionPolicy"] == "Retain" and table["UpdateReplacePolicy"] == "Retain"


def test_every_suppression_says_why(resources: dict[str, Any]) -> None:
    """A checkov finding is fixed, or skipped on its resource with its reason (make lint runs checkov)."""
    for logical_id, resource in resources.items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert re.fullmatch(r"CKV2?_AWS_[0-9]+", skip["id"]), f"{logical_id}: {skip}"
            assert len(skip.get("comment", "")) > 40, f"{logical_id}: {skip['id']} needs its reason"


def _emitted_metrics() -> set[str]:
    """Every metric name the control plane's code emits (``emit`` or Powertools' ``add_metric``)."""
    source = "\n".join(path.read_text() for path in (ROOT / "layers" / "core" / "layershift_core").glob("*.py"))
    return set(re.findall(r'emit\(\s*"(\w+)"', source)) | set(re.findall(r'add_metric\(name="(\w+)"', source))


def _rendered_dashboard(resources: dict[str, Any]) -> dict[str, Any]:
    """The dashboard body with each ${...} substitution replaced by a placeholder: it must be JSON."""
    body = resources["ControlPlaneDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    names = set(re.findall(r"\$\{([^}]+)\}", body))
    for name in names:
        assert name.split(".")[0] in resources or name.startswith("AWS::"), f"${{{name}}} names nothing"
    return json.loads(re.sub(r"\$\{([^}]+)\}", lambda m: f"SUB-{m.group(1)}", body))


def test_the_dashboard_is_json_and_shows_only_metrics_the_code_emits(resources: dict[str, Any]) -> None:
    dashboard = _rendered_dashboard(resources)
    ours = set()
    for widget in dashboard["widgets"]:
        for line in widget["properties"].get("metrics", []):
            if isinstance(line[0], str) and line[0] == "Layershift":
                ours.add(line[1])
            elif isinstance(line[0], dict) and "Layershift" in line[0]["expression"]:
                ours.update(re.findall(r'MetricName=\\?"(\w+)', line[0]["expression"]))
    assert ours == {
        "Rollouts",
        "PhaseDuration",
        "FunctionsMoved",
        "ThrottlesAbsorbed",
        "ExecutionsUnfinished",
        "RollbackIncomplete",
        "PromotedVersion",
    }
    assert ours <= _emitted_metrics(), f"not emitted by any code: {ours - _emitted_metrics()}"
    alarm_widget = dashboard["widgets"][-1]["properties"]["alarms"]
    alarms = [lid for lid, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"]
    assert sorted(alarm_widget) == sorted(f"SUB-{lid}.Arn" for lid in alarms)


def test_every_control_plane_alarm_notifies_the_topic_on_a_metric_that_exists(resources: dict[str, Any]) -> None:
    alarms = {lid: r["Properties"] for lid, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    assert sorted(alarms) == [
        "ReaperErrorsAlarm",
        "RollbackIncompleteAlarm",
        "TriggerDeadLetterAlarm",
        "UnfinishedExecutionAlarm",
    ]
    for lid, props in alarms.items():
        assert props["AlarmActions"] == [{"Ref": "NotificationTopic"}], lid
        assert (props["ComparisonOperator"], props["Threshold"]) == ("GreaterThanThreshold", 0), lid
        assert props["TreatMissingData"] == "notBreaching", lid
        if props["Namespace"] == "Layershift":
            assert props["MetricName"] in _emitted_metrics(), lid
            assert "Dimensions" not in props, f"{lid}: emit() sends these metrics without dimensions"
    assert alarms["ReaperErrorsAlarm"]["Dimensions"] == [
        {"Name": "FunctionName", "Value": {"Ref": "ReapRolloutFunction"}}
    ]


def test_every_function_that_publishes_a_notification_may_publish_to_the_topic(resources: dict[str, Any]) -> None:
    publishers = {
        "ValidateRequestFunction",
        "PublishLayerFunction",
        "CheckHealthFunction",
        "WaitForSignalFunction",
        "NotifyFunction",
        "ReapRolloutFunction",
    }
    for lid, resource in resources.items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        statements = [s for policy in resource["Properties"].get("Policies", []) for s in policy.get("Statement", [])]
        publishes = [s for s in statements if "sns:Publish" in s["Action"]]
        if lid in publishers:
            assert [s["Resource"] for s in publishes] == [{"Ref": "NotificationTopic"}], lid
        else:
            assert not publishes, f"{lid} publishes nothing"
