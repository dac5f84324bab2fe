"""Deploy the control plane's template.yaml into the local emulated AWS.

The local AWS has no SAM transform, and moto's CloudFormation skips several resource types the
template uses, so this module reads ``template.yaml`` itself, evaluates its parameters, conditions
and intrinsic functions, and creates every resource with boto3, in dependency order, under the
names CloudFormation would give it (``<stack>-<LogicalId>-<SUFFIX>`` where the template does not
name the resource). A resource type or property that cannot be created locally raises
:class:`UnsupportedResource` naming the logical id and type: nothing is skipped silently.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import platform
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

TEMPLATE_FILE = "template.yaml"
PARTITION = "aws"
URL_SUFFIX = "amazonaws.com"

# AWS managed policies SAM attaches to the roles it generates.
_LAMBDA_BASIC_EXECUTION = "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
_XRAY_WRITE_ONLY = "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess"

# Lambda and SAM limits for generated physical names.
_NAME_LIMITS: dict[str, int] = {
    "AWS::S3::Bucket": 63,
    "AWS::Serverless::Function": 64,
    "AWS::IAM::Role": 64,
    "AWS::Events::Rule": 64,
    "AWS::SNS::Topic": 256,
    "AWS::DynamoDB::Table": 255,
    "AWS::CodeBuild::Project": 255,
    "AWS::Serverless::StateMachine": 80,
    "AWS::Serverless::LayerVersion": 140,
}
# Types CloudFormation names without the stack name in front.
_NAMED_WITHOUT_STACK = {"AWS::CodeBuild::Project", "AWS::Serverless::StateMachine"}
# The property that names a resource when the template sets it.
_NAME_PROPERTIES: dict[str, str] = {
    "AWS::S3::Bucket": "BucketName",
    "AWS::DynamoDB::Table": "TableName",
    "AWS::SNS::Topic": "TopicName",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::IAM::Role": "RoleName",
    "AWS::CodeBuild::Project": "Name",
    "AWS::Events::Rule": "Name",
    "AWS::Serverless::Function": "FunctionName",
    "AWS::Serverless::StateMachine": "Name",
    "AWS::Serverless::LayerVersion": "LayerName",
}
# SAM resources that bring a generated IAM role named <LogicalId>Role.
_SAM_ROLE_TYPES = {
    "AWS::Serverless::Function": "lambda.amazonaws.com",
    "AWS::Serverless::StateMachine": "states.amazonaws.com",
}


class UnsupportedResource(RuntimeError):
    """The template holds something the local deployer cannot create faithfully."""

    def __init__(self, logical_id: str, resource_type: str, detail: str):
        super().__init__(f"{logical_id} ({resource_type}): {detail}")
        self.logical_id = logical_id
        self.resource_type = resource_type


class TemplateError(ValueError):
    """The template, or a parameter value given for it, is invalid."""


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
    itself makes the AWS form impossible, such as a TLS-only bucket policy on a plain-HTTP endpoint).
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


# ---------------------------------------------------------------------------------------- YAML


class _TemplateLoader(yaml.SafeLoader):
    """PyYAML loader that turns CloudFormation short-form tags into their long form."""


def _construct_intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = tag_suffix
    key = name if name in ("Ref", "Condition") else f"Fn::{name}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if name == "GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {key: value}


_TemplateLoader.add_multi_constructor("!", _construct_intrinsic)


def load_template(path: Path) -> dict[str, Any]:
    """Parse a CloudFormation/SAM YAML template, short-form intrinsics included."""
    with path.open(encoding="utf-8") as stream:
        document = yaml.load(stream, Loader=_TemplateLoader)
    if not isinstance(document, dict) or "Resources" not in document:
        raise TemplateError(f"{path} is not a CloudFormation template (no Resources)")
    return document


# ---------------------------------------------------------------------------------------- names


def _suffix(stack_name: str, logical_id: str) -> str:
    digest = hashlib.sha256(f"{stack_name}/{logical_id}".encode()).hexdigest().upper()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "".join(alphabet[int(digest[i : i + 2], 16) % len(alphabet)] for i in range(0, 24, 2))


def generated_name(stack_name: str, logical_id: str, resource_type: str) -> str:
    """The name CloudFormation-style naming gives a resource the template leaves unnamed.

    Deterministic (the suffix is derived from stack and logical id), so the local names are stable
    across runs.
    """
    limit = _NAME_LIMITS.get(resource_type, 128)
    suffix = _suffix(stack_name, logical_id)
    head = logical_id if resource_type in _NAMED_WITHOUT_STACK else f"{stack_name}-{logical_id}"
    room = limit - len(suffix) - 1
    name = f"{head[:room]}-{suffix}"
    if resource_type == "AWS::S3::Bucket":
        name = name.lower()
    return name


# ---------------------------------------------------------------------------------------- intrinsics


class _NoValue:
    """``AWS::NoValue``: the property or list item disappears."""

    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()


@dataclass
class _Context:
    stack_name: str
    region: str
    account_id: str
    parameters: dict[str, str]
    parameter_types: dict[str, str]
    conditions: dict[str, bool] = field(default_factory=dict)
    refs: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict)
    template_resources: dict[str, Any] = field(default_factory=dict)

    def pseudo(self, name: str) -> Any:
        values: dict[str, Any] = {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account_id,
            "AWS::Partition": PARTITION,
            "AWS::StackName": self.stack_name,
            "AWS::StackId": (
                f"arn:{PARTITION}:cloudformation:{self.region}:{self.account_id}:stack/{self.stack_name}/"
                f"{_suffix(self.stack_name, 'stack').lower()}"
            ),
            "AWS::URLSuffix": URL_SUFFIX,
            "AWS::NotificationARNs": [],
            "AWS::NoValue": NO_VALUE,
        }
        if name not in values:
            raise TemplateError(f"unknown pseudo parameter {name}")
        return values[name]

    def ref(self, name: str) -> Any:
        if name.startswith("AWS::"):
            return self.pseudo(name)
        if name in self.parameters:
            value = self.parameters[name]
            kind = self.parameter_types.get(name, "String")
            if kind.startswith("List<") or kind == "CommaDelimitedList":
                return value.split(",") if value else []
            return value
        if name in self.refs:
            return self.refs[name]
        if name in self.template_resources:
            raise TemplateError(f"Ref to {name} before it was created (dependency order)")
        raise TemplateError(f"Ref to unknown name {name}")

    def get_att(self, logical_id: str, attribute: str) -> Any:
        attrs = self.attributes.get(logical_id)
        if attrs is None:
            raise TemplateError(f"GetAtt {logical_id}.{attribute}: {logical_id} is not created")
        if attribute not in attrs:
            raise TemplateError(f"GetAtt {logical_id}.{attribute}: attribute not available locally")
        return attrs[attribute]


_SUB_VARIABLE = re.compile(r"\$\{([^}!][^}]*)\}")


def _sub(ctx: _Context, template: str, variables: dict[str, Any]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1).strip()
        if name in variables:
            value = variables[name]
        elif "." in name and not name.startswith("AWS::"):
            logical_id, attribute = name.split(".", 1)
            value = ctx.get_att(logical_id, attribute)
        else:
            value = ctx.ref(name)
        if isinstance(value, list | dict | _NoValue):
            raise TemplateError(f"Fn::Sub variable ${{{name}}} is not a string")
        return str(value)

    # ${!Literal} escapes to ${Literal}.
    return _SUB_VARIABLE.sub(replace, template).replace("${!", "${")


def resolve(ctx: _Context, value: Any) -> Any:
    """Evaluate every intrinsic function in ``value``; drop ``AWS::NoValue`` entries."""
    if isinstance(value, list):
        items = [resolve(ctx, item) for item in value]
        return [item for item in items if item is not NO_VALUE]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((key, arg),) = value.items()
        if key == "Ref":
            return ctx.ref(arg)
        if key == "Condition" and isinstance(arg, str):
            return _condition(ctx, arg)
        if key.startswith("Fn::"):
            return _intrinsic(ctx, key, arg)
    resolved = {k: resolve(ctx, v) for k, v in value.items()}
    return {k: v for k, v in resolved.items() if v is not NO_VALUE}


def _condition(ctx: _Context, name: str) -> bool:
    if name not in ctx.conditions:
        raise TemplateError(f"unknown condition {name}")
    return ctx.conditions[name]


def _intrinsic(ctx: _Context, key: str, arg: Any) -> Any:
    if key == "Fn::GetAtt":
        parts = arg.split(".", 1) if isinstance(arg, str) else arg
        return ctx.get_att(parts[0], resolve(ctx, parts[1]))
    if key == "Fn::Sub":
        if isinstance(arg, str):
            return _sub(ctx, arg, {})
        text, variables = arg
        return _sub(ctx, text, {k: resolve(ctx, v) for k, v in variables.items()})
    if key == "Fn::If":
        name, when_true, when_false = arg
        return resolve(ctx, when_true if _condition(ctx, name) else when_false)
    if key == "Fn::Join":
        delimiter, items = arg
        return delimiter.join(str(item) for item in resolve(ctx, items))
    if key == "Fn::Select":
        index, items = arg
        return resolve(ctx, items)[int(resolve(ctx, index))]
    if key == "Fn::Split":
        delimiter, text = arg
        return str(resolve(ctx, text)).split(delimiter)
    if key == "Fn::Equals":
        left, right = (resolve(ctx, item) for item in arg)
        return str(left) == str(right)
    if key == "Fn::Not":
        return not bool(resolve(ctx, arg[0]))
    if key == "Fn::And":
        return all(bool(resolve(ctx, item)) for item in arg)
    if key == "Fn::Or":
        return any(bool(resolve(ctx, item)) for item in arg)
    if key == "Fn::GetAZs":
        return [f"{ctx.region}{zone}" for zone in "abc"]
    if key == "Fn::Base64":
        return base64.b64encode(str(resolve(ctx, arg)).encode()).decode()
    raise TemplateError(f"intrinsic function {key} is not supported by the local deployer")


# ---------------------------------------------------------------------------------------- dependencies


def _references(value: Any) -> Iterator[str]:
    """Every logical id or parameter name ``value`` refers to."""
    if isinstance(value, list):
        for item in value:
            yield from _references(item)
    elif isinstance(value, dict):
        for key, arg in value.items():
            if key == "Ref" and isinstance(arg, str):
                yield arg
            elif key == "Fn::GetAtt":
                yield (arg.split(".", 1) if isinstance(arg, str) else arg)[0]
            elif key == "Fn::Sub":
                text = arg if isinstance(arg, str) else arg[0]
                for match in _SUB_VARIABLE.finditer(text):
                    yield match.group(1).split(".", 1)[0].strip()
                if not isinstance(arg, str):
                    yield from _references(arg[1])
            else:
                yield from _references(arg)


def creation_order(resources: dict[str, Any]) -> list[str]:
    """Logical ids in an order where each resource comes after everything it refers to."""
    depends: dict[str, set[str]] = {}
    for logical_id, resource in resources.items():
        refs = {name for name in _references(resource) if name in resources and name != logical_id}
        depends_on = resource.get("DependsOn", [])
        refs |= {depends_on} if isinstance(depends_on, str) else set(depends_on)
        depends[logical_id] = refs
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == 2:
            return
        if state.get(node) == 1:
            raise TemplateError(f"circular dependency: {' -> '.join([*path, node])}")
        state[node] = 1
        for dep in sorted(depends[node]):
            visit(dep, [*path, node])
        state[node] = 2
        order.append(node)

    for logical_id in resources:
        visit(logical_id, [])
    return order


# ---------------------------------------------------------------------------------------- parameters


def _parameter_values(template: dict[str, Any], overrides: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    declared = template.get("Parameters", {})
    unknown = set(overrides) - set(declared)
    if unknown:
        raise TemplateError(f"unknown parameters: {', '.join(sorted(unknown))}")
    values: dict[str, str] = {}
    types: dict[str, str] = {}
    for name, spec in declared.items():
        types[name] = spec.get("Type", "String")
        if name in overrides:
            value = str(overrides[name])
        elif "Default" in spec:
            value = str(spec["Default"])
        else:
            raise TemplateError(f"parameter {name} has no default and no value was given")
        _check_parameter(name, spec, value)
        values[name] = value
    return values, types


def _check_parameter(name: str, spec: dict[str, Any], value: str) -> None:
    allowed = spec.get("AllowedValues")
    if allowed is not None and value not in [str(item) for item in allowed]:
        raise TemplateError(f"parameter {name}={value!r} is not one of {allowed}")
    pattern = spec.get("AllowedPattern")
    if pattern is not None and not re.fullmatch(pattern, value):
        raise TemplateError(f"parameter {name}={value!r} does not match {pattern}")
    if spec.get("Type") == "Number":
        try:
            number = float(value)
        except ValueError as exc:
            raise TemplateError(f"parameter {name}={value!r} is not a number") from exc
        if "MinValue" in spec and number < float(spec["MinValue"]):
            raise TemplateError(f"parameter {name}={value} is below {spec['MinValue']}")
        if "MaxValue" in spec and number > float(spec["MaxValue"]):
            raise TemplateError(f"parameter {name}={value} is above {spec['MaxValue']}")


def _evaluate_conditions(ctx: _Context, template: dict[str, Any]) -> None:
    pending = dict(template.get("Conditions", {}))
    while pending:
        progressed = False
        for name, expression in list(pending.items()):
            try:
                ctx.conditions[name] = bool(resolve(ctx, expression))
            except TemplateError as exc:
                if "unknown condition" not in str(exc):
                    raise
                continue
            del pending[name]
            progressed = True
        if not progressed:
            raise TemplateError(f"conditions cannot be evaluated: {', '.join(sorted(pending))}")


# ---------------------------------------------------------------------------------------- names of a template


def local_resource_names(template: dict[str, Any], stack_name: str = "layershift") -> dict[str, str]:
    """Logical id -> the physical name the local deployer gives each resource of ``template``.

    Covers every resource whose Condition holds with the default parameters, plus the
    ``<LogicalId>Role`` roles SAM generates for functions and state machines. Names set in the
    template through ``!Sub`` of the stack name or parameters are evaluated; names that depend on
    other resources (``/aws/lambda/${Function}``) are evaluated against the generated names.
    """
    values, types = _parameter_values(template, {})
    ctx = _Context(stack_name, "us-east-1", "000000000000", values, types)
    ctx.template_resources = template["Resources"]
    _evaluate_conditions(ctx, template)
    names: dict[str, str] = {}
    resources = template["Resources"]
    for logical_id in creation_order(resources):
        resource = resources[logical_id]
        if "Condition" in resource and not ctx.conditions[resource["Condition"]]:
            continue
        rtype = resource["Type"]
        name = _physical_name(ctx, logical_id, resource)
        if name is not None:
            names[logical_id] = name
            ctx.refs[logical_id] = name
            ctx.attributes[logical_id] = _NameOnlyAttributes(name)
        if rtype in _SAM_ROLE_TYPES:
            role_id = f"{logical_id}Role"
            names[role_id] = generated_name(stack_name, role_id, "AWS::IAM::Role")
    return names


class _NameOnlyAttributes(dict):
    """Attribute lookups that answer with the name (enough to evaluate names of other resources)."""

    def __init__(self, name: str):
        super().__init__()
        self._name = name

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> str:
        return self._name


def _physical_name(ctx: _Context, logical_id: str, resource: dict[str, Any]) -> str | None:
    rtype = resource["Type"]
    if rtype == "AWS::S3::BucketPolicy":
        return str(resolve(ctx, resource["Properties"]["Bucket"]))
    if rtype in ("AWS::Lambda::Permission", "AWS::SNS::Subscription"):
        # A permission is the function policy statement named after its logical id.
        return logical_id
    prop = _NAME_PROPERTIES.get(rtype)
    if prop is None:
        return None
    declared = resource.get("Properties", {}).get(prop)
    if declared is not None:
        return str(resolve(ctx, declared))
    if rtype == "AWS::Logs::LogGroup":
        return f"/aws/cloudformation/{generated_name(ctx.stack_name, logical_id, rtype)}"
    if rtype == "AWS::Serverless::LayerVersion":
        # SAM names an unnamed layer after its logical id.
        return logical_id
    return generated_name(ctx.stack_name, logical_id, rtype)


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
    def __init__(self, aws: LocalAwsLike, project_root: Path, template: dict[str, Any], ctx: _Context):
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
            "AWS::Logs::LogGroup": self._log_group,
            "AWS::IAM::Role": self._role,
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
        prop = _NAME_PROPERTIES[resource["Type"]]
        props.take(prop)
        name = _physical_name(self.ctx, logical_id, resource)
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
        kept = [statement for statement in statements if not _is_tls_only_statement(statement)]
        if len(kept) != len(statements):
            # The local endpoint is plain HTTP on 127.0.0.1, standing in for AWS's HTTPS endpoint:
            # a TLS-only deny would refuse every local request, so it is recorded, not applied.
            self.stack.local_adaptations[logical_id] = (
                "aws:SecureTransport deny statements not applied: the local endpoint is HTTP on loopback"
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
        )
        for policy in props.take("Policies", []):
            iam.put_role_policy(
                RoleName=name, PolicyName=policy["PolicyName"], PolicyDocument=json.dumps(policy["PolicyDocument"])
            )
        for policy_arn in props.take("ManagedPolicyArns", []):
            self._attach_managed_policy(name, policy_arn)
        role = iam.get_role(RoleName=name)["Role"]
        return _Created(name, name, role["Arn"], {"Arn": role["Arn"], "RoleId": role["RoleId"]})

    def _attach_managed_policy(self, role_name: str, policy_arn: str) -> None:
        if policy_arn.startswith(f"arn:{PARTITION}:iam::aws:policy/"):
            _ensure_aws_managed_policy(self.account, policy_arn)
        self.client("iam").attach_role_policy(RoleName=role_name, PolicyArn=policy_arn)

    def _sam_role(self, owner_id: str, principal: str, policies: list[Any], managed: list[str]) -> str:
        """The role SAM generates for a function or state machine (``<LogicalId>Role``)."""
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
        role_arn = role or self._sam_role(logical_id, _SAM_ROLE_TYPES[rtype], policies, managed)
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
        for key in ("ReservedConcurrentExecutions",):
            value = props.take(key)
            if value is not None:
                raise UnsupportedResource(logical_id, rtype, f"{key} is not supported by the local deployer")
        response = self.client("lambda").create_function(**kwargs)
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
            logical_id, _SAM_ROLE_TYPES[rtype], policies, [_XRAY_WRITE_ONLY] if tracing.get("Enabled") else []
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


def _is_tls_only_statement(statement: dict[str, Any]) -> bool:
    condition = statement.get("Condition") or {}
    secure = (condition.get("Bool") or {}).get("aws:SecureTransport")
    return statement.get("Effect") == "Deny" and str(secure).lower() == "false" and len(condition) == 1


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
    values, types = _parameter_values(template, {k: str(v) for k, v in (parameters or {}).items()})
    ctx = _Context(stack_name, aws.region, aws.account_id, values, types)
    ctx.template_resources = template["Resources"]
    _evaluate_conditions(ctx, template)
    stack = DeployedStack(stack_name, aws.region, aws.account_id, values, dict(ctx.conditions))
    deployer = _Deployer(aws, project_root, template, ctx)
    deployer.stack = stack
    resources = template["Resources"]
    for logical_id in creation_order(resources):
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
