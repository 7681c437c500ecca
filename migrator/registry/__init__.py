"""The registry HTTP API v2 client: `RegistryClient` and the manifest types it moves.

The names are loaded on first use: the small type modules (`credentials`, `upload`) that the
auth file and the ledger import must not pull in the client, which imports `migrator.throttle`,
which imports the ledger (an import cycle otherwise).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from migrator.registry.client import RegistryClient
    from migrator.registry.manifest import Descriptor, Manifest

__all__ = ["Descriptor", "Manifest", "RegistryClient"]

_HOMES = {"RegistryClient": "client", "Descriptor": "manifest", "Manifest": "manifest"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
