"""Tests of the test infrastructure itself: if these fail, no other integration test counts.

Each test asserts something that would break if the helper were wrong (e.g. a proxy that
silently buffered, an oracle that re-serialised manifests, a log parser that saw nothing).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import socket
import tarfile
import time

import jwt
import pytest
import requests

from tests.integration.conftest import TokenRegistry
from tests.support import images as im
from tests.support.proxy import FaultProxy
from tests.support.registry import RunningRegistry
from tests.support.tokens import parse_scope

LAYERS = [im.make_layer(2048, 1), im.make_layer(300_000, 2)]


def _session(verify: str | bool = True) -> requests.Session:
    """Plain session that ignores $REQUESTS_CA_BUNDLE & co (see images.session_for)."""
    s = requests.Session()
    s.trust_env = False
    s.verify = verify
    return s


def _raw_get(host: str, path: str) -> tuple[bytes, bytes]:
    """GET over a bare socket, reading until EOF: (status line + headers, body bytes)."""
    hostname, port = host.rsplit(":", 1)
    with socket.create_connection((hostname, int(port)), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        data = bytearray()
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    return head, body


def _rss_mib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


# -- registry --------------------------------------------------------------------------


def test_registry_starts_answers_and_stops(registry_factory) -> None:
    t0 = time.monotonic()
    reg: RunningRegistry = registry_factory()
    started_in = time.monotonic() - t0
    resp = _session().get(f"{reg.url}/v2/", timeout=5)
    assert resp.status_code == 200
    assert resp.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert reg.host.startswith("127.0.0.1:") and reg.url == f"http://{reg.host}"
    assert started_in < 5, f"registry took {started_in:.2f}s to start"

    reg.stop()
    assert not reg.running
    with socket.socket() as s:
        s.settimeout(1)
        assert s.connect_ex(("127.0.0.1", int(reg.host.rsplit(":", 1)[1]))) != 0


def test_make_layer_is_deterministic_real_targz() -> None:
    a, b, c = im.make_layer(5000, 7), im.make_layer(5000, 7), im.make_layer(5000, 8)
    assert a == b and a != c
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(a))) as tar:
        (member,) = tar.getmembers()
        assert member.size == 5000
    assert 5000 < len(a) < 5000 + 2048


@pytest.mark.parametrize("media", ["docker", "oci"])
def test_push_image_then_get_manifest_round_trips(source_registry, media) -> None:
    pushed = im.push_image(source_registry, "ns/app", "v1", layers=LAYERS, media=media)
    raw, media_type, digest = im.get_manifest(source_registry, "ns/app", "v1")
    assert raw == pushed.manifest
    assert digest == pushed.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert (
        media_type
        == pushed.media_type
        == (im.DOCKER_MANIFEST if media == "docker" else im.OCI_MANIFEST)
    )
    assert len(pushed.blobs) == 3  # config + 2 layers
    assert all(im.blob_exists(source_registry, "ns/app", d) for d in pushed.blobs)
    assert im.get_blob(source_registry, "ns/app", pushed.blobs[2]) == LAYERS[1]
    assert im.list_tags(source_registry, "ns/app") == ["v1"]
    assert im.list_tags(source_registry, "ns/missing") == []
    # By digest too, and the registry's own digest header agrees.
    assert im.get_manifest(source_registry, "ns/app", pushed.digest)[0] == raw


@pytest.mark.parametrize("media", ["docker", "oci"])
def test_push_index_with_two_platforms_round_trips(source_registry, media) -> None:
    pushed = im.push_index(
        source_registry,
        "ns/multi",
        "latest",
        platforms=[("linux", "amd64", LAYERS), ("linux", "arm64", LAYERS[:1])],
        media=media,
    )
    raw, media_type, digest = im.get_manifest(source_registry, "ns/multi", "latest")
    assert (raw, media_type, digest) == (pushed.manifest, pushed.media_type, pushed.digest)
    assert media_type == (im.DOCKER_LIST if media == "docker" else im.OCI_INDEX)
    assert len(pushed.children) == 2
    listed = json.loads(raw)["manifests"]
    assert [m["platform"]["architecture"] for m in listed] == ["amd64", "arm64"]
    for child, entry in zip(pushed.children, listed, strict=True):
        assert entry["digest"] == child.digest and entry["size"] == len(child.manifest)
        assert im.get_manifest(source_registry, "ns/multi", child.digest)[0] == child.manifest
    # Children are pushed by digest only: the single tag is the index's.
    assert im.list_tags(source_registry, "ns/multi") == ["latest"]


def test_access_log_counts_requests(source_registry) -> None:
    m = source_registry.mark()
    im.push_image(source_registry, "ns/app", "v1", layers=LAYERS)
    assert source_registry.count("PUT", "/manifests/v1", since=m) == 1
    assert source_registry.count("PUT", "/blobs/uploads/", since=m) == 3
    assert source_registry.count("POST", since=m) == 3
    entries = source_registry.requests(since=m)
    assert len(entries) == 7 and all(status in (201, 202) for _, _, status in entries)

    m = source_registry.mark()
    _session().get(f"{source_registry.url}/v2/ns/app/manifests/nope", timeout=5)
    assert source_registry.requests(since=m) == [("GET", "/v2/ns/app/manifests/nope", 404)]


def test_restart_keeps_storage_and_address(source_registry) -> None:
    pushed = im.push_image(source_registry, "ns/app", "v1", layers=LAYERS)
    host, before = source_registry.host, source_registry.mark()
    source_registry.restart()
    assert source_registry.host == host
    assert im.get_manifest(source_registry, "ns/app", "v1")[2] == pushed.digest
    assert source_registry.mark() > before  # same log, counting goes on


# -- TLS + htpasswd ---------------------------------------------------------------------


def test_tls_htpasswd_registry_needs_ca_and_credentials(tls_registry) -> None:
    reg: RunningRegistry = tls_registry
    assert reg.url.startswith("https://") and reg.ca_file is not None and reg.auth
    with pytest.raises(requests.exceptions.SSLError):
        _session(verify=True).get(f"{reg.url}/v2/", timeout=5)  # system CAs only
    assert _session(reg.verify).get(f"{reg.url}/v2/", timeout=5).status_code == 401
    wrong = (reg.username or "", "wrong")
    assert _session(reg.verify).get(f"{reg.url}/v2/", auth=wrong, timeout=5).status_code == 401
    assert _session(reg.verify).get(f"{reg.url}/v2/", auth=reg.auth, timeout=5).status_code == 200
    # localhost is in the certificate too.
    local = reg.url.replace("127.0.0.1", "localhost")
    assert _session(reg.verify).get(f"{local}/v2/", auth=reg.auth, timeout=5).status_code == 200

    with pytest.raises(AssertionError, match="401"):
        im.push_image(reg, "ns/app", "v1", layers=LAYERS)
    pushed = im.push_image(reg, "ns/app", "v1", layers=LAYERS, auth=reg.auth)
    assert im.get_manifest(reg, "ns/app", "v1", auth=reg.auth)[2] == pushed.digest


# -- token auth -------------------------------------------------------------------------


def test_token_registry_anonymous_pulls_only(token_registry: TokenRegistry) -> None:
    reg, issuer = token_registry.registry, token_registry.issuer
    assert (
        _session()
        .get(f"{reg.url}/v2/", timeout=5)
        .headers["WWW-Authenticate"]
        .startswith(f'Bearer realm="{issuer.url}"')
    )
    with pytest.raises(AssertionError, match="401"):
        im.push_image(reg, "ns/app", "v1", layers=LAYERS)  # anonymous: pull-only token
    pushed = im.push_image(reg, "ns/app", "v1", layers=LAYERS, auth=reg.auth)
    assert im.get_manifest(reg, "ns/app", "v1")[2] == pushed.digest  # anonymous pull
    users = {user for user, _ in issuer.issued}
    assert users == {None, reg.username}
    # The registry's challenge names the actions in no fixed order (Distribution keeps them
    # in a map): "pull,push" in one run, "push,pull" in another.
    asked = [parse_scope(scope) for _, scopes in issuer.issued for scope in scopes]
    assert any(parsed and parsed[:2] == ("repository", "ns/app")
               and set(parsed[2]) == {"pull", "push"} for parsed in asked)


def test_token_issuer_grants_and_refuses(token_registry: TokenRegistry) -> None:
    issuer, reg = token_registry.issuer, token_registry.registry
    s = _session()
    scope = {"service": issuer.service, "scope": "repository:ns/app:pull,push"}
    assert (
        s.get(issuer.url, params=scope, auth=(reg.username, "nope"), timeout=5).status_code == 401
    )
    anon = s.get(issuer.url, params=scope, timeout=5).json()
    claims = jwt.decode(anon["token"], options={"verify_signature": False})
    assert claims["access"] == [{"type": "repository", "name": "ns/app", "actions": ["pull"]}]
    assert claims["aud"] == issuer.service and claims["iss"] == issuer.issuer
    assert anon["expires_in"] == issuer.ttl and anon["access_token"] == anon["token"]

    # A token lacking push is refused by the registry itself with 401.
    im.push_image(reg, "ns/app", "v1", layers=LAYERS, auth=reg.auth)
    pull_only = issuer.make_token(
        "tester", [{"type": "repository", "name": "ns/app", "actions": ["pull"]}]
    )
    bearer = {"Authorization": f"Bearer {pull_only}"}
    assert s.get(f"{reg.url}/v2/ns/app/tags/list", headers=bearer, timeout=5).status_code == 200
    resp = s.post(f"{reg.url}/v2/ns/app/blobs/uploads/", headers=bearer, timeout=5)
    assert resp.status_code == 401
    assert 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]


# -- fault proxy ------------------------------------------------------------------------


def test_proxy_forwards_push_and_pull(source_registry, fault_proxy) -> None:
    proxy: FaultProxy = fault_proxy(source_registry)
    m = source_registry.mark()
    pushed = im.push_image(proxy, "ns/app", "v1", layers=LAYERS)
    # Upload PUTs went through the proxy: Location was rewritten to point at it.
    assert proxy.count("PUT", "/blobs/uploads/") == 3
    assert proxy.count("PUT", "/manifests/v1") == 1
    assert source_registry.count(since=m) == len(proxy.requests) == 7
    raw, _, digest = im.get_manifest(proxy, "ns/app", "v1")
    assert raw == pushed.manifest and digest == pushed.digest
    assert im.get_manifest(source_registry, "ns/app", "v1")[0] == raw
    assert im.get_blob(proxy, "ns/app", pushed.blobs[2]) == LAYERS[1]
    head = _session().head(f"{proxy.url}/v2/ns/app/blobs/{pushed.blobs[2]}", timeout=5)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(LAYERS[1])


def test_proxy_streams_large_chunked_upload(source_registry, fault_proxy) -> None:
    """260 MiB chunked PUT through the proxy without buffering it (RSS stays flat)."""
    proxy: FaultProxy = fault_proxy(source_registry)
    block, n = os.urandom(1 << 20), 260
    h = hashlib.sha256()
    for _ in range(n):
        h.update(block)
    digest = "sha256:" + h.hexdigest()
    s = _session()
    loc = s.post(f"{proxy.url}/v2/ns/big/blobs/uploads/", timeout=10).headers["Location"]
    assert loc.startswith(proxy.url)
    rss_before = _rss_mib()
    resp = s.put(f"{loc}&digest={digest}", data=(block for _ in range(n)), timeout=120)
    assert resp.status_code == 201, resp.text
    assert resp.request.headers.get("Transfer-Encoding") == "chunked"
    assert _rss_mib() - rss_before < 64
    head = s.head(f"{source_registry.url}/v2/ns/big/blobs/{digest}", timeout=10)
    assert int(head.headers["Content-Length"]) == n << 20


def test_flip_byte_corrupts_one_response(source_registry, fault_proxy) -> None:
    proxy: FaultProxy = fault_proxy(source_registry)
    pushed = im.push_image(source_registry, "ns/app", "v1", layers=LAYERS)
    layer = pushed.blobs[2]
    proxy.flip_byte()
    bad = im.get_blob(proxy, "ns/app", layer)
    good = im.get_blob(proxy, "ns/app", layer)
    assert len(bad) == len(good) == len(LAYERS[1])
    assert im.sha256_digest(good) == layer != im.sha256_digest(bad)
    assert sum(x != y for x, y in zip(bad, good, strict=True)) == 1
    assert [f.kind for f in proxy.fired] == ["flip_byte"]


def test_status_429_with_retry_after_then_forwards(source_registry, fault_proxy) -> None:
    proxy: FaultProxy = fault_proxy(source_registry)
    im.push_image(source_registry, "ns/app", "v1", layers=LAYERS)
    proxy.status(429, "GET", r"/manifests/", times=1, retry_after=1)
    s = _session()
    url = f"{proxy.url}/v2/ns/app/manifests/v1"
    m = source_registry.mark()
    first = s.get(url, headers={"Accept": im.ACCEPT}, timeout=5)
    assert first.status_code == 429 and first.headers["Retry-After"] == "1"
    assert source_registry.count(since=m) == 0  # never forwarded
    second = s.get(url, headers={"Accept": im.ACCEPT}, timeout=5)
    assert second.status_code == 200 and source_registry.count("GET", since=m) == 1
    assert [r[2] for r in proxy.requests] == [429, 200]


def test_reset_drops_the_connection(source_registry, fault_proxy) -> None:
    proxy: FaultProxy = fault_proxy(source_registry)
    pushed = im.push_image(source_registry, "ns/app", "v1", layers=LAYERS)
    url = f"{proxy.url}/v2/ns/app/blobs/{pushed.blobs[2]}"
    s = _session()

    proxy.reset("GET", r"/blobs/")
    with pytest.raises(requests.ConnectionError):
        s.get(url, timeout=5)

    proxy.reset("GET", r"/blobs/", after_bytes=1000, hard=False)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        s.get(url, timeout=5)  # requests sees a truncated body
    # On the wire: full headers, exactly 1000 body bytes, then EOF.
    proxy.reset("GET", r"/blobs/", after_bytes=1000, hard=False)
    head, body = _raw_get(proxy.host, url.removeprefix(proxy.url))
    assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {len(LAYERS[1])}".encode() in head
    assert body == LAYERS[1][:1000]

    assert s.get(url, timeout=5).content == LAYERS[1]  # rules are used up
    assert [f.kind for f in proxy.fired] == ["reset", "reset", "reset"]
    assert [r[2] for r in proxy.requests] == [0, 200, 200, 200]


def test_delay_and_clear(source_registry, fault_proxy) -> None:
    proxy: FaultProxy = fault_proxy(source_registry)
    proxy.delay(0.4, "GET", r"^/v2/$", times=None)
    s = _session()
    t0 = time.monotonic()
    assert s.get(f"{proxy.url}/v2/", timeout=5).status_code == 200
    assert time.monotonic() - t0 >= 0.4
    proxy.clear()
    t0 = time.monotonic()
    assert s.get(f"{proxy.url}/v2/", timeout=5).status_code == 200
    assert time.monotonic() - t0 < 0.3


def test_proxy_answers_502_while_upstream_is_down(source_registry, fault_proxy) -> None:
    proxy: FaultProxy = fault_proxy(source_registry)
    s = _session()
    source_registry.stop()
    resp = s.get(f"{proxy.url}/v2/", timeout=5)
    assert resp.status_code == 502 and "upstream failed" in resp.text
    source_registry.restart()
    assert s.get(f"{proxy.url}/v2/", timeout=5).status_code == 200
