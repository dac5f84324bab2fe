"""``@metered``: each invocation's usage goes to its own rollout's record, whatever the task is.

A warm execution environment serves many invocations, of many rollouts; the counters of
``usage.USAGE`` are the process's. So each handler starts from zero, and at its end (returned or
raised) adds what it spent to the record of the rollout its event belongs to: the first object in
the handler's answer, or else in its event, that names both a ``layer`` and a ``rollout_id`` (the
validated rollout, a Map Run's BatchInput, a bake's step).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.middleware_factory import lambda_handler_decorator

from .fanout import flush_usage
from .settings import load_settings
from .usage import USAGE


def rollout_of(value: Any, depth: int = 0) -> tuple[str, str] | None:
    """(layer, rollout id) of the first object in ``value`` that names both."""
    if depth > 5:
        return None
    if isinstance(value, dict):
        layer, rollout_id = value.get("layer"), value.get("rollout_id")
        if isinstance(layer, str) and isinstance(rollout_id, str):
            return layer, rollout_id
        children = list(value.values())
    elif isinstance(value, list):
        children = value[:1]  # a list's elements have one shape: the first tells
    else:
        return None
    for child in children:
        found = rollout_of(child, depth + 1)
        if found:
            return found
    return None


@lambda_handler_decorator
def metered(handler: Any, event: dict[str, Any], context: Any) -> Any:
    USAGE.take()  # what an earlier invocation of this environment left unflushed is not this one's
    result: Any = None
    try:
        result = handler(event, context)
        return result
    finally:
        owner = rollout_of(result) or rollout_of(event)
        if owner is not None:
            flush_usage(load_settings(), *owner)
        else:
            USAGE.take()
