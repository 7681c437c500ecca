"""A small HTTP front for a real registry: forwards every request, except those a test wants
to answer itself (an API the registry here lacks, such as OCI 1.1 referrers)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

# What an answer hook may return besides (status, headers, body) or None (forward): drop the
# connection before the request reaches the upstream, or after it did (the answer is lost).
DROP = "drop"
LOSE = "lose"

# (method, path) → (status, headers, body), None to forward the request, DROP or LOSE
Answer = Callable[[str, str], tuple[int, dict[str, str], bytes] | str | None]


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 drops connections a busy client opens at once, and each drop
    # costs a 1 s SYN retransmit: requests would arrive a second late.
    request_queue_size = 128
    daemon_threads = True


class Front:
    """Forwards to `upstream_url`; a request for an absolute URL (`GET http://host/...`, how
    clients talk to an HTTP proxy) goes to that URL instead, which makes the front a forward
    proxy too. Request bodies are read whole before anything is forwarded, like nginx's
    default `proxy_request_buffering on`: a client that dies mid-body reaches nobody."""

    def __init__(self, upstream_url: str, answer: Answer,
                 on_headers: list[str | None] | None = None) -> None:
        """`on_headers`, when given, collects the Authorization header of every request."""
        front = self
        self.seen: list[tuple[str, str]] = []  # (method, path or absolute URL) forwarded

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                if on_headers is not None:
                    on_headers.append(self.headers.get("Authorization"))
                own = answer(self.command, self.path)
                if own == DROP:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if own is None or own == LOSE:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(length) if length else None
                    if length and len(body or b"") < length:
                        self.close_connection = True  # the client went away mid-body
                        return
                    front.seen.append((self.command, self.path))
                    absolute = self.path.startswith(("http://", "https://"))
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in ("host", "proxy-connection")}
                    with requests.Session() as session:
                        session.trust_env = False  # the front itself may be *_PROXY
                        upstream = session.request(
                            self.command, self.path if absolute else upstream_url + self.path,
                            data=body, headers=headers, timeout=30, allow_redirects=False)
                    forwarded = {k: v for k, v in upstream.headers.items() if k.lower() not in
                                 ("content-length", "transfer-encoding", "connection")}
                    location = forwarded.get("Location", "")
                    if not absolute and location.startswith(upstream_url):
                        forwarded["Location"] = front.url + location[len(upstream_url):]
                    if own == LOSE:
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    own = (upstream.status_code, forwarded, upstream.content)
                assert not isinstance(own, str)
                status, headers, body = own
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
