"""Registry authentication: Basic, and the Docker token protocol (Bearer) with a scope cache.

The registry tells us how to authenticate in its `WWW-Authenticate` challenge, first on the
`/v2/` ping. With Bearer we then ask the realm for a token per set of scopes
(`repository:ns/repo:pull,push`) and keep it until shortly before it expires, so that one token
serves every request of a repository instead of a 401 round trip per request.

Where credentials may go (SECURITY.md):
- The bearer token goes to the registry it was issued for, on its own host only (the client
  checks each request's host; one `Authenticator` per registry and credential).
- The username and password go to the registry itself (Basic) or to the token realm the
  registry names. A realm on another host is normal (Docker Hub, GHCR); a realm over plain
  HTTP gets them only when the registry's entry is `insecure`, a realm with another scheme
  never.
- Redirects (blob downloads to storage) never carry an Authorization header to another host
  (requests drops it), never go to a scheme other than HTTP(S) and never downgrade HTTPS to
  plain HTTP unless the entry is `insecure`.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests

from migrator.errors import AuthError, RegistryError, TransportError
from migrator.registry.connection import cause_of
from migrator.registry.credentials import RegistryAuth
from migrator.registry.stream import read_capped

_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
TOKEN_REFRESH_MARGIN = 10.0
DEFAULT_TOKEN_LIFETIME = 60.0
MAX_TOKEN_ANSWER = 1 << 20  # a token answer is a few KiB; a bigger one is not read whole
MAX_REDIRECTS = 5  # storage redirects are one hop; a loop ends here with a clear error


def _where(url: str) -> str:
    """A URL for messages: scheme, host and path (a realm's or signed URL's query dropped)."""
    parts = urlsplit(url)
    host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname or ""
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class GuardedSession(requests.Session):
    """requests' Session whose redirects stay on HTTP(S), never downgrade HTTPS to plain HTTP
    (unless `allow_plain_http`), stop after MAX_REDIRECTS, and whose redirect bodies are
    never read (requests would read one whole to reuse the connection)."""

    def __init__(self, *, allow_plain_http: bool) -> None:
        super().__init__()
        self.allow_plain_http = allow_plain_http
        self.max_redirects = MAX_REDIRECTS

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        target = super().get_redirect_target(resp)
        if target is None:
            return None
        # requests hands the Location over as latin-1 decoded bytes; urljoin copes with both
        absolute = urljoin(resp.url, target)
        scheme = urlsplit(absolute).scheme.lower()
        if scheme not in ("http", "https"):
            resp.close()
            raise RegistryError(f"{_where(resp.url)} redirected to a {scheme or 'relative'}: "
                                "URL; only HTTP(S) redirects are followed")
        if (scheme == "http" and urlsplit(resp.url).scheme.lower() == "https"
                and not self.allow_plain_http):
            resp.close()
            raise RegistryError(f"{_where(resp.url)} redirected from HTTPS to plain HTTP "
                                f"({_where(absolute)}); refused unless the registry is insecure")
        if resp.headers.get("Content-Length") != "0":
            resp.close()  # an unread body of any size: drop this connection instead
            resp._content, resp._content_consumed = b"", True
        return target


def basic_auth(username: str, password: str) -> str:
    """The Basic Authorization value, in UTF-8 as Docker's clients send it (requests' own
    helper encodes Latin-1 and fails on a password such as `pässwörd€`)."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


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
            return basic_auth(*basic)
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
        self._check_realm(realm)
        params: list[tuple[str, str]] = []
        if self.challenge.params.get("service"):
            params.append(("service", self.challenge.params["service"]))
        params.extend(("scope", scope) for scope in scopes)
        realm_shown = _where(realm)
        try:
            basic = self._basic()
            response = self.session.get(
                realm, params=params, verify=self.verify, timeout=self.timeout,
                headers={"Authorization": basic_auth(*basic)} if basic else None,
                allow_redirects=False, stream=True,
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransportError(
                f"{self.registry}: token service {realm_shown} unreachable: "
                f"{type(exc).__name__}: {cause_of(exc).text}") from None
        except requests.RequestException as exc:
            raise AuthError(f"{self.registry}: token service {realm_shown} could not be "
                            f"asked: {type(exc).__name__}") from None
        with response:
            try:
                response._content = read_capped(
                    response, MAX_TOKEN_ANSWER, self.timeout[1],
                    f"{self.registry}: token service answer", truncate=True)
            except RegistryError as exc:
                raise AuthError(str(exc)) from None
            response._content_consumed = True
        if response.status_code in (401, 403):
            who = f"user {self.credentials.username!r}" if self.credentials.username else (
                "anonymous access")
            raise AuthError(
                f"{self.registry}: the token service refused {who} "
                f"(HTTP {response.status_code}); check the credentials in the auth file"
            )
        if response.status_code != 200:
            raise AuthError(
                f"{self.registry}: token service {realm_shown} answered HTTP "
                f"{response.status_code}")
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
            lifetime = float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            token = None
        if not token:
            raise AuthError(f"{self.registry}: token service {realm_shown} returned no token")
        return str(token), lifetime

    def _check_realm(self, realm: str) -> None:
        """The realm is named by the registry, so it is checked before it gets a password."""
        scheme = urlsplit(realm).scheme.lower()
        if scheme not in ("http", "https"):
            raise AuthError(f"{self.registry}: token realm {_where(realm)!r} refused: only "
                            "https:// (or http:// for an insecure registry) realms are asked")
        if scheme == "http" and self._basic() is not None and not self.credentials.insecure:
            raise AuthError(
                f"{self.registry}: token realm {_where(realm)} is plain HTTP: the password of "
                f"user {self.credentials.username!r} is not sent in clear (set insecure: true "
                "on the registry's entry to allow it)")
