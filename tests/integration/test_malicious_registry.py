"""A lying source registry: every lie is refused cleanly, in bounded time and memory, and
nothing wrong reaches the real target registry.

The source is `EvilRegistry` (a real HTTP server that misbehaves on demand), the target a real
Distribution registry, the tool `migrator sync` run in-process. "Refused cleanly" means: exit
code 1, the reason in the output and in the `--output-failed` reasons file, no traceback, the
target tag absent and no manifest PUT in the target's access log, all within a few seconds
(small MIGRATOR_* timeouts and attempts).
"""

from __future__ import annotations

import gzip
import json
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from migrator.cli import EXIT_FAILED, EXIT_OK, main
from tests.support.evil_registry import EvilHandler, EvilRegistry, endless
from tests.support.images import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, manifest_exists
from tests.support.tls import make_server_tls

FAST = {  # every wait of the product made short: a hang shows up as a slow test
    "MIGRATOR_CONNECT_TIMEOUT": "2",
    "MIGRATOR_READ_TIMEOUT": "1",
    "MIGRATOR_HTTP_ATTEMPTS": "2",
    "MIGRATOR_BLOB_ATTEMPTS": "1",
    "MIGRATOR_BACKOFF_INITIAL": "0.01",
    "MIGRATOR_BACKOFF_MAX": "0.05",
    "MIGRATOR_RETRY_PASS_DELAY": "0",
    "MIGRATOR_MAX_TAG_PAGES": "50",
}
BOUND = 5.0  # seconds any refusal may take
MiB = 1 << 20


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    seconds: float
    reasons: list[dict]


@pytest.fixture
def servers() -> Iterator[Callable[..., EvilRegistry]]:
    started: list[EvilRegistry] = []

    def start(**kwargs: object) -> EvilRegistry:
        started.append(EvilRegistry(**kwargs))  # type: ignore[arg-type]
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def evil(servers: Callable[..., EvilRegistry]) -> EvilRegistry:
    return servers()


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str], target_registry):
    def sync(source: str, target: str = "copy/app:1", auth: dict | None = None,
             env: dict[str, str] | None = None) -> Outcome:
        host = source.split("/", 1)[0]
        images, auth_file = tmp_path / "images.json", tmp_path / "auth.json"
        failed = tmp_path / "failed.json"
        images.write_text(json.dumps({source: f"{target_registry.host}/{target}"}))
        auth_file.write_text(json.dumps({host: {"insecure": True},
                                         target_registry.host: {"insecure": True},
                                         **(auth or {})}))
        started = time.monotonic()
        code = main(["sync", "--images", str(images), "--auth", str(auth_file), "--no-state",
                     "--retries", "0", "--workers", "1", "--output-failed", str(failed)],
                    {**FAST, **(env or {})})
        seconds = time.monotonic() - started
        out, err = capsys.readouterr()
        reasons_file = Path(f"{failed}.reasons.json")
        reasons = json.loads(reasons_file.read_text()) if reasons_file.exists() else []
        return Outcome(code, out, err, seconds, reasons)

    return sync


def refused(outcome: Outcome, target_registry, *words: str, repository: str = "copy/app",
            tag: str = "1", generate: bool = False) -> None:
    """Exit 1 with every word in the reason, quickly, no traceback, nothing at the target."""
    assert outcome.code == EXIT_FAILED, outcome.err
    assert "Traceback" not in outcome.err and "unexpected error" not in outcome.err, outcome.err
    for word in words:
        assert word in outcome.err, (word, outcome.err)
        if not generate:  # generate failures have no image to write in the failed report
            assert any(word in reason["reason"] for reason in outcome.reasons), outcome.reasons
    assert outcome.seconds < BOUND, outcome.seconds
    assert target_registry.count("PUT", "/manifests/") == 0
    assert not manifest_exists(target_registry, repository, tag)


def layer(size: int = 4096, fill: bytes = b"L") -> bytes:
    return (fill * size)[:size]


# -- blobs that are not what the manifest says ---------------------------------------------------


def test_blob_with_another_digest_is_refused_and_never_completes_an_upload(
        evil, run, target_registry):
    _, _, digests = evil.add_image("ns/app", "1", [layer()])
    evil.blobs[digests[1]] = layer(fill=b"X")  # same size, other bytes
    outcome = run(f"{evil.host}/ns/app:1")
    refused(outcome, target_registry, "digest mismatch", digests[1])
    assert not any(method == "PUT" and digests[1].split(":")[1] in path and status == 201
                   for method, path, status in target_registry.requests())


@pytest.mark.parametrize(("served", "chunked", "word"), [
    (layer() + b"more", False, "size"),
    (layer() + b"more", True, "more bytes"),
    (layer()[:-100], False, "size"),
    (layer()[:-100], True, "ended after 3996 of 4096 bytes"),
], ids=["longer", "longer-chunked", "shorter", "shorter-chunked"])
def test_blob_whose_size_differs_from_its_descriptor_is_refused(
        evil, run, target_registry, served: bytes, chunked: bool, word: str):
    _, _, digests = evil.add_image("ns/app", "1", [layer()])

    def answer(handler: EvilHandler) -> None:
        if chunked:
            handler.stream(200, [served[i:i + 1000] for i in range(0, len(served), 1000)])
        else:
            handler.reply(200, served)

    evil.on("GET", f"/blobs/{digests[1]}", answer)
    refused(run(f"{evil.host}/ns/app:1"), target_registry, word)


def test_descriptor_size_that_lies_about_a_true_blob_is_refused(evil, run, target_registry):
    evil.add_image("ns/app", "1", [layer()], sizes={1: 1000})  # the blob hashes right
    refused(run(f"{evil.host}/ns/app:1"), target_registry, "size")


# -- manifests that are not what was asked ---------------------------------------------------------


def test_manifest_whose_bytes_do_not_hash_to_the_digest_asked_is_refused(
        evil, run, target_registry):
    _, digest, _ = evil.add_image("ns/app", None, [layer()])
    other, _, _ = evil.add_image("ns/other", None, [layer(fill=b"O")])
    evil.manifests[("ns/app", digest)] = (other, DOCKER_MANIFEST)
    outcome = run(f"{evil.host}/ns/app@{digest}", target="copy/app")
    assert outcome.code == EXIT_FAILED
    assert "digest mismatch for manifest" in outcome.err and digest in outcome.err
    assert "digest mismatch" in outcome.reasons[0]["reason"]
    assert target_registry.count("PUT", "/manifests/") == 0
    assert not manifest_exists(target_registry, "copy/app", digest)


def index_of(*children: tuple[str, int]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_INDEX, "digest": digest, "size": size,
         "platform": {"os": "linux", "architecture": "amd64"}} for digest, size in children
    ]}).encode()


def test_index_that_references_itself_is_refused(evil, run, target_registry):
    # An index cannot hold its own digest; the registry claims one, and serves the index
    # itself under it. The digest check ends the loop at its first step.
    claimed = "sha256:" + "5" * 64
    body = index_of((claimed, 500))
    evil.add_manifest("ns/app", "1", body, OCI_INDEX)
    evil.manifests[("ns/app", claimed)] = (body, OCI_INDEX)
    refused(run(f"{evil.host}/ns/app:1"), target_registry, "digest mismatch", claimed)
    assert len(evil.requests("GET", f"/manifests/{claimed}")) == 1


def test_index_cycle_a_b_a_is_refused(evil, run, target_registry):
    claimed_a = "sha256:" + "a" * 64
    index_b = index_of((claimed_a, 500))
    digest_b = evil.add_manifest("ns/app", None, index_b, OCI_INDEX)
    index_a = index_of((digest_b, len(index_b)))
    evil.add_manifest("ns/app", "1", index_a, OCI_INDEX)
    evil.manifests[("ns/app", claimed_a)] = (index_a, OCI_INDEX)  # B → "A" serves A again
    refused(run(f"{evil.host}/ns/app:1"), target_registry, "digest mismatch", claimed_a)
    assert len(evil.requests("GET", "/manifests/")) == 3  # A, B, "A": then it stops


def test_indexes_nested_without_end_are_refused_at_a_fixed_depth(evil, run, target_registry):
    _, child, _ = evil.add_image("ns/app", None, [layer()])
    digest, size = child, 100
    for _ in range(6):  # a chain of valid indexes, each the only child of the next
        body = index_of((digest, size))
        digest, size = evil.add_manifest("ns/app", None, body, DOCKER_LIST), len(body)
    evil.manifests[("ns/app", "1")] = evil.manifests[("ns/app", digest)]
    refused(run(f"{evil.host}/ns/app:1"), target_registry, "nested deeper")
    assert len(evil.requests("GET", "/manifests/")) <= 3


# -- answers too big, too many, too slow -----------------------------------------------------------


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.mark.parametrize("framing", ["content-length", "chunked", "gzip-bomb"])
def test_huge_manifest_is_refused_without_reading_it_whole(evil, run, target_registry,
                                                           framing: str):
    size = 100 * MiB
    headers = {"Content-Type": DOCKER_MANIFEST}
    if framing == "gzip-bomb":  # ~100 KiB on the wire, 100 MiB once decoded
        bomb = gzip.compress(b" " * size, compresslevel=9)
        answer = lambda h: h.reply(200, bomb, {**headers, "Content-Encoding": "gzip"})  # noqa: E731
    else:
        length = size if framing == "content-length" else None
        answer = lambda h: h.stream(200, endless(b"{" + b" " * (MiB - 1), size),  # noqa: E731
                                    headers, length=length)
    evil.on("GET", "/manifests/1", answer)
    before = peak_rss()
    outcome = run(f"{evil.host}/ns/app:1")
    refused(outcome, target_registry, "larger than 4194304 bytes refused")
    assert peak_rss() - before < 48 * MiB
    if framing != "gzip-bomb":
        assert evil.sent["/v2/ns/app/manifests/1"] < 24 * MiB  # the read stopped at the cap


def test_huge_tag_list_page_is_refused(evil, run, target_registry):
    evil.on("GET", "/tags/list", lambda h: h.stream(
        200, endless(b'{"tags":["' + b"t" * (MiB - 10), 100 * MiB)))
    outcome = run(f"{evil.host}/ns/app", target="copy/app")
    refused(outcome, target_registry, "larger than", generate=True)
    assert evil.sent["/v2/ns/app/tags/list"] < 24 * MiB


def test_endless_tag_list_pagination_stops_at_the_page_limit(evil, run, target_registry):
    def page(handler: EvilHandler) -> None:
        number = int(handler.path.rsplit("last=t", 1)[1]) if "last=t" in handler.path else 0
        handler.reply(200, json.dumps({"tags": [f"t{number + 1}"]}).encode(),
                      {"Link": f'</v2/ns/app/tags/list?n=1&last=t{number + 1}>; rel="next"'})

    evil.on("GET", "/tags/list", page)
    outcome = run(f"{evil.host}/ns/app", target="copy/app")
    refused(outcome, target_registry, "more than 50 pages", generate=True, tag="t1")
    assert "1 tasks generate failed" in outcome.out
    assert len(evil.requests("GET", "/tags/list")) == 50


def test_tag_list_pagination_to_another_host_is_refused(servers, evil, run, target_registry):
    elsewhere = servers()
    evil.on("GET", "/tags/list", lambda h: h.reply(200, b'{"tags":["1"]}', {
        "Link": f'<{elsewhere.url}/v2/ns/app/tags/list?last=1>; rel="next"'}))
    outcome = run(f"{evil.host}/ns/app", target="copy/app")
    refused(outcome, target_registry, "pagination leads to another host", generate=True)
    assert elsewhere.requests() == []


def test_slow_loris_answers_are_bounded_by_the_read_timeout(evil, run, target_registry):
    evil.on("GET", "/manifests/stall", lambda h: h.stall(headers={"Content-Type":
                                                                  DOCKER_MANIFEST}))
    evil.on("GET", "/manifests/drip", lambda h: h.stream(
        200, endless(b" ", 10_000), {"Content-Type": DOCKER_MANIFEST}, pause=0.1))
    stalled = run(f"{evil.host}/ns/app:stall", target="copy/app:stall")
    refused(stalled, target_registry, "timed out", tag="stall")
    dripped = run(f"{evil.host}/ns/app:drip", target="copy/app:drip")
    refused(dripped, target_registry, "too slow", tag="drip")
    assert dripped.seconds < 3  # one read-timeout window, not 10 000 × 0.1 s


def test_a_blob_that_drips_is_bounded_too(evil, run, target_registry):
    _, _, digests = evil.add_image("ns/app", "1", [layer(200_000)])
    data = evil.blobs[digests[1]]
    evil.on("GET", f"/blobs/{digests[1]}", lambda h: h.stream(
        200, [data[i:i + 100] for i in range(0, len(data), 100)], length=len(data), pause=0.05))
    refused(run(f"{evil.host}/ns/app:1"), target_registry, "too slow")


# -- redirects --------------------------------------------------------------------------------


def test_blob_redirect_to_another_host_gets_no_credentials(servers, run, target_registry):
    evil = servers(challenge='Basic realm="evil"')
    storage = servers()
    _, _, digests = evil.add_image("ns/app", "1", [layer()])
    for digest in digests:
        storage.blobs[digest] = evil.blobs[digest]
        evil.on("GET", f"/blobs/{digest}",
                lambda h, d=digest: h.redirect(f"{storage.url}/v2/ns/app/blobs/{d}?sig=x"))
    outcome = run(f"{evil.host}/ns/app:1", auth={
        evil.host: {"username": "alice", "password": "evil-redirect-pw", "insecure": True}})
    assert outcome.code == EXIT_OK, outcome.err  # storage redirects are normal: they work
    assert len(storage.requests("GET", "/blobs/")) == 2
    assert storage.authorizations() == []  # ...but the registry's credentials stay behind
    assert any(value.startswith("Basic ") for value in evil.authorizations())


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/blob"])
def test_blob_redirect_to_a_non_http_url_is_refused(evil, run, target_registry, location: str):
    _, _, digests = evil.add_image("ns/app", "1", [layer()])
    evil.on("GET", f"/blobs/{digests[1]}", lambda h: h.redirect(location))
    scheme = location.split(":", 1)[0]
    refused(run(f"{evil.host}/ns/app:1"), target_registry, f"redirected to a {scheme}: URL")


def test_redirect_loop_is_refused(evil, run, target_registry):
    _, _, digests = evil.add_image("ns/app", "1", [layer()])
    evil.on("GET", f"/blobs/{digests[1]}", lambda h: h.redirect(h.path))
    refused(run(f"{evil.host}/ns/app:1"), target_registry, "TooManyRedirects")
    assert len(evil.requests("GET", f"/blobs/{digests[1]}")) <= 2 * 6  # 2 attempts × 6


def test_https_redirect_to_plain_http_is_refused(tmp_path, servers, run, target_registry):
    tls = make_server_tls(tmp_path / "tls")
    evil = servers(tls=tls)
    plain = servers()
    _, _, digests = evil.add_image("ns/app", "1", [layer()])
    plain.blobs.update(evil.blobs)
    evil.on("GET", f"/blobs/{digests[1]}",
            lambda h: h.redirect(f"{plain.url}/v2/ns/app/blobs/{digests[1]}"))
    outcome = run(f"{evil.host}/ns/app:1", auth={evil.host: {"ca_file": str(tls.ca_path)}})
    refused(outcome, target_registry, "from HTTPS to plain HTTP")
    assert plain.requests() == []


# -- token realms ----------------------------------------------------------------------------


def token_answer(handler: EvilHandler) -> None:
    handler.reply(200, b'{"token": "evil-issued-token", "expires_in": 300}',
                  {"Content-Type": "application/json"})


def test_realm_on_another_host_over_https_gets_the_password_and_nothing_else(
        tmp_path, servers, run, target_registry):
    tls = make_server_tls(tmp_path / "tls")
    realm = servers(tls=tls)
    realm.on("GET", "^/token", token_answer)
    evil = servers(tls=tls, challenge=f'Bearer realm="{realm.url}/token",service="evil"')
    evil.add_image("ns/app", "1", [layer()])
    outcome = run(f"{evil.host}/ns/app:1", auth={evil.host: {
        "username": "alice", "password": "realm-pw-6c1f", "ca_file": str(tls.ca_path)}})
    assert outcome.code == EXIT_OK, outcome.err  # Docker Hub works this way
    import base64

    basic = "Basic " + base64.b64encode(b"alice:realm-pw-6c1f").decode()
    assert realm.authorizations() and set(realm.authorizations()) == {basic}
    assert set(evil.authorizations()) == {"Bearer evil-issued-token"}  # never the password


def test_plain_http_realm_of_a_tls_registry_never_gets_the_password(
        tmp_path, servers, run, target_registry):
    tls = make_server_tls(tmp_path / "tls")
    realm = servers()
    realm.on("GET", "^/token", token_answer)
    evil = servers(tls=tls, challenge=f'Bearer realm="{realm.url}/token",service="evil"')
    evil.add_image("ns/app", "1", [layer()])
    outcome = run(f"{evil.host}/ns/app:1", auth={evil.host: {
        "username": "alice", "password": "realm-pw-9d2e", "ca_file": str(tls.ca_path)}})
    refused(outcome, target_registry, "is plain HTTP", "not sent in clear")
    assert realm.requests() == []
    assert "realm-pw-9d2e" not in outcome.err + outcome.out


@pytest.mark.parametrize("realm", ["file:///etc/passwd", "ftp://127.0.0.1/token",
                                   "javascript:alert(1)"])
def test_realm_with_a_strange_scheme_is_refused(evil, run, target_registry, realm: str):
    evil.challenge = f'Bearer realm="{realm}",service="evil"'
    evil.add_image("ns/app", "1", [layer()])
    outcome = run(f"{evil.host}/ns/app:1", auth={evil.host: {
        "username": "alice", "password": "realm-pw-0a7b", "insecure": True}})
    refused(outcome, target_registry, "token realm", "refused")
