"""Large blobs go up in chunks that survive a cut connection and a killed worker.

The offsets are read from the target registry's own access log: Distribution signs each upload
session's state (its UUID and the offset it holds) into the `_state` query parameter of the
session URL, so every PATCH line says at which byte it started.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import redis

from migrator.auth import RegistryAuth
from migrator.chunked import upload_chunked
from migrator.cli import EXIT_OK, main
from migrator.ledger import MemoryLedger, SQLiteLedger, UploadSession
from migrator.registry.client import RegistryClient
from migrator.registry.manifest import Descriptor
from migrator.settings import Settings
from tests.integration.test_fleet import Fleet
from tests.support.front import DROP, LOSE, Front
from tests.support.images import get_blob, make_layer, manifest_exists, push_image, sha256_digest

MIB = 1 << 20
BIG = 256 * MIB
CHUNK = 32 * MIB  # smaller than the default, so that a 256 MiB blob has 8 PATCHes
BIG_DB = 7
CHUNKS = {"MIGRATOR_UPLOAD_CHUNK_SIZE": str(CHUNK)}


def patch_starts(size: int, chunk: int = CHUNK) -> list[int]:
    """Where each PATCH of a `size`-byte blob starts: every chunk but the last piece, which
    goes with the closing PUT."""
    return list(range(0, size, chunk))[:-1]


@pytest.fixture(scope="module")
def big_layer() -> bytes:
    return make_layer(BIG, seed=256)


def patch_offsets(registry, since: int = 0) -> list[tuple[int, int]]:
    """(offset the session held, status) of every PATCH the registry logged."""
    offsets = []
    for method, uri, status in registry.requests(since):
        if method != "PATCH":
            continue
        token = parse_qs(urlsplit(uri).query)["_state"][0]
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        offsets.append((json.loads(raw[32:])["Offset"], status))  # after the 32-byte HMAC
    return offsets


def run_sync(tmp_path: Path, source: str, target: str, repository: str,
             environ: dict[str, str] | None = None) -> int:
    """`migrator sync` of `repository:v1` between two plain-HTTP hosts."""
    images = {f"{source}/{repository}:v1": f"{target}/{repository}:v1"}
    auth = {source: {"insecure": True}, target: {"insecure": True}}
    (tmp_path / "images.json").write_text(json.dumps(images))
    (tmp_path / "auth.json").write_text(json.dumps(auth))
    return main(["sync", "--images", str(tmp_path / "images.json"), "--auth",
                 str(tmp_path / "auth.json"), "--state", str(tmp_path / "state"),
                 "--retries", "0"],
                {"MIGRATOR_BACKOFF_INITIAL": "0.05", **CHUNKS, **(environ or {})})


def assert_exact(source, target, repository: str, layer: bytes) -> None:
    assert manifest_exists(target, repository, "v1")
    assert get_blob(target, repository, sha256_digest(layer)) == layer


def nth_patch(n: int, action: str):
    """An answer hook for a Front: `action` for the n-th PATCH, forward everything else."""
    seen = []

    def answer(method: str, path: str) -> str | None:
        if method == "PATCH":
            seen.append(path)
            if len(seen) == n:
                return action
        return None

    return answer


def sync_through_front(tmp_path: Path, source, target, repository: str, answer) -> int:
    """`run_sync` to `target` through a Front answering with `answer`."""
    front = Front(target.url, answer)
    try:
        return run_sync(tmp_path, source.host, front.host, repository)
    finally:
        front.close()


def test_upload_cut_between_chunks_resumes_at_the_confirmed_offset(
        tmp_path: Path, source_registry, target_registry, big_layer) -> None:
    push_image(source_registry, "big/one", "v1", layers=[big_layer])
    # The 5th PATCH dies before it reaches the registry: 4 chunks (128 MiB) are confirmed.
    code = sync_through_front(tmp_path, source_registry, target_registry, "big/one",
                              nth_patch(5, DROP))
    assert code == EXIT_OK
    offsets = [offset for offset, _ in patch_offsets(target_registry)]
    # Every chunk reached the registry exactly once, in order: the 5th after the resume.
    assert offsets == patch_starts(len(big_layer))
    # Before the resumed PATCH, the client asked the registry where the upload stood.
    requests = target_registry.requests()
    status_gets = [i for i, (m, u, s) in enumerate(requests)
                   if m == "GET" and "/blobs/uploads/" in u and s == 204]
    patches = [i for i, (m, *_) in enumerate(requests) if m == "PATCH"]
    assert len(status_gets) == 1 and patches[3] < status_gets[0] < patches[4]
    assert_exact(source_registry, target_registry, "big/one", big_layer)


def test_upload_whose_answer_is_lost_restarts_cleanly(
        tmp_path: Path, source_registry, target_registry, big_layer) -> None:
    """The 3rd PATCH reaches the registry but its answer is lost: Distribution then holds
    more bytes than the session state the client has, and cancels the session when asked
    about it. Detected, and the upload starts again from byte 0."""
    push_image(source_registry, "big/two", "v1", layers=[big_layer])
    code = sync_through_front(tmp_path, source_registry, target_registry, "big/two",
                              nth_patch(3, LOSE))
    assert code == EXIT_OK
    offsets = [offset for offset, _ in patch_offsets(target_registry)]
    chunks = patch_starts(len(big_layer))
    assert offsets == chunks[:3] + chunks  # 3 PATCHes, then a fresh session from byte 0
    assert_exact(source_registry, target_registry, "big/two", big_layer)


def test_download_cut_resumes_with_a_range_request(
        tmp_path: Path, source_registry, target_registry, fault_proxy, big_layer) -> None:
    push_image(source_registry, "big/three", "v1", layers=[big_layer])
    digest = sha256_digest(big_layer)
    proxy = fault_proxy(source_registry)
    proxy.reset("GET", digest, times=1, after_bytes=100 * MIB, hard=False)
    code = run_sync(tmp_path, proxy.url.split("://")[1], target_registry.host, "big/three")

    assert code == EXIT_OK
    blob_gets = [r for r in source_registry.requests() if r[0] == "GET" and digest in r[1]]
    assert [status for *_, status in blob_gets] == [200, 206]  # once whole, then the rest
    # Nothing was uploaded twice: every PATCH of the single session started where the last
    # one ended.
    offsets = [offset for offset, _ in patch_offsets(target_registry)]
    assert offsets == [i * CHUNK for i in range(len(offsets))]
    assert_exact(source_registry, target_registry, "big/three", big_layer)


def test_worker_killed_mid_upload_resumes_on_another_worker(
        tmp_path: Path, capsys, source_registry, target_registry, fault_proxy,
        big_layer) -> None:
    """Behind a front that buffers request bodies (nginx's default), a worker killed with
    SIGKILL mid-PATCH loses the chunk in flight only: the redelivered task resumes."""
    push_image(source_registry, "big/four", "v1", layers=[big_layer])
    # The first download at ~30 MiB/s: a PATCH lasts about a second, so the kill lands inside
    # one (a PATCH whose whole body reached the registry before the kill is another case).
    source = fault_proxy(source_registry)
    source.trickle(1 << 20, 0.03, path=sha256_digest(big_layer), times=1)
    source_host = source.url.split("://")[1]
    front = Front(target_registry.url, lambda method, path: None)
    url = f"redis://127.0.0.1:6379/{BIG_DB}"
    store = redis.Redis.from_url(url)
    store.flushdb()
    fleet = Fleet(tmp_path, capsys, redis_url=url)
    fleet.env.update(CHUNKS)
    try:
        fleet.write({f"{source_host}/big/four:v1": f"{front.host}/big/four:v1"},
                    {source_host: {"insecure": True}, front.host: {"insecure": True}})
        fleet.start_worker("first")
        code, out, _ = fleet.enqueue()
        run_id = out.strip()
        assert code == EXIT_OK
        deadline = time.monotonic() + 90
        session = None
        while session is None and time.monotonic() < deadline:
            for key in store.keys("migrator:upload:*"):
                if int(store.hget(key, "offset") or 0) >= 2 * CHUNK:
                    session = key
            time.sleep(0.02)
        assert session is not None, fleet.log("first")
        fleet.kill("first")
        killed_at = int(store.hget(session, "offset"))
        fleet.start_worker("second")
        code = main(["status", run_id, "--wait", "--timeout", "120"], fleet.env)
        out, _ = capsys.readouterr()
        assert code == EXIT_OK, out + fleet.log("second")
    finally:
        fleet.stop_all()
        front.close()
    offsets = [offset for offset, _ in patch_offsets(target_registry)]
    assert killed_at > 0 and offsets.count(0) == 1  # never started over
    resumed = offsets[offsets.index(killed_at):]
    assert resumed == [start for start in patch_starts(len(big_layer)) if start >= killed_at]
    assert "resuming the upload" in fleet.log("second")
    assert_exact(source_registry, target_registry, "big/four", big_layer)
    assert store.keys("migrator:upload:*") == []
    store.flushdb()


def test_ledgers_keep_and_forget_upload_sessions(tmp_path: Path) -> None:
    for ledger in (MemoryLedger(), SQLiteLedger(tmp_path / "ledger.db")):
        assert ledger.upload_session("r", "a/b", "sha256:x") is None
        ledger.save_upload_session("r", "a/b", "sha256:x", UploadSession("http://r/u?s=1", 42))
        assert ledger.upload_session("r", "a/b", "sha256:x") == UploadSession("http://r/u?s=1", 42)
        assert ledger.upload_session("r", "a/c", "sha256:x") is None
        ledger.save_upload_session("r", "a/b", "sha256:x", None)
        assert ledger.upload_session("r", "a/b", "sha256:x") is None
        ledger.close()


def upload_with_a_recorded_session(source, target, repository: str, seed: int,
                                   session_url: str) -> tuple[bytes, MemoryLedger]:
    """Upload a 2 MiB layer in 1 MiB chunks with `session_url` (at 1 MiB) on record."""
    layer = make_layer(2 * MIB, seed=seed)
    push_image(source, repository, "v1", layers=[layer])
    settings = Settings(chunked_upload_threshold=MIB, upload_chunk_size=MIB,
                        backoff_initial=0.05)
    src, dst = (RegistryClient(registry.host, RegistryAuth(insecure=True), settings)
                for registry in (source, target))
    ledger = MemoryLedger()
    digest = sha256_digest(layer)
    ledger.save_upload_session(target.host, repository, digest, UploadSession(session_url, MIB))
    upload_chunked(src=src, src_repo=repository, dst=dst, dst_repo=repository,
                   blob=Descriptor(digest, len(layer)), ledger=ledger, settings=settings)
    assert get_blob(target, repository, digest) == layer
    assert ledger.upload_session(target.host, repository, digest) is None
    return layer, ledger


def test_a_recorded_session_on_another_host_is_never_used(source_registry, target_registry
                                                          ) -> None:
    """A ledger entry naming an upload session elsewhere (written by someone with access to
    the ledger) must not receive the blob's bytes."""
    elsewhere = Front(target_registry.url, lambda method, path: None)
    try:
        upload_with_a_recorded_session(source_registry, target_registry, "big/five", 7,
                                       f"{elsewhere.url}/v2/big/five/blobs/uploads/x")
    finally:
        elsewhere.close()
    assert elsewhere.seen == []
    assert [offset for offset, _ in patch_offsets(target_registry)] == [0, MIB]


def test_an_unknown_recorded_session_is_replaced_by_a_fresh_one(source_registry,
                                                                target_registry) -> None:
    """The record names a session the registry does not know (purged, or the registry's
    storage was reset): detected by asking, forgotten, and the blob starts from byte 0."""
    gone = f"{target_registry.url}/v2/big/six/blobs/uploads/0c7e1a52-dead-4bee-8f00-000000000000"
    upload_with_a_recorded_session(source_registry, target_registry, "big/six", 8,
                                   f"{gone}?_state=stale")
    asked = [(m, status) for m, uri, status in target_registry.requests() if uri.startswith(
        "/v2/big/six/blobs/uploads/0c7e1a52")]
    assert asked in ([("GET", 404)], [("GET", 400)])
    assert [offset for offset, _ in patch_offsets(target_registry)] == [0, MIB]
