"""template.yaml as data: loading, parameters, conditions, intrinsic functions and physical names.

The local AWS has no SAM transform and moto's CloudFormation skips several resource types the
template uses, so the local deploy evaluates the template itself. This module is that evaluation;
`deploy.py` creates the resources.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layershift_core.cfn_yaml import load_cloudformation_yaml

TEMPLATE_FILE = "template.yaml"
PARTITION = "aws"
URL_SUFFIX = "amazonaws.com"

# AWS managed policies SAM attaches to the roles it generates.
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
    "AWS::SQS::Queue": 80,
    "AWS::CloudWatch::Alarm": 255,
}
# Types CloudFormation names without the stack name in front.
_NAMED_WITHOUT_STACK = {"AWS::CodeBuild::Project", "AWS::Serverless::StateMachine"}
# The property that names a resource when the template sets it.
NAME_PROPERTIES: dict[str, str] = {
    "AWS::S3::Bucket": "BucketName",
    "AWS::DynamoDB::Table": "TableName",
    "AWS::SNS::Topic": "TopicName",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::IAM::Role": "RoleName",
    "AWS::IAM::Policy": "PolicyName",
    "AWS::CodeBuild::Project": "Name",
    "AWS::Events::Rule": "Name",
    "AWS::Serverless::Function": "FunctionName",
    "AWS::Serverless::StateMachine": "Name",
    "AWS::Serverless::LayerVersion": "LayerName",
    "AWS::SQS::Queue": "QueueName",
    "AWS::CloudWatch::Alarm": "AlarmName",
    "AWS::CloudWatch::Dashboard": "DashboardName",
}
# SAM resources that bring a generated IAM role named <LogicalId>Role.
SAM_ROLE_TYPES = {
    "AWS::Serverless::Function": "lambda.amazonaws.com",
    "AWS::Serverless::StateMachine": "states.amazonaws.com",
}


class TemplateError(ValueError):
    """The template, or a parameter value given for it, is invalid."""


# ---------------------------------------------------------------------------------------- YAML


def load_template(path: Path) -> dict[str, Any]:
    """Parse a CloudFormation/SAM YAML template, short-form intrinsics included."""
    with path.open(encoding="utf-8") as stream:
        document = load_cloudformation_yaml(stream)
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
class TemplateContext:
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


def _sub(ctx: TemplateContext, template: str, variables: dict[str, Any]) -> str:
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


def resolve(ctx: TemplateContext, value: Any) -> Any:
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


def _condition(ctx: TemplateContext, name: str) -> bool:
    if name not in ctx.conditions:
        raise TemplateError(f"unknown condition {name}")
    return ctx.conditions[name]


def _intrinsic(ctx: TemplateContext, key: str, arg: Any) -> Any:
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


def _owner(name: str, resources: dict[str, Any]) -> str:
    """The logical id that creates ``name``: SAM's generated ``<Id>Role`` is created with ``<Id>``."""
    owner = name.removesuffix("Role")
    if name not in resources and owner in resources and resources[owner].get("Type") in SAM_ROLE_TYPES:
        return owner
    return name


_GLOBALS_SECTIONS = {"AWS::Serverless::Function": "Function", "AWS::Serverless::StateMachine": "StateMachine"}


def creation_order(resources: dict[str, Any], globals_: dict[str, Any] | None = None) -> list[str]:
    """Logical ids in an order where each resource comes after everything it refers to, its
    ``Globals`` section included."""
    depends: dict[str, set[str]] = {}
    for logical_id, resource in resources.items():
        section = (globals_ or {}).get(_GLOBALS_SECTIONS.get(resource.get("Type", ""), ""), {})
        owners = {_owner(name, resources) for name in (*_references(resource), *_references(section))}
        refs = {name for name in owners if name in resources and name != logical_id}
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


def parameter_values(template: dict[str, Any], overrides: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
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


def evaluate_conditions(ctx: TemplateContext, template: dict[str, Any]) -> None:
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
    values, types = parameter_values(template, {})
    ctx = TemplateContext(stack_name, "us-east-1", "000000000000", values, types)
    ctx.template_resources = template["Resources"]
    evaluate_conditions(ctx, template)
    names: dict[str, str] = {}
    resources = template["Resources"]
    for logical_id in creation_order(resources, template.get("Globals", {})):
        resource = resources[logical_id]
        if "Condition" in resource and not ctx.conditions[resource["Condition"]]:
            continue
        rtype = resource["Type"]
        name = physical_name(ctx, logical_id, resource)
        if name is not None:
            names[logical_id] = name
            ctx.refs[logical_id] = name
            ctx.attributes[logical_id] = _NameOnlyAttributes(name)
        if rtype in SAM_ROLE_TYPES and "Role" not in resource.get("Properties", {}):
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


def physical_name(ctx: TemplateContext, logical_id: str, resource: dict[str, Any]) -> str | None:
    rtype = resource["Type"]
    if rtype == "AWS::S3::BucketPolicy":
        return str(resolve(ctx, resource["Properties"]["Bucket"]))
    if rtype in ("AWS::Lambda::Permission", "AWS::SNS::Subscription", "AWS::SQS::QueuePolicy", "AWS::KMS::Key"):
        # A permission is the function policy statement named after its logical id; a queue policy
        # and a KMS key have no name of their own (a key's id is chosen when it is created).
        return logical_id
    prop = NAME_PROPERTIES.get(rtype)
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
