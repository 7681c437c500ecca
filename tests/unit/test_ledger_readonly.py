"""`ReadOnlyLedger` (what a dry run touches) against the `Ledger` interface it stands in for."""

import inspect

from migrator.ledger import HELD, Ledger, ManifestRecord, MemoryLedger, ReadOnlyLedger

PROTOCOL_METHODS = sorted(name for name, value in vars(Ledger).items()
                          if callable(value) and not name.startswith("_"))


def test_every_method_of_the_protocol_with_the_same_parameters():
    assert "blob_lock" in PROTOCOL_METHODS and "save_upload_session" in PROTOCOL_METHODS
    for name in PROTOCOL_METHODS:
        ours = getattr(ReadOnlyLedger, name, None)
        assert callable(ours), f"ReadOnlyLedger lacks {name}"
        assert inspect.signature(ours) == inspect.signature(getattr(Ledger, name)), name


def test_reads_pass_through_and_writes_are_dropped():
    ledger = MemoryLedger()
    ledger.add_blob("r.io", "sha256:a", "ns/one")
    ledger.record_manifest("r.io/ns/one:1", ManifestRecord("sha256:s", "sha256:t"))
    read_only = ReadOnlyLedger(ledger)
    assert read_only.blob_repositories("r.io", "sha256:a") == {"ns/one"}
    assert read_only.manifest("r.io/ns/one:1") == ManifestRecord("sha256:s", "sha256:t")

    read_only.add_blob("r.io", "sha256:a", "ns/two")
    read_only.forget_blobs("r.io", "ns/one", ["sha256:a"])
    read_only.record_manifest("r.io/ns/one:2", ManifestRecord("sha256:s", "sha256:t"))
    read_only.close()  # the wrapped ledger is the caller's: still open
    assert ledger.blob_repositories("r.io", "sha256:a") == {"ns/one"}
    assert ledger.manifest("r.io/ns/one:1") is not None
    assert ledger.manifest("r.io/ns/one:2") is None
    assert read_only.upload_session("r.io", "ns/one", "sha256:a") is None
    with read_only.blob_lock("r.io", "sha256:a") as held:
        assert held is HELD and not held.lost()
