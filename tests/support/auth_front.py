"""A stand-in front for a real registry that changes how it asks for credentials.

Forwards every request to a real Distribution registry and answers as another registry's
authentication would, each behaviour with its public source:

- ``challenge``: rewrites the upstream's ``WWW-Authenticate`` header. Sonatype Nexus answers
  ``BASIC realm="Sonatype Nexus Repository Manager"``, the scheme in capitals
  (google/containerregistry#38, devcontainers/cli#884); RFC 7235 section 2.1 makes the scheme
  case-insensitive.
- ``demand``: extra scopes a request needs beyond those a client would derive from the path,
  named only in the ``error="insufficient_scope"`` challenge of the 401, as the token spec
  has the registry say what access it requires
  (distribution.github.io/distribution/spec/auth/token, RFC 6750 section 3.1). The front reads
  the bearer token's ``access`` claim (unverified: the upstream verifies the token itself).

Bodies are read whole (test images are small); chunked request bodies are decoded.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

# (method, path) -> extra scopes the request needs, () for none
Demand = Callable[[str, str], tuple[str, ...]]


class _Server(ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True


def token_access(authorization: str | None) -> set[tuple[str, str, str]]:
    """(type, name, action) granted by a Bearer JWT, read without verification."""
    if not authorization or not authorization.startswith("Bearer "):
        return set()
    try:
        payload = authorization.split(" ", 1)[1].split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return {(item["type"], item["name"], action)
                for item in claims["access"] for action in item["actions"]}
    except (IndexError, ValueError, KeyError, TypeError):
        return set()


class AuthFront:
    def __init__(self, upstream_url: str, *, challenge: Callable[[str], str] | None = None,
                 demand: Demand | None = None, realm: str = "", service: str = "",
                 on_request: Callable[[str, str], None] | None = None) -> None:
        """`on_request(method, path)` runs before each request is forwarded (a test's hook
        to change something mid-run, such as a password)."""
        self.upstream = upstream_url
        self.on_request = on_request
        self.challenge = challenge
        self.demand = demand
        self.realm, self.service = realm, service
        self.seen: list[tuple[str, str, int]] = []  # (method, path, status answered)
        self.challenges: list[str] = []  # every WWW-Authenticate header answered
        self._lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _record(self, method: str, path: str, status: int, challenge: str | None) -> None:
        with self._lock:
            self.seen.append((method, path, status))
            if challenge:
                self.challenges.append(challenge)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes | None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else None

            def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                front._record(self.command, self.path, status, headers.get("WWW-Authenticate"))

            def _handle(self) -> None:
                body = self._body()
                if front.on_request is not None:
                    front.on_request(self.command, self.path)
                needed = front.demand(self.command, self.path) if front.demand else ()
                if needed:
                    held = token_access(self.headers.get("Authorization"))
                    missing = [scope for scope in needed
                               if not _held(scope, held)]
                    if missing:
                        scope = " ".join(needed)
                        challenge = (f'Bearer realm="{front.realm}",service="{front.service}",'
                                     f'scope="{scope}",error="insufficient_scope"')
                        error = {"errors": [{"code": "DENIED",
                                             "message": "insufficient scope"}]}
                        self._answer(401, {"WWW-Authenticate": challenge,
                                           "Content-Type": "application/json"},
                                     json.dumps(error).encode())
                        return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "transfer-encoding", "content-length")}
                with requests.Session() as session:
                    session.trust_env = False
                    upstream = session.request(self.command, front.upstream + self.path,
                                               data=body, headers=headers, timeout=60,
                                               allow_redirects=False)
                answer = {k: v for k, v in upstream.headers.items() if k.lower() not in
                          ("content-length", "transfer-encoding", "connection")}
                location = answer.get("Location", "")
                if location.startswith(front.upstream):
                    answer["Location"] = front.url + location[len(front.upstream):]
                for key in [key for key in answer if key.lower() == "www-authenticate"]:
                    value = answer.pop(key)  # Go writes it `Www-Authenticate`
                    answer["WWW-Authenticate"] = (front.challenge(value) if front.challenge
                                                  else value)
                self._answer(upstream.status_code, answer, upstream.content)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815

        return Handler


def _held(scope: str, held: set[tuple[str, str, str]]) -> bool:
    type_, rest = scope.split(":", 1)
    name, actions = rest.rsplit(":", 1)
    return all((type_, name, action) in held for action in actions.split(","))
