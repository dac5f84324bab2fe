"""A recorded AWS call (``layershift/local/call_recorder.py``) as the IAM requests AWS evaluates for
it: the action, the resource ARN, the principal and its policies as deployed, the resource policy,
and the condition context (tags of the Lambda function read from the local AWS, the layers of an
update, session tags, the request's tags and prefix). A publish to a topic encrypted with a
customer managed key also needs that key, used by SNS with the publisher's permissions.

An operation this module does not know raises :class:`UnknownOperation`: a new call must be
described here before it can pass. Whether an action takes a resource at all comes from the
service authorization reference that iam-simulate ships (iam-data): an action with no resource
types is evaluated on ``*``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .deployed import DeployedAccount
from .principals import RoleSession
from .simulator import Context, IamRequest, Policy, actions_of

# boto3 service name -> IAM service prefix, where they differ.
IAM_PREFIX = {"stepfunctions": "states", "resourcegroupstaggingapi": "tag"}

# Every operation this module translates, with its IAM action where the action is not named after
# the operation. Versioned S3 reads, CopyObject, TransactWriteItems, AssumeRole with tags and a
# publish to an encrypted topic are expanded below.
KNOWN_OPERATIONS: dict[str, dict[str, str | None]] = {
    "lambda": {
        "GetFunction": None,
        "GetFunctionConfiguration": None,
        "GetAlias": None,
        "ListAliases": None,
        "CreateAlias": None,
        "UpdateAlias": None,
        "PublishVersion": None,
        "UpdateFunctionConfiguration": None,
        "ListFunctions": None,
        "ListVersionsByFunction": None,
        "ListTags": None,
        "GetPolicy": None,
        "Invoke": "InvokeFunction",
        "GetLayerVersion": None,
        "GetLayerVersionByArn": "GetLayerVersion",
        "PublishLayerVersion": None,
        "ListLayerVersions": None,
        "AddLayerVersionPermission": None,
        "RemoveLayerVersionPermission": None,
        "GetLayerVersionPolicy": None,
        "DeleteLayerVersion": None,
        "DeleteFunction": None,
    },
    "s3": {
        "GetObject": None,
        "HeadObject": "GetObject",
        "PutObject": None,
        "DeleteObject": None,
        "CopyObject": "PutObject",
        "ListObjectsV2": "ListBucket",
        "ListObjectVersions": "ListBucketVersions",
    },
    "dynamodb": {
        "GetItem": None,
        "PutItem": None,
        "UpdateItem": None,
        "DeleteItem": None,
        "Query": None,
        "Scan": None,
        "TransactWriteItems": None,
    },
    "stepfunctions": {
        "StartExecution": None,
        "DescribeExecution": None,
        "StopExecution": None,
        "GetExecutionHistory": None,
        "SendTaskSuccess": None,
        "SendTaskFailure": None,
        "SendTaskHeartbeat": None,
        "DescribeMapRun": None,
        "ListExecutions": None,
    },
    "cloudwatch": {"DescribeAlarms": None, "GetMetricData": None},
    "sns": {"Publish": None},
    "ssm": {
        "GetParameter": None,
        "PutParameter": None,
        "DeleteParameter": None,
        "DescribeParameters": None,
        "GetParametersByPath": None,
        "AddTagsToResource": None,
    },
    "resourcegroupstaggingapi": {"GetResources": None},
    "cloudformation": {
        "ListStacks": None,
        "GetTemplate": None,
        "ListStackResources": None,
        "DescribeStackResources": None,
    },
    "codecommit": {"GetDifferences": None, "GetFile": None, "GetCommit": None},
    "sts": {"AssumeRole": None},
}

# DynamoDB's transaction items, by the IAM action each one needs on its table.
_TRANSACTION_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}
_ALIAS_OPERATIONS = {"GetAlias", "CreateAlias", "UpdateAlias", "DeleteAlias"}
_FUNCTION_ARN = re.compile(r"^(?:arn:[^:]+:lambda:[^:]+:)?(?:\d{12}:)?(?:function:)?([A-Za-z0-9_-]+)(?::([^:]+))?$")


class UnknownOperation(AssertionError):
    """A recorded call that this module cannot yet translate into IAM requests."""


@dataclass(frozen=True)
class Translated:
    """One IAM request of a recorded call, with the call it came from (for messages)."""

    call: dict[str, Any]
    request: IamRequest

    def describe(self) -> str:
        call = self.call
        return f"{call['function']} ({call['service']}.{call['operation']}): {self.request.describe()}"


def load_calls(path: Path, since: float = 0.0) -> list[dict[str, Any]]:
    """The calls recorded in ``path`` from the epoch time ``since`` on."""
    if not path.is_file():
        return []
    calls = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [call for call in calls if call["time"] >= since]


def iam_requests(call: dict[str, Any], account: DeployedAccount) -> list[Translated]:
    """The IAM requests AWS evaluates for ``call``."""
    service, operation = call["service"], call["operation"]
    known = KNOWN_OPERATIONS.get(service, {})
    if operation not in known:
        raise UnknownOperation(
            f"{call['function']} made {service}.{operation}, which tests/iam/recorded_calls.py does not "
            f"translate into IAM requests yet (params {call['params']}): add its action and resource there"
        )
    prefix = IAM_PREFIX.get(service, service)
    action = known[operation] or operation
    params = call["params"]
    signer = _signer(call, account)
    if service == "s3":
        pairs = _s3(operation, action, params, account)
    elif service == "dynamodb" and operation == "TransactWriteItems":
        pairs = [
            (_TRANSACTION_ACTIONS[kind], account.arn("dynamodb", f"table/{table}"), {})
            for item in params.get("TransactItems", [])
            for kind, table in item.items()
        ]
        if not pairs:
            raise UnknownOperation(f"{call['function']} made TransactWriteItems with no items recorded: {params}")
    elif service == "sts":
        pairs = _assume_role(params)
    elif service == "cloudwatch" and params.get("AlarmNames"):
        pairs = [(action, account.arn("cloudwatch", f"alarm:{name}"), {}) for name in params["AlarmNames"]]
    else:
        pairs = [(action, _resource(service, operation, params, account), _condition_context(operation, params))]
    requests = [(f"{prefix}:{name}", resource, context) for name, resource, context in pairs]
    if service == "sns" and operation == "Publish":
        requests += _topic_key_use(str(params.get("TopicArn") or params.get("TargetArn")), account)
    translated = []
    for full_action, resource, context in requests:
        if not _takes_a_resource(*full_action.split(":", 1)):
            resource = "*"
        context = {**context, **_resource_context(resource, account)}
        policy = _resource_policy(full_action.split(":", 1)[0], resource, account)
        translated.append(Translated(call, signer.request(account, full_action, resource, context, policy)))
    return translated


def _topic_key_use(topic_arn: str, account: DeployedAccount) -> list[tuple[str, str, Context]]:
    """Publishing to a topic encrypted with a customer managed key: SNS uses the key on the
    publisher's behalf, with the publisher's permissions (kms:ViaService says through SNS)."""
    key_arn = account.topic_key(topic_arn)
    if key_arn is None:
        return []
    via_sns = f"sns.{account.region}.amazonaws.com"
    context: Context = {"kms:ViaService": via_sns, "kms:CallerAccount": account.account_id}
    return [("kms:GenerateDataKey", key_arn, context), ("kms:Decrypt", key_arn, context)]


def _signer(call: dict[str, Any], account: DeployedAccount) -> RoleSession:
    """Who signed a call: the function's execution role, or a role session it assumed."""
    signer = call["principal"]
    if not signer.get("role_arn"):
        raise AssertionError(
            f"{call['function']}'s {call['service']}.{call['operation']} was signed by credentials that are "
            f"neither its execution role's nor a role session it assumed: {signer}"
        )
    return RoleSession(
        role_arn=signer["role_arn"],
        session_name=signer.get("session_name") or call["function"],
        account_id=account.account_id,
        session_tags=tuple(sorted((signer.get("session_tags") or {}).items())),
    )


def _takes_a_resource(prefix: str, action: str) -> bool:
    """Whether the action has resource types (else IAM evaluates it on ``*``)."""
    details = actions_of(prefix).get(action.lower())
    if details is None:
        raise UnknownOperation(f"{prefix}:{action} is not an action of the service authorization reference")
    return bool(details["resourceTypes"])


def _function_arn(account: DeployedAccount, name: str, qualifier: str | None = None) -> str:
    match = _FUNCTION_ARN.match(name)
    if match is None:
        raise UnknownOperation(f"cannot read a function name from {name!r}")
    function, embedded = match.groups()
    qualifier = qualifier or embedded
    return account.arn("lambda", f"function:{function}" + (f":{qualifier}" if qualifier else ""))


def _resource(service: str, operation: str, params: dict[str, Any], account: DeployedAccount) -> str:
    if service == "lambda":
        if "FunctionName" in params:
            qualifier = params.get("Name") if operation in _ALIAS_OPERATIONS else params.get("Qualifier")
            return _function_arn(account, params["FunctionName"], qualifier)
        if "Arn" in params:
            return str(params["Arn"])
        if "LayerName" in params:
            layer = str(params["LayerName"])
            arn = layer if layer.startswith("arn:") else account.arn("lambda", f"layer:{layer}")
            return f"{arn}:{params['VersionNumber']}" if "VersionNumber" in params else arn
        return "*"
    if service == "dynamodb":
        table = account.arn("dynamodb", f"table/{params['TableName']}")
        return f"{table}/index/{params['IndexName']}" if params.get("IndexName") else table
    if service == "stepfunctions":
        for key in ("executionArn", "mapRunArn", "stateMachineArn"):
            if key in params:
                return str(params[key])
        return "*"
    if service == "sns":
        return str(params.get("TopicArn") or params.get("TargetArn") or "*")
    if service == "ssm":
        name = params.get("Name") or params.get("ResourceId") or params.get("Path")
        if not name:
            return "*"
        return account.arn("ssm", "parameter" + (name if str(name).startswith("/") else f"/{name}"))
    if service == "cloudwatch":
        prefix = params.get("AlarmNamePrefix", "")
        return account.arn("cloudwatch", f"alarm:{prefix}*")
    if service == "cloudformation":
        stack = str(params.get("StackName", "*"))
        return stack if stack.startswith("arn:") else account.arn("cloudformation", f"stack/{stack}/*")
    if service == "codecommit":
        return account.arn("codecommit", str(params.get("repositoryName", "*")))
    return "*"


def _condition_context(operation: str, params: dict[str, Any]) -> Context:
    """The request's own condition keys."""
    context: Context = {}
    if operation == "UpdateFunctionConfiguration" and "Layers" in params:
        context["lambda:Layer"] = list(params["Layers"])
    if operation == "PutParameter":
        context["ssm:Overwrite"] = "true" if params.get("Overwrite") else "false"
    tags = params.get("Tags")
    if isinstance(tags, list) and tags:
        context.update({f"aws:RequestTag/{tag['Key']}": tag["Value"] for tag in tags})
        context["aws:TagKeys"] = [tag["Key"] for tag in tags]
    return context


def _resource_context(resource: str, account: DeployedAccount) -> Context:
    """A Lambda function's tags, as IAM sees them on a request for it (aws:ResourceTag)."""
    if ":function:" not in resource:
        return {}
    unqualified = ":".join(resource.split(":")[:7])
    return {f"aws:ResourceTag/{key}": value for key, value in account.function_tags(unqualified)}


def _resource_policy(prefix: str, resource: str, account: DeployedAccount) -> Policy | None:
    if prefix == "s3" and resource.startswith("arn:aws:s3:::"):
        return account.bucket_policy(resource.split(":::", 1)[1].split("/", 1)[0])
    if prefix == "sts":
        return account.trust_policy(resource)
    if prefix == "kms":
        return account.key_policy(resource)
    return None


def _s3(
    operation: str, action: str, params: dict[str, Any], account: DeployedAccount
) -> list[tuple[str, str, Context]]:
    bucket = account.arn("s3", params["Bucket"], region=False, account=False)
    if operation in ("ListObjectsV2", "ListObjectVersions"):
        return [(action, bucket, {"s3:prefix": params["Prefix"]} if "Prefix" in params else {})]
    target = f"{bucket}/{params['Key']}"
    if operation == "CopyObject":
        source_bucket, source_key, source_version = _copy_source(params["CopySource"])
        source = account.arn("s3", f"{source_bucket}/{source_key}", region=False, account=False)
        read = "GetObjectVersion" if source_version else "GetObject"
        return [("PutObject", target, {}), (read, source, {})]
    if params.get("VersionId") and action in ("GetObject", "DeleteObject"):
        action += "Version"
    return [(action, target, {})]


def _copy_source(value: Any) -> tuple[str, str, str | None]:
    """CopySource as boto3 takes it: ``{"Bucket", "Key", "VersionId"}`` or ``bucket/key?versionId=v``."""
    if isinstance(value, dict):
        return value["Bucket"], value["Key"], value.get("VersionId")
    path, _, query = str(value).partition("?versionId=")
    bucket, _, key = unquote(path).lstrip("/").partition("/")
    return bucket, key, query or None


def _assume_role(params: dict[str, Any]) -> list[tuple[str, str, Context]]:
    """AssumeRole, and TagSession when the call passes session tags, on the role assumed."""
    tags = params.get("Tags") or []
    context: Context = {}
    if tags:
        context = {f"aws:RequestTag/{tag['Key']}": tag["Value"] for tag in tags}
        context["aws:TagKeys"] = [tag["Key"] for tag in tags]
    if params.get("TransitiveTagKeys"):
        context["sts:TransitiveTagKeys"] = list(params["TransitiveTagKeys"])
    requests = [("AssumeRole", params["RoleArn"], context)]
    if tags:
        requests.append(("TagSession", params["RoleArn"], context))
    return requests
