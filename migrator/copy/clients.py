"""Registry clients shared by every copy of a process: one per registry and credential."""

from __future__ import annotations

import threading

from migrator.auth import AuthFile
from migrator.registry.client import RegistryClient
from migrator.registry.credentials import RegistryAuth
from migrator.settings import Settings
from migrator.throttle import LocalThrottle, Throttle


class ClientPool:
    """One `RegistryClient` per registry and credential, for the whole process: every copy
    shares its connections, its `/v2/` ping and its tokens."""

    def __init__(self, settings: Settings, throttle: Throttle | None = None) -> None:
        self.settings = settings
        self.throttle = throttle or LocalThrottle()  # the fleet's lives in Redis
        self._clients: dict[tuple[str, RegistryAuth], RegistryClient] = {}
        self._lock = threading.Lock()

    def get(self, registry: str, credentials: RegistryAuth) -> RegistryClient:
        key = (registry, credentials)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = RegistryClient(registry, credentials,
                                                             self.settings, self.throttle)
            return client


class Clients:
    """The clients of one set of credentials (an auth file), drawn from a shared pool."""

    def __init__(self, auth: AuthFile, pool: ClientPool) -> None:
        self.auth = auth
        self.pool = pool

    def get(self, registry: str, repository: str) -> RegistryClient:
        return self.pool.get(registry, self.auth.lookup(registry, repository))
