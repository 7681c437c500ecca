"""A small HTTP front for a real registry: forwards every request, except those a test wants
to answer itself (an API the registry here lacks, such as OCI 1.1 referrers)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

# (method, path) → (status, headers, body), or None to forward the request
Answer = Callable[[str, str], tuple[int, dict[str, str], bytes] | None]


class Front:
    def __init__(self, upstream_url: str, answer: Answer,
                 on_headers: list[str | None] | None = None) -> None:
        """`on_headers`, when given, collects the Authorization header of every request."""

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                if on_headers is not None:
                    on_headers.append(self.headers.get("Authorization"))
                own = answer(self.command, self.path)
                if own is None:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(length) if length else None
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                    upstream = requests.request(self.command, upstream_url + self.path,
                                                data=body, headers=headers, timeout=30,
                                                allow_redirects=False)
                    own = (upstream.status_code,
                           {k: v for k, v in upstream.headers.items() if k.lower() not in
                            ("content-length", "transfer-encoding", "connection")},
                           upstream.content)
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

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
