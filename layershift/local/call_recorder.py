"""Records every AWS call a local Lambda execution environment makes, for the IAM evaluation.

``lambda_bootstrap`` loads this module when ``LAYERSHIFT_LOCAL_CALL_LOG`` names a file. Every API
call made through botocore is then appended to that file as one JSON line:

``{"function", "role_arn", "principal", "service", "operation", "params", "time"}``

- ``role_arn`` is the function's execution role as deployed;
- ``principal`` is who signed the call: the execution role (``{"role_arn"}``), or a role session
  this process assumed earlier (``{"role_arn", "session_name", "session_tags"}``, from the
  ``sts:AssumeRole`` answer whose access key signed it), or ``{"access_key"}`` when neither;
- ``params`` keeps only the request parameters IAM's resource and condition keys are derived
  from (``RECORDED_PARAMETERS``), and of those only flat values: never a body, payload or item.
  A DynamoDB transaction is kept as the kind and table of each item (``TransactItems``).

Nothing is patched before botocore is imported: the hook waits for the handler (or its layers) to
import ``botocore.session``, so a consumer's own packages load as they would on Lambda.

Standard library and botocore only: it runs beside the handler, with the runtime's SDK.
"""

import fcntl
import importlib.abc
import importlib.util
import json
import os
import sys
import time

# The parameters a request's IAM resource and condition context come from.
RECORDED_PARAMETERS = frozenset(
    {
        # Lambda
        "FunctionName",
        "Qualifier",
        "Name",
        "Layers",
        "LayerName",
        "VersionNumber",
        "Arn",
        # S3
        "Bucket",
        "Key",
        "Prefix",
        "VersionId",
        "CopySource",
        # DynamoDB, CloudWatch, Step Functions, SNS, SSM, CloudFormation, tagging
        "TableName",
        "IndexName",
        "AlarmNames",
        "AlarmNamePrefix",
        "stateMachineArn",
        "executionArn",
        "mapRunArn",
        "TopicArn",
        "TargetArn",
        "Overwrite",
        "ResourceId",
        "ResourceType",
        "StackName",
        "ResourceTypeFilters",
        "ResourceARNList",
        # STS
        "RoleArn",
        "RoleSessionName",
        "Tags",
        "TransitiveTagKeys",
        "DurationSeconds",
    }
)

_STATE = {"function": {}, "sessions": {}}


def _scalar(value):
    return isinstance(value, str | int | float | bool)


def _flat(value):
    """A scalar, a list of scalars, a map of scalars, or a list of maps of scalars (Tags)."""
    if _scalar(value):
        return True
    if isinstance(value, dict):
        return all(_scalar(item) for item in value.values())
    if isinstance(value, list | tuple):
        return all(_scalar(item) or (isinstance(item, dict) and _flat(item)) for item in value)
    return False


def _transaction_items(items):
    """Each item of a DynamoDB transaction as ``{kind: table}`` (``{"Put": "registry"}``)."""
    return [{kind: (body or {}).get("TableName") for kind, body in item.items()} for item in items]


def kept_parameters(params):
    """The recorded subset of a call's parameters."""
    kept = {name: value for name, value in params.items() if name in RECORDED_PARAMETERS and _flat(value)}
    if isinstance(params.get("TransactItems"), list):
        kept["TransactItems"] = _transaction_items(params["TransactItems"])
    return kept


def _access_key(request_signer):
    credentials = getattr(request_signer, "_credentials", None)
    if credentials is None:
        return None
    frozen = credentials.get_frozen_credentials() if hasattr(credentials, "get_frozen_credentials") else credentials
    return getattr(frozen, "access_key", None)


def _principal(access_key):
    session = _STATE["sessions"].get(access_key)
    if session is not None:
        return session
    if access_key is not None and access_key == os.environ.get("AWS_ACCESS_KEY_ID"):
        return {"role_arn": _STATE["function"].get("role_arn")}
    return {"access_key": access_key}


def _write(record):
    line = json.dumps(record, separators=(",", ":"), default=str)
    with open(os.environ["LAYERSHIFT_LOCAL_CALL_LOG"], "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(line + "\n")


def _keep_params(params, model, context, **_kwargs):
    context["layershift_recorded_params"] = kept_parameters(params)


def _record_call(model, request_signer, context, **_kwargs):
    _write(
        {
            "function": _STATE["function"].get("name"),
            "role_arn": _STATE["function"].get("role_arn"),
            "principal": _principal(_access_key(request_signer)),
            "service": model.service_model.service_name,
            "operation": model.name,
            "params": context.get("layershift_recorded_params", {}),
            "time": time.time(),
        }
    )


def _remember_session(parsed, context, **_kwargs):
    """An assumed role's credentials sign later calls: remember whose session they are."""
    credentials = (parsed or {}).get("Credentials") or {}
    params = context.get("layershift_recorded_params", {})
    if credentials.get("AccessKeyId") and params.get("RoleArn"):
        _STATE["sessions"][credentials["AccessKeyId"]] = {
            "role_arn": params["RoleArn"],
            "session_name": params.get("RoleSessionName"),
            "session_tags": {tag["Key"]: tag["Value"] for tag in params.get("Tags") or []},
        }


def _patch(session_class):
    original = session_class.create_client

    def create_client(self, *args, **kwargs):
        client = original(self, *args, **kwargs)
        events = client.meta.events
        # first: a handler that answers the call itself (a stub) ends the before-call chain
        events.register_first("before-parameter-build.*.*", _keep_params)
        events.register_first("before-call.*.*", _record_call)
        events.register("after-call.sts.AssumeRole", _remember_session)
        return client

    session_class.create_client = create_client


class _PatchWhenImported(importlib.abc.MetaPathFinder):
    """Patches ``botocore.session.Session`` right after that module is first imported."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "botocore.session":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            _patch(module.Session)

        spec.loader.exec_module = exec_module
        return spec


def install(function_config):
    """Record the calls of this execution environment (``function_config``: the bootstrap's)."""
    _STATE["function"] = {"name": function_config.get("name"), "role_arn": function_config.get("role_arn")}
    if "botocore.session" in sys.modules:
        _patch(sys.modules["botocore.session"].Session)
    else:
        sys.meta_path.insert(0, _PatchWhenImported())
