"""The embedded ledgers keep what the copy engine records, and SQLite keeps it across runs."""

import threading
import time

import pytest

from migrator.ledger import ManifestRecord, MemoryLedger, SQLiteLedger

DIGEST = "sha256:" + "a" * 64


@pytest.fixture(params=["memory", "sqlite"])
def ledger(request, tmp_path):
    if request.param == "memory":
        return MemoryLedger()
    return SQLiteLedger(tmp_path / "state" / "ledger.sqlite")


def test_blobs_are_recorded_per_repository_and_forgotten(ledger):
    assert ledger.blob_repositories("reg", DIGEST) == set()
    ledger.add_blob("reg", DIGEST, "ns/a")
    ledger.add_blob("reg", DIGEST, "ns/b")
    ledger.add_blob("other", DIGEST, "ns/c")
    assert ledger.blob_repositories("reg", DIGEST) == {"ns/a", "ns/b"}
    ledger.forget_blobs("reg", "ns/a", [DIGEST])
    assert ledger.blob_repositories("reg", DIGEST) == {"ns/b"}
    assert ledger.blob_repositories("other", DIGEST) == {"ns/c"}


def test_manifest_records_replace(ledger):
    assert ledger.manifest("reg/ns/a:1") is None
    ledger.record_manifest("reg/ns/a:1", ManifestRecord("sha256:1", "sha256:1"))
    ledger.record_manifest("reg/ns/a:1", ManifestRecord("sha256:2", "sha256:2"))
    assert ledger.manifest("reg/ns/a:1") == ManifestRecord("sha256:2", "sha256:2")


def test_sqlite_ledger_survives_reopening(tmp_path):
    path = tmp_path / "ledger.sqlite"
    first = SQLiteLedger(path)
    first.add_blob("reg", DIGEST, "ns/a")
    first.record_manifest("reg/ns/a:1", ManifestRecord("sha256:1", "sha256:9"))
    first.close()
    second = SQLiteLedger(path)
    assert second.blob_repositories("reg", DIGEST) == {"ns/a"}
    assert second.manifest("reg/ns/a:1") == ManifestRecord("sha256:1", "sha256:9")


def test_blob_lock_is_single_flight_per_digest(ledger):
    inside: list[int] = []
    overlap = []

    def hold(i: int) -> None:
        with ledger.blob_lock("reg", DIGEST):
            inside.append(i)
            if len(inside) > 1:
                overlap.append(list(inside))
            time.sleep(0.02)
            inside.remove(i)

    threads = [threading.Thread(target=hold, args=(i,)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlap == []
    # other digests are not serialised behind it
    with ledger.blob_lock("reg", DIGEST), ledger.blob_lock("reg", "sha256:" + "b" * 64):
        pass
