"""Aliases that CodeDeploy manages, which layershift must leave alone.

SAM's `AutoPublishAlias` with a `DeploymentPreference`, like any CloudFormation `AWS::Lambda::Alias`
with an `UpdatePolicy` of `CodeDeployLambdaAliasUpdate`, hands the alias to CodeDeploy: a weighted
shift by layershift would fight CodeDeploy's own, and the next `sam deploy` would undo it.

The stack that owns the function (or the alias) is found by its physical id, then the stack's
template says whether the alias carries that UpdatePolicy. The Processed template of a SAM stack is
the transformed one (JSON, with the generated alias and its UpdatePolicy); an untransformed SAM
template is recognised too, by `AutoPublishAlias` and `DeploymentPreference` on the function.

Not detected: a CodeDeploy deployment started outside CloudFormation (CodeDeploy's
ListDeploymentTargets/BatchGetDeploymentTargets would find one, and moto cannot emulate them).
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from botocore.exceptions import ClientError

from .aws import client, error_code
from .cfn_yaml import load_cloudformation_yaml
from .errors import CodeDeployCheckFailed
from .observability import logger

UPDATE_POLICY = "CodeDeployLambdaAliasUpdate"
# Read errors that say "not allowed to look" or "look later", not "the program is wrong".
_UNREADABLE = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
    }
)
# A resource in one of these states is no longer under the stack's control (deleted, or retained).
_GONE = frozenset({"DELETE_COMPLETE", "DELETE_SKIPPED"})
# DescribeStackResources returns at most this many resources; ListStackResources pages through all.
_DESCRIBE_LIMIT = 100


class _Unparsable(ValueError):
    """A template body this module cannot read."""


def _unreadable(exc: ClientError, name: str, alias: str) -> CodeDeployCheckFailed:
    return CodeDeployCheckFailed(
        f"could not tell whether CodeDeploy manages alias {alias!r} of {name}: {error_code(exc)} on "
        f"cloudformation:{exc.operation_name}. layershift never shifts an alias it cannot check; "
        "give the control plane cloudformation:DescribeStackResources, ListStackResources and GetTemplate"
    )


class StackTemplates:
    """CloudFormation ownership for a batch of functions, looked up once per stack.

    A function that CloudFormation created carries the tag ``aws:cloudformation:stack-id``: its
    stack's resources (ListStackResources) and template (GetTemplate) are read once for every
    function of that stack. A function without the tag is in no stack, and costs no call. An alias
    declared in another stack than its function's is not looked for (that would cost a call per
    function); neither is a CodeDeploy deployment started outside CloudFormation.
    """

    def __init__(self) -> None:
        self._stacks: dict[str, tuple[str, list[dict[str, Any]], Any]] = {}

    def _stack(self, stack_id: str) -> tuple[str, list[dict[str, Any]], Any]:
        if stack_id not in self._stacks:
            resources: list[dict[str, Any]] = []
            paginator = client("cloudformation").get_paginator("list_stack_resources")
            for page in paginator.paginate(StackName=stack_id):
                resources.extend(page.get("StackResourceSummaries", []))
            name = stack_id.split(":stack/", 1)[-1].split("/", 1)[0]
            self._stacks[stack_id] = (name, resources, _template_body(stack_id))
        return self._stacks[stack_id]

    def codedeploy_manager(self, name: str, alias: str, alias_arn: str | None, stack_id: str | None) -> str | None:
        """As ``codedeploy_manager``, for a function of the stack ``stack_id`` (None: in no stack)."""
        if not stack_id:
            return None
        try:
            stack_name, resources, body = self._stack(stack_id)
        except ClientError as exc:
            if error_code(exc) == "ValidationError":  # the stack is gone: nothing manages the alias
                return None
            if error_code(exc) not in _UNREADABLE:
                raise
            raise _unreadable(exc, name, alias) from exc
        function = _function_resource(resources, name)
        if function is None or function.get("ResourceStatus") in _GONE:
            return None
        return _check_template(stack_name, resources, body, function.get("LogicalResourceId"), name, alias, alias_arn)


def codedeploy_manager(function_name: str, alias: str, alias_arn: str | None = None) -> str | None:
    """None when CodeDeploy does not manage `function_name`'s alias `alias`, else why it does.

    The reason names the stack, the resource and, where the template gives them, the CodeDeploy
    application and deployment group; it reads as a plan's skip reason. `alias_arn` (from GetAlias)
    also finds an alias that a stack other than the function's declares.

    AccessDenied, or throttling that outlasts the SDK's retries, on the CloudFormation reads raises
    CodeDeployCheckFailed: an alias that cannot be checked is never shifted; any other error is
    raised as it is.
    """
    name = _function_name(function_name)
    try:
        return _through_cloudformation(name, alias, alias_arn)
    except ClientError as exc:
        if error_code(exc) not in _UNREADABLE:
            raise
        raise _unreadable(exc, name, alias) from exc


def _through_cloudformation(name: str, alias: str, alias_arn: str | None) -> str | None:
    alias_in_stack = False
    stack = _owning_stack(name)
    if stack is not None:
        stack_id, stack_name, resources = stack
        function = _function_resource(resources, name)
        if function is not None and function.get("ResourceStatus") not in _GONE:
            reason = _check_stack(
                stack_id, stack_name, resources, function.get("LogicalResourceId"), name, alias, alias_arn
            )
            if reason:
                return reason
        alias_in_stack = any(_is_the_alias(r, name, alias, alias_arn) for r in resources)
    if alias_arn and not alias_in_stack:
        # The alias may be declared in another stack than the function (FunctionName given literally).
        other = _owning_stack(alias_arn)
        if other is not None and (stack is None or other[0] != stack[0]):
            stack_id, stack_name, resources = other
            return _check_stack(stack_id, stack_name, resources, None, name, alias, alias_arn)
    return None


def _function_resource(resources: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The stack's resource that is the function ``name``."""
    return next(
        (
            r
            for r in resources
            if r.get("ResourceType") == "AWS::Lambda::Function" and r.get("PhysicalResourceId") == name
        ),
        None,
    )


def _owning_stack(physical_id: str) -> tuple[str, str, list[dict[str, Any]]] | None:
    """(stack id, stack name, every resource of the stack) for the stack that created `physical_id`."""
    cloudformation = client("cloudformation")
    try:
        described = cloudformation.describe_stack_resources(PhysicalResourceId=physical_id)["StackResources"]
    except ClientError as exc:
        if error_code(exc) == "ValidationError":  # "Stack for <id> does not exist": not a stack's resource
            return None
        raise
    if not described:
        return None
    stack_id, stack_name = described[0]["StackId"], described[0]["StackName"]
    if len(described) < _DESCRIBE_LIMIT:
        return stack_id, stack_name, described
    resources: list[dict[str, Any]] = []
    for page in cloudformation.get_paginator("list_stack_resources").paginate(StackName=stack_id):
        resources.extend(page.get("StackResourceSummaries", []))
    return stack_id, stack_name, resources


def _check_stack(
    stack_id: str,
    stack_name: str,
    resources: list[dict[str, Any]],
    function_id: str | None,
    name: str,
    alias: str,
    alias_arn: str | None,
) -> str | None:
    """The reason when the stack's template hands `alias` to CodeDeploy, else None."""
    return _check_template(stack_name, resources, _template_body(stack_id), function_id, name, alias, alias_arn)


def _check_template(
    stack_name: str,
    resources: list[dict[str, Any]],
    body: Any,
    function_id: str | None,
    name: str,
    alias: str,
    alias_arn: str | None,
) -> str | None:
    """The reason when the template (``body``) of the stack hands `alias` to CodeDeploy, else None."""
    alias_ids = {
        r.get("LogicalResourceId")
        for r in resources
        if _is_the_alias(r, name, alias, alias_arn) and r.get("ResourceStatus") not in _GONE
    }
    try:
        template = _parse(body)
    except _Unparsable as exc:
        return _unparsable_reason(body, stack_name, alias, str(exc))
    physical = {r.get("LogicalResourceId"): r.get("PhysicalResourceId") for r in resources}
    declared = template.get("Resources")
    if not isinstance(declared, dict):
        return None
    for logical_id, resource in declared.items():
        if not isinstance(resource, dict):
            continue
        properties = resource.get("Properties") or {}
        if resource.get("Type") == "AWS::Lambda::Alias":
            ours = logical_id in alias_ids or (
                properties.get("Name") == alias and _refers_to(properties.get("FunctionName"), function_id, name)
            )
            policy = _codedeploy_policy(resource.get("UpdatePolicy")) if ours else None
            if policy is not None:
                application = _value(policy.get("ApplicationName"), physical)
                group = _value(policy.get("DeploymentGroupName"), physical)
                names = ", ".join(
                    part
                    for part in (
                        f"application {application}" if application else "",
                        f"deployment group {group}" if group else "",
                    )
                    if part
                )
                by = f"CodeDeploy ({names})" if names else "CodeDeploy"
                return (
                    f"alias {alias!r} is updated by {by} through the {UPDATE_POLICY} UpdatePolicy "
                    f"of {logical_id} in stack {stack_name}"
                )
        elif resource.get("Type") == "AWS::Serverless::Function" and function_id and logical_id == function_id:
            reason = _sam_reason(template, logical_id, properties, stack_name, alias)
            if reason:
                return reason
    return None


def _sam_reason(
    template: dict[str, Any], logical_id: str, properties: dict[str, Any], stack_name: str, alias: str
) -> str | None:
    """An untransformed SAM function: AutoPublishAlias plus an enabled DeploymentPreference."""
    defaults = (template.get("Globals") or {}).get("Function") or {}
    published = properties.get("AutoPublishAlias", defaults.get("AutoPublishAlias"))
    preference = properties.get("DeploymentPreference", defaults.get("DeploymentPreference"))
    if isinstance(defaults.get("DeploymentPreference"), dict) and isinstance(preference, dict):
        preference = {**defaults["DeploymentPreference"], **preference}  # SAM merges Globals into the function
    if not isinstance(preference, dict) or published is None:
        return None
    if isinstance(published, str) and published != alias:
        return None
    # A parameter (an intrinsic) may name the alias: CodeDeploy may own this one, so it counts.
    if preference.get("Enabled", True) in (False, "false", "False"):
        return None
    kind = preference.get("Type")
    how = f" ({kind})" if isinstance(kind, str) else ""
    return (
        f"alias {alias!r} is published by SAM's AutoPublishAlias on {logical_id} in stack {stack_name} "
        f"and shifted by CodeDeploy through its DeploymentPreference{how}"
    )


def _template_body(stack_id: str) -> Any:
    """The Processed template (SAM transformed), or the Original one when Processed is unavailable."""
    cloudformation = client("cloudformation")
    try:
        return cloudformation.get_template(StackName=stack_id, TemplateStage="Processed")["TemplateBody"]
    except ClientError as exc:
        if error_code(exc) != "ValidationError":
            raise
    return cloudformation.get_template(StackName=stack_id, TemplateStage="Original")["TemplateBody"]


def _parse(body: Any) -> dict[str, Any]:
    """A template as a dict: botocore decodes JSON bodies itself; YAML comes as a string."""
    if isinstance(body, dict):
        return body
    if not isinstance(body, str):
        raise _Unparsable(f"a template body of type {type(body).__name__}")
    try:
        document = json.loads(body)
    except ValueError:
        document = _load_yaml(body)
    if not isinstance(document, dict):
        raise _Unparsable("the template is not a mapping")
    return document


def _load_yaml(text: str) -> Any:
    try:
        return load_cloudformation_yaml(text)
    except yaml.YAMLError as exc:
        raise _Unparsable(f"invalid YAML: {exc}") from exc


def _unparsable_reason(body: Any, stack_name: str, alias: str, why: str) -> str | None:
    """Unreadable template: managed when it mentions CodeDeploy alias updates at all (fail safe)."""
    text = body if isinstance(body, str) else ""
    mentions = UPDATE_POLICY in text or ("AutoPublishAlias" in text and "DeploymentPreference" in text)
    logger.warning(
        "could not parse a stack's template",
        extra={"stack_name": stack_name, "reason": why, "mentions_codedeploy": mentions},
    )
    if not mentions:
        return None
    return (
        f"stack {stack_name} configures CodeDeploy alias updates and its template could not be read ({why}), "
        f"so alias {alias!r} may be CodeDeploy's"
    )


def _codedeploy_policy(update_policy: Any) -> dict[str, Any] | None:
    """The CodeDeployLambdaAliasUpdate policy, also inside either branch of an Fn::If."""
    if not isinstance(update_policy, dict):
        return None
    policy = update_policy.get(UPDATE_POLICY)
    if policy is not None:
        return policy if isinstance(policy, dict) else {}
    branches = update_policy.get("Fn::If")
    if isinstance(branches, list):
        for branch in branches[1:]:
            found = _codedeploy_policy(branch)
            if found is not None:
                return found
    return None


def _refers_to(value: Any, function_id: str | None, name: str) -> bool:
    """Whether an alias's FunctionName is the function: by Ref, GetAtt, Sub, its name or its ARN."""
    if isinstance(value, str):
        return _function_name(value) == name
    if not isinstance(value, dict) or not function_id:
        return False
    if "Ref" in value:
        return value["Ref"] == function_id
    if "Fn::GetAtt" in value:
        target = value["Fn::GetAtt"]
        target = target.split(".", 1) if isinstance(target, str) else target
        return isinstance(target, list) and bool(target) and target[0] == function_id
    if "Fn::Sub" in value:
        sub = value["Fn::Sub"]
        sub = sub[0] if isinstance(sub, list) and sub else sub
        return isinstance(sub, str) and ("${" + function_id + "}" in sub or "${" + function_id + ".Arn}" in sub)
    return False


def _is_the_alias(resource: dict[str, Any], name: str, alias: str, alias_arn: str | None) -> bool:
    """A stack resource that is this alias (its physical id is the alias ARN)."""
    if resource.get("ResourceType") != "AWS::Lambda::Alias":
        return False
    physical = resource.get("PhysicalResourceId") or ""
    if alias_arn and physical == alias_arn:
        return True
    parts = physical.split(":")
    return len(parts) == 8 and parts[5] == "function" and parts[6] == name and parts[7] == alias


def _value(value: Any, physical: dict[Any, Any]) -> str | None:
    """A literal string, or a Ref to a resource of the stack resolved to its physical id."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("Ref"), str):
        resolved = physical.get(value["Ref"])
        return resolved if isinstance(resolved, str) and resolved else None
    return None


def _function_name(function: str) -> str:
    """`arn:aws:lambda:r:a:function:NAME[:qualifier]` (or a partial ARN) → `NAME`; a name stays as it is."""
    parts = function.split(":")
    if "function" in parts[:-1]:
        return parts[parts.index("function") + 1]
    return function
