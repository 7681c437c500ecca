"""The digest record: which blobs and manifests a target registry already holds.

A cache in front of the registries, never the truth (a lost or stale ledger costs requests, not
correctness). One small interface, `Ledger`; the embedded implementations live here (memory,
and SQLite for `migrator sync --state DIR`); the fleet's Redis one lives with the workers.

    blob      (target registry, digest) → repositories known to hold it
    manifest  target reference → (source digest, target digest) last synced
    lock      (target registry, digest) → single flight: one copier uploads, the others wait
"""

from __future__ import annotations

import sqlite3
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class ManifestRecord:
    source_digest: str
    target_digest: str


class Ledger(Protocol):
    def blob_repositories(self, registry: str, digest: str) -> set[str]: ...

    def add_blob(self, registry: str, digest: str, repository: str) -> None: ...

    def forget_blobs(self, registry: str, repository: str, digests: list[str]) -> None: ...

    def manifest(self, target: str) -> ManifestRecord | None: ...

    def record_manifest(self, target: str, record: ManifestRecord) -> None: ...

    def forget_manifest(self, target: str) -> None: ...

    def blob_lock(self, registry: str, digest: str) -> AbstractContextManager[None]: ...


class _LocalLocks:
    """Single flight inside one process: a lock per (registry, digest), dropped when idle."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, registry: str, digest: str) -> Iterator[None]:
        key = (registry, digest)
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class MemoryLedger:
    """Forgets everything at exit: for tests and one-shot runs."""

    def __init__(self) -> None:
        self._blobs: dict[tuple[str, str], set[str]] = defaultdict(set)
        self._manifests: dict[str, ManifestRecord] = {}
        self._lock = threading.Lock()
        self._locks = _LocalLocks()

    def blob_repositories(self, registry: str, digest: str) -> set[str]:
        with self._lock:
            return set(self._blobs.get((registry, digest), ()))

    def add_blob(self, registry: str, digest: str, repository: str) -> None:
        with self._lock:
            self._blobs[(registry, digest)].add(repository)

    def forget_blobs(self, registry: str, repository: str, digests: list[str]) -> None:
        with self._lock:
            for digest in digests:
                self._blobs.get((registry, digest), set()).discard(repository)

    def manifest(self, target: str) -> ManifestRecord | None:
        with self._lock:
            return self._manifests.get(target)

    def record_manifest(self, target: str, record: ManifestRecord) -> None:
        with self._lock:
            self._manifests[target] = record

    def forget_manifest(self, target: str) -> None:
        with self._lock:
            self._manifests.pop(target, None)

    def blob_lock(self, registry: str, digest: str) -> AbstractContextManager[None]:
        return self._locks.hold(registry, digest)


class SQLiteLedger:
    """The embedded record of `migrator sync`: one SQLite file in the state directory.

    One connection guarded by a lock: the statements are tiny next to the HTTP requests they
    save, and WAL keeps a crash from corrupting the file.
    """

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS blobs (
        registry TEXT NOT NULL, digest TEXT NOT NULL, repository TEXT NOT NULL,
        PRIMARY KEY (registry, digest, repository));
    CREATE TABLE IF NOT EXISTS manifests (
        target TEXT PRIMARY KEY, source_digest TEXT NOT NULL, target_digest TEXT NOT NULL);
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(self.SCHEMA)
        self._lock = threading.Lock()
        self._locks = _LocalLocks()

    def blob_repositories(self, registry: str, digest: str) -> set[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT repository FROM blobs WHERE registry = ? AND digest = ?",
                (registry, digest)).fetchall()
        return {row[0] for row in rows}

    def add_blob(self, registry: str, digest: str, repository: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO blobs VALUES (?, ?, ?)",
                             (registry, digest, repository))

    def forget_blobs(self, registry: str, repository: str, digests: list[str]) -> None:
        with self._lock:
            self._db.executemany(
                "DELETE FROM blobs WHERE registry = ? AND digest = ? AND repository = ?",
                [(registry, digest, repository) for digest in digests])

    def manifest(self, target: str) -> ManifestRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT source_digest, target_digest FROM manifests WHERE target = ?",
                (target,)).fetchone()
        return ManifestRecord(*row) if row else None

    def record_manifest(self, target: str, record: ManifestRecord) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO manifests VALUES (?, ?, ?)",
                             (target, record.source_digest, record.target_digest))

    def forget_manifest(self, target: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM manifests WHERE target = ?", (target,))

    def blob_lock(self, registry: str, digest: str) -> AbstractContextManager[None]:
        return self._locks.hold(registry, digest)

    def close(self) -> None:
        with self._lock:
            self._db.close()
