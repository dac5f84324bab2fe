"""The local emulated AWS: moto on 127.0.0.1 plus the adapters layershift's control plane needs.

``from layershift.local import LocalAws`` (imported lazily: moto is only needed when it runs).
"""

from typing import Any

__all__ = ["LocalAws"]


def __getattr__(name: str) -> Any:
    if name == "LocalAws":
        from layershift.local.server import LocalAws

        return LocalAws
    raise AttributeError(name)
