"""Fixtures that start real registries, a token issuer and fault proxies.

Why function scope: a Distribution registry starts in ~50-80 ms here, so every test gets
fresh, empty storage and its own access log instead of sharing state between tests.
Everything started through these fixtures is stopped at teardown, also when the test
fails (and ``registry.py`` kills stragglers at interpreter exit).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.proxy import FaultProxy
from tests.support.registry import RunningRegistry, start_registry
from tests.support.tokens import TokenIssuer


@dataclass
class TokenRegistry:
    """A token-auth registry and the issuer whose tokens it trusts."""

    registry: RunningRegistry
    issuer: TokenIssuer

    @property
    def url(self) -> str:
        return self.registry.url

    @property
    def host(self) -> str:
        return self.registry.host

    @property
    def auth(self) -> tuple[str, str] | None:
        return self.registry.auth


RegistryFactory = Callable[..., RunningRegistry]
ProxyFactory = Callable[[RunningRegistry | str], FaultProxy]


@pytest.fixture
def registry_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryFactory]:
    """``registry_factory(**start_registry_kwargs)`` -> RunningRegistry in a fresh tmp dir."""
    started: list[RunningRegistry] = []
    counter = itertools.count()

    def factory(**kwargs: Any) -> RunningRegistry:
        workdir: Path = tmp_path_factory.mktemp(f"registry{next(counter)}")
        reg = start_registry(workdir, **kwargs)
        started.append(reg)
        return reg

    yield factory
    for reg in reversed(started):
        reg.close()


@pytest.fixture
def source_registry(registry_factory: RegistryFactory) -> RunningRegistry:
    """Anonymous plain-HTTP registry to copy from."""
    return registry_factory()


@pytest.fixture
def target_registry(registry_factory: RegistryFactory) -> RunningRegistry:
    """Anonymous plain-HTTP registry to copy to."""
    return registry_factory()


@pytest.fixture
def tls_registry(registry_factory: RegistryFactory) -> RunningRegistry:
    """HTTPS with a throwaway CA (``.ca_file``) and htpasswd Basic auth (``.auth``)."""
    return registry_factory(auth="htpasswd", tls=True)


@pytest.fixture
def token_issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenIssuer]:
    """A standalone token issuer (anonymous: pull only; known users: everything asked)."""
    issuer = TokenIssuer(tmp_path_factory.mktemp("issuer"))
    yield issuer
    issuer.stop()


@pytest.fixture
def token_registry(registry_factory: RegistryFactory, token_issuer: TokenIssuer) -> TokenRegistry:
    """Plain-HTTP registry with ``auth.token`` pointing at ``token_issuer``."""
    return TokenRegistry(registry_factory(auth="token", token_issuer=token_issuer), token_issuer)


@pytest.fixture
def fault_proxy() -> Iterator[ProxyFactory]:
    """``fault_proxy(registry_or_url)`` -> FaultProxy in front of it; all stopped at teardown."""
    proxies: list[FaultProxy] = []

    def factory(upstream: RunningRegistry | str) -> FaultProxy:
        url = upstream if isinstance(upstream, str) else upstream.url
        proxy = FaultProxy(url)
        proxies.append(proxy)
        return proxy

    yield factory
    for proxy in proxies:
        proxy.stop()
