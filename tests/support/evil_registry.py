"""A malicious source registry: a real HTTP server that speaks just enough of the v2 API.

Why: the product must refuse a registry that lies (digests, sizes, huge or endless answers,
redirects elsewhere, strange token realms, slow drips) cleanly and within bounded time and
memory. A real registry never lies, so the tests need one that does on demand.

It serves `GET /v2/`, tag lists, manifests and blobs from what a test stored with
`add_blob` / `add_manifest` / `add_image`, and lets a test replace any answer with `on(method,
path_regex, handler)`. It records every request with its headers (`seen`) and counts the body
bytes it wrote per path (`sent`), so a test can prove a read stopped at a cap. With `tls` it
serves HTTPS; with `challenge` it answers 401 with that WWW-Authenticate to every /v2/ request
that carries no Authorization header (any Authorization is then accepted).

It never imports the product: it is an oracle, like ``images.py``.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from tests.support.images import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    make_config,
    sha256_digest,
)
from tests.support.tls import ServerTLS

Handler = Callable[["EvilHandler"], None]


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class EvilRegistry:
    def __init__(self, *, tls: ServerTLS | None = None, challenge: str | None = None) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.tags: dict[str, list[str]] = {}
        self.challenge = challenge
        self.seen: list[Seen] = []
        self.sent: Counter[str] = Counter()  # body bytes written, per path without query
        self._overrides: list[tuple[str, re.Pattern[str], Handler]] = []
        self._lock = threading.Lock()
        self.server = _QuietServer(("127.0.0.1", 0), _make_handler(self))
        self.server.daemon_threads = True
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls.cert_path, tls.key_path)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"{'https' if tls else 'http'}://{self.host}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                        daemon=True, name="evil-registry")
        self._thread.start()

    # -- content -----------------------------------------------------------------------------

    def add_blob(self, data: bytes) -> str:
        digest = sha256_digest(data)
        self.blobs[digest] = data
        return digest

    def add_manifest(self, repository: str, ref: str | None, body: bytes,
                     media_type: str = DOCKER_MANIFEST) -> str:
        """Store under its digest and, when given, under `ref` (a tag, listed in the tags)."""
        digest = sha256_digest(body)
        self.manifests[(repository, digest)] = (body, media_type)
        if ref is not None:
            self.manifests[(repository, ref)] = (body, media_type)
            if not ref.startswith("sha256:"):
                self.tags.setdefault(repository, []).append(ref)
        return digest

    def add_image(self, repository: str, tag: str | None, layers: list[bytes],
                  sizes: dict[int, int] | None = None) -> tuple[bytes, str, list[str]]:
        """A schema2 image; `sizes` may overwrite descriptor sizes (index 0 = the config).
        Returns (manifest bytes, manifest digest, [config digest, layer digests...])."""
        config = make_config(diff_ids=[])
        digests = [self.add_blob(config), *(self.add_blob(layer) for layer in layers)]
        sizes = sizes or {}
        descriptors = [{"mediaType": DOCKER_CONFIG if i == 0 else DOCKER_LAYER,
                        "size": sizes.get(i, len(blob)), "digest": digest}
                       for i, (blob, digest) in enumerate(zip([config, *layers], digests,
                                                              strict=True))]
        body = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                           "config": descriptors[0], "layers": descriptors[1:]}).encode()
        return body, self.add_manifest(repository, tag, body), digests

    def on(self, method: str, path: str, handler: Handler) -> None:
        """Answer requests whose method matches and whose path (with query) matches the
        regular expression `path` with `handler` instead of the stored content."""
        self._overrides.append((method.upper(), re.compile(path), handler))

    # -- inspection --------------------------------------------------------------------------

    def requests(self, method: str | None = None, path_contains: str = "") -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if (method is None or s.method == method)
                    and path_contains in s.path]

    def authorizations(self) -> list[str]:
        return [s.headers["authorization"] for s in self.requests()
                if "authorization" in s.headers]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client hanging up on a lie is what the tests want, not a traceback


class EvilHandler(BaseHTTPRequestHandler):
    registry: EvilRegistry
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _handle(self) -> None:
        registry = self.registry
        with registry._lock:
            registry.seen.append(Seen(self.command, self.path,
                                      {k.lower(): v for k, v in self.headers.items()}))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        try:
            for method, pattern, handler in registry._overrides:
                if method == self.command and pattern.search(self.path):
                    handler(self)
                    return
            self._default()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True  # the client gave up on us: that is the point

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815

    def _default(self) -> None:
        registry = self.registry
        path = urlsplit(self.path).path
        if (registry.challenge and path.startswith("/v2/")
                and "Authorization" not in self.headers):
            self.reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                       {"WWW-Authenticate": registry.challenge})
            return
        if path == "/v2/":
            self.reply(200, b"{}")
            return
        match = re.fullmatch(r"/v2/(.+)/(manifests|blobs|tags)/(.+)", path)
        if not match:
            self.reply(404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}')
            return
        repository, kind, ref = match.groups()
        if kind == "tags":
            body = json.dumps({"name": repository, "tags": registry.tags.get(repository, [])})
            self.reply(200, body.encode())
        elif kind == "manifests" and (repository, ref) in registry.manifests:
            body, media_type = registry.manifests[(repository, ref)]
            self.reply(200, body, {"Content-Type": media_type,
                                   "Docker-Content-Digest": sha256_digest(body)})
        elif kind == "blobs" and ref in registry.blobs:
            self.reply(200, registry.blobs[ref], {"Content-Type": "application/octet-stream"})
        else:
            code = "MANIFEST_UNKNOWN" if kind == "manifests" else "BLOB_UNKNOWN"
            self.reply(404, json.dumps({"errors": [{"code": code}]}).encode())

    # -- answers a handler can give ------------------------------------------------------------

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              *, length: int | None = None) -> None:
        """One answer; `length` overrides the Content-Length header (a lie, if it differs)."""
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":
            self._write(body)
        if length is not None and length != len(body):
            self.close_connection = True

    def stream(self, status: int, pieces: Iterable[bytes], headers: dict[str, str] | None = None,
               *, length: int | None = None, pause: float = 0.0) -> None:
        """An answer written piece by piece (chunked unless `length` is given), `pause`
        seconds between pieces, until the pieces end or the client goes away."""
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        chunked = length is None
        self.send_header("Transfer-Encoding" if chunked else "Content-Length",
                         "chunked" if chunked else str(length))
        self.end_headers()
        self.close_connection = True
        for piece in pieces:
            if pause:
                time.sleep(pause)
            self._write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece,
                        counted=len(piece))
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def stall(self, status: int = 200, headers: dict[str, str] | None = None,
              seconds: float = 30.0) -> None:
        """Headers that promise a body, then silence."""
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        time.sleep(seconds)

    def redirect(self, location: str, status: int = 307) -> None:
        self.reply(status, b"", {"Location": location})

    def _write(self, data: bytes, counted: int | None = None) -> None:
        self.wfile.write(data)
        self.wfile.flush()
        with self.registry._lock:
            self.registry.sent[urlsplit(self.path).path] += len(data) if counted is None \
                else counted


def _make_handler(registry: EvilRegistry) -> type[EvilHandler]:
    return type("BoundEvilHandler", (EvilHandler,), {"registry": registry})


def endless(piece: bytes, total: int) -> Iterable[bytes]:
    """`total` bytes made of `piece` repeated, produced lazily (never held whole)."""
    sent = 0
    while sent < total:
        chunk = piece[: total - sent]
        sent += len(chunk)
        yield chunk
