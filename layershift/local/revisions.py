"""RevisionId, as Lambda enforces it.

moto reports no RevisionId for functions, never changes an alias's, and ignores the RevisionId
parameter of UpdateFunctionConfiguration, UpdateFunctionCode, PublishVersion and UpdateAlias.
layershift relies on it for optimistic concurrency (a function someone changed since the plan is
never overwritten), so the local emulation gives every function and alias a revision that changes
on each update, and answers a stale RevisionId with PreconditionFailedException, as Lambda does.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from moto.awslambda import models, responses
from moto.awslambda.exceptions import PreconditionFailedException

_STALE = (
    "The Revision Id provided does not match the latest Revision Id. "
    "Call the GetFunction/GetAlias API to retrieve the latest Revision Id"
)
_originals: dict[str, Any] = {}


def _revision(obj: Any) -> str:
    revision = getattr(obj, "_layershift_revision", None)
    if revision is None:
        revision = obj._layershift_revision = str(uuid.uuid4())
    return revision


def _bump(obj: Any) -> str:
    obj._layershift_revision = str(uuid.uuid4())
    return obj._layershift_revision


def _check(current: str, expected: str | None) -> None:
    if expected and expected != current:
        raise PreconditionFailedException(_STALE)


def _get_configuration(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    config = _originals["get_configuration"](self, *args, **kwargs)
    config["RevisionId"] = _revision(self)
    return config


def _guarded_update(original: str) -> Any:
    """A backend update (configuration or code) that honours RevisionId and moves it on."""

    def update(self: Any, function_name: str, qualifier: str, body: dict[str, Any]) -> Any:
        fn = self.get_function(function_name, qualifier)
        _check(_revision(fn), body.get("RevisionId"))
        result = _originals[original](self, function_name, qualifier, body)
        revision = _bump(fn)
        if isinstance(result, dict):
            result["RevisionId"] = revision
        return result

    return update


def _publish_version(self: Any) -> Any:
    params = json.loads(self.body or "{}")
    function_name = responses.unquote(self.path.split("/")[-2])
    _check(_revision(self.backend.get_function(function_name, None)), params.get("RevisionId"))
    return _originals["publish_version"](self)


def _update_alias(self: Any) -> Any:
    function_name = responses.unquote(self.path.rsplit("/")[-3])
    alias_name = responses.unquote(self.path.rsplit("/", 2)[-1])
    params = json.loads(self.body or "{}")
    alias = self.backend.get_alias(alias_name, function_name)
    _check(alias.revision_id, params.get("RevisionId"))
    status, headers, _ = _originals["update_alias"](self)
    alias.revision_id = str(uuid.uuid4())
    return status, headers, json.dumps(alias.to_json())


_PATCHES = {
    "get_configuration": (models.LambdaFunction, _get_configuration),
    "update_function_configuration": (models.LambdaBackend, _guarded_update("update_function_configuration")),
    "update_function_code": (models.LambdaBackend, _guarded_update("update_function_code")),
    "publish_version": (responses.LambdaResponse, _publish_version),
    "update_alias": (responses.LambdaResponse, _update_alias),
}


def install() -> None:
    if _originals:
        return
    for name, (owner, replacement) in _PATCHES.items():
        _originals[name] = getattr(owner, name)
        setattr(owner, name, replacement)


def uninstall() -> None:
    for name, (owner, _) in _PATCHES.items():
        if name in _originals:
            setattr(owner, name, _originals.pop(name))
