"""Registry authentication: Basic, and the Docker token protocol (Bearer) with a scope cache.

The registry tells us how to authenticate in its `WWW-Authenticate` challenge, first on the
`/v2/` ping. With Bearer we then ask the realm for a token per set of scopes
(`repository:ns/repo:pull,push`) and keep it until shortly before it expires, so that one token
serves every request of a repository instead of a 401 round trip per request.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

import requests

from migrator.auth import RegistryAuth
from migrator.errors import AuthError, TransportError

_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
TOKEN_REFRESH_MARGIN = 10.0
DEFAULT_TOKEN_LIFETIME = 60.0


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "basic" or "bearer"
    params: dict[str, str] = field(default_factory=dict)


def parse_challenge(header: str | None) -> Challenge | None:
    """Parse `Bearer realm="...",service="...",scope="..."` (or `Basic realm=...`)."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
              for m in _PARAM.finditer(rest)}
    return Challenge(scheme.lower(), params)


def repository_scope(repository: str, actions: str) -> str:
    return f"repository:{repository}:{actions}"


def _covered(scope: str, held: tuple[str, ...]) -> bool:
    """Whether one of the `held` scopes grants every action of `scope` on the same resource."""
    resource, _, actions = scope.rpartition(":")
    wanted = set(actions.split(","))
    for candidate in held:
        held_resource, _, held_actions = candidate.rpartition(":")
        if held_resource == resource and wanted <= set(held_actions.split(",")):
            return True
    return False


class Authenticator:
    """Builds the Authorization header of one registry's requests. Thread safe."""

    def __init__(
        self,
        registry: str,
        credentials: RegistryAuth,
        session: requests.Session,
        *,
        verify: bool | str,
        timeout: tuple[float, float],
    ) -> None:
        self.registry = registry
        self.credentials = credentials
        self.session = session
        self.verify = verify
        self.timeout = timeout
        self.challenge: Challenge | None = None
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}
        self._fetching: dict[tuple[str, ...], threading.Lock] = {}
        self._lock = threading.Lock()
        self.tokens_fetched = 0

    def _basic(self) -> tuple[str, str] | None:
        if self.credentials.username is None:
            return None
        password = self.credentials.password.get_secret_value() if self.credentials.password else ""
        return self.credentials.username, password

    def header(self, scopes: tuple[str, ...]) -> str | None:
        """The Authorization value for a request needing `scopes`, or None (anonymous)."""
        challenge = self.challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            basic = self._basic()
            if basic is None:
                return None
            return requests.auth._basic_auth_str(*basic)
        if challenge.scheme == "bearer":
            return f"Bearer {self._token(scopes)}"
        return None

    def learn(self, response: requests.Response, scopes: tuple[str, ...]) -> bool:
        """After a 401: adopt its challenge, drop the token that failed; True if a retry may help.

        The caller retries at most once per request, so a refusal cannot loop.
        """
        challenge = parse_challenge(response.headers.get("WWW-Authenticate"))
        if challenge is None:
            return False
        if challenge.scheme == "bearer":
            # scope/error vary per response; realm and service are what the next fetch needs
            challenge = Challenge("bearer", {
                k: v for k, v in challenge.params.items() if k in ("realm", "service")})
        with self._lock:
            self.challenge = challenge
            for held in [held for held in self._tokens
                         if all(_covered(scope, held) for scope in scopes)]:
                del self._tokens[held]
        return challenge.scheme == "bearer" or self._basic() is not None

    def _token(self, scopes: tuple[str, ...]) -> str:
        key = tuple(sorted(scopes))
        token = self._cached(key)
        if token:
            return token
        with self._lock:
            fetch_lock = self._fetching.setdefault(key, threading.Lock())
        # Single flight per scope set: threads that need the same token wait for one fetch.
        with fetch_lock:
            token = self._cached(key)
            if token:
                return token
            token, lifetime = self._fetch_token(key)
            with self._lock:
                expires = time.monotonic() + max(lifetime - TOKEN_REFRESH_MARGIN, 1.0)
                self._tokens[key] = (token, expires)
            return token

    def _cached(self, wanted: tuple[str, ...]) -> str | None:
        """A live token whose scopes cover `wanted` (a pull,push token serves a pull)."""
        now = time.monotonic()
        with self._lock:
            exact = self._tokens.get(wanted)
            if exact and exact[1] > now:
                return exact[0]
            for held, (token, expires) in self._tokens.items():
                if expires > now and all(_covered(scope, held) for scope in wanted):
                    return token
        return None

    def _fetch_token(self, scopes: tuple[str, ...]) -> tuple[str, float]:
        assert self.challenge is not None
        realm = self.challenge.params.get("realm")
        if not realm:
            raise AuthError(f"{self.registry}: the registry asked for a token but named no realm")
        params: list[tuple[str, str]] = []
        if self.challenge.params.get("service"):
            params.append(("service", self.challenge.params["service"]))
        params.extend(("scope", scope) for scope in scopes)
        try:
            response = self.session.get(
                realm, params=params, auth=self._basic(), verify=self.verify,
                timeout=self.timeout, allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise TransportError(
                f"{self.registry}: token service {realm} unreachable: {type(exc).__name__}"
            ) from None
        self.tokens_fetched += 1
        if response.status_code in (401, 403):
            who = f"user {self.credentials.username!r}" if self.credentials.username else (
                "anonymous access")
            raise AuthError(
                f"{self.registry}: the token service refused {who} "
                f"(HTTP {response.status_code}); check the credentials in the auth file"
            )
        if response.status_code != 200:
            raise AuthError(
                f"{self.registry}: token service {realm} answered HTTP {response.status_code}"
            )
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
            lifetime = float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            token = None
        if not token:
            raise AuthError(f"{self.registry}: token service {realm} returned no token")
        return token, lifetime
