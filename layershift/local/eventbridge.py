"""EventBridge delivery to Lambda and Step Functions targets on the local emulated AWS.

The emulator's ``Rule.send_to_targets`` delivers to logs, SQS, archives, buses and API
destinations, and silently drops Lambda functions and state machines. This patch delivers to
those two as EventBridge does: asynchronously, through the service APIs (an ``Event`` invoke
and ``StartExecution``), with the target's ``Input``, ``InputPath`` or ``InputTransformer``
applied and the event ``time`` in ISO-8601. Other targets still go to the emulator.

A delivery that fails (the invoke or StartExecution call itself: a function that is gone, a
throttle) is retried as the target's ``RetryPolicy`` says, within ``MaximumRetryAttempts`` and
``MaximumEventAgeInSeconds``, and then sent to the target's ``DeadLetterConfig`` queue with the
attributes EventBridge adds (``dead_letters.py``). EventBridge spaces its retries with exponential
back-off over minutes; locally they follow each other within seconds (``RETRY_DELAYS``). A function
that errors is not a failed delivery: the ``Event`` invoke was accepted, and Lambda's own retries and
the function's DeadLetterConfig take over (``lambda_invoke.py``), as on AWS.

``TestEventPattern``, which the emulator leaves unimplemented, answers with the rules' own matcher.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from moto.events import models as events_models
from moto.events import responses as events_responses
from moto.events.utils import EventTemplateParser

from layershift.local import dead_letters

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


# EventBridge backs off exponentially with jitter, over minutes; locally the same bounded number of
# retries follows within seconds: 0.05 s doubling up to 1 s (8 retries take about 4.5 s).
RETRY_DELAYS = tuple(min(0.05 * 2**attempt, 1.0) for attempt in range(185))
_RETRIABLE = {"ThrottlingException", "TooManyRequestsException", "ServiceException", "InternalFailure"}


def _retriable(error: ClientError) -> bool:
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return error.response.get("Error", {}).get("Code") in _RETRIABLE or status == 429 or status >= 500


def deliver_with_retries(rule_arn: str, target: dict[str, Any], event: dict[str, Any]) -> None:
    """Deliver, retrying as the target's RetryPolicy allows; then dead-letter the event, or drop it."""
    policy = target.get("RetryPolicy") or {}
    max_retries = int(policy.get("MaximumRetryAttempts", 185))
    max_age = float(policy.get("MaximumEventAgeInSeconds", 86400))
    started = time.monotonic()
    retries = 0
    while True:
        try:
            deliver(target, event)
            return
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", "ClientError"))
            message = str(error.response.get("Error", {}).get("Message", ""))
            exhausted = ""
            if _retriable(error):
                if retries >= max_retries:
                    exhausted = "MaximumRetryAttempts"
                elif time.monotonic() - started + RETRY_DELAYS[retries] > max_age:
                    exhausted = "MaximumEventAgeInSeconds"
                else:
                    time.sleep(RETRY_DELAYS[retries])
                    retries += 1
                    continue
            _dead_letter(rule_arn, target, event, code, message, exhausted, retries)
            return


def _dead_letter(
    rule_arn: str, target: dict[str, Any], event: dict[str, Any], code: str, message: str, exhausted: str, retries: int
) -> None:
    queue_arn = (target.get("DeadLetterConfig") or {}).get("Arn")
    if not queue_arn:
        LOG.warning("event for %s dropped after %d retries: %s", target.get("Arn"), retries, code)
        return
    attributes = dead_letters.eventbridge_attributes(
        error_code=code,
        error_message=message,
        exhausted=exhausted,
        attempts=retries,
        rule_arn=rule_arn,
        target_arn=str(target["Arn"]),
    )
    if not exhausted:  # a non-retriable error: EventBridge names no exhausted condition
        attributes.pop("EXHAUSTED_RETRY_CONDITION")
    dead_letters.send(queue_arn, json.dumps(aws_event(event)), attributes)


def _deliver_in_background(rule_arn: str, target: dict[str, Any], event: dict[str, Any]) -> None:
    def work() -> None:
        try:
            deliver_with_retries(rule_arn, target, event)
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
            _deliver_in_background(self.arn, target, original_event)
    if others:
        rest = copy.copy(self)
        rest.targets = others
        _originals["send_to_targets"](rest, original_event, transform_input)


def _test_event_pattern(self: Any) -> tuple[str, dict[str, Any]]:
    # TestEventPattern, which the emulator leaves unimplemented, with the matcher its rules use.
    pattern = events_models.EventPattern.load(self._get_param("EventPattern"))
    event = json.loads(self._get_param("Event"))
    return json.dumps({"Result": pattern.matches_event(event)}), self.response_headers


def install(endpoint_url: str) -> None:
    _state["endpoint_url"] = endpoint_url
    with _clients_lock:
        _clients.clear()
    if not _originals:
        _originals["send_to_targets"] = events_models.Rule.send_to_targets
        events_models.Rule.send_to_targets = _send_to_targets  # type: ignore[method-assign]
        _originals["test_event_pattern"] = events_responses.EventsHandler.test_event_pattern
        events_responses.EventsHandler.test_event_pattern = _test_event_pattern  # type: ignore[method-assign,assignment]


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
        events_responses.EventsHandler.test_event_pattern = _originals.pop("test_event_pattern")  # type: ignore[method-assign]
    _state.pop("endpoint_url", None)
