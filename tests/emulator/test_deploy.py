"""The template and the local deployment agree: every resource of template.yaml exists locally,
under the name the deployer promises, configured as the template says.

The first run builds the CoreLayer's dependencies from PyPI; later runs reuse the cache in
``.layershift/cache`` (``LAYERSHIFT_CACHE_DIR``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from layershift.local.deploy import DeployedStack, UnsupportedResource, deploy_control_plane
from layershift.local.server import LocalAws
from layershift.local.template import TemplateError, load_template, local_resource_names

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(ROOT / "template.yaml")


@pytest.fixture(scope="module")
def stack(aws: LocalAws) -> Iterator[DeployedStack]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAYERSHIFT_CACHE_DIR", str(ROOT / ".layershift" / "cache"))
        yield deploy_control_plane(aws, ROOT)


def test_every_resource_has_the_promised_name(stack: DeployedStack, template: dict[str, Any]) -> None:
    assert stack.names == local_resource_names(template)
    conditional = {lid for lid, resource in template["Resources"].items() if "Condition" in resource}
    # Defaults switch the optional features off, but for the daily usage report (UsageReportSchedule).
    on_by_default = {"ReportUsageRule", "ReportUsagePermission"}
    assert set(stack.skipped_by_condition) == conditional - on_by_default


def _check_bucket(aws: LocalAws, stack: DeployedStack, lid: str) -> None:
    s3, name = aws.client("s3"), stack.names[lid]
    assert s3.get_bucket_versioning(Bucket=name)["Status"] == "Enabled"
    rule = s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert all(s3.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"].values())
    _assert_object_created_reaches_eventbridge(aws, name)
    (lifecycle,) = s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]
    assert "NoncurrentVersionExpiration" in lifecycle and "Expiration" not in lifecycle


def _assert_object_created_reaches_eventbridge(aws: LocalAws, bucket: str) -> None:
    """EventBridge notifications are on: an upload (outside layers/) reaches a probe rule's queue."""
    sqs, events = aws.client("sqs"), aws.client("events")
    queue_url = sqs.create_queue(QueueName="bucket-events-probe")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    pattern = {"source": ["aws.s3"], "detail-type": ["Object Created"], "detail": {"bucket": {"name": [bucket]}}}
    events.put_rule(Name="bucket-events-probe", EventPattern=json.dumps(pattern))
    events.put_targets(Rule="bucket-events-probe", Targets=[{"Id": "queue", "Arn": queue_arn}])
    aws.client("s3").put_object(Bucket=bucket, Key="probe/hello.txt", Body=b"hello")
    messages = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=5).get("Messages", [])
    assert messages, "no Object Created event reached EventBridge"
    assert json.loads(messages[0]["Body"])["detail"]["object"]["key"] == "probe/hello.txt"


def _check_bucket_policy(aws: LocalAws, stack: DeployedStack, lid: str) -> None:
    # Every statement is a conditional deny, which the local S3 would apply to everyone: each is kept
    # for the IAM evaluation, and named as not applied.
    bucket = stack.names["ArtifactBucket"]
    sids = [statement["Sid"] for statement in stack.bucket_policies[bucket]["Statement"]]
    assert sids == [
        "DenyInsecureTransport",
        "OnlyTheControlPlaneWritesRolloutsAndArtifacts",
        "OnlyTheEndingsWriteHistory",
    ]
    assert all(sid in stack.local_adaptations[lid] for sid in sids)


def _check_table(aws: LocalAws, stack: DeployedStack, lid: str) -> None:
    ddb, name = aws.client("dynamodb"), stack.names[lid]
    table = ddb.describe_table(TableName=name)["Table"]
    assert [key["AttributeName"] for key in table["KeySchema"]] == ["pk", "sk"]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    ttl = ddb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "expires_at" and ttl["TimeToLiveStatus"] == "ENABLED"
    assert table["DeletionProtectionEnabled"] is True


def _check_topic(aws: LocalAws, stack: DeployedStack, lid: str) -> None:
    attributes = aws.client("sns").get_topic_attributes(TopicArn=stack.physical_ids[lid])["Attributes"]
    assert attributes["KmsMasterKeyId"] == stack.physical_ids["MessageKey"]


def _check_key(aws: LocalAws, stack: DeployedStack, lid: str) -> None:
    kms, key_id = aws.client("kms"), stack.physical_ids[lid]
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"] == stack.arns[lid]
    assert kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is True
    policy = json.loads(kms.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"])
    services = {s["Principal"]["Service"] for s in policy["Statement"] if "Service" in s["Principal"]}
    assert services == {"cloudwatch.amazonaws.com", "events.amazonaws.com"}


def _check_queue(aws: LocalAws, stack: DeployedStack, lid: str) -> None:
    attributes = aws.client("sqs").get_queue_attributes(QueueUrl=stack.physical_ids[lid], AttributeNames=["All"])[
        "Attributes"
    ]
    assert attributes["QueueArn"] == stack.arns[lid]
    assert attributes["MessageRetentionPeriod"] == "1209600"
    assert attributes["KmsMasterKeyId"] == stack.physical_ids["MessageKey"]


def _check_queue_policy(aws: LocalAws, stack: DeployedStack, lid: str) -> None:
    queue = stack.physical_ids["TriggerDeadLetterQueue"]
    policy = aws.client("sqs").get_queue_attributes(QueueUrl=queue, AttributeNames=["Policy"])["Attributes"]["Policy"]
    (statement,) = json.loads(policy)["Statement"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    rules = [stack.arns[rule] for rule, rtype in stack.types.items() if rtype == "AWS::Events::Rule"]
    assert sorted(statement["Condition"]["ArnEquals"]["aws:SourceArn"]) == sorted(rules)


# Each alarm's metric, with its dimensions as the local deploy resolved them.
ALARM_METRICS: dict[str, Callable[[DeployedStack], tuple[str, str, list[dict[str, str]]]]] = {
    "TriggerDeadLetterAlarm": lambda stack: (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        [{"Name": "QueueName", "Value": stack.names["TriggerDeadLetterQueue"]}],
    ),
    "UnfinishedExecutionAlarm": lambda stack: ("Layershift", "ExecutionsUnfinished", []),
    "RollbackIncompleteAlarm": lambda stack: ("Layershift", "RollbackIncomplete", []),
    "ReaperErrorsAlarm": lambda stack: (
        "AWS/Lambda",
        "Errors",
        [{"Name": "FunctionName", "Value": stack.physical_ids["ReapRolloutFunction"]}],
    ),
}


def _check_alarm(aws: LocalAws, stack: DeployedStack, lid: str) -> None:
    (alarm,) = aws.client("cloudwatch").describe_alarms(AlarmNames=[stack.names[lid]])["MetricAlarms"]
    assert alarm["AlarmArn"] == stack.arns[lid]
    namespace, metric, dimensions = ALARM_METRICS[lid](stack)
    assert (alarm["Namespace"], alarm["MetricName"]) == (namespace, metric)
    assert alarm.get("Dimensions", []) == dimensions
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0.0)
    assert alarm["AlarmActions"] == [stack.physical_ids["NotificationTopic"]]


def _check_dashboard(aws: LocalAws, stack: DeployedStack, lid: str) -> None:
    dashboard = aws.client("cloudwatch").get_dashboard(DashboardName=stack.names[lid])
    assert dashboard["DashboardName"] == "layershift-rollouts"
    body = json.loads(dashboard["DashboardBody"])  # the resolved !Sub is JSON
    titles = [widget["properties"]["title"] for widget in body["widgets"]]
    assert titles == [
        "Rollouts by outcome",
        "Seconds per phase (average per rollout)",
        "Functions moved and throttles absorbed",
        "Control-plane errors",
        "Promoted version per layer",
        "Control-plane alarms",
    ]
    text = json.dumps(body)
    assert "${" not in text, "an unresolved substitution"
    assert stack.physical_ids["RolloutStateMachine"] in text and stack.names["TriggerDeadLetterQueue"] in text
    alarms = body["widgets"][-1]["properties"]["alarms"]
    assert alarms == [stack.arns[a] for a in ALARM_METRICS if a != "TriggerDeadLetterAlarm"] + [
        stack.arns["TriggerDeadLetterAlarm"]
    ]


def _check_log_group(aws: LocalAws, stack: DeployedStack, lid: str) -> None:
    name = stack.names[lid]
    groups = aws.client("logs").describe_log_groups(logGroupNamePrefix=name)["logGroups"]
    (group,) = [group for group in groups if group["logGroupName"] == name]
    assert group["retentionInDays"] == int(stack.parameters["LogRetentionDays"])


def _check_role(aws: LocalAws, stack: DeployedStack, lid: str) -> None:
    assert aws.client("iam").get_role(RoleName=stack.names[lid])["Role"]["Arn"] == stack.arns[lid]


def _check_policy(aws: LocalAws, stack: DeployedStack, lid: str) -> None:
    """An AWS::IAM::Policy is an inline policy of the template's roles it names."""
    iam, name = aws.client("iam"), stack.names[lid]
    holders = [
        role
        for role_id, rtype in stack.types.items()
        if rtype == "AWS::IAM::Role"
        for role in [stack.names[role_id]]
        if name in iam.list_role_policies(RoleName=role)["PolicyNames"]
    ]
    assert holders, f"no role of the stack has the policy {name}"


def _check_layer(aws: LocalAws, stack: DeployedStack, lid: str) -> None:
    versions = aws.client("lambda").list_layer_versions(LayerName=stack.names[lid])["LayerVersions"]
    assert stack.physical_ids[lid] in [version["LayerVersionArn"] for version in versions]


def _check_project(aws: LocalAws, stack: DeployedStack, lid: str) -> None:
    (project,) = aws.client("codebuild").batch_get_projects(names=[stack.names[lid]])["projects"]
    assert project["source"]["type"] == "NO_SOURCE"
    assert "layershift_core.builder.build_job" in project["source"]["buildspec"]
    variables = {v["name"]: v["value"] for v in project["environment"]["environmentVariables"]}
    assert variables == {
        "LAYERSHIFT_CORE_LAYER_ARN": stack.physical_ids["CoreLayer"],
        "LAYERSHIFT_BUCKET": stack.names["ArtifactBucket"],
    }
    assert project["serviceRole"] == stack.arns["LayerBuildRole"]


def _check_state_machine(aws: LocalAws, stack: DeployedStack, lid: str) -> None:
    machine = aws.client("stepfunctions").describe_state_machine(stateMachineArn=stack.physical_ids[lid])
    definition = machine["definition"]
    assert "${" not in definition
    json.loads(definition)
    functions = {
        "RolloutStateMachine": ("ValidateRequestFunction", "PlanRolloutFunction", "RollBackFunction"),
        "RestoreStateMachine": ("RestoreTargetsFunction", "SummariseRestoreFunction"),
    }[lid]
    for function in functions:
        assert stack.arns[function] in definition
    assert stack.names["ArtifactBucket"] in definition
    if lid == "RolloutStateMachine":
        assert stack.names["LayerBuildProject"] in definition
        assert stack.physical_ids["RestoreStateMachine"] in definition
    assert machine["roleArn"] == stack.arns[f"{lid}Role"]


def _check_function(aws: LocalAws, stack: DeployedStack, lid: str) -> None:
    config = aws.client("lambda").get_function_configuration(FunctionName=stack.names[lid])
    assert config["Handler"] == "app.handler"
    assert config["Runtime"] == "python3.13"
    assert [layer["Arn"] for layer in config["Layers"]] == [stack.physical_ids["CoreLayer"]]
    variables = config["Environment"]["Variables"]
    assert variables["LAYERSHIFT_BUCKET"] == stack.names["ArtifactBucket"]
    assert variables["LAYERSHIFT_TABLE"] == stack.names["RegistryTable"]
    assert variables["LAYERSHIFT_TOPIC_ARN"] == stack.physical_ids["NotificationTopic"]
    assert variables["LAYERSHIFT_POLL_SECONDS"] == stack.parameters["PollSeconds"]
    if lid == "StartRolloutFunction":
        assert variables["LAYERSHIFT_STATE_MACHINE_ARN"] == stack.physical_ids["RolloutStateMachine"]
    assert config["Role"] == stack.arns.get(f"{lid}Role", stack.arns["ChangeFunctionsRole"])
    if "LAYERSHIFT_TENANT_ROLE_ARN" in variables:
        assert variables["LAYERSHIFT_TENANT_ROLE_ARN"] == stack.arns["TenantRole"]
    if lid in set(RULE_TARGETS.values()):
        # SAM's own grant for the function's DeadLetterQueue; the emulated Lambda drops the setting
        document = aws.client("iam").get_role_policy(
            RoleName=stack.names[f"{lid}Role"], PolicyName="DeadLetterQueuePolicy"
        )
        assert document["PolicyDocument"]["Statement"] == [
            {"Action": "sqs:SendMessage", "Resource": stack.arns["TriggerDeadLetterQueue"], "Effect": "Allow"}
        ]
        assert "DeadLetterConfig" in config or "DeadLetterConfig" in stack.local_adaptations[lid]


# rule (or its permission) -> the function it invokes
RULE_TARGETS = {
    "RolloutTriggerRule": "StartRolloutFunction",
    "ReportUsageRule": "ReportUsageFunction",
    "ReportUsagePermission": "ReportUsageFunction",
    "RolloutTriggerPermission": "StartRolloutFunction",
    "AlarmStateChangeRule": "OnAlarmFunction",
    "AlarmStateChangePermission": "OnAlarmFunction",
    "ExecutionEndedRule": "ReapRolloutFunction",
    "ExecutionEndedPermission": "ReapRolloutFunction",
}


def _check_rule(aws: LocalAws, stack: DeployedStack, lid: str) -> None:
    events = aws.client("events")
    rule = events.describe_rule(Name=stack.names[lid])
    if lid == "ReportUsageRule":  # a schedule, not a pattern
        assert rule["ScheduleExpression"] == "rate(1 day)" and "EventPattern" not in rule
    else:
        _check_pattern(aws, stack, lid, json.loads(rule["EventPattern"]))
    (target,) = events.list_targets_by_rule(Rule=stack.names[lid])["Targets"]
    assert target["Arn"] == stack.arns[RULE_TARGETS[lid]]
    assert target["DeadLetterConfig"] == {"Arn": stack.arns["TriggerDeadLetterQueue"]}


def _check_pattern(aws: LocalAws, stack: DeployedStack, lid: str, pattern: dict[str, Any]) -> None:
    if lid == "RolloutTriggerRule":
        assert pattern["detail"]["bucket"]["name"] == [stack.names["ArtifactBucket"]]
    elif lid == "ExecutionEndedRule":
        assert pattern["detail-type"] == ["Step Functions Execution Status Change"]
        assert pattern["detail"]["stateMachineArn"] == [
            stack.physical_ids["RolloutStateMachine"],
            stack.physical_ids["RestoreStateMachine"],
        ]
    else:
        assert pattern["detail-type"] == ["CloudWatch Alarm State Change"]
        assert pattern["account"] == [aws.account_id]


def _check_permission(aws: LocalAws, stack: DeployedStack, lid: str) -> None:
    function = stack.names[RULE_TARGETS[lid]]
    policy = json.loads(aws.client("lambda").get_policy(FunctionName=function)["Policy"])
    (statement,) = [s for s in policy["Statement"] if s["Sid"] == stack.names[lid]]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}


CHECKS: dict[str, Callable[[LocalAws, DeployedStack, str], None]] = {
    "AWS::S3::Bucket": _check_bucket,
    "AWS::S3::BucketPolicy": _check_bucket_policy,
    "AWS::DynamoDB::Table": _check_table,
    "AWS::SNS::Topic": _check_topic,
    "AWS::KMS::Key": _check_key,
    "AWS::SQS::Queue": _check_queue,
    "AWS::SQS::QueuePolicy": _check_queue_policy,
    "AWS::CloudWatch::Alarm": _check_alarm,
    "AWS::CloudWatch::Dashboard": _check_dashboard,
    "AWS::Logs::LogGroup": _check_log_group,
    "AWS::IAM::Role": _check_role,
    "AWS::IAM::Policy": _check_policy,
    "AWS::Serverless::LayerVersion": _check_layer,
    "AWS::CodeBuild::Project": _check_project,
    "AWS::Serverless::StateMachine": _check_state_machine,
    "AWS::Serverless::Function": _check_function,
    "AWS::Events::Rule": _check_rule,
    "AWS::Lambda::Permission": _check_permission,
}


def test_every_template_resource_exists_locally(aws: LocalAws, stack: DeployedStack) -> None:
    missing_checks = {rtype for rtype in stack.types.values()} - set(CHECKS)
    assert not missing_checks, f"add a local existence check for {missing_checks}"
    for lid, rtype in stack.types.items():
        CHECKS[rtype](aws, stack, lid)


def test_outputs_resolve_to_the_local_resources(stack: DeployedStack) -> None:
    assert stack.outputs == {
        "StackName": "layershift",
        "ArtifactBucketName": stack.names["ArtifactBucket"],
        "RegistryTableName": stack.names["RegistryTable"],
        "RolloutStateMachineArn": stack.physical_ids["RolloutStateMachine"],
        "RestoreStateMachineArn": stack.physical_ids["RestoreStateMachine"],
        "NotificationTopicArn": stack.physical_ids["NotificationTopic"],
        "CoreLayerArn": stack.physical_ids["CoreLayer"],
        "LayerBuildProjectName": stack.names["LayerBuildProject"],
        "LayerNamePrefix": "layershift-",
        "ApproveRolloutFunctionName": stack.physical_ids["ApproveRolloutFunction"],
        "TriggerDeadLetterQueueUrl": stack.physical_ids["TriggerDeadLetterQueue"],
        "TriggerDeadLetterQueueArn": stack.arns["TriggerDeadLetterQueue"],
        "LambdaRequestsPerSecond": "10",
    }


def test_every_rule_target_dead_letters_to_a_queue_an_alarm_watches(aws: LocalAws, stack: DeployedStack) -> None:
    """The deployed rules keep their targets' DeadLetterConfig, and the queue it names has the alarm
    that notifies the topic."""
    events, cloudwatch = aws.client("events"), aws.client("cloudwatch")
    rules = [lid for lid, rtype in stack.types.items() if rtype == "AWS::Events::Rule"]
    assert sorted(rules) == ["AlarmStateChangeRule", "ExecutionEndedRule", "ReportUsageRule", "RolloutTriggerRule"]
    queues = set()
    for rule in rules:
        for target in events.list_targets_by_rule(Rule=stack.names[rule])["Targets"]:
            queues.add(target["DeadLetterConfig"]["Arn"])
    assert queues == {stack.arns["TriggerDeadLetterQueue"]}
    alarms = cloudwatch.describe_alarms(AlarmNamePrefix=f"{stack.stack_name}-")["MetricAlarms"]
    watching = [
        alarm
        for alarm in alarms
        if alarm["MetricName"] == "ApproximateNumberOfMessagesVisible"
        and alarm["Dimensions"] == [{"Name": "QueueName", "Value": stack.names["TriggerDeadLetterQueue"]}]
    ]
    assert [alarm["AlarmActions"] for alarm in watching] == [[stack.physical_ids["NotificationTopic"]]]


def test_roles_carry_the_template_policies(aws: LocalAws, stack: DeployedStack) -> None:
    iam = aws.client("iam")

    def documents(role: str) -> list[str]:
        return [
            json.dumps(iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"])
            for name in iam.list_role_policies(RoleName=role)["PolicyNames"]
        ]

    tenant = documents(stack.names["TenantRole"])
    assert any("${aws:PrincipalTag/layershift:layer} *" in document for document in tenant)
    assert not any("layershift:managed" in document for document in tenant)  # AllowManagedOptIn is off
    changer = stack.names["ChangeFunctionsRole"]
    assert any(stack.arns["TenantRole"] in document for document in documents(changer))
    attached = {p["PolicyName"] for p in iam.list_attached_role_policies(RoleName=changer)["AttachedPolicies"]}
    assert attached == {"AWSLambdaBasicExecutionRole", "AWSXrayWriteOnlyAccess"}


def _write_project(root: Path, resources: str, parameters: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "template.yaml").write_text(
        "AWSTemplateFormatVersion: '2010-09-09'\n" + parameters + "Resources:\n" + resources, encoding="utf-8"
    )
    return root


def test_a_resource_type_that_cannot_be_created_locally_raises(aws: LocalAws, tmp_path: Path) -> None:
    root = _write_project(
        tmp_path / "vpc", "  Network:\n    Type: AWS::EC2::VPC\n    Properties: {CidrBlock: 10.0.0.0/16}\n"
    )
    with pytest.raises(UnsupportedResource, match=r"Network \(AWS::EC2::VPC\)"):
        deploy_control_plane(aws, root, stack_name="unsupported")


def test_an_unknown_property_raises_instead_of_being_dropped(aws: LocalAws, tmp_path: Path) -> None:
    root = _write_project(
        tmp_path / "table",
        "  Things:\n    Type: AWS::SNS::Topic\n    Properties:\n      FifoTopic: true\n",
    )
    with pytest.raises(UnsupportedResource, match=r"Things \(AWS::SNS::Topic\).*FifoTopic"):
        deploy_control_plane(aws, root, stack_name="unknown-property")


def test_parameters_are_validated_and_conditions_evaluated(aws: LocalAws, tmp_path: Path) -> None:
    parameters = (
        "Parameters:\n"
        "  Email: {Type: String, Default: '', AllowedPattern: '^$|^[^@]+@[^@]+$'}\n"
        "Conditions:\n"
        "  HasEmail: !Not [!Equals [!Ref Email, '']]\n"
    )
    resources = (
        "  Topic:\n    Type: AWS::SNS::Topic\n    Properties:\n"
        "      DisplayName: !If [HasEmail, !Sub 'mail ${Email}', !Ref AWS::NoValue]\n"
        "  Subscription:\n    Type: AWS::SNS::Subscription\n    Condition: HasEmail\n    Properties:\n"
        "      TopicArn: !Ref Topic\n      Protocol: email\n      Endpoint: !Ref Email\n"
    )
    root = _write_project(tmp_path / "conditions", resources, parameters)
    with pytest.raises(TemplateError, match="Email"):
        deploy_control_plane(aws, root, stack_name="bad-email", parameters={"Email": "not-an-address"})
    without = deploy_control_plane(aws, root, stack_name="no-email")
    assert without.skipped_by_condition == {"Subscription": "HasEmail"}
    with_email = deploy_control_plane(aws, root, stack_name="with-email", parameters={"Email": "ops@example.com"})
    assert "Subscription" in with_email.physical_ids
    attributes = aws.client("sns").get_topic_attributes(TopicArn=with_email.physical_ids["Topic"])["Attributes"]
    assert attributes["DisplayName"] == "mail ops@example.com"
