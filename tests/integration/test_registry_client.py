"""The registry client alone against real registries: the protocol corners `sync` relies on."""

from __future__ import annotations

import hashlib
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from migrator.auth import RegistryAuth
from migrator.cli import main
from migrator.errors import AuthError, RegistryError
from migrator.registry.client import RegistryClient
from migrator.settings import Settings
from tests.support.front import Front
from tests.support.images import get_blob, make_layer, push_blob, push_image, session_for


def client_for(registry, **settings) -> RegistryClient:
    credentials = RegistryAuth(insecure=True)
    return RegistryClient(registry.host, credentials, Settings(**settings))


def paged_tag_lists(upstream: str, counter: list[int], delay: float = 0.0):
    """Answers tag-list requests in pages with `Link` headers, as the OCI spec and
    Distribution 3 do (Distribution 2.8, the registry here, ignores `?n=`); each page after
    `delay` seconds."""

    def answer(method: str, path: str):
        url = urlsplit(path)
        if method != "GET" or not url.path.endswith("/tags/list"):
            return None
        query = parse_qs(url.query)
        tags = sorted(requests.get(upstream + url.path, timeout=10).json()["tags"])
        size = int(query.get("n", ["100"])[0])
        page = [tag for tag in tags if tag > query.get("last", [""])[0]][:size]
        headers = {"Content-Type": "application/json"}
        if page and page[-1] != tags[-1]:
            headers["Link"] = f'<{url.path}?n={size}&last={page[-1]}>; rel="next"'
        counter.append(1)
        time.sleep(delay)
        return 200, headers, json.dumps({"name": "x", "tags": page}).encode()

    return answer


def test_tag_list_follows_every_page(source_registry):
    layer = [make_layer(1024, 1)]
    tags = [f"t{i:02d}" for i in range(7)]
    for tag in tags:
        push_image(source_registry, "ns/paged", tag, layers=layer)
    pages: list[int] = []
    front = Front(source_registry.url, paged_tag_lists(source_registry.url, pages))
    try:
        client = RegistryClient(front.host, RegistryAuth(insecure=True),
                                Settings(tag_page_size=3))
        assert client.list_tags("ns/paged") == tags
        assert len(pages) == 3
        with pytest.raises(RegistryError, match="more than 2 pages"):
            RegistryClient(front.host, RegistryAuth(insecure=True),
                           Settings(tag_page_size=3, max_tag_pages=2)).list_tags("ns/paged")
    finally:
        front.close()


def test_a_long_tag_list_shows_its_progress_while_it_is_read(source_registry,
                                                              target_registry, tmp_path,
                                                              capsys):
    """`migrator sync` over a tag list of many slow pages: a line about every second says
    how far the reading is, then every tag is copied."""
    layer = [make_layer(1024, 2)]
    tags = [f"t{i:02d}" for i in range(10)]
    for tag in tags:
        push_image(source_registry, "ns/slow", tag, layers=layer)
    pages: list[int] = []
    front = Front(source_registry.url, paged_tag_lists(source_registry.url, pages, delay=0.4))
    try:
        images, auth = tmp_path / "images.json", tmp_path / "auth.json"
        images.write_text(json.dumps({f"{front.host}/ns/slow": f"{target_registry.host}/c/slow"}))
        auth.write_text(json.dumps({front.host: {"insecure": True},
                                    target_registry.host: {"insecure": True}}))
        code = main(["sync", "--images", str(images), "--auth", str(auth), "--no-state"],
                    {"MIGRATOR_TAG_PAGE_SIZE": "1"})
        capsys_out, err = capsys.readouterr()
    finally:
        front.close()
    assert code == 0, err
    assert len(pages) == len(tags)
    so_far = [int(count) for count in re.findall(
        rf"{re.escape(front.host)}: reading the tag list of 'ns/slow': (\d+) so far, page \d+",
        err)]
    assert len(so_far) >= 2 and so_far == sorted(so_far) and so_far[-1] < len(tags), err
    assert "Images(10) migration finished, 0 images tasks failed" in capsys_out, capsys_out


def test_copies_asking_for_a_recent_tag_list_at_once_share_one_listing(source_registry):
    """Every copy asks for a tag list up to `tag_list_ttl` old (the target's, to skip a HEAD;
    the source's, for the referrers tag schema): when it has expired, the copies that ask
    together wait for one listing; each reads only the schema's tags of it."""
    push_image(source_registry, "ns/shared", "1", layers=[make_layer(1024, 3)])
    push_image(source_registry, "ns/shared", "sha256-" + "a" * 64 + ".sig",
               layers=[make_layer(512, 4)])
    pages: list[int] = []
    front = Front(source_registry.url, paged_tag_lists(source_registry.url, pages, delay=0.3))
    try:
        client = RegistryClient(front.host, RegistryAuth(insecure=True), Settings())
        schema_tag = "sha256-" + "a" * 64 + ".sig"
        with ThreadPoolExecutor(8) as pool:
            found = list(pool.map(lambda _: client.known_tags("ns/shared", max_age=60),
                                  range(8)))
        assert found == [{"1", schema_tag}] * 8 and len(pages) == 1
        assert client.referrer_tags("ns/shared", max_age=60) == [schema_tag]
        assert len(pages) == 1
        assert sorted(client.list_tags("ns/shared")) == sorted(["1", schema_tag])
        assert len(pages) == 2  # expanding a rule reads afresh
    finally:
        front.close()


def test_listings_too_old_to_use_are_not_kept(source_registry):
    """A run over thousands of repositories keeps the tag lists it may still use (younger
    than `tag_list_ttl`), not one per repository it ever listed."""
    for name in ("old", "new"):
        push_image(source_registry, f"ns/{name}", "1", layers=[make_layer(256, 5)])
    client = RegistryClient(source_registry.host, RegistryAuth(insecure=True),
                            Settings(tag_list_ttl=0.3))
    assert client.known_tags("ns/old", max_age=0.3) == {"1"}
    time.sleep(0.4)
    assert client.referrer_tags("ns/new", max_age=0.3) == []
    assert list(client._tags) == ["ns/new"]


def test_missing_things_say_what_is_missing(source_registry):
    client = client_for(source_registry)
    with pytest.raises(RegistryError, match="has no tags, or does not exist") as caught:
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

    def __init__(self, registry, repository: str) -> None:
        self.storage_headers: list[str | None] = []

        def storage(method: str, path: str) -> tuple[int, dict[str, str], bytes]:
            return 200, {}, get_blob(registry, repository, path.rsplit("/", 1)[-1],
                                     auth=registry.auth)

        def redirect(method: str, path: str) -> tuple[int, dict[str, str], bytes] | None:
            if method == "GET" and "/blobs/sha256:" in path:
                location = f"http://localhost:{self.storage.port}/{path.rsplit('/', 1)[-1]}"
                return 307, {"Location": location}, b""
            return None

        self.storage = Front(registry.url, storage, on_headers=self.storage_headers)
        self.front = Front(registry.url, redirect)
        self.host = self.front.host

    def close(self) -> None:
        self.storage.close()
        self.front.close()


def test_blob_redirects_are_followed_without_the_registry_credentials(token_registry):
    registry = token_registry.registry
    image = push_image(registry, "ns/redirected", "1", layers=[make_layer(4096, 5)],
                       auth=registry.auth)
    front = RedirectingFront(registry, "ns/redirected")
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


@pytest.mark.parametrize("auth", ["htpasswd", "token"])
def test_a_password_beyond_latin_1_is_sent_as_utf_8(registry_factory, auth):
    """Docker's clients send Basic credentials as UTF-8; a password with `€` must work, for
    the registry itself and for a token service."""
    registry = registry_factory(auth=auth, password="pässwörd€-ünïcode")
    push_image(registry, "ns/utf8", "1", layers=[make_layer(1024, 9)],
               auth=(registry.username, registry.password))
    client = RegistryClient(registry.host, RegistryAuth(
        username=registry.username, password=registry.password, insecure=True), Settings())
    head = client.head_manifest("ns/utf8", "1")
    assert head is not None and head[0].startswith("sha256:")
