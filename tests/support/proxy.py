"""A fault-injecting HTTP/1.1 proxy to put in front of a (plain HTTP) registry.

Why: the migrator's retry, resume and verification logic only shows itself when the
network misbehaves: a corrupted blob, a 429 with Retry-After, a connection dropped
mid-body, a slow answer. A real registry never does these on demand, so the tests point
the product at this proxy instead and tell it what to break.

Behaviour: every request (method, path, headers, body) is forwarded to the upstream and
the answer streamed back in 1 MiB pieces, so multi-GiB bodies never sit in memory.
Chunked request bodies are forwarded chunked; responses without a Content-Length are
re-chunked. ``Location`` headers pointing at the upstream are rewritten to point at the
proxy so upload sessions keep going through it. The upstream sees its own address in
``Host``.

Fault rules match a method (None = any) and a regex searched in the path-with-query, and
apply to the first ``times`` matching requests (``times=None``: forever). Rules are
checked in the order they were added; a matching ``delay`` rule combines with the first
matching rule of another kind, otherwise the first match wins. Each firing is appended to
``fired``; every request to ``requests`` as (method, path, status sent to the client, 0
when the connection was reset before a status line).

Every fault also takes ``rate``: a matching request is hit with that probability only (a
request it spares does not use up ``times``). The draws come from one ``random.Random``
seeded by the proxy's ``seed``, so a run that sends the same requests in the same order is
hit the same way. ``MANIFEST``, ``BLOB`` and ``UPLOAD`` are path regexes of the request
classes (manifests, blobs by digest, upload sessions) for the ``path`` argument.

Kinds: ``flip_byte`` (one byte of the body XORed), ``status`` (an error answer, optionally
with Retry-After), ``reset`` (RST or FIN before or inside the body), ``truncate`` (the
full Content-Length announced, part of the body sent, then FIN), ``trickle`` (the body
sent a few bytes at a time), ``stall`` (headers and some body, then silence until the
proxy stops: only the client's read timeout ends it), ``delay`` (a pause before
forwarding).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple
from urllib.parse import urlsplit

CHUNK = 1 << 20
# Request classes, as path regexes for the fault methods' ``path`` argument.
MANIFEST = r"^/v2/.+/manifests/"
BLOB = r"^/v2/.+/blobs/sha(?:256|512):"  # a blob by digest (GET/HEAD), not an upload
UPLOAD = r"^/v2/.+/blobs/uploads/"  # upload sessions: POST, PATCH, PUT, DELETE
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "expect",
}


class _ClientGone(Exception):
    """Reading the client's request failed: there is nobody left to answer."""


class Fired(NamedTuple):
    """One fault that fired: its kind, the request it hit, and when (time.monotonic())."""

    kind: str
    method: str
    path: str
    at: float


@dataclass
class _Rule:
    kind: str
    method: str | None
    path: re.Pattern[str]
    remaining: int | None
    code: int = 0
    retry_after: str | None = None
    body: bytes | None = None
    after_bytes: int = 0
    forward: bool = True
    hard: bool = True
    seconds: float = 0.0
    rate: float | None = None
    fraction: float = 0.5
    step_bytes: int = 0
    after_body: int | None = None  # stall: body bytes sent before the silence (None: none)

    def matches(self, method: str, path: str) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        return self.path.search(path) is not None


class FaultProxy:
    """Threaded proxy on 127.0.0.1 with a small fault-injection API (see module doc)."""

    def __init__(self, upstream_url: str, *, timeout: float = 300.0, seed: int = 0) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http":
            raise ValueError("FaultProxy forwards to plain-HTTP upstreams only")
        self.upstream_url = upstream_url.rstrip("/")
        self.upstream_host = parts.netloc
        self.timeout = timeout
        self.requests: list[tuple[str, str, int]] = []
        self.request_times: list[float] = []  # time.monotonic() of each entry of requests
        self.fired: list[Fired] = []
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._stopped = threading.Event()  # ends stalls when the proxy stops
        self._conns: set[socket.socket] = set()
        self._server = _Server(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fault-proxy", daemon=True
        )
        self._thread.start()

    # -- fault API -----------------------------------------------------------------------

    def _add(self, rule: _Rule) -> None:
        with self._lock:
            self._rules.append(rule)

    @staticmethod
    def _compile(path: str) -> re.Pattern[str]:
        return re.compile(path)

    def flip_byte(
        self,
        method: str | None = "GET",
        path: str = r"/blobs/sha256:",
        times: int | None = 1,
        *,
        rate: float | None = None,
    ) -> None:
        """Flip (XOR 0xFF) the middle byte of the response body; length unchanged."""
        self._add(_Rule("flip_byte", method, self._compile(path), times, rate=rate))

    def status(
        self,
        code: int,
        method: str | None = None,
        path: str = "",
        times: int | None = 1,
        retry_after: float | str | None = None,
        body: bytes | None = None,
        *,
        rate: float | None = None,
    ) -> None:
        """Answer ``code`` (plus ``Retry-After`` when given) without forwarding.

        The request body is read and discarded first so the connection stays usable.
        """
        ra = (
            None
            if retry_after is None
            else (retry_after if isinstance(retry_after, str) else f"{retry_after:g}")
        )
        self._add(
            _Rule(
                "status", method, self._compile(path), times, code=code, retry_after=ra, body=body,
                rate=rate,
            )
        )

    def reset(
        self,
        method: str | None = None,
        path: str = "",
        times: int | None = 1,
        after_bytes: int = 0,
        *,
        forward: bool = True,
        hard: bool = True,
        rate: float | None = None,
    ) -> None:
        """Drop the client connection abruptly.

        ``after_bytes=0``: before any response byte; with ``forward=True`` (default) the
        upstream still receives and processes the request (a "lost response"), with
        ``forward=False`` it never sees it. ``after_bytes>0``: status line, headers and that
        many body bytes are sent first. ``hard=True`` closes with RST (SO_LINGER 0); the
        kernel may then discard bytes the client had not read yet, so use ``hard=False``
        (FIN) when a test needs the client to see exactly ``after_bytes`` bytes.
        """
        self._add(
            _Rule(
                "reset",
                method,
                self._compile(path),
                times,
                after_bytes=after_bytes,
                forward=forward or after_bytes > 0,
                hard=hard,
                rate=rate,
            )
        )

    def delay(
        self,
        seconds: float,
        method: str | None = None,
        path: str = "",
        times: int | None = 1,
        *,
        rate: float | None = None,
    ) -> None:
        """Sleep ``seconds`` before forwarding the request."""
        self._add(_Rule("delay", method, self._compile(path), times, seconds=seconds, rate=rate))

    def truncate(
        self,
        method: str | None = "GET",
        path: str = BLOB,
        times: int | None = 1,
        *,
        fraction: float = 0.5,
        rate: float | None = None,
    ) -> None:
        """Announce the full Content-Length, send ``fraction`` of the body, then close (FIN).

        The client sees a clean end of stream short of the promised length: the framing
        error a dying server or a middlebox produces, unlike a reset's RST.
        """
        if not 0 <= fraction < 1:
            raise ValueError("fraction must be in [0, 1)")
        self._add(_Rule("truncate", method, self._compile(path), times, fraction=fraction,
                        rate=rate))

    def trickle(
        self,
        step_bytes: int = 4096,
        interval: float = 0.05,
        method: str | None = "GET",
        path: str = BLOB,
        times: int | None = 1,
        *,
        rate: float | None = None,
    ) -> None:
        """Send the response body ``step_bytes`` at a time, one piece every ``interval`` s."""
        if step_bytes <= 0 or interval < 0:
            raise ValueError("step_bytes must be positive and interval not negative")
        self._add(_Rule("trickle", method, self._compile(path), times, step_bytes=step_bytes,
                        seconds=interval, rate=rate))

    def stall(
        self,
        method: str | None = None,
        path: str = "",
        times: int | None = 1,
        *,
        after_bytes: int | None = None,
        seconds: float | None = None,
        rate: float | None = None,
    ) -> None:
        """Go silent: hold the connection open without sending anything more.

        ``after_bytes=None``: the request is forwarded (the upstream does the work) but not a
        byte of the answer reaches the client; an int: status line, headers and that many
        body bytes first. The silence lasts ``seconds`` (None: until the proxy stops), then
        the connection is closed: only the client's own timeout can end it sooner.
        """
        self._add(_Rule("stall", method, self._compile(path), times, after_body=after_bytes,
                        seconds=3.0e7 if seconds is None else seconds, rate=rate))

    def clear(self) -> None:
        """Remove every rule (``fired`` and ``requests`` are kept)."""
        with self._lock:
            self._rules.clear()

    def count(self, method: str | None = None, path_contains: str = "") -> int:
        """How many proxied requests match a method (None = any) and a path substring."""
        with self._lock:
            return sum(
                1
                for m, p, _ in self.requests
                if (method is None or m == method.upper()) and path_contains in p
            )

    def stop(self) -> None:
        """Stop accepting, drop open client connections; idempotent."""
        self._stopped.set()
        if self._thread.is_alive():
            self._server.shutdown()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------------

    def _take(self, method: str, path: str) -> tuple[_Rule | None, _Rule | None]:
        """(delay rule, other rule) that fire for this request; consumes their counts."""
        delay: _Rule | None = None
        other: _Rule | None = None
        now = time.monotonic()
        with self._lock:
            for rule in self._rules:
                if not rule.matches(method, path):
                    continue
                if (rule.kind == "delay" and delay is not None) or (
                    rule.kind != "delay" and other is not None
                ):
                    continue  # this slot is taken: no draw, so the other rules' draws hold
                if rule.rate is not None and self._random.random() >= rule.rate:
                    continue  # spared this time; ``times`` is only used by real hits
                if rule.kind == "delay":
                    if delay is not None:
                        continue
                    delay = rule
                elif other is None:
                    other = rule
                else:
                    continue
                if rule.remaining is not None:
                    rule.remaining -= 1
                self.fired.append(Fired(rule.kind, method, path, now))
        return delay, other

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))
            self.request_times.append(time.monotonic())

    def _rewrite_location(self, value: str) -> str:
        if value.startswith(self.upstream_url):
            return self.url + value[len(self.upstream_url) :]
        return value


class _Server(ThreadingHTTPServer):
    # The default listen backlog of 5 drops SYNs when a client opens many connections at
    # once, which costs a 1 s retransmit each: keep it large.
    request_queue_size = 128
    daemon_threads = True


def _make_handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(_ProxyHandler):
        pass

    Handler.proxy = proxy
    return Handler


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    proxy: FaultProxy
    _upstream: http.client.HTTPConnection | None = None

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.proxy.timeout)
        with self.proxy._lock:
            self.proxy._conns.add(self.connection)

    def finish(self) -> None:
        with self.proxy._lock:
            self.proxy._conns.discard(self.connection)
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    # -- request body --------------------------------------------------------------------

    def _read(self, n: int, line: bool = False) -> bytes:
        try:
            return self.rfile.readline(n) if line else self.rfile.read(n)
        except OSError as exc:
            raise _ClientGone(str(exc)) from exc

    def _body_chunks(self) -> Iterator[bytes]:
        """The client's request body, de-chunked if needed, in pieces of at most 1 MiB."""
        if self._is_chunked_request():
            while True:
                line = self._read(65537, line=True)
                if not line:
                    raise _ClientGone("client closed inside a chunked body")
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self._read(65537, line=True) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                while size > 0:
                    piece = self._read(min(size, CHUNK))
                    if not piece:
                        raise _ClientGone("client closed inside a chunk")
                    size -= len(piece)
                    yield piece
                self._read(3, line=True)  # CRLF after the chunk
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                piece = self._read(min(remaining, CHUNK))
                if not piece:
                    raise _ClientGone("client closed before the end of the body")
                remaining -= len(piece)
                yield piece

    def _is_chunked_request(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    # -- connection control --------------------------------------------------------------

    def _abort(self, hard: bool) -> None:
        """Close the client connection now: RST when ``hard``, else FIN."""
        self.close_connection = True
        try:
            if hard:
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        # rfile holds a reference to the socket; the fd only closes when both are closed.
        self.rfile.close()
        self.connection.close()

    def _drop_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None

    def _reply(self, code: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # -- the proxying --------------------------------------------------------------------

    def _handle(self) -> None:
        proxy = self.proxy
        method, path = self.command, self.path
        delay, rule = proxy._take(method, path)
        try:
            if delay is not None:
                time.sleep(delay.seconds)
            if rule is not None and rule.kind == "status":
                for _ in self._body_chunks():
                    pass
                body = rule.body
                if body is None:
                    body = json.dumps(
                        {
                            "errors": [
                                {
                                    "code": "TOOMANYREQUESTS" if rule.code == 429 else "UNKNOWN",
                                    "message": f"injected by FaultProxy: {rule.code}",
                                }
                            ]
                        }
                    ).encode()
                headers = {"Content-Type": "application/json"}
                if rule.retry_after is not None:
                    headers["Retry-After"] = rule.retry_after
                proxy._record(method, path, rule.code)  # before the client can see it
                self._reply(rule.code, body, headers)
                return
            if rule is not None and rule.kind == "reset" and not rule.forward:
                proxy._record(method, path, 0)
                self._abort(rule.hard)
                return
            self._forward(method, path, rule)
        except (_ClientGone, OSError):
            # The client went away (or we dropped it): nothing left to answer.
            self.close_connection = True
            self._drop_upstream()

    def _send_upstream(self, method: str, path: str) -> http.client.HTTPResponse:
        proxy = self.proxy
        if self._upstream is None:
            self._upstream = http.client.HTTPConnection(proxy.upstream_host, timeout=proxy.timeout)
        conn = self._upstream
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", proxy.upstream_host)
        for key, value in self.headers.items():
            if key.lower() in HOP_BY_HOP or key.lower() == "host":
                continue
            conn.putheader(key, value)
        chunked = self._is_chunked_request()
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        try:
            for piece in self._body_chunks():  # _ClientGone propagates
                if chunked:
                    conn.send(b"%x\r\n%b\r\n" % (len(piece), piece))
                else:
                    conn.send(piece)
            if chunked:
                conn.send(b"0\r\n\r\n")
        except OSError:
            # The upstream answered early and stopped reading; its answer may be waiting.
            # The rest of the client's body is unread, so this connection cannot be reused.
            self.close_connection = True
        return conn.getresponse()

    def _forward(self, method: str, path: str, rule: _Rule | None) -> None:
        proxy = self.proxy
        try:
            resp = self._send_upstream(method, path)
        except _ClientGone:
            raise
        except (http.client.HTTPException, OSError) as exc:
            self._drop_upstream()
            proxy._record(method, path, 502)
            message = f"FaultProxy: upstream failed: {exc}"
            body = json.dumps({"errors": [{"code": "UNKNOWN", "message": message}]}).encode()
            self._reply(502, body, {"Content-Type": "application/json"})
            self.close_connection = True
            return

        if rule is not None and rule.kind == "reset" and rule.after_bytes <= 0:
            # Upstream did the work; the client never hears about it.
            self._drop_upstream()
            proxy._record(method, path, 0)
            self._abort(rule.hard)
            return
        if rule is not None and rule.kind == "stall" and rule.after_body is None:
            # Upstream did the work; the client waits for an answer that never comes.
            self._drop_upstream()
            proxy._record(method, path, 0)
            proxy._stopped.wait(rule.seconds)
            self._abort(False)
            return

        no_body = method == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
        length = resp.getheader("Content-Length")
        flip = rule is not None and rule.kind in ("flip_byte", "truncate")
        buffered: bytes | None = None
        if flip and not no_body and length is None:
            buffered = resp.read()  # unknown length: buffer to find the middle
            length = str(len(buffered))

        proxy._record(method, path, resp.status)  # before the client can see it
        self.send_response_only(resp.status, resp.reason)
        for key, value in resp.getheaders():
            lk = key.lower()
            if lk in HOP_BY_HOP or (lk == "content-length" and buffered is not None):
                continue
            if lk == "location":
                value = proxy._rewrite_location(value)
            self.send_header(key, value)
        if buffered is not None:
            self.send_header("Content-Length", length or "0")
        chunked_out = not no_body and length is None
        if chunked_out:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if no_body:
            resp.read()
        else:
            self._stream_body(resp, buffered, length, chunked_out, rule)
        if resp.will_close:
            self._drop_upstream()

    def _stream_body(
        self,
        resp: http.client.HTTPResponse,
        buffered: bytes | None,
        length: str | None,
        chunked_out: bool,
        rule: _Rule | None,
    ) -> None:
        kind = rule.kind if rule is not None else ""
        flip_at = int(length) // 2 if kind == "flip_byte" and length else -1
        cut_at, hard = -1, True
        if kind == "reset":
            cut_at, hard = rule.after_bytes, rule.hard  # type: ignore[union-attr]
        elif kind == "truncate" and length:
            cut_at, hard = int(int(length) * rule.fraction), False  # type: ignore[union-attr]
        elif kind == "stall":
            cut_at = rule.after_body or 0  # type: ignore[union-attr]
        step = rule.step_bytes if kind == "trickle" else 0  # type: ignore[union-attr]
        sent = 0
        pieces: Iterator[bytes] = (
            iter([buffered]) if buffered is not None else iter(lambda: resp.read(CHUNK), b"")
        )
        for piece in pieces:
            if 0 <= flip_at - sent < len(piece):
                i = flip_at - sent
                piece = piece[:i] + bytes([piece[i] ^ 0xFF]) + piece[i + 1 :]
            if cut_at >= 0 and sent + len(piece) >= cut_at:
                piece = piece[: cut_at - sent]
                if piece:
                    self._write(piece, chunked_out)
                self._cut(rule, hard)
                return
            if step:
                for start in range(0, len(piece), step):
                    self._write(piece[start : start + step], chunked_out)
                    self.wfile.flush()
                    if self.proxy._stopped.wait(rule.seconds):  # type: ignore[union-attr]
                        break
            else:
                self._write(piece, chunked_out)
            sent += len(piece)
        if cut_at >= 0:  # body shorter than the cut: still cut the connection
            self._cut(rule, hard)
            return
        if chunked_out:
            self.wfile.write(b"0\r\n\r\n")

    def _cut(self, rule: _Rule | None, hard: bool) -> None:
        """End a response early: a stall first goes silent for its time, then FIN."""
        self._drop_upstream()
        if rule is not None and rule.kind == "stall":
            self.wfile.flush()
            self.proxy._stopped.wait(rule.seconds)
            hard = False
        self._abort(hard)

    def _write(self, piece: bytes, chunked: bool) -> None:
        if chunked:
            self.wfile.write(b"%x\r\n%b\r\n" % (len(piece), piece))
        else:
            self.wfile.write(piece)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle
