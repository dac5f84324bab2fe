"""EventBridge delivery to Lambda and Step Functions targets on the local emulated AWS.

The emulator's ``Rule.send_to_targets`` delivers to logs, SQS, archives, buses and API
destinations, and silently drops Lambda functions and state machines. This patch delivers to
those two as EventBridge does: asynchronously, through the service APIs (an ``Event`` invoke
and ``StartExecution``), with the target's ``Input``, ``InputPath`` or ``InputTransformer``
applied and the event ``time`` in ISO-8601. Other targets still go to the emulator.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config
from moto.events import models as events_models
from moto.events.utils import EventTemplateParser

LOG = logging.getLogger(__name__)

_originals: dict[str, Any] = {}
_state: dict[str, Any] = {}
_threads: set[threading.Thread] = set()


def _service(arn: str) -> str:
    return arn.split(":")[2] if arn.count(":") >= 5 else ""


def aws_event(event: dict[str, Any]) -> dict[str, Any]:
    """The event as AWS delivers it: ISO-8601 ``time`` and no emulator bookkeeping keys."""
    shaped = copy.deepcopy(event)
    shaped.pop("ingestion-time", None)
    when = shaped.get("time")
    if isinstance(when, (int, float)) or (isinstance(when, str) and when.replace(".", "", 1).isdigit()):
        shaped["time"] = datetime.fromtimestamp(float(when), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    elif not when:
        shaped["time"] = datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return shaped


def target_input(target: dict[str, Any], event: dict[str, Any]) -> str:
    """The JSON text a target receives: ``Input``, ``InputPath``, ``InputTransformer`` or the event."""
    if target.get("Input") is not None:
        return str(target["Input"])
    if target.get("InputPath"):
        from jsonpath_ng.ext import parse

        matches = parse(target["InputPath"]).find(event)
        return json.dumps(matches[0].value if matches else None)
    transformer = target.get("InputTransformer")
    if transformer:
        with_time = dict(event, **{"ingestion-time": event.get("time")})
        transformed = EventTemplateParser.parse(
            input_template=transformer.get("InputTemplate"),
            input_paths_map=transformer.get("InputPathsMap", {}),
            event=with_time,
        )
        return json.dumps(transformed)
    return json.dumps(event)


_clients: dict[tuple[str, str], Any] = {}
_clients_lock = threading.Lock()


def _client(service: str, region: str) -> Any:
    # Made once, under a lock, from its own session: boto3 sessions are not thread-safe, clients are.
    with _clients_lock:
        key = (service, region)
        if key not in _clients:
            _clients[key] = boto3.session.Session().client(
                service,
                region_name=region,
                endpoint_url=_state["endpoint_url"],
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                config=Config(retries={"max_attempts": 2, "mode": "standard"}),
            )
        return _clients[key]


def deliver(target: dict[str, Any], event: dict[str, Any]) -> None:
    """Deliver one event to one Lambda or Step Functions target (blocking)."""
    arn = target["Arn"]
    region = arn.split(":")[3]
    payload = target_input(target, aws_event(event))
    if _service(arn) == "lambda":
        _client("lambda", region).invoke(FunctionName=arn, InvocationType="Event", Payload=payload.encode())
    elif _service(arn) == "states":
        _client("stepfunctions", region).start_execution(stateMachineArn=arn, input=payload)


def _deliver_in_background(target: dict[str, Any], event: dict[str, Any]) -> None:
    def work() -> None:
        try:
            deliver(target, event)
        except Exception:
            LOG.exception("EventBridge delivery to %s failed", target.get("Arn"))
        finally:
            _threads.discard(threading.current_thread())

    thread = threading.Thread(target=work, daemon=True, name=f"events-{target.get('Id')}")
    _threads.add(thread)
    thread.start()


def _send_to_targets(self: Any, original_event: dict[str, Any], transform_input: bool = True) -> None:
    # Deliver to Lambda and Step Functions targets ourselves, and hand the rest to the emulator.
    ours = [t for t in self.targets if _service(t["Arn"]) in ("lambda", "states")]
    others = [t for t in self.targets if t not in ours]
    # A rule without a pattern is a schedule rule: events never match it (the emulator says they all do).
    matches = bool(self.event_pattern.get_pattern()) and self.event_pattern.matches_event(original_event)
    if ours and getattr(self, "state", "ENABLED") == "ENABLED" and matches:
        for target in ours:
            _deliver_in_background(target, original_event)
    if others:
        rest = copy.copy(self)
        rest.targets = others
        _originals["send_to_targets"](rest, original_event, transform_input)


def install(endpoint_url: str) -> None:
    _state["endpoint_url"] = endpoint_url
    with _clients_lock:
        _clients.clear()
    if not _originals:
        _originals["send_to_targets"] = events_models.Rule.send_to_targets
        events_models.Rule.send_to_targets = _send_to_targets  # type: ignore[method-assign]


def wait_idle(timeout: float = 5.0) -> None:
    """Wait for deliveries in flight (tests and shutdown)."""
    for thread in list(_threads):
        thread.join(timeout=timeout)


def uninstall() -> None:
    with _clients_lock:
        _clients.clear()
    wait_idle()
    if _originals:
        events_models.Rule.send_to_targets = _originals.pop("send_to_targets")  # type: ignore[method-assign]
    _state.pop("endpoint_url", None)
