"""Request routing of the local AWS, made cheap.

The emulator's server finds the service of every request by matching the request's host against
the URL patterns of every service it emulates, one after another. The answer depends on the host
alone, so it is kept per host here. Requests are routed exactly as before.
"""

from __future__ import annotations

import threading
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication

_originals: dict[str, Any] = {}
_backends: dict[str | None, Any] = {}
_lock = threading.Lock()


def _get_backend_for_host(self: Any, host: str | None) -> Any:
    with _lock:
        if host in _backends:
            return _backends[host]
    backend = _originals["get_backend_for_host"](self, host)
    with _lock:
        _backends[host] = backend
    return backend


def install() -> None:
    if not _originals:
        _originals["get_backend_for_host"] = DomainDispatcherApplication.get_backend_for_host
        DomainDispatcherApplication.get_backend_for_host = _get_backend_for_host  # type: ignore[method-assign]


def uninstall() -> None:
    if _originals:
        DomainDispatcherApplication.get_backend_for_host = _originals.pop("get_backend_for_host")  # type: ignore[method-assign]
    with _lock:
        _backends.clear()
