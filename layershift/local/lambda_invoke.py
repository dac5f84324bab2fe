"""Lambda Invoke on the local emulated AWS, with the semantics the rollout depends on.

Three small, reversible patches of the emulated Lambda service:

* ``LambdaResponse.invoke``: honour ``?Qualifier=`` (the emulator reads ``qualifier`` in lower
  case, and otherwise even takes it from the event payload);
* ``LambdaBackend.invoke``: resolve the qualifier, route alias traffic by
  ``RoutingConfig.AdditionalVersionWeights`` (deterministically: a credit counter per alias, so
  10% is exactly every tenth invoke), run the version in a local execution environment, set
  ``X-Amz-Executed-Version`` and ``X-Amz-Function-Error``, and emit AWS/Lambda metrics;
* ``LambdaFunction._invoke_lambda``: the path every other invoker takes (InvokeAsync, event
  source mappings, subscriptions) runs in the same execution environments instead of Docker.

With a fault plan, the synchronous invokes that carry a rollout's layer (Step Functions' tasks)
may be failed as planned (``integration_faults.py``).

Step Functions' ``lambda:invoke`` calls the server over HTTP, so it goes through the same code.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from moto.awslambda import models as lambda_models
from moto.awslambda import responses as lambda_responses
from moto.core.exceptions import JsonRESTError
from moto.utilities.utils import ARN_PARTITION_REGEX

from layershift.local import dead_letters, integration_faults, metrics
from layershift.local.lambda_runtime import (
    FunctionSpec,
    InvokeResult,
    LambdaRuntime,
    error_payload,
    tail_logs,
)

LOG = logging.getLogger(__name__)

_originals: dict[str, Any] = {}
_state: dict[str, Any] = {}
_credit_lock = threading.Lock()
# alias ARN -> (weights it was computed for, credit per additional version)
_credits: dict[str, tuple[tuple[tuple[str, Fraction], ...], dict[str, Fraction]]] = {}
_async_threads: set[threading.Thread] = set()


class TooManyRequestsException(JsonRESTError):
    code = 429

    def __init__(self, message: str) -> None:
        super().__init__("TooManyRequestsException", message)


@dataclass
class Target:
    """What one invoke resolved to."""

    function: Any  # the version that runs (moto LambdaFunction)
    name: str
    qualifier: str | None
    alias: Any | None
    executed_version: str


def _runtime() -> LambdaRuntime:
    runtime = _state.get("runtime")
    if runtime is None:
        raise RuntimeError("the local Lambda runtime is not installed")
    return runtime


def split_name(function_name: str, qualifier: str | None) -> tuple[str, str | None]:
    """Name and qualifier from a name, ``name:qualifier``, a (partial) ARN, and ``Qualifier``."""
    name = function_name
    if re.match(ARN_PARTITION_REGEX, name) or ":function:" in name:
        tail = name.split(":function:", 1)[1]
        name, _, from_name = tail.partition(":")
    else:
        name, _, from_name = name.partition(":")
    return name, (from_name or qualifier or None)


def choose_version(alias: Any) -> str:
    """The version one invoke of ``alias`` runs, honouring AdditionalVersionWeights exactly.

    Each invoke adds every additional version's weight to its credit; a version whose credit
    reaches 1 takes this invoke and pays 1 back. With a 0.1 weight, exactly every tenth invoke
    runs the additional version.
    """
    routing = alias.routing_config or {}
    weights_in = (routing.get("AdditionalVersionWeights") or {}) if isinstance(routing, dict) else {}
    if not weights_in:
        return str(alias.function_version)
    weights = tuple(sorted((str(v), Fraction(str(w))) for v, w in weights_in.items()))
    with _credit_lock:
        known = _credits.get(alias.arn)
        if known is None or known[0] != weights:
            known = (weights, {v: Fraction(0) for v, _ in weights})
            _credits[alias.arn] = known
        credit = known[1]
        for version, weight in weights:
            credit[version] += weight
        best = max(credit, key=lambda v: credit[v])
        if credit[best] >= 1:
            credit[best] -= 1
            return best
    return str(alias.function_version)


def resolve(backend: Any, function_name: str, qualifier: str | None) -> Target:
    """Find the function version an invoke runs; raises the service's not-found errors."""
    name, qualifier = split_name(function_name, qualifier)
    fn = backend.get_function(name, qualifier)  # validates name and qualifier
    storage = backend._lambdas
    alias = None
    if qualifier and qualifier != "$LATEST" and not qualifier.isdigit():
        alias = storage._get_function_aliases(name).get(qualifier)
    if alias is not None:
        version = choose_version(alias)
        if version != str(alias.function_version):
            fn = storage._get_latest(name) if version == "$LATEST" else storage._get_version(name, version)
            if fn is None:
                raise lambda_models.UnknownFunctionException(f"{name}:{version}")
    return Target(fn, name, qualifier, alias, str(fn.version))


def _spec(fn: Any) -> FunctionSpec:
    return FunctionSpec(
        function_name=fn.function_name,
        function_arn=lambda_models.make_function_arn(fn.region, fn.account_id, fn.function_name),
        version=str(fn.version),
        runtime=fn.run_time or "",
        handler=fn.handler or "",
        timeout=float(fn.timeout or 3),
        memory_size=int(fn.memory_size or 128),
        environment=tuple(sorted((str(k), str(v)) for k, v in (fn.environment_vars or {}).items())),
        code_sha256=fn.code_sha_256,
        layer_arns=tuple(layer["Arn"] for layer in fn.layers or []),
        role_arn=str(fn.role or ""),
    )


def run(fn: Any, event: bytes, invoked_arn: str) -> InvokeResult:
    """Run one invocation of the version ``fn`` in its execution environment."""
    request_id = str(uuid.uuid4())
    if getattr(fn, "package_type", "Zip") == "Image":
        message = "Container image functions are not emulated locally; deploy to AWS to run them."
        return InvokeResult(
            error_payload(message, "Runtime.ImageNotEmulated"),
            True,
            0.0,
            message + "\n",
            "Runtime.ImageNotEmulated",
        )
    backend = lambda_models.lambda_backends[fn.account_id][fn.region]
    layers: list[bytes] = []
    for layer in fn.layers or []:
        version = backend.layers_versions_by_arn(layer["Arn"])
        if version is None:
            message = f"RequestId: {request_id} Error: layer version {layer['Arn']} does not exist"
            return InvokeResult(error_payload(message, "Runtime.LayerNotFound"), True, 0.0, "", "Runtime.LayerNotFound")
        layers.append(version.code_bytes)
    result = _runtime().invoke(_spec(fn), fn.code_bytes, layers, event or b"{}", invoked_arn, request_id)
    if result.logs:
        try:
            fn.logs_backend.ensure_log_group(fn.logs_group_name)
            fn.save_logs(result.logs)
        except Exception:  # the log copy is a convenience; the invoke result stands
            LOG.debug("could not copy logs of %s to CloudWatch Logs", fn.function_name, exc_info=True)
    return result


def _record(target: Target, result: InvokeResult | None, throttled: bool = False) -> None:
    fn = target.function
    resource = target.name if target.qualifier is None else f"{target.name}:{target.qualifier}"
    metrics.record_invocation(
        fn.account_id,
        fn.region,
        function_name=target.name,
        resource=resource,
        executed_version=target.executed_version if target.alias is not None else None,
        duration_ms=result.duration_ms if result else 0.0,
        errored=bool(result and result.errored),
        throttled=throttled,
    )


def invoke_target(target: Target, event: bytes) -> InvokeResult:
    fn = target.function
    if fn.reserved_concurrency is not None and int(fn.reserved_concurrency) == 0:
        _record(target, None, throttled=True)
        raise TooManyRequestsException("Rate Exceeded.")
    invoked_arn = lambda_models.make_function_arn(fn.region, fn.account_id, target.name)
    if target.qualifier:
        invoked_arn += f":{target.qualifier}"
    result = run(fn, event, invoked_arn)
    _record(target, result)
    return result


# -- patches ------------------------------------------------------------------------------------


def _response_invoke(self: Any) -> Any:
    # The emulator reads `qualifier` (lower case) through a lookup that falls back to the JSON
    # body, i.e. the event. Put the real query-string value (or None) where it looks first.
    self.querystring["qualifier"] = self.querystring.get("Qualifier", [None])
    return _originals["response_invoke"](self)


def _backend_invoke(
    self: Any,
    function_name: str,
    qualifier: str | None,
    body: Any,
    headers: Any,
    response_headers: dict[str, str],
) -> bytes:
    event = body.encode("utf-8") if isinstance(body, str) else (body or b"")
    target = resolve(self, function_name, qualifier)
    invocation_type = headers.get("X-Amz-Invocation-Type") or "RequestResponse"
    response_headers["X-Amz-Executed-Version"] = target.executed_version
    if invocation_type == "DryRun":
        return b""
    if invocation_type == "Event":
        invoke_async(target, event)
        return b""
    fault = None
    if invocation_type == "RequestResponse":
        fault = integration_faults.fault_for(_runtime().fault_plan, target.name, event)
        if fault is not None:
            integration_faults.raise_for(fault, target.name)
    result = invoke_target(target, event)
    if fault == "timeout":
        message = f"Task timed out after {float(target.function.timeout or 3):.2f} seconds"
        result = InvokeResult(error_payload(message, "Sandbox.Timedout"), True, result.duration_ms, result.logs)
    if result.errored:
        response_headers["X-Amz-Function-Error"] = "Unhandled"
    response_headers["x-amz-log-result"] = tail_logs(result.logs)
    response_headers["Content-Length"] = str(len(result.payload))
    return result.payload


# Lambda retries a failed asynchronous invocation twice, about one and then two minutes later;
# locally the retries follow at once, so the dead letter is there in seconds.
ASYNC_RETRIES = 2


def invoke_async(target: Target, event: bytes) -> None:
    """Run an ``Event`` invocation in the background, as Lambda's async queue does: an invocation
    that still errors after ``ASYNC_RETRIES`` retries goes to the function's DeadLetterConfig."""

    def work() -> None:
        try:
            error_code, error_message = 200, ""
            for _ in range(ASYNC_RETRIES + 1):
                try:
                    result = invoke_target(target, event)
                except TooManyRequestsException as exc:
                    error_code, error_message = 429, str(getattr(exc, "message", exc))
                    continue
                if not result.errored:
                    return
                error_code, error_message = 200, result.payload.decode("utf-8", "replace")
            _dead_letter(target, event, error_code, error_message)
        except Exception:
            LOG.exception("asynchronous invoke of %s failed", target.name)
        finally:
            _async_threads.discard(threading.current_thread())

    thread = threading.Thread(target=work, daemon=True, name=f"lambda-async-{target.name}")
    _async_threads.add(thread)
    thread.start()


def _dead_letter(target: Target, event: bytes, error_code: int, error_message: str) -> None:
    config = getattr(target.function, "dead_letter_config", None) or {}
    queue_arn = config.get("TargetArn")
    if not queue_arn:
        LOG.warning("asynchronous invoke of %s failed after its retries; no DeadLetterConfig", target.name)
        return
    attributes = dead_letters.lambda_attributes(
        request_id=str(uuid.uuid4()), error_code=error_code, error_message=error_message
    )
    dead_letters.send(queue_arn, event.decode("utf-8", "replace"), attributes)


def _function_init(self: Any, account_id: str, spec: dict[str, Any], *args: Any, **kwargs: Any) -> None:
    _originals["function_init"](self, account_id, spec, *args, **kwargs)
    self.dead_letter_config = spec.get("DeadLetterConfig") or None


def _function_get_configuration(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    config: dict[str, Any] = _originals["function_get_configuration"](self, *args, **kwargs)
    if getattr(self, "dead_letter_config", None):
        config["DeadLetterConfig"] = dict(self.dead_letter_config)
    return config


def _function_update_configuration(self: Any, config_updates: dict[str, Any]) -> dict[str, Any]:
    if "DeadLetterConfig" in config_updates:
        self.dead_letter_config = config_updates["DeadLetterConfig"] or None
    result: dict[str, Any] = _originals["function_update_configuration"](self, config_updates)
    return result


def _function_invoke_lambda(self: Any, event: Any = None) -> tuple[str, bool, str]:
    # Every other invoker (InvokeAsync, event source mappings, SNS) ends here: run the version in
    # its execution environment instead of a Docker container.
    payload = json.dumps(event if event is not None else {}).encode("utf-8")
    target = Target(
        self,
        self.function_name,
        None if str(self.version) == "$LATEST" else str(self.version),
        None,
        str(self.version),
    )
    result = invoke_target(target, payload)
    return result.payload.decode("utf-8"), result.errored, result.logs


def install(runtime: LambdaRuntime) -> None:
    """Route Lambda invokes through ``runtime``."""
    _state["runtime"] = runtime
    if _originals:
        return
    _originals["response_invoke"] = lambda_responses.LambdaResponse.invoke
    _originals["backend_invoke"] = lambda_models.LambdaBackend.invoke
    _originals["function_invoke_lambda"] = lambda_models.LambdaFunction._invoke_lambda
    lambda_responses.LambdaResponse.invoke = _response_invoke  # type: ignore[method-assign]
    lambda_models.LambdaBackend.invoke = _backend_invoke  # type: ignore[method-assign]
    lambda_models.LambdaFunction._invoke_lambda = _function_invoke_lambda  # type: ignore[method-assign]
    # The emulator drops DeadLetterConfig: keep it on the function, and in its configuration.
    _originals["function_init"] = lambda_models.LambdaFunction.__init__
    _originals["function_get_configuration"] = lambda_models.LambdaFunction.get_configuration
    _originals["function_update_configuration"] = lambda_models.LambdaFunction.update_configuration
    lambda_models.LambdaFunction.__init__ = _function_init  # type: ignore[method-assign]
    lambda_models.LambdaFunction.get_configuration = _function_get_configuration  # type: ignore[method-assign]
    lambda_models.LambdaFunction.update_configuration = _function_update_configuration  # type: ignore[method-assign]


def uninstall(wait_seconds: float = 5.0) -> None:
    for thread in list(_async_threads):
        thread.join(timeout=wait_seconds)
    if _originals:
        lambda_responses.LambdaResponse.invoke = _originals.pop("response_invoke")  # type: ignore[method-assign]
        lambda_models.LambdaBackend.invoke = _originals.pop("backend_invoke")  # type: ignore[method-assign]
        lambda_models.LambdaFunction._invoke_lambda = _originals.pop("function_invoke_lambda")  # type: ignore[method-assign]
        lambda_models.LambdaFunction.__init__ = _originals.pop("function_init")  # type: ignore[method-assign]
        lambda_models.LambdaFunction.get_configuration = _originals.pop("function_get_configuration")  # type: ignore[method-assign]
        lambda_models.LambdaFunction.update_configuration = _originals.pop("function_update_configuration")  # type: ignore[method-assign]
    _state.pop("runtime", None)
    with _credit_lock:
        _credits.clear()
