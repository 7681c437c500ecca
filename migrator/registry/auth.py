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
import binascii
import json
import logging
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests

from migrator.errors import AuthError, RegistryError, TransportError
from migrator.registry.connection import cause_of
from migrator.registry.credentials import RegistryAuth
from migrator.registry.stream import read_capped

log = logging.getLogger(__name__)
CLIENT_ID = "migrator"  # the OAuth2 client_id of identity-token exchanges
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
        if held_resource == resource and (wanted <= set(held_actions.split(","))
                                          or "*" in held_actions.split(",")):
            return True
    return False


def merge_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """One scope per resource, actions joined, first appearance first: a mount probe's
    `repository:r:pull,push` + `repository:r:pull` is one scope, not two that a service
    reading one scope only would half-grant."""
    merged: dict[str, list[str]] = {}
    for scope in scopes:
        resource, _, actions = scope.rpartition(":")
        held = merged.setdefault(resource, [])
        held.extend(action for action in actions.split(",") if action and action not in held)
    return tuple(f"{resource}:{','.join(actions)}" for resource, actions in merged.items())


def granted_scopes(token: str) -> tuple[str, ...] | None:
    """What a Distribution-style JWT grants (its `access` claim, read, never trusted), or None
    for a token that is no such JWT: then it is taken to grant what was asked."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        access = claims["access"]
        return tuple(f"{item['type']}:{item['name']}:{','.join(item['actions'])}"
                     for item in access)
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None


# How the scopes of one token are asked for (the token spec's repeated `scope=` parameters,
# else one space-joined value, else the request's own scope alone): see `_next_form`.
ScopeForm = Literal["repeated", "joined", "single"]
_NEXT_FORM: dict[ScopeForm, ScopeForm] = {"repeated": "joined", "joined": "single"}


@dataclass
class _Token:
    value: str
    expires: float
    granted: tuple[str, ...]  # what the service granted (what was asked, when unreadable)
    readable: bool = True  # the grant was read from the token


class Authenticator:
    """Builds the Authorization header of one registry's requests. Thread safe.

    Credentials that expire (helpers, rewritten files) are asked again once when the registry
    or its token service refuses credentials that were accepted before (`_refresh`).
    """

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
        self.scope_form: ScopeForm = "repeated"
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._fetching: dict[tuple[str, ...], threading.Lock] = {}
        self._more: dict[tuple[str, ...], tuple[str, ...]] = {}  # scopes challenges asked for
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._accepted = False  # the current credentials were accepted at least once
        # Every answer on the session tells whether the Basic credentials it carried were
        # accepted; that is what makes a later 401 "expired" rather than "wrong".
        session.hooks["response"].append(self._watch)

    def _basic(self) -> tuple[str, str] | None:
        credentials = self.credentials
        if credentials.username is None:
            return None
        password = credentials.password.get_secret_value() if credentials.password else ""
        return credentials.username, password

    def _watch(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if response.status_code == 401 or self._accepted:
            return
        sent = _text(response.request.headers.get("Authorization")) if response.request else ""
        if sent and sent == basic_header(self.credentials):
            self._accepted = True

    def header(self, scopes: tuple[str, ...]) -> str | None:
        """The Authorization value for a request needing `scopes` (the request's own repository
        first), or None (anonymous)."""
        challenge = self.challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            basic = self._basic()
            if basic is None or self.credentials.identity_token:
                return None
            return basic_auth(*basic)
        if challenge.scheme == "bearer":
            return f"Bearer {self._token(scopes)}"
        return None

    def learn(self, response: requests.Response, scopes: tuple[str, ...]) -> bool:
        """After a 401: adopt its challenge, drop the token that failed; True if a retry may help.

        The caller retries at most once per request, so a refusal cannot loop. A challenge
        `error="insufficient_scope"` that names scopes (the token spec, RFC 6750 section 3.1)
        makes the retry ask for those too; a token of several scopes that was insufficient
        makes the next one asked for in the next form (`_next_form`). Basic credentials that
        had been accepted are asked again from their source.
        """
        challenge = parse_challenge(response.headers.get("WWW-Authenticate"))
        if challenge is None:
            return False
        wanted = merge_scopes(scopes)
        if challenge.scheme == "bearer":
            if (challenge.params.get("error") == "insufficient_scope"
                    and not self._step_up(wanted, challenge.params.get("scope", ""))):
                return False
            # scope/error vary per response; realm and service are what the next fetch needs
            challenge = Challenge("bearer", {
                k: v for k, v in challenge.params.items() if k in ("realm", "service")})
        sent = _text(response.request.headers.get("Authorization")) if response.request else ""
        with self._lock:
            self.challenge = challenge
            for held, token in list(self._tokens.items()):
                if all(_covered(scope, held) or _covered(scope, token.granted)
                       for scope in wanted):
                    del self._tokens[held]
        if challenge.scheme == "basic" and sent.startswith("Basic ") and self._refresh(sent):
            return True
        return challenge.scheme == "bearer" or self._basic() is not None

    def renewed(self, response: requests.Response) -> bool:
        """A 401 to a request that cannot be replayed (a streamed upload): whether the Basic
        credentials it carried had worked and fresh ones are now in place, so that sending it
        again may succeed."""
        sent = _text(response.request.headers.get("Authorization")) if response.request else ""
        return sent.startswith("Basic ") and self._refresh(sent)

    def _step_up(self, wanted: tuple[str, ...], named: str) -> bool:
        """After `insufficient_scope`: whether another token may do better. Yes when the
        challenge names scopes not asked for (asked for from now on), or when the token's
        grant could not be read (the next form is tried); no when it was read and lacks what
        was asked: `_best_token` already chose the best this service gives."""
        key = tuple(sorted(wanted))
        more = tuple(scope for scope in named.split() if scope.count(":") >= 2
                     and not _covered(scope, wanted))
        with self._lock:
            if more:
                self._more[key] = merge_scopes((*self._more.get(key, ()), *more))
                return True
            used = self._tokens.get(key)
        if used is None:
            return True
        if not used.readable:
            if len(wanted) > 1:
                self._next_form()
            return True
        return all(_covered(scope, used.granted) for scope in wanted)

    def _next_form(self) -> None:
        """A token of several scopes (one that cannot be read) was insufficient: ask the next
        way from now on (repeated parameters, one space-joined value as RFC 6749 section 3.3
        writes scopes, the request's own scope alone). Old GitLab and Harbor 1.1 kept only
        the last `scope=` parameter; a mount then lacks the source's pull and is refused, and
        the copy uploads instead."""
        following = _NEXT_FORM.get(self.scope_form)
        if following is not None:
            self._adopt(following)

    def _token(self, scopes: tuple[str, ...]) -> str:
        wanted = merge_scopes(scopes)
        key = tuple(sorted(wanted))
        wanted = merge_scopes((*wanted, *self._more.get(key, ())))
        token = self._cached(key, wanted)
        if token:
            return token
        with self._lock:
            fetch_lock = self._fetching.setdefault(key, threading.Lock())
        # Single flight per scope set: threads that need the same token wait for one fetch.
        with fetch_lock:
            token = self._cached(key, wanted)
            if token:
                return token
            value, lifetime, granted, readable = self._best_token(wanted)
            with self._lock:
                expires = time.monotonic() + max(lifetime - TOKEN_REFRESH_MARGIN, 1.0)
                self._tokens[key] = _Token(value, expires, granted, readable)
            return value

    def _best_token(self, wanted: tuple[str, ...]
                    ) -> tuple[str, float, tuple[str, ...], bool]:
        """A token for `wanted` (the request's own scope first), in this service's form.

        A token of several scopes that grants only some (read from the token) comes from a
        service that reads one `scope` parameter only, or from an account that lacks a right.
        One space-joined value tells them apart: granted whole, the service wants that form;
        granted nothing, it reads one scope and splits none, so one scope per token is all it
        gives; granted in part, the account lacks the rest and the form stays.
        """
        form = self.scope_form
        asked = wanted[:1] if form == "single" else wanted
        value, lifetime, granted = self._fetch_token(asked, form)
        if granted is None:
            return value, lifetime, asked, False
        if form != "repeated" or len(wanted) < 2 or all(_covered(s, granted) for s in wanted):
            return value, lifetime, granted, True
        joined = self._fetch_token(wanted, "joined")
        joined_granted = joined[2] if joined[2] is not None else wanted
        if all(_covered(scope, joined_granted) for scope in wanted):
            self._adopt("joined")
            return joined[0], joined[1], joined_granted, True
        if not any(_covered(scope, joined_granted) for scope in wanted):
            self._adopt("single")
        if _covered(wanted[0], granted):
            return value, lifetime, granted, True
        if _covered(wanted[0], joined_granted):
            return joined[0], joined[1], joined_granted, True
        value, lifetime, own = self._fetch_token(wanted[:1], "single")
        return value, lifetime, own if own is not None else wanted[:1], own is not None

    def _adopt(self, form: ScopeForm) -> None:
        with self._lock:
            if self.scope_form == form:
                return
            self.scope_form = form
        log.info("%s: its token service reads %s", self.registry, {
            "joined": "the scopes of a token as one space-joined value",
            "single": "one scope per token: a cross-repository mount cannot be granted",
            "repeated": "repeated scope parameters"}[form])

    def _cached(self, key: tuple[str, ...], wanted: tuple[str, ...]) -> str | None:
        """A live token for this scope set, or one whose grant covers it (a pull,push token
        serves a pull)."""
        now = time.monotonic()
        with self._lock:
            exact = self._tokens.get(key)
            if exact and exact.expires > now:
                return exact.value
            for token in self._tokens.values():
                if token.expires > now and all(_covered(scope, token.granted) for scope in wanted):
                    return token.value
        return None

    def _fetch_token(self, scopes: tuple[str, ...], form: ScopeForm
                     ) -> tuple[str, float, tuple[str, ...] | None]:
        """One exchange at the realm; refused credentials that had worked are asked again from
        their source, and the exchange tried once more with them."""
        credentials = self.credentials
        try:
            return self._exchange(scopes, form, credentials)
        except _Refused as refused:
            if not self._refresh(basic_header(credentials)):
                raise refused.error from None
        return self._exchange(scopes, form, self.credentials)

    def _exchange(self, scopes: tuple[str, ...], form: ScopeForm, credentials: RegistryAuth
                  ) -> tuple[str, float, tuple[str, ...] | None]:
        assert self.challenge is not None
        realm = self.challenge.params.get("realm")
        if not realm:
            raise AuthError(f"{self.registry}: the registry asked for a token but named no realm")
        self._check_realm(realm, credentials)
        service = self.challenge.params.get("service")
        realm_shown = _where(realm)
        try:
            if credentials.identity_token:
                response = self._oauth(realm, service, scopes, credentials)
            else:
                params: list[tuple[str, str]] = [("service", service)] if service else []
                if form == "joined" and scopes:
                    params.append(("scope", " ".join(scopes)))
                else:
                    # The request's own scope last: a service that keeps only the last
                    # `scope=` parameter still grants the request itself.
                    params.extend(("scope", scope) for scope in reversed(scopes))
                basic = None if credentials.username is None else (
                    credentials.username,
                    credentials.password.get_secret_value() if credentials.password else "")
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
        if response.status_code in (401, 403) or (
                credentials.identity_token and response.status_code == 400):
            raise _Refused(self._refusal(response.status_code, scopes, credentials))
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
        if not credentials.anonymous:
            self._accepted = True
        return str(token), lifetime, granted_scopes(str(token))

    def _oauth(self, realm: str, service: str | None, scopes: tuple[str, ...],
               credentials: RegistryAuth) -> requests.Response:
        """An identity token (Docker's `identitytoken`, an OAuth2 refresh token) exchanged as
        Docker does: a form POST with grant_type=refresh_token and the scopes space-joined
        (Distribution's docs/spec/auth/oauth.md)."""
        form = {"grant_type": "refresh_token", "client_id": CLIENT_ID,
                "refresh_token": credentials.password.get_secret_value()
                if credentials.password else ""}
        if service:
            form["service"] = service
        if scopes:
            form["scope"] = " ".join(scopes)
        return self.session.post(realm, data=form, verify=self.verify, timeout=self.timeout,
                                 allow_redirects=False, stream=True)

    def _refusal(self, status: int, scopes: tuple[str, ...], credentials: RegistryAuth
                 ) -> AuthError:
        repositories = ", ".join(scope.split(":")[1] for scope in scopes if scope.count(":") >= 2)
        if credentials.anonymous:
            return AuthError(
                f"{self.registry}: the token service refused anonymous access"
                f"{f' to {repositories}' if repositories else ''} (HTTP {status}): if the "
                "image is not public, give this registry's credentials in the auth file (or "
                "`docker login`)")
        who = ("an identity token" if credentials.identity_token
               else f"user {credentials.username!r}")
        return AuthError(f"{self.registry}: the token service refused {who} (HTTP {status}); "
                         "check the credentials in the auth file")

    def _refresh(self, sent: str | None) -> bool:
        """Credentials refused after they had been accepted: expired (ECR's last 12 h, GCR's
        access tokens 1 h, SWR's temporary logins 6 h). Ask their source again, once: True when
        it gave other credentials to try. `sent` is the Basic header that was refused."""
        with self._refresh_lock:
            current = self.credentials
            if sent != basic_header(current):
                return True  # another thread has refreshed them already
            refresher = current.refresher
            if refresher is None or not self._accepted:
                return False  # never accepted: asking again would give the same
            self._accepted = False  # one try per acceptance, not one per refused request
            fresh = refresher()
            if fresh is None or basic_header(fresh) == sent:
                log.info("%s: credentials refused; their source has no others", self.registry)
                return False
            with self._lock:
                self.credentials = current.with_credentials_of(fresh)
                self._tokens.clear()
            log.info("%s: credentials refused after they had worked: using their source's "
                     "fresh ones", self.registry)
            return True

    def _check_realm(self, realm: str, credentials: RegistryAuth) -> None:
        """The realm is named by the registry, so it is checked before it gets a password."""
        scheme = urlsplit(realm).scheme.lower()
        if scheme not in ("http", "https"):
            raise AuthError(f"{self.registry}: token realm {_where(realm)!r} refused: only "
                            "https:// (or http:// for an insecure registry) realms are asked")
        if scheme == "http" and not credentials.anonymous and not credentials.insecure:
            who = ("an identity token" if credentials.identity_token
                   else f"the password of user {credentials.username!r}")
            raise AuthError(
                f"{self.registry}: token realm {_where(realm)} is plain HTTP: {who} is not "
                "sent in clear (set insecure: true on the registry's entry to allow it)")


class _Refused(Exception):
    """The token service refused the credentials (401/403): maybe expired, maybe wrong."""

    def __init__(self, error: AuthError) -> None:
        super().__init__(str(error))
        self.error = error


def _text(value: str | bytes | None) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value or ""


def basic_header(credentials: RegistryAuth) -> str | None:
    """The Basic value these credentials make (what identifies them in a refused request)."""
    if credentials.username is None:
        return None
    password = credentials.password.get_secret_value() if credentials.password else ""
    return basic_auth(credentials.username, password)
