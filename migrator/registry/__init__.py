"""The registry HTTP API v2 client: `RegistryClient` and the manifest types it moves."""

from migrator.registry.client import RegistryClient
from migrator.registry.manifest import Descriptor, Manifest

__all__ = ["Descriptor", "Manifest", "RegistryClient"]
