"""Deploy the control plane's template.yaml into the local emulated AWS.

The local AWS has no SAM transform, and moto's CloudFormation skips several resource types the
template uses, so ``template.py`` evaluates the template's parameters, conditions and intrinsic
functions, and this module creates every resource with boto3, in dependency order, under the
names CloudFormation would give it (``<stack>-<LogicalId>-<SUFFIX>`` where the template does not
name the resource). A resource type or property that cannot be created locally raises
:class:`UnsupportedResource` naming the logical id and type: nothing is skipped silently.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .template import (
    NAME_PROPERTIES,
    PARTITION,
    SAM_ROLE_TYPES,
    TEMPLATE_FILE,
    URL_SUFFIX,
    TemplateContext,
    TemplateError,
    creation_order,
    evaluate_conditions,
    generated_name,
    load_template,
    parameter_values,
    physical_name,
    resolve,
)

_LAMBDA_BASIC_EXECUTION = "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"


_XRAY_WRITE_ONLY = "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess"
# The action SAM grants a function's role on its DeadLetterQueue, by queue type.
_DEAD_LETTER_ACTIONS = {"SQS": "sqs:SendMessage", "SNS": "sns:Publish"}


class UnsupportedResource(RuntimeError):
    """The template holds something the local deployer cannot create faithfully."""

    def __init__(self, logical_id: str, resource_type: str, detail: str):
        super().__init__(f"{logical_id} ({resource_type}): {detail}")
        self.logical_id = logical_id
        self.resource_type = resource_type


class LocalAwsLike(Protocol):
    """What the deployer needs from the local AWS (``layershift.local.server.LocalAws``)."""

    endpoint_url: str
    region: str
    account_id: str
    state_dir: Path

    def client(self, service: str) -> Any: ...


@dataclass
class DeployedStack:
    """What :func:`deploy_control_plane` created.

    ``physical_ids`` holds what ``Ref`` returns for each logical id (a name, or an ARN for topics,
    state machines and layer versions), ``names`` the plain physical name, ``arns`` the ARN where
    the resource has one, ``outputs`` the evaluated template Outputs. ``local_adaptations`` names
    each resource created differently from AWS, with the reason (only where the local endpoint
    itself makes the AWS form impossible, such as a TLS-only bucket policy on a plain-HTTP endpoint,
    or where the emulator does not keep a setting it was given, such as a function's DeadLetterConfig).
    ``bucket_policies`` keeps each bucket policy as the template gives it, resolved, every statement
    included: what an IAM evaluation of the stack reads.
    """

    stack_name: str
    region: str
    account_id: str
    parameters: dict[str, str]
    conditions: dict[str, bool]
    physical_ids: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    arns: dict[str, str] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    skipped_by_condition: dict[str, str] = field(default_factory=dict)
    local_adaptations: dict[str, str] = field(default_factory=dict)
    bucket_policies: dict[str, dict[str, Any]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------- properties


class _Props:
    """A resource's resolved properties; every key must be consumed or explicitly acknowledged."""

    def __init__(self, logical_id: str, rtype: str, props: dict[str, Any]):
        self.logical_id = logical_id
        self.rtype = rtype
        self._props = dict(props)

    def take(self, key: str, default: Any = None) -> Any:
        return self._props.pop(key, default)

    def require(self, key: str) -> Any:
        if key not in self._props:
            raise UnsupportedResource(self.logical_id, self.rtype, f"property {key} is required")
        return self._props.pop(key)

    def has(self, key: str) -> bool:
        return key in self._props

    def acknowledge(self, *keys: str) -> None:
        """Properties with no local effect (descriptions, deployment-only settings)."""
        for key in keys:
            self._props.pop(key, None)

    def done(self) -> None:
        if self._props:
            raise UnsupportedResource(
                self.logical_id,
                self.rtype,
                f"properties not supported by the local deployer: {', '.join(sorted(self._props))}",
            )


def _camel(value: Any) -> Any:
    """CloudFormation PascalCase keys -> the camelCase keys of JSON APIs (CodeBuild)."""
    if isinstance(value, list):
        return [_camel(item) for item in value]
    if isinstance(value, dict):
        return {key[:1].lower() + key[1:]: _camel(item) for key, item in value.items()}
    return value


def _tags_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": str(value)} for key, value in tags.items()]


# ---------------------------------------------------------------------------------------- the deployer


@dataclass
class _Created:
    ref: str
    name: str
    arn: str | None
    attributes: dict[str, Any]


class _Deployer:
    def __init__(self, aws: LocalAwsLike, project_root: Path, template: dict[str, Any], ctx: TemplateContext):
        self.aws = aws
        self.root = project_root
        self.template = template
        self.ctx = ctx
        self.region = aws.region
        self.account = aws.account_id
        self.globals = template.get("Globals", {})
        self._clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self.aws.client(service)
        return self._clients[service]

    def arn(self, service: str, resource: str, *, region: bool = True, account: bool = True) -> str:
        return f"arn:{PARTITION}:{service}:{self.region if region else ''}:{self.account if account else ''}:{resource}"

    # ---- dispatch

    def create(self, logical_id: str, resource: dict[str, Any]) -> _Created:
        rtype = resource["Type"]
        handler: Callable[[str, dict[str, Any], _Props], _Created] | None = self._handlers().get(rtype)
        if handler is None:
            raise UnsupportedResource(logical_id, rtype, "resource type cannot be created locally")
        unknown_attributes = set(resource) - {
            "Type",
            "Properties",
            "Condition",
            "DependsOn",
            "DeletionPolicy",
            "UpdateReplacePolicy",
            "Metadata",
        }
        if unknown_attributes:
            raise UnsupportedResource(
                logical_id, rtype, f"resource attributes not supported: {', '.join(sorted(unknown_attributes))}"
            )
        raw_props = self._with_globals(rtype, resource.get("Properties", {}))
        props = _Props(logical_id, rtype, resolve(self.ctx, raw_props))
        created = handler(logical_id, resource, props)
        props.done()
        return created

    def _handlers(self) -> dict[str, Callable[[str, dict[str, Any], _Props], _Created]]:
        return {
            "AWS::S3::Bucket": self._bucket,
            "AWS::S3::BucketPolicy": self._bucket_policy,
            "AWS::DynamoDB::Table": self._table,
            "AWS::SNS::Topic": self._topic,
            "AWS::SNS::Subscription": self._subscription,
            "AWS::KMS::Key": self._kms_key,
            "AWS::SQS::Queue": self._queue,
            "AWS::SQS::QueuePolicy": self._queue_policy,
            "AWS::CloudWatch::Alarm": self._alarm,
            "AWS::CloudWatch::Dashboard": self._dashboard,
            "AWS::Logs::LogGroup": self._log_group,
            "AWS::IAM::Role": self._role,
            "AWS::IAM::Policy": self._policy,
            "AWS::Serverless::LayerVersion": self._layer,
            "AWS::CodeBuild::Project": self._codebuild_project,
            "AWS::Serverless::StateMachine": self._state_machine,
            "AWS::Serverless::Function": self._function,
            "AWS::Events::Rule": self._rule,
            "AWS::Lambda::Permission": self._permission,
        }

    def _with_globals(self, rtype: str, props: dict[str, Any]) -> dict[str, Any]:
        section = {"AWS::Serverless::Function": "Function", "AWS::Serverless::StateMachine": "StateMachine"}.get(rtype)
        if section is None or section not in self.globals:
            return props
        merged: dict[str, Any] = {}
        for key, value in self.globals[section].items():
            merged[key] = value
        for key, value in props.items():
            if key in merged and isinstance(merged[key], dict) and isinstance(value, dict):
                merged[key] = _merge_maps(merged[key], value)
            elif key in merged and isinstance(merged[key], list) and isinstance(value, list):
                merged[key] = [*merged[key], *value]
            else:
                merged[key] = value
        return merged

    def _name(self, logical_id: str, resource: dict[str, Any], props: _Props) -> str:
        prop = NAME_PROPERTIES[resource["Type"]]
        props.take(prop)
        name = physical_name(self.ctx, logical_id, resource)
        assert name is not None
        return name

    # ---- storage

    def _bucket(self, logical_id: str, resource: dict[str, Any], props: _Props) -> _Created:
        name = self._name(logical_id, resource, props)
        s3 = self.client("s3")
        if self.region == "us-east-1":
            s3.create_bucket(Bucket=name)
        else:
            s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": self.region})
        versioning = props.take("VersioningConfiguration")
        if versioning:
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": versioning["Status"]})
        encryption = props.take("BucketEncryption")
        if encryption:
            rules = [
                {
                    "ApplyServerSideEncryptionByDefault": {
                        key: value
                        for key, value in rule["ServerSideEncryptionByDefault"].items()
                        if key in ("SSEAlgorithm", "KMSMasterKeyID")
                    },
                    **({"BucketKeyEnabled": rule["BucketKeyEnabled"]} if "BucketKeyEnabled" in rule else {}),
                }
                for rule in encryption["ServerSideEncryptionConfiguration"]
            ]
            s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": rules})
        public_access = props.take("PublicAccessBlockConfiguration")
        if public_access:
            s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=public_access)
        ownership = props.take("OwnershipControls")
        if ownership:
            s3.put_bucket_ownership_controls(Bucket=name, OwnershipControls=ownership)
        lifecycle = props.take("LifecycleConfiguration")
        if lifecycle:
            s3.put_bucket_lifecycle_configuration(
                Bucket=name, LifecycleConfiguration={"Rules": [_lifecycle_rule(rule) for rule in lifecycle["Rules"]]}
            )
        notifications = props.take("NotificationConfiguration")
        if notifications:
            unsupported = set(notifications) - {"EventBridgeConfiguration"}
            if unsupported:
                raise UnsupportedResource(
                    logical_id, resource["Type"], f"notification kinds not supported: {sorted(unsupported)}"
                )
            if notifications["EventBridgeConfiguration"].get("EventBridgeEnabled") in (True, "true"):
                s3.put_bucket_notification_configuration(
                    Bucket=name, NotificationConfiguration={"EventBridgeConfiguration": {}}
                )
        tags = props.take("Tags")
        if tags:
            s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": tags})
        arn = f"arn:{PARTITION}:s3:::{name}"
        return _Created(
            name,
            name,
            arn,
            {
                "Arn": arn,
                "DomainName": f"{name}.s3.{URL_SUFFIX}",
                "RegionalDomainName": f"{name}.s3.{self.region}.{URL_SUFFIX}",
            },
        )

    def _bucket_policy(self, logical_id: str, resource: dict[str, Any], props: _Props) -> _Created:
        bucket = props.require("Bucket")
        document = dict(props.require("PolicyDocument"))
        statements = document["Statement"] if isinstance(document["Statement"], list) else [document["Statement"]]
        self.stack.bucket_policies[bucket] = json.loads(json.dumps(document))
        # The emulated S3 applies a bucket policy's Deny statements without their conditions, so a
        # conditional deny would refuse every local request: such statements are recorded, not applied
        # (the TLS-only one could not hold anyway: the local endpoint is plain HTTP on 127.0.0.1).
        # tests/integration's IAM evaluation reads them from ``bucket_policies``.
        kept = [statement for statement in statements if not _is_conditional_deny(statement)]
        if len(kept) != len(statements):
            self.stack.local_adaptations[logical_id] = (
                "conditional Deny statements not applied (the local S3 ignores conditions): "
                + ", ".join(str(s.get("Sid", "?")) for s in statements if _is_conditional_deny(s))
            )
        if kept:
            document["Statement"] = kept
            self.client("s3").put_bucket_policy(Bucket=bucket, Policy=json.dumps(document))
        return _Created(bucket, bucket, None, {})

    def _table(self, logical_id: str, resource: dict[str, Any], props: _Props) -> _Created:
        name = self._name(logical_id, resource, props)
        ddb = self.client("dynamodb")
        kwargs: dict[str, Any] = {
            "TableName": name,
            "AttributeDefinitions": props.require("AttributeDefinitions"),
            "KeySchema": props.require("KeySchema"),
            "BillingMode": props.take("BillingMode", "PROVISIONED"),
        }
        throughput = props.take("ProvisionedThroughput")
        if throughput:
            kwargs["ProvisionedThroughput"] = {k: int(v) for k, v in throughput.items()}
        sse = props.take("SSESpecification")
        if sse:
            kwargs["SSESpecification"] = {"Enabled": sse.get("SSEEnabled") in (True, "true")}
        protection = props.take("DeletionProtectionEnabled")
        if protection is not None:
            kwargs["DeletionProtectionEnabled"] = protection in (True, "true")
        tags = props.take("Tags")
        if tags:
            kwargs["Tags"] = tags
        ddb.create_table(**kwargs)
        ttl = props.take("TimeToLiveSpecification")
        if ttl:
            ddb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={
                    "AttributeName": ttl["AttributeName"],
                    "Enabled": ttl["Enabled"] in (True, "true"),
                },
            )
        pitr = props.take("PointInTimeRecoverySpecification")
        if pitr:
            ddb.update_continuous_backups(
                TableName=name,
                PointInTimeRecoverySpecification={
                    "PointInTimeRecoveryEnabled": pitr["PointInTimeRecoveryEnabled"] in (True, "true")
                },
            )
        arn = self.arn("dynamodb", f"table/{name}")
        return _Created(name, name, arn, {"Arn": arn})

    def _topic(self, logical_id: str, resource: dict[str, Any], props: _Props) -> _Created:
        name = self._name(logical_id, resource, props)
        attributes = {}
        for key in ("DisplayName", "KmsMasterKeyId"):
            value = props.take(key)
            if value is not None:
                attributes[key] = str(value)
        tags = props.take("Tags")
        response = self.client("sns").create_topic(Name=name, Attributes=attributes, Tags=tags or [])
        arn = response["TopicArn"]
        return _Created(arn, name, arn, {"TopicArn": arn, "TopicName": name})

    def _subscription(self, logical_id: str, resource: dict[str, Any], props: _Props) -> _Created:
        response = self.client("sns").subscribe(
            TopicArn=props.require("TopicArn"),
            Protocol=props.require("Protocol"),
            Endpoint=props.require("Endpoint"),
            ReturnSubscriptionArn=True,
        )
        arn = response["SubscriptionArn"]
        return _Created(arn, logical_id, arn, {"Arn": arn})

    def _kms_key(self, logical_id: str, resource: dict[str, Any], props: _Props) -> _Created:
        kms = self.client("kms")
        kwargs: dict[str, Any] = {
            "Description": props.take("Description", ""),
            "KeyUsage": props.take("KeyUsage", "ENCRYPT_DECRYPT"),
            "KeySpec": props.take("KeySpec", "SYMMETRIC_DEFAULT"),
        }
        policy = props.take("KeyPolicy")
        if policy is not None:
            kwargs["Policy"] = json.dumps(policy)
        tags = props.take("Tags")
        if tags:
            kwargs["Tags"] = [{"TagKey": tag["Key"], "TagValue": tag["Value"]} for tag in tags]
        key = kms.create_key(**kwargs)["KeyMetadata"]
        if props.take("EnableKeyRotation") in (True, "true"):
            kms.enable_key_rotation(KeyId=key["KeyId"])
        # Only used when the key is scheduled for deletion, which a deploy never does.
        props.acknowledge("PendingWindowInDays")
        return _Created(key["KeyId"], logical_id, key["Arn"], {"Arn": key["Arn"], "KeyId": key["KeyId"]})

    def _queue(self, logical_id: str, resource: dict[str, Any], props: _Props) -> _Created:
        name = self._name(logical_id, resource, props)
        sqs = self.client("sqs")
        attributes: dict[str, str] = {}
        for key in (
            "DelaySeconds",
            "KmsDataKeyReusePeriodSeconds",
            "KmsMasterKeyId",
            "MaximumMessageSize",
            "MessageRetentionPeriod",
            "ReceiveMessageWaitTimeSeconds",
            "VisibilityTimeout",
        ):
            value = props.take(key)
            if value is not None:
                attributes[key] = str(value)
        managed_sse = props.take("SqsManagedSseEnabled")
        if managed_sse is not None:
            attributes["SqsManagedSseEnabled"] = "true" if managed_sse in (True, "true") else "false"
        redrive = props.take("RedrivePolicy")
        if redrive is not None:
            attributes["RedrivePolicy"] = json.dumps(redrive)
        tags = props.take("Tags")
        url = sqs.create_queue(
            QueueName=name,
            Attributes=attributes,
            **({"tags": {tag["Key"]: str(tag["Value"]) for tag in tags}} if tags else {}),
        )["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        return _Created(url, name, arn, {"Arn": arn, "QueueName": name, "QueueUrl": url})

    def _queue_policy(self, logical_id: str, resource: dict[str, Any], props: _Props) -> _Created:
        document = json.dumps(props.require("PolicyDocument"))
        sqs = self.client("sqs")
        for url in props.require("Queues"):
            sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": document})
        return _Created(logical_id, logical_id, None, {})

    def _alarm(self, logical_id: str, resource: dict[str, Any], props: _Props) -> _Created:
        name = self._name(logical_id, resource, props)
        if props.has("Metrics"):
            raise UnsupportedResource(logical_id, resource["Type"], "metric math alarms are not supported locally")
        kwargs: dict[str, Any] = {
            "AlarmName": name,
            "Namespace": props.require("Namespace"),
            "MetricName": props.require("MetricName"),
            "Period": int(props.require("Period")),
            "EvaluationPeriods": int(props.require("EvaluationPeriods")),
            "Threshold": float(props.require("Threshold")),
            "ComparisonOperator": props.require("ComparisonOperator"),
        }
        for key in ("AlarmDescription", "Statistic", "ExtendedStatistic", "TreatMissingData", "Unit"):
            value = props.take(key)
            if value is not None:
                kwargs[key] = value
        datapoints = props.take("DatapointsToAlarm")
        if datapoints is not None:
            kwargs["DatapointsToAlarm"] = int(datapoints)
        enabled = props.take("ActionsEnabled")
        if enabled is not None:
            kwargs["ActionsEnabled"] = enabled in (True, "true")
        for key in ("AlarmActions", "OKActions", "InsufficientDataActions"):
            value = props.take(key)
            if value:
                kwargs[key] = list(value)
        dimensions = props.take("Dimensions")
        if dimensions:
            kwargs["Dimensions"] = [{"Name": d["Name"], "Value": str(d["Value"])} for d in dimensions]
        tags = props.take("Tags")
        if tags:
            kwargs["Tags"] = tags
        cloudwatch = self.client("cloudwatch")
        cloudwatch.put_metric_alarm(**kwargs)
        arn = self.arn("cloudwatch", f"alarm:{name}")
        return _Created(name, name, arn, {"Arn": arn})

    def _dashboard(self, logical_id: str, resource: dict[str, Any], props: _Props) -> _Created:
        name = self._name(logical_id, resource, props)
        body = props.require("DashboardBody")
        json.loads(body)  # CloudWatch refuses a body that is not JSON; so does the local deploy
        self.client("cloudwatch").put_dashboard(DashboardName=name, DashboardBody=body)
        arn = self.arn("cloudwatch", f"dashboard/{name}", region=False)
        return _Created(name, name, arn, {})

    def _log_group(self, logical_id: str, resource: dict[str, Any], props: _Props) -> _Created:
        name = self._name(logical_id, resource, props)
        logs = self.client("logs")
        logs.create_log_group(logGroupName=name)
        retention = props.take("RetentionInDays")
        if retention is not None:
            logs.put_retention_policy(logGroupName=name, retentionInDays=int(retention))
        arn = self.arn("logs", f"log-group:{name}:*")
        return _Created(name, name, arn, {"Arn": arn})

    # ---- identity

    def _role(self, logical_id: str, resource: dict[str, Any], props: _Props) -> _Created:
        name = self._name(logical_id, resource, props)
        iam = self.client("iam")
        iam.create_role(
            RoleName=name,
            Path=props.take("Path", "/"),
            AssumeRolePolicyDocument=json.dumps(props.require("AssumeRolePolicyDocument")),
            Description=props.take("Description", ""),
            MaxSessionDuration=int(props.take("MaxSessionDuration", 3600)),
        )
        for policy in props.take("Policies", []):
            iam.put_role_policy(
                RoleName=name, PolicyName=policy["PolicyName"], PolicyDocument=json.dumps(policy["PolicyDocument"])
            )
        for policy_arn in props.take("ManagedPolicyArns", []):
            self._attach_managed_policy(name, policy_arn)
        role = iam.get_role(RoleName=name)["Role"]
        return _Created(name, name, role["Arn"], {"Arn": role["Arn"], "RoleId": role["RoleId"]})

    def _policy(self, logical_id: str, resource: dict[str, Any], props: _Props) -> _Created:
        """An inline policy put on each of its roles (the template's roles are named by their Ref)."""
        name = props.require("PolicyName")
        document = json.dumps(props.require("PolicyDocument"))
        for role in props.require("Roles"):
            self.client("iam").put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=document)
        return _Created(name, name, None, {})

    def _attach_managed_policy(self, role_name: str, policy_arn: str) -> None:
        if policy_arn.startswith(f"arn:{PARTITION}:iam::aws:policy/"):
            _ensure_aws_managed_policy(self.account, policy_arn)
        self.client("iam").attach_role_policy(RoleName=role_name, PolicyArn=policy_arn)

    def _sam_role(
        self,
        owner_id: str,
        principal: str,
        policies: list[Any],
        managed: list[str],
        generated: list[dict[str, Any]] | None = None,
    ) -> str:
        """The role SAM generates for a function or state machine (``<LogicalId>Role``), with the
        inline policies SAM adds of its own (``generated``, such as ``DeadLetterQueuePolicy``)."""
        role_id = f"{owner_id}Role"
        name = generated_name(self.ctx.stack_name, role_id, "AWS::IAM::Role")
        iam = self.client("iam")
        trust = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": [principal]}, "Action": ["sts:AssumeRole"]}],
        }
        role = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]
        for policy_arn in managed:
            self._attach_managed_policy(name, policy_arn)
        for index, policy in enumerate(policies):
            if isinstance(policy, str):
                arn = policy if policy.startswith("arn:") else f"arn:{PARTITION}:iam::aws:policy/{policy}"
                self._attach_managed_policy(name, arn)
                continue
            document = self._sam_policy_document(owner_id, policy)
            iam.put_role_policy(
                RoleName=name, PolicyName=f"{role_id}Policy{index}", PolicyDocument=json.dumps(document)
            )
        for policy in generated or []:
            iam.put_role_policy(
                RoleName=name, PolicyName=policy["PolicyName"], PolicyDocument=json.dumps(policy["PolicyDocument"])
            )
        self._record(role_id, "AWS::IAM::Role", _Created(name, name, role["Arn"], {"Arn": role["Arn"]}))
        return role["Arn"]

    def _sam_policy_document(self, owner_id: str, policy: dict[str, Any]) -> dict[str, Any]:
        if "Statement" in policy:
            return {"Version": policy.get("Version", "2012-10-17"), "Statement": policy["Statement"]}
        if set(policy) == {"LambdaInvokePolicy"}:
            function = policy["LambdaInvokePolicy"]["FunctionName"]
            return {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": ["lambda:InvokeFunction"],
                        "Resource": self.arn("lambda", f"function:{function}*"),
                    }
                ],
            }
        raise UnsupportedResource(owner_id, "AWS::Serverless", f"policy {sorted(policy)} is not supported locally")

    # ---- compute

    def _layer(self, logical_id: str, resource: dict[str, Any], props: _Props) -> _Created:
        name = self._name(logical_id, resource, props)
        content_uri = props.require("ContentUri")
        if not isinstance(content_uri, str):
            raise UnsupportedResource(logical_id, resource["Type"], "ContentUri must be a local folder")
        metadata = resource.get("Metadata", {})
        build_method = metadata.get("BuildMethod")
        runtimes = props.take("CompatibleRuntimes", [])
        architectures = props.take("CompatibleArchitectures", ["x86_64"])
        if build_method is not None and not str(build_method).startswith("python3"):
            raise UnsupportedResource(logical_id, resource["Type"], f"BuildMethod {build_method} is not supported")
        zip_bytes = build_python_layer(
            self.root / content_uri,
            runtime=str(build_method or (runtimes[0] if runtimes else "python3.13")),
            architecture=str(metadata.get("BuildArchitecture", architectures[0])),
            cache_dir=layer_cache_dir(Path(self.aws.state_dir)),
        )
        props.acknowledge("RetentionPolicy")
        response = self.client("lambda").publish_layer_version(
            LayerName=name,
            Description=props.take("Description", ""),
            Content={"ZipFile": zip_bytes},
            CompatibleRuntimes=runtimes,
            CompatibleArchitectures=architectures,
            **({"LicenseInfo": props.take("LicenseInfo")} if props.has("LicenseInfo") else {}),
        )
        arn = response["LayerVersionArn"]
        return _Created(arn, name, arn, {"Arn": arn, "LayerArn": response["LayerArn"]})

    def _function(self, logical_id: str, resource: dict[str, Any], props: _Props) -> _Created:
        rtype = resource["Type"]
        name = self._name(logical_id, resource, props)
        for unsupported in ("Events", "AutoPublishAlias", "DeploymentPreference", "ImageUri", "InlineCode"):
            if props.has(unsupported):
                raise UnsupportedResource(logical_id, rtype, f"{unsupported} is not supported by the local deployer")
        code_uri = props.require("CodeUri")
        code_dir = self.root / str(code_uri)
        if not code_dir.is_dir():
            raise UnsupportedResource(logical_id, rtype, f"CodeUri {code_uri} is not a folder of the project")
        _reject_function_requirements(logical_id, rtype, code_dir)
        tracing = props.take("Tracing")
        role = props.take("Role")
        managed = [_LAMBDA_BASIC_EXECUTION] + ([_XRAY_WRITE_ONLY] if tracing == "Active" else [])
        policies = props.take("Policies", [])
        if isinstance(policies, dict | str):
            policies = [policies]
        dead_letter = props.take("DeadLetterQueue")
        generated: list[dict[str, Any]] = []
        if dead_letter is not None:
            action = _DEAD_LETTER_ACTIONS.get(dead_letter.get("Type"))
            if action is None or not dead_letter.get("TargetArn"):
                raise UnsupportedResource(
                    logical_id, rtype, f"DeadLetterQueue {dead_letter} needs Type SQS or SNS and TargetArn"
                )
            # SAM's own inline policy for it, beside the function's Policies.
            generated.append(
                {
                    "PolicyName": "DeadLetterQueuePolicy",
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [{"Action": action, "Resource": dead_letter["TargetArn"], "Effect": "Allow"}],
                    },
                }
            )
        role_arn = role or self._sam_role(logical_id, SAM_ROLE_TYPES[rtype], policies, managed, generated)
        environment = props.take("Environment", {}).get("Variables", {})
        tags = {"lambda:createdBy": "SAM", **{k: str(v) for k, v in props.take("Tags", {}).items()}}
        kwargs: dict[str, Any] = {
            "FunctionName": name,
            "Runtime": props.require("Runtime"),
            "Role": role_arn,
            "Handler": props.require("Handler"),
            "Code": {"ZipFile": zip_folder(code_dir)},
            "Description": props.take("Description", ""),
            "Timeout": int(props.take("Timeout", 3)),
            "MemorySize": int(props.take("MemorySize", 128)),
            "Environment": {"Variables": {key: str(value) for key, value in environment.items()}},
            "Layers": props.take("Layers", []),
            "Architectures": props.take("Architectures", ["x86_64"]),
            "Tags": tags,
            "Publish": False,
        }
        if tracing:
            kwargs["TracingConfig"] = {"Mode": "Active" if tracing == "Active" else "PassThrough"}
        if dead_letter is not None:
            kwargs["DeadLetterConfig"] = {"TargetArn": dead_letter["TargetArn"]}
        for key in ("ReservedConcurrentExecutions",):
            value = props.take(key)
            if value is not None:
                raise UnsupportedResource(logical_id, rtype, f"{key} is not supported by the local deployer")
        response = self.client("lambda").create_function(**kwargs)
        if dead_letter is not None and "DeadLetterConfig" not in response:
            # moto accepts DeadLetterConfig and drops it; lambda_invoke keeps it when installed (the
            # local AWS always installs it), so this is only a Lambda without that adapter. The role
            # still carries SAM's DeadLetterQueuePolicy, and the template test checks the setting.
            self.stack.local_adaptations[logical_id] = (
                "DeadLetterConfig not kept: the emulated Lambda drops it (and runs no asynchronous retries)"
            )
        arn = response["FunctionArn"]
        return _Created(name, name, arn, {"Arn": arn})

    def _codebuild_project(self, logical_id: str, resource: dict[str, Any], props: _Props) -> _Created:
        name = self._name(logical_id, resource, props)
        source = props.require("Source")
        buildspec = source.pop("BuildSpec", None)
        source_api = _camel(source)
        if buildspec is not None:
            source_api["buildspec"] = buildspec
        kwargs: dict[str, Any] = {
            "name": name,
            "source": source_api,
            "artifacts": _camel(props.require("Artifacts")),
            "environment": _camel(props.require("Environment")),
            "serviceRole": props.require("ServiceRole"),
        }
        for key in ("Description", "LogsConfig"):
            value = props.take(key)
            if value is not None:
                kwargs[key[:1].lower() + key[1:]] = _camel(value)
        for key in ("TimeoutInMinutes", "QueuedTimeoutInMinutes"):
            value = props.take(key)
            if value is not None:
                kwargs[key[:1].lower() + key[1:]] = int(value)
        tags = props.take("Tags")
        if tags:
            kwargs["tags"] = [{"key": tag["Key"], "value": tag["Value"]} for tag in tags]
        project = self.client("codebuild").create_project(**kwargs)["project"]
        return _Created(name, name, project["arn"], {"Arn": project["arn"]})

    def _state_machine(self, logical_id: str, resource: dict[str, Any], props: _Props) -> _Created:
        rtype = resource["Type"]
        name = self._name(logical_id, resource, props)
        definition_uri = props.take("DefinitionUri")
        definition_inline = props.take("Definition")
        if definition_uri is not None:
            if not isinstance(definition_uri, str):
                raise UnsupportedResource(logical_id, rtype, "DefinitionUri must be a local file")
            text = (self.root / definition_uri).read_text(encoding="utf-8")
        elif definition_inline is not None:
            text = json.dumps(definition_inline)
        else:
            raise UnsupportedResource(logical_id, rtype, "Definition or DefinitionUri is required")
        definition = substitute_definition(text, props.take("DefinitionSubstitutions", {}), logical_id)
        if props.has("Events"):
            raise UnsupportedResource(logical_id, rtype, "Events is not supported by the local deployer")
        tracing = props.take("Tracing", {})
        policies = props.take("Policies", [])
        if isinstance(policies, dict | str):
            policies = [policies]
        role_arn = props.take("Role") or self._sam_role(
            logical_id, SAM_ROLE_TYPES[rtype], policies, [_XRAY_WRITE_ONLY] if tracing.get("Enabled") else []
        )
        kwargs: dict[str, Any] = {
            "name": name,
            "definition": definition,
            "roleArn": role_arn,
            "type": props.take("Type", "STANDARD"),
        }
        logging = props.take("Logging")
        if logging:
            kwargs["loggingConfiguration"] = _camel(logging)
        if tracing:
            kwargs["tracingConfiguration"] = {"enabled": tracing.get("Enabled") in (True, "true")}
        tags = props.take("Tags")
        if tags:
            kwargs["tags"] = [{"key": k, "value": str(v)} for k, v in tags.items()]
        arn = self.client("stepfunctions").create_state_machine(**kwargs)["stateMachineArn"]
        return _Created(arn, name, arn, {"Arn": arn, "Name": name})

    # ---- events

    def _rule(self, logical_id: str, resource: dict[str, Any], props: _Props) -> _Created:
        name = self._name(logical_id, resource, props)
        events = self.client("events")
        kwargs: dict[str, Any] = {"Name": name, "State": props.take("State", "ENABLED")}
        pattern = props.take("EventPattern")
        schedule = props.take("ScheduleExpression")
        if pattern is not None:
            kwargs["EventPattern"] = json.dumps(pattern)
        if schedule is not None:
            kwargs["ScheduleExpression"] = schedule
        description = props.take("Description")
        if description:
            kwargs["Description"] = description
        bus = props.take("EventBusName")
        if bus:
            kwargs["EventBusName"] = bus
        arn = events.put_rule(**kwargs)["RuleArn"]
        targets = props.take("Targets", [])
        if targets:
            response = events.put_targets(Rule=name, Targets=targets, **({"EventBusName": bus} if bus else {}))
            if response.get("FailedEntryCount"):
                raise UnsupportedResource(
                    logical_id, resource["Type"], f"targets rejected: {response['FailedEntries']}"
                )
        return _Created(name, name, arn, {"Arn": arn})

    def _permission(self, logical_id: str, resource: dict[str, Any], props: _Props) -> _Created:
        kwargs: dict[str, Any] = {
            "FunctionName": props.require("FunctionName"),
            "StatementId": logical_id,
            "Action": props.require("Action"),
            "Principal": props.require("Principal"),
        }
        for key in ("SourceArn", "SourceAccount"):
            value = props.take(key)
            if value is not None:
                kwargs[key] = value
        self.client("lambda").add_permission(**kwargs)
        return _Created(logical_id, logical_id, None, {})

    # ---- bookkeeping

    def _record(self, logical_id: str, rtype: str, created: _Created) -> None:
        self.ctx.refs[logical_id] = created.ref
        self.ctx.attributes[logical_id] = created.attributes
        self.stack.physical_ids[logical_id] = created.ref
        self.stack.names[logical_id] = created.name
        self.stack.types[logical_id] = rtype
        if created.arn:
            self.stack.arns[logical_id] = created.arn

    stack: DeployedStack


def _is_conditional_deny(statement: dict[str, Any]) -> bool:
    return statement.get("Effect") == "Deny" and bool(statement.get("Condition"))


def _ensure_aws_managed_policy(account_id: str, policy_arn: str) -> None:
    """Make an AWS managed policy attachable in the emulated IAM.

    In AWS every managed policy exists. The emulated IAM only knows them when it was started with
    ``load_aws_managed_policies``; otherwise the one policy is added from moto's bundled copy.
    """
    from moto.iam.aws_managed_policies import aws_managed_policies_data
    from moto.iam.models import AWSManagedPolicy, iam_backends

    backend = iam_backends[account_id][PARTITION]
    if policy_arn in backend.managed_policies:
        return
    name = policy_arn.rsplit("/", 1)[-1]
    data = json.loads(aws_managed_policies_data).get(name)
    if data is None:
        raise TemplateError(f"{policy_arn} is not an AWS managed policy known to the local IAM")
    policy = AWSManagedPolicy.from_data(name, account_id, "us-east-1", data)
    backend.managed_policies[policy.arn] = policy


def _merge_maps(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if key in merged and isinstance(merged[key], dict) and isinstance(value, dict):
            merged[key] = _merge_maps(merged[key], value)
        else:
            merged[key] = value
    return merged


def _lifecycle_rule(rule: dict[str, Any]) -> dict[str, Any]:
    api: dict[str, Any] = {"ID": rule.get("Id", "rule"), "Status": rule["Status"]}
    api["Filter"] = {"Prefix": rule["Prefix"]} if "Prefix" in rule else {"Prefix": ""}
    if "NoncurrentVersionExpiration" in rule:
        api["NoncurrentVersionExpiration"] = {
            "NoncurrentDays": int(rule["NoncurrentVersionExpiration"]["NoncurrentDays"])
        }
    if "NoncurrentVersionExpirationInDays" in rule:
        api["NoncurrentVersionExpiration"] = {"NoncurrentDays": int(rule["NoncurrentVersionExpirationInDays"])}
    if "ExpirationInDays" in rule:
        api["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
    if "AbortIncompleteMultipartUpload" in rule:
        api["AbortIncompleteMultipartUpload"] = {
            "DaysAfterInitiation": int(rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"])
        }
    return api


_SUBSTITUTION = re.compile(r"\$\{([A-Za-z0-9_.:-]+)\}")


def substitute_definition(text: str, substitutions: dict[str, Any], logical_id: str = "StateMachine") -> str:
    """Apply DefinitionSubstitutions (``${Name}`` -> value) to an ASL document and check the result.

    Every placeholder must have a substitution, and the result must be valid JSON.
    """

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in substitutions:
            raise UnsupportedResource(
                logical_id,
                "AWS::Serverless::StateMachine",
                f"definition uses ${{{key}}} with no DefinitionSubstitution",
            )
        return str(substitutions[key])

    result = _SUBSTITUTION.sub(replace, text)
    json.loads(result)
    return result


def _reject_function_requirements(logical_id: str, rtype: str, code_dir: Path) -> None:
    requirements = code_dir / "requirements.txt"
    if not requirements.is_file():
        return
    lines = [
        line.strip()
        for line in requirements.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    if lines:
        raise UnsupportedResource(
            logical_id,
            rtype,
            f"{requirements} lists dependencies; the local deployer ships function folders as they are "
            "(shared dependencies belong in the CoreLayer)",
        )


# ---------------------------------------------------------------------------------------- packaging

_SKIPPED_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "tests"}


def _source_files(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file() and not (_SKIPPED_PARTS & set(path.relative_to(folder).parts)) and path.suffix != ".pyc"
    )


def zip_folder(folder: Path, prefix: str = "") -> bytes:
    """A deterministic zip of ``folder`` (caches and tests left out), entries under ``prefix``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in _source_files(folder):
            info = zipfile.ZipInfo(prefix + path.relative_to(folder).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def layer_cache_dir(state_dir: Path) -> Path:
    """Where built layer dependencies are cached: ``$LAYERSHIFT_CACHE_DIR/core-layer`` when set
    (shared between local sessions), else ``<state_dir>/core-layer``."""
    shared = os.environ.get("LAYERSHIFT_CACHE_DIR")
    return Path(shared) / "core-layer" if shared else state_dir / "core-layer"


def host_architecture() -> str:
    """The Lambda architecture name of this machine (what the local workers run on)."""
    return "arm64" if platform.machine().lower() in ("arm64", "aarch64") else "x86_64"


def build_python_layer(layer_dir: Path, *, runtime: str, architecture: str, cache_dir: Path) -> bytes:
    """The zip of a SAM python layer folder: its packages under ``python/`` plus its requirements.

    Dependencies from ``requirements.txt`` are built with the project's own layer builder
    (``layershift_core.builder.build_layer``) for the runtime and this machine's architecture (the
    local workers run here), and cached under ``cache_dir/<hash>``; the folder's own code is added
    fresh on every deploy.
    """
    if not layer_dir.is_dir():
        raise FileNotFoundError(f"layer folder {layer_dir} does not exist")
    del architecture  # the local copy must run on this machine; the template's value is for AWS
    local_architecture = host_architecture()
    requirements = layer_dir / "requirements.txt"
    requirements_text = requirements.read_text(encoding="utf-8") if requirements.is_file() else ""
    staging = Path(tempfile.mkdtemp(prefix="layershift-layer-"))
    try:
        if _has_requirements(requirements_text):
            dependencies_zip = _cached_dependencies(requirements_text, runtime, local_architecture, cache_dir)
            with zipfile.ZipFile(dependencies_zip) as archive:
                archive.extractall(staging)
        python_dir = staging / "python"
        python_dir.mkdir(exist_ok=True)
        for path in _source_files(layer_dir):
            relative = path.relative_to(layer_dir)
            if relative.as_posix() == "requirements.txt":
                continue
            destination = python_dir / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)
        out = staging.with_suffix(".zip")
        from layershift_core.builder.zipper import write_zip

        write_zip(staging, out)
        data = out.read_bytes()
        out.unlink()
        return data
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _has_requirements(text: str) -> bool:
    return any(line.strip() and not line.strip().startswith("#") for line in text.splitlines())


def _cached_dependencies(requirements_text: str, runtime: str, architecture: str, cache_dir: Path) -> Path:
    from layershift_core.builder import build_layer

    key = hashlib.sha256(f"{runtime}\n{architecture}\n{requirements_text}".encode()).hexdigest()[:32]
    folder = cache_dir / key
    layer_zip = folder / "layer.zip"
    if layer_zip.is_file():
        return layer_zip
    work = cache_dir / f".{key}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    build_layer(requirements_text, runtime=runtime, architecture=architecture, out_dir=work, allow_ranges=True)
    if folder.exists():
        shutil.rmtree(folder)
    work.rename(folder)
    return layer_zip


# ---------------------------------------------------------------------------------------- entry point


def deploy_control_plane(
    aws: LocalAwsLike,
    project_root: Path,
    stack_name: str = "layershift",
    parameters: dict[str, str] | None = None,
) -> DeployedStack:
    """Create every resource of ``project_root/template.yaml`` in the local AWS.

    Parameters take their template defaults unless given in ``parameters`` (validated against the
    template's constraints). Resources whose Condition is false are not created and are listed in
    ``DeployedStack.skipped_by_condition``.
    """
    project_root = Path(project_root)
    template = load_template(project_root / TEMPLATE_FILE)
    values, types = parameter_values(template, {k: str(v) for k, v in (parameters or {}).items()})
    ctx = TemplateContext(stack_name, aws.region, aws.account_id, values, types)
    ctx.template_resources = template["Resources"]
    evaluate_conditions(ctx, template)
    stack = DeployedStack(stack_name, aws.region, aws.account_id, values, dict(ctx.conditions))
    deployer = _Deployer(aws, project_root, template, ctx)
    deployer.stack = stack
    resources = template["Resources"]
    for logical_id in creation_order(resources, template.get("Globals", {})):
        resource = resources[logical_id]
        condition = resource.get("Condition")
        if condition is not None and not ctx.conditions[condition]:
            stack.skipped_by_condition[logical_id] = condition
            continue
        created = deployer.create(logical_id, resource)
        deployer._record(logical_id, resource["Type"], created)
    for name, output in template.get("Outputs", {}).items():
        condition = output.get("Condition")
        if condition is not None and not ctx.conditions[condition]:
            continue
        stack.outputs[name] = str(resolve(ctx, output["Value"]))
    return stack
