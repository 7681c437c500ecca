"""The registry client alone against real registries: the protocol corners `sync` relies on."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from migrator.auth import RegistryAuth
from migrator.errors import AuthError, RegistryError
from migrator.registry.client import RegistryClient
from migrator.settings import Settings
from tests.support.images import get_blob, make_layer, push_blob, push_image, session_for


def client_for(registry, **settings) -> RegistryClient:
    credentials = RegistryAuth(insecure=True)
    return RegistryClient(registry.host, credentials, Settings(**settings))


class PagingFront:
    """Serves a real registry's tag list in pages with `Link` headers, as the OCI spec and
    Distribution 3 do (Distribution 2.8, the registry here, ignores `?n=`)."""

    def __init__(self, upstream: str) -> None:
        front = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                if url.path == "/v2/":
                    return self._answer(200, {}, {})
                tags = requests.get(upstream + url.path, timeout=10).json()["tags"]
                tags.sort()
                size = int(query.get("n", ["100"])[0])
                last = query.get("last", [""])[0]
                page = [tag for tag in tags if tag > last][:size]
                headers = {}
                if page and page[-1] != tags[-1]:
                    headers["Link"] = f'<{url.path}?n={size}&last={page[-1]}>; rel="next"'
                front.pages += 1
                self._answer(200, headers, {"name": "x", "tags": page})

            def _answer(self, status: int, headers: dict, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.pages = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_tag_list_follows_every_page(source_registry):
    layer = [make_layer(1024, 1)]
    tags = [f"t{i:02d}" for i in range(7)]
    for tag in tags:
        push_image(source_registry, "ns/paged", tag, layers=layer)
    front = PagingFront(source_registry.url)
    try:
        client = RegistryClient(front.host, RegistryAuth(insecure=True),
                                Settings(tag_page_size=3))
        assert client.list_tags("ns/paged") == tags
        assert front.pages == 3
        with pytest.raises(RegistryError, match="more than 2 pages"):
            RegistryClient(front.host, RegistryAuth(insecure=True),
                           Settings(tag_page_size=3, max_tag_pages=2)).list_tags("ns/paged")
    finally:
        front.server.shutdown()


def test_missing_things_say_what_is_missing(source_registry):
    client = client_for(source_registry)
    with pytest.raises(RegistryError, match="not found") as caught:
        client.list_tags("ns/nothing-here")
    assert caught.value.status == 404 and caught.value.code == "NAME_UNKNOWN"
    assert client.head_manifest("ns/nothing-here", "latest") is None


def test_mount_of_an_unknown_blob_opens_a_session_that_is_used(target_registry):
    client = client_for(target_registry)
    digest = "sha256:" + "0" * 64
    upload_url = client.mount_blob("ns/dst", digest, "ns/src")
    assert upload_url is not None and "/blobs/uploads/" in upload_url
    client.cancel_upload("ns/dst", upload_url)
    assert target_registry.count("DELETE", "/blobs/uploads/") == 1


def test_mount_of_a_known_blob_needs_no_upload(target_registry):
    session = session_for(target_registry)
    digest = push_blob(session, target_registry.url, "ns/src", b"shared bytes")
    client = client_for(target_registry)
    assert client.mount_blob("ns/dst", digest, "ns/src") is None
    assert client.blob_exists("ns/dst", digest)


def test_one_ping_per_client_whatever_the_number_of_calls(source_registry):
    push_image(source_registry, "ns/ping", "1", layers=[make_layer(1024, 2)])
    mark = source_registry.mark()
    client = client_for(source_registry)
    for _ in range(5):
        client.head_manifest("ns/ping", "1")
    pings = [r for r in source_registry.requests(mark) if r[1] == "/v2/"]
    assert len(pings) == 1


def test_plain_http_is_refused_unless_insecure(source_registry):
    client = RegistryClient(source_registry.host, RegistryAuth(), Settings(http_attempts=1))
    with pytest.raises(RegistryError, match="TLS"):
        client.list_tags("ns/any")


def test_basic_auth_over_tls_with_wrong_password(tls_registry):
    credentials = RegistryAuth(username=tls_registry.username, password="nope",
                               ca_file=str(tls_registry.ca_file))
    client = RegistryClient(tls_registry.host, credentials, Settings())
    with pytest.raises(AuthError) as caught:
        client.head_manifest("ns/x", "1")
    assert "nope" not in str(caught.value)
    assert tls_registry.username in str(caught.value)


def test_anonymous_bearer_token_can_pull_but_not_push(token_registry):
    registry = token_registry.registry
    push_image(registry, "ns/public", "1", layers=[make_layer(1024, 3)],
               auth=(registry.username, registry.password))
    client = RegistryClient(registry.host, RegistryAuth(insecure=True), Settings())
    assert client.head_manifest("ns/public", "1") is not None
    with pytest.raises((AuthError, RegistryError)) as caught:
        client.start_upload("ns/public")
    assert "ns/public" in str(caught.value)


def test_token_for_a_scope_is_reused_until_it_expires(token_registry):
    registry = token_registry.registry
    push_image(registry, "ns/cached", "1", layers=[make_layer(1024, 4)],
               auth=(registry.username, registry.password))
    before = len(token_registry.issuer.issued)
    client = RegistryClient(registry.host, RegistryAuth(
        username=registry.username, password=registry.password, insecure=True), Settings())
    for _ in range(5):
        client.head_manifest("ns/cached", "1")
    assert len(token_registry.issuer.issued) - before == 1


class RedirectingFront:
    """Forwards everything to a registry but answers blob GETs with a 307 to a "storage" host
    (`localhost` instead of `127.0.0.1`), as registries backed by object storage do. The storage
    server records the Authorization headers it receives."""

    def __init__(self, registry) -> None:
        front = self
        self.storage_headers: list[str | None] = []

        class Storage(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                front.storage_headers.append(self.headers.get("Authorization"))
                digest = self.path.rsplit("/", 1)[-1]
                data = get_blob(registry, front.repository, digest, auth=registry.auth)
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        class Front(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                if self.command == "GET" and "/blobs/sha256:" in self.path:
                    digest = self.path.rsplit("/", 1)[-1]
                    self.send_response(307)
                    self.send_header("Location", f"http://localhost:{front.storage_port}/{digest}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                upstream = requests.request(self.command, registry.url + self.path, data=body,
                                            headers=headers, allow_redirects=False, timeout=30)
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(upstream.content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(upstream.content)

            do_GET = do_HEAD = do_POST = do_PUT = _forward  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.repository = ""
        self.storage = ThreadingHTTPServer(("127.0.0.1", 0), Storage)
        self.storage_port = self.storage.server_address[1]
        self.front = ThreadingHTTPServer(("127.0.0.1", 0), Front)
        self.host = f"127.0.0.1:{self.front.server_address[1]}"
        for server in (self.storage, self.front):
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.storage.shutdown()
        self.front.shutdown()


def test_blob_redirects_are_followed_without_the_registry_credentials(token_registry):
    registry = token_registry.registry
    image = push_image(registry, "ns/redirected", "1", layers=[make_layer(4096, 5)],
                       auth=registry.auth)
    front = RedirectingFront(registry)
    front.repository = "ns/redirected"
    try:
        client = RegistryClient(front.host, RegistryAuth(
            username=registry.username, password=registry.password, insecure=True), Settings())
        layer = image.blobs[-1]
        response = client.open_blob("ns/redirected", layer)
        data = response.content
        assert hashlib.sha256(data).hexdigest() == layer.split(":", 1)[1]
        assert front.storage_headers == [None]
    finally:
        front.close()
