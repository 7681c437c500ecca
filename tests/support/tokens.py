"""A Docker token-auth issuer for Distribution's ``auth.token`` mode.

Why it exists: the product must do the bearer-token handshake (401 + ``WWW-Authenticate:
Bearer realm=...,service=...,scope=...`` -> GET realm -> retry with the token) against a
real registry, so the tests need a real issuer whose tokens the real registry accepts.

What Distribution 2.8.2 accepts (measured): an RS256 JWT signed by the key of the
certificate listed in ``rootcertbundle``, carrying that certificate (base64 DER) in the
``x5c`` header; claims ``iss`` (= ``auth.token.issuer``), ``aud`` (= service), ``sub``,
``exp``, ``nbf``, ``iat``, ``jti`` and ``access`` =
``[{"type": "repository", "name": "ns/repo", "actions": ["pull", "push"]}]``.
A scope the token lacks answers 401 with ``error="insufficient_scope"``.

Behaviours of real token services, each with its public source, switched on per issuer:

- ``scopes_read="all"`` (default): every ``scope=`` parameter, each also split on spaces. The
  token spec asks for repeated parameters (distribution.github.io/distribution/spec/auth/token);
  RFC 6749 section 3.3 writes scopes as one space-delimited value; GitLab reads both.
- ``scopes_read="last"``: only the last ``scope=`` parameter, as one scope, never split: old
  GitLab's ``/jwt/auth`` behind Rails' parameter parsing ("the resulting JWT token only
  contains the second", estesp/manifest-tool#53), Harbor 1.1 (goharbor/harbor#2411).
- ``scopes_read="first"``: only the first, never split: a Go service reading
  ``r.URL.Query().Get("scope")`` ("only understands a single scope query parameter",
  cesanta/docker_auth#67, moby/moby#20387). A cross-repository mount needs push on the target
  and pull on the source *in one token*, which neither of the two can give.
- ``realm_host``: the realm on another host than the registry (Docker Hub's
  auth.docker.io, GHCR's ghcr.io/token).
- ``refuse_anonymous=True``: an anonymous token request for a scope the policy grants nothing
  on is answered 401, as GHCR answers for an image that is not public
  (openai/tunnel-client#75), while public ones get an anonymous token (GHCR requires that
  exchange even for public images: oras-project/oras-java#178).
- ``POST /token`` with ``grant_type=refresh_token``: the OAuth2 exchange of an identity token
  (``docker login``'s ``identitytoken``; distribution.github.io/distribution/spec/auth/oauth).

Needs the ``PyJWT`` and ``cryptography`` packages.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

# (user or None for anonymous, resource type, resource name, requested actions) -> granted
GrantPolicy = Callable[[str | None, str, str, list[str]], list[str]]

_KEY_LOCK = threading.Lock()
_KEY: rsa.RSAPrivateKey | None = None


def _signing_key() -> rsa.RSAPrivateKey:
    """One RSA key per test process: generating RSA keys costs ~50-100 ms each."""
    global _KEY
    with _KEY_LOCK:
        if _KEY is None:
            _KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return _KEY


def default_policy(user: str | None, type_: str, name: str, actions: list[str]) -> list[str]:
    """Authenticated users get every action they ask for; anonymous users only ``pull``."""
    if user is not None:
        return list(actions)
    return [a for a in actions if a == "pull"]


def parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """``repository:ns/repo:pull,push`` -> ("repository", "ns/repo", ["pull", "push"]).

    The name may itself contain ``:`` (e.g. a host with a port), so split on the first
    and last colons.
    """
    if scope.count(":") < 2:
        return None
    type_, rest = scope.split(":", 1)
    name, actions = rest.rsplit(":", 1)
    return type_, name, [a for a in actions.split(",") if a]


class TokenIssuer:
    """Threaded token endpoint on 127.0.0.1 (``GET /token`` and OAuth2 ``POST /token``).

    ``issued`` records ``(user, scopes)`` for every token handed out, so tests can check
    that a client caches tokens instead of asking for one per request. ``ttl`` sets the
    token lifetime (``expires_in``) so tests can exercise expiry.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        users: dict[str, str] | None = None,
        policy: GrantPolicy = default_policy,
        service: str = "test-registry",
        issuer: str = "test-issuer",
        ttl: int = 300,
        scopes_read: Literal["all", "last", "first"] = "all",
        realm_host: str = "127.0.0.1",
        refuse_anonymous: bool = False,
    ) -> None:
        self.users: dict[str, str] = dict(users or {})
        self.scopes_read = scopes_read
        self.refuse_anonymous = refuse_anonymous
        self.refresh_tokens: dict[str, str] = {}  # identity token -> user
        self.queries: list[list[str]] = []  # the raw `scope=` values of each GET
        self.policy = policy
        self.service = service
        self.issuer = issuer
        self.ttl = ttl
        self.issued: list[tuple[str | None, tuple[str, ...]]] = []
        self.denied: list[tuple[str | None, str]] = []  # (user, reason)
        self._lock = threading.Lock()
        workdir.mkdir(parents=True, exist_ok=True)
        self._key = _signing_key()
        self._cert = _self_signed_cert(self._key, issuer)
        self._x5c = base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()
        self.cert_path = workdir / "token-issuer.crt"
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

        self._server = _Server(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self.url = f"http://{realm_host}:{self.port}/token"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="token-issuer", daemon=True
        )
        self._thread.start()

    def add_user(self, name: str, password: str) -> None:
        """Allow one more user (the registry factory registers its test user here)."""
        with self._lock:
            self.users[name] = password

    def set_password(self, name: str, password: str) -> None:
        """Change a user's password (an expired short-lived password: ECR's, SWR's)."""
        with self._lock:
            self.users[name] = password

    def add_identity_token(self, name: str) -> str:
        """An identity token (OAuth2 refresh token) for a known user, as `docker login`
        stores it."""
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.refresh_tokens[token] = name
        return token

    def make_token(
        self, user: str | None, access: list[dict[str, object]], *, ttl: int | None = None
    ) -> str:
        """Sign a token directly (e.g. to hand a client an already-expired token)."""
        now = int(time.time())
        lifetime = self.ttl if ttl is None else ttl
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + lifetime,
            "nbf": now - 10,  # tolerate small clock differences
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"x5c": [self._x5c]})

    def stop(self) -> None:
        """Stop serving; idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> TokenIssuer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling (called from handler threads) ---------------------------------

    def _authenticate(self, header: str | None) -> tuple[bool, str | None]:
        """Returns (ok, user). No header = anonymous; bad Basic credentials = not ok."""
        if not header:
            return True, None
        kind, _, value = header.partition(" ")
        if kind.lower() != "basic":
            return False, None
        try:
            user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False, None
        return self._check_password(user, password)

    def _check_password(self, user: str, password: str) -> tuple[bool, str | None]:
        with self._lock:
            expected = self.users.get(user)
        if expected is None or not secrets.compare_digest(expected.encode(), password.encode()):
            return False, user
        return True, user

    def read_scopes(self, values: list[str]) -> list[str]:
        """The scopes this service reads from the `scope=` values of a request."""
        if self.scopes_read == "last":
            return values[-1:]
        if self.scopes_read == "first":
            return values[:1]
        return _split_scopes(values)

    def refuses(self, user: str | None, scopes: list[str]) -> bool:
        """GHCR-like: an anonymous request for a scope granted nothing is refused."""
        if user is not None or not self.refuse_anonymous:
            return False
        for scope in scopes:
            parsed = parse_scope(scope)
            if parsed is not None and not self.policy(None, *parsed):
                return True
        return False

    def _issue(self, user: str | None, scopes: list[str]) -> dict[str, object]:
        access: list[dict[str, object]] = []
        for scope in scopes:
            parsed = parse_scope(scope)
            if parsed is None:
                continue
            type_, name, actions = parsed
            granted = self.policy(user, type_, name, actions)
            if granted:
                access.append({"type": type_, "name": name, "actions": granted})
        token = self.make_token(user, access)
        with self._lock:
            self.issued.append((user, tuple(scopes)))
        issued_at = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        return {
            "token": token,
            "access_token": token,
            "expires_in": self.ttl,
            "issued_at": issued_at,
        }


def _split_scopes(values: list[str]) -> list[str]:
    """Scopes come as repeated ``scope=`` params and/or space-separated in one (OAuth2)."""
    return [s for v in values for s in v.split(" ") if s]


class _Server(ThreadingHTTPServer):
    # The default listen backlog of 5 drops SYNs when a client opens many connections at
    # once, which costs a 1 s retransmit each: keep it large.
    request_queue_size = 128
    daemon_threads = True


def _make_handler(issuer: TokenIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # keep pytest output clean

        def _reply(
            self, status: int, body: dict[str, object], extra: dict[str, str] | None = None
        ) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _deny(self, user: str | None, reason: str) -> None:
            with issuer._lock:
                issuer.denied.append((user, reason))
            self._reply(
                401,
                {"errors": [{"code": "UNAUTHORIZED", "message": reason}]},
                {"WWW-Authenticate": 'Basic realm="token-issuer"'},
            )

        def do_GET(self) -> None:  # noqa: N802
            parts = urlsplit(self.path)
            if parts.path != "/token":
                self._reply(404, {"error": "not found"})
                return
            query = parse_qs(parts.query)
            if query.get("service", [issuer.service])[0] != issuer.service:
                self._reply(400, {"error": "unknown service"})
                return
            ok, user = issuer._authenticate(self.headers.get("Authorization"))
            if not ok:
                self._deny(user, "bad credentials")
                return
            values = query.get("scope", [])
            with issuer._lock:
                issuer.queries.append(values)
            scopes = issuer.read_scopes(values)
            if issuer.refuses(user, scopes):
                self._deny(None, "authentication required")
                return
            self._reply(200, issuer._issue(user, scopes))

        def do_POST(self) -> None:  # noqa: N802
            """OAuth2 grants: `password`, which some clients try before falling back to GET,
            and `refresh_token`, how an identity token is exchanged."""
            if urlsplit(self.path).path != "/token":
                self._reply(404, {"error": "not found"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            grant = form.get("grant_type", [""])[0]
            if grant == "refresh_token":
                with issuer._lock:
                    owner = issuer.refresh_tokens.get(form.get("refresh_token", [""])[0])
                if owner is None:
                    # RFC 6749 section 5.2: an invalid grant is a 400
                    self._reply(400, {"error": "invalid_grant"})
                    return
                self._reply(200, issuer._issue(owner, issuer.read_scopes(form.get("scope", []))))
                return
            if grant != "password":
                self._reply(400, {"error": "unsupported_grant_type"})
                return
            ok, user = issuer._check_password(
                form.get("username", [""])[0], form.get("password", [""])[0]
            )
            if not ok:
                self._deny(user, "bad credentials")
                return
            self._reply(200, issuer._issue(user, _split_scopes(form.get("scope", []))))

    return Handler


def _self_signed_cert(key: rsa.RSAPrivateKey, common_name: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
