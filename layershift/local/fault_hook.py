"""Fault injection inside a local Lambda execution environment: the fault harness's hands.

``lambda_bootstrap`` loads this module when ``LAYERSHIFT_FAULT_PLAN`` names a plan file (JSON).
Every AWS call the function makes through botocore is then recorded in the plan's record file as
one JSON line: the rollout's layer, the function, the service and the operation. A call that
matches one of the plan's faults for that layer (one site, or a list of sites) gets the fault at
the HTTP layer, below botocore's retry logic, so the function's own retry configuration meets it
as it would meet the real error:

- ``throttle``: the service's throttling error, on the first attempt of each matching call only;
- ``server``: an HTTP 500, on the first attempt only;
- ``denied``: AccessDenied (403), on every attempt;
- ``timeout``: the call takes effect, then the invocation times out before its answer is used
  (the worst case of a timeout: the change is made, the task does not know it). The bootstrap
  reports it as Lambda does, ``Sandbox.Timedout``, and ends the execution environment.

A fault may also name a ``resource``, a segment of the request's path (the function of a Lambda
call): then only the calls for it fail.

Standard library and botocore only: it runs beside the handler, with the runtime's SDK.
"""

import fcntl
import json
import os
import time
from urllib.parse import unquote, urlsplit

_STATE = {"layer": None, "installed": False}
_ERRORS = {
    # fault -> (HTTP status, error code); Lambda names its throttling error differently
    "throttle": (400, "ThrottlingException"),
    "server": (500, "InternalFailure"),
    "denied": (403, "AccessDeniedException"),
}
_SERVICE_ERRORS = {("lambda", "throttle"): (429, "TooManyRequestsException"), ("s3", "denied"): (403, "AccessDenied")}
_TRANSIENT = {"throttle", "server"}


class InjectedTimeout(BaseException):
    """The invocation times out here (BaseException: the function's own handlers must not catch it)."""


def _plan():
    """The plan, read at every call: the harness rewrites it between runs, sometimes several times
    within one tick of the file system's clock, so a modification time cannot tell versions apart."""
    with open(os.environ["LAYERSHIFT_FAULT_PLAN"], encoding="utf-8") as handle:
        return json.load(handle)


def _find_layer(value, depth=0):
    """The rollout's layer name, wherever the task's event carries it."""
    if depth > 4:
        return None
    if isinstance(value, dict):
        if isinstance(value.get("layer"), str):
            return value["layer"]
        for child in value.values():
            found = _find_layer(child, depth + 1)
            if found:
                return found
    return None


def begin(event):
    """Called by the bootstrap before each invocation, with the event.

    The hook is installed at the first event that belongs to a rollout (a control-plane task),
    never before: importing botocore ahead of a consumer's handler would import its dependencies
    (dateutil, six) before the function's own layers could provide them, which Lambda never does.
    """
    _STATE["layer"] = _find_layer(event)
    if _STATE["layer"] and not _STATE["installed"]:
        install()
        _STATE["installed"] = True


def _record(service, operation, injected):
    line = json.dumps(
        {
            "layer": _STATE["layer"],
            "function": os.environ.get("AWS_LAMBDA_FUNCTION_NAME"),
            "service": service,
            "operation": operation,
            "injected": injected,
            "time": time.time(),
        }
    )
    with open(_plan()["record"], "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(line + "\n")


def _names(fault, path):
    """Whether the request is for the fault's ``resource``, when it names one (a path segment of the
    request, such as the function of a Lambda call): one consumer's calls fail, the others' do not."""
    resource = fault.get("resource")
    return resource is None or f"/{resource}/" in unquote(path) + "/"


def _fault_for(service, operation, attempt, path=""):
    planned = _plan().get("faults", {}).get(_STATE["layer"] or "") or []
    function = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
    for fault in [planned] if isinstance(planned, dict) else planned:
        if (fault["function"], fault["service"], fault["operation"]) != (function, service, operation):
            continue
        if not _names(fault, path):
            continue
        if fault["fault"] in _TRANSIENT and attempt > 1:
            return None
        return fault["fault"]
    return None


def _cbor_text(text):
    data = text.encode()
    if len(data) < 24:
        return bytes([0x60 + len(data)]) + data
    if len(data) < 256:
        return bytes([0x78, len(data)]) + data
    return bytes([0x79]) + len(data).to_bytes(2, "big") + data


def _error_body(protocol, code, message):
    """An error response body the service's protocol parser reads back as ``code``."""
    if protocol in ("json", "rest-json"):
        return {"x-amzn-ErrorType": code, "Content-Type": "application/x-amz-json-1.1"}, json.dumps(
            {"__type": code, "message": message}
        ).encode()
    if protocol == "smithy-rpc-v2-cbor":
        body = bytes([0xA2]) + _cbor_text("__type") + _cbor_text(code) + _cbor_text("message") + _cbor_text(message)
        return {"smithy-protocol": "rpc-v2-cbor", "Content-Type": "application/cbor"}, body
    if protocol == "rest-xml":
        body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        return {"Content-Type": "application/xml"}, body.encode()
    body = (
        f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
        "<RequestId>fault-injected</RequestId></ErrorResponse>"
    )
    return {"Content-Type": "text/xml"}, body.encode()


class _Raw:
    def __init__(self, body):
        self._body = body

    def stream(self, **_kwargs):
        yield self._body


def _before_send(service, protocol):
    from botocore.awsrequest import AWSResponse

    def handler(request, **kwargs):
        operation = kwargs.get("event_name", "").rsplit(".", 1)[-1]
        attempt = ((getattr(request, "context", None) or {}).get("retries") or {}).get("attempt", 1)
        fault = _fault_for(service, operation, attempt, urlsplit(request.url).path)
        _record(service, operation, fault)
        if fault is None or fault == "timeout":
            return None
        status, code = _SERVICE_ERRORS.get((service, fault), _ERRORS[fault])
        headers, body = _error_body(protocol, code, f"injected {fault} fault")
        return AWSResponse(request.url, status, headers, _Raw(body))

    return handler


def _after_call(service):
    def handler(**kwargs):
        operation = kwargs.get("event_name", "").rsplit(".", 1)[-1]
        if _fault_for(service, operation, 1) == "timeout":
            raise InjectedTimeout(f"{service}.{operation}")

    return handler


def install():
    """Hook every botocore client created from now on."""
    import botocore.session

    original = botocore.session.Session.create_client

    def create_client(self, service_name, *args, **kwargs):
        client = original(self, service_name, *args, **kwargs)
        model = client.meta.service_model
        service_id = model.service_id.hyphenize()
        client.meta.events.register(f"before-send.{service_id}", _before_send(service_name, model.protocol))
        client.meta.events.register(f"after-call.{service_id}", _after_call(service_name))
        return client

    botocore.session.Session.create_client = create_client
