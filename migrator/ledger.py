"""The digest record: which blobs and manifests a target registry already holds.

A cache in front of the registries, never the truth (a lost or stale ledger costs requests, not
correctness). One small interface, `Ledger`, three implementations: memory, SQLite
for `migrator sync --state DIR`, and Redis, shared by the fleet.

    blob      (target registry, digest) → repositories known to hold it
    manifest  target reference → (source digest, target digest) last synced
    lock      (target registry, digest) → single flight: one copier uploads, the others wait
    upload    (target registry, repository, digest) → a chunked upload's session URL and the
              offset the registry last confirmed, so that another try (or another worker after
              a crash) resumes a large blob where it stopped
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

# The session is the registry client's type; the ledger keeps them for resumable uploads.
from migrator.registry.upload import UploadSession
from migrator.settings import default

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManifestRecord:
    source_digest: str
    target_digest: str


class BlobLock:
    """What `Ledger.blob_lock` yields: whether the lock is still its holder's. While it is, no
    other copy is moving the blob into that registry, so the ledger's word that a repository
    holds it is enough to skip or mount. A process-local lock cannot be lost."""

    def lost(self) -> bool:
        return False


HELD = BlobLock()


class Ledger(Protocol):
    def blob_repositories(self, registry: str, digest: str) -> set[str]: ...

    def add_blob(self, registry: str, digest: str, repository: str) -> None: ...

    def forget_blobs(self, registry: str, repository: str, digests: list[str]) -> None: ...

    def manifest(self, target: str) -> ManifestRecord | None: ...

    def record_manifest(self, target: str, record: ManifestRecord) -> None: ...

    def blob_lock(self, registry: str, digest: str) -> AbstractContextManager[BlobLock]: ...

    def upload_session(self, registry: str, repository: str, digest: str
                       ) -> UploadSession | None: ...

    def save_upload_session(self, registry: str, repository: str, digest: str,
                            session: UploadSession | None) -> None:
        """Record a session (None forgets it)."""

    def run_number(self) -> int:
        """How many runs have opened this record, this one included; 0 for a record that
        lives for one run or that many share (re-runs check a sample of the target's tags
        in turn by this number: migrator/copy/image.py)."""

    def close(self) -> None: ...


class _LocalLocks:
    """Single flight inside one process: a lock per (registry, digest), dropped when idle."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, registry: str, digest: str) -> Iterator[BlobLock]:
        key = (registry, digest)
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield HELD
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
        self._uploads: dict[tuple[str, str, str], UploadSession] = {}
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

    def blob_lock(self, registry: str, digest: str) -> AbstractContextManager[BlobLock]:
        return self._locks.hold(registry, digest)

    def upload_session(self, registry: str, repository: str, digest: str
                       ) -> UploadSession | None:
        with self._lock:
            return self._uploads.get((registry, repository, digest))

    def save_upload_session(self, registry: str, repository: str, digest: str,
                            session: UploadSession | None) -> None:
        with self._lock:
            if session is None:
                self._uploads.pop((registry, repository, digest), None)
            else:
                self._uploads[(registry, repository, digest)] = session

    def run_number(self) -> int:
        return 0

    def close(self) -> None:
        pass


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
    CREATE TABLE IF NOT EXISTS uploads (
        registry TEXT NOT NULL, repository TEXT NOT NULL, digest TEXT NOT NULL,
        url TEXT NOT NULL, "offset" INTEGER NOT NULL,
        PRIMARY KEY (registry, repository, digest));
    CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    """

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        if read_only:  # a dry run: not even a journal file may appear
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                       check_same_thread=False)
            self._db.execute("SELECT 1 FROM manifests LIMIT 1")  # fail now, not mid-run
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(self.SCHEMA)
            self._db.execute("INSERT INTO meta VALUES ('runs', 1) "
                             "ON CONFLICT (name) DO UPDATE SET value = value + 1")
        self._run_number = self._runs_opened() + (1 if read_only else 0)
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

    def blob_lock(self, registry: str, digest: str) -> AbstractContextManager[BlobLock]:
        return self._locks.hold(registry, digest)

    def upload_session(self, registry: str, repository: str, digest: str
                       ) -> UploadSession | None:
        with self._lock:
            try:
                row = self._db.execute(
                    'SELECT url, "offset" FROM uploads WHERE registry = ? AND repository = ? '
                    "AND digest = ?", (registry, repository, digest)).fetchone()
            except sqlite3.OperationalError:  # a read-only state file from an older version
                return None
        return UploadSession(row[0], row[1]) if row else None

    def save_upload_session(self, registry: str, repository: str, digest: str,
                            session: UploadSession | None) -> None:
        with self._lock:
            if session is None:
                self._db.execute(
                    "DELETE FROM uploads WHERE registry = ? AND repository = ? AND digest = ?",
                    (registry, repository, digest))
            else:
                self._db.execute("INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, ?)",
                                 (registry, repository, digest, session.url, session.offset))

    def _runs_opened(self) -> int:
        try:
            row = self._db.execute("SELECT value FROM meta WHERE name = 'runs'").fetchone()
        except sqlite3.OperationalError:  # a read-only record from an older version
            return 0
        return int(row[0]) if row else 0

    def run_number(self) -> int:
        """A dry run counts as the run that would come next."""
        return self._run_number

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _RedisBlobLock(BlobLock):
    """A fleet-wide blob lock as its holder sees it. It is lost when its TTL ran out before a
    renewal (a long pause, Redis out of reach) and then perhaps taken by another worker; the
    renewer or the holder's own question finds out, whichever comes first."""

    def __init__(self, lock: Any, registry: str, digest: str, acquired: bool) -> None:
        self.lock = lock
        self.registry = registry
        self.digest = digest
        self.acquired = acquired
        self._lost = False
        self._guard = threading.Lock()

    def lost(self) -> bool:
        """True once the lock is no longer ours; asks Redis (one GET) unless known already.
        A waiter that gave up after `lock_wait` never held it."""
        if not self.acquired:
            return True
        if not self._lost and not self.lock.owned():
            self.mark_lost("no longer ours in Redis")
        return self._lost

    def mark_lost(self, why: object) -> None:
        with self._guard:
            if self._lost:
                return
            self._lost = True
        log.warning("lost the lock on blob %s of registry %s (%s): its copy checks the target "
                    "instead of trusting the ledger", self.digest, self.registry, why)


class RedisLedger:
    """The fleet's record, shared by every worker through Redis.

        {prefix}blob:{registry}:{digest}   SET of repositories holding the blob
        {prefix}manifests:{registry}/{repository}
                                           HASH tag (`:tag`, or `@digest` for an image pushed
                                           by digest, plus ` platforms=...` under a platform
                                           filter) → the digests last synced: the hex of the
                                           one sha256 when source and target are the same
                                           manifest (the rule: copies keep digests), else
                                           `source target` in full
        {prefix}lock:{registry}:{digest}   single-flight lock with a TTL, renewed while held
        {prefix}upload:{registry}:{repository}:{digest}
                                           HASH url, offset of a chunked upload, with a TTL

    Keys hold registry names, repositories and digests only: never a credential. Takes a
    `redis.Redis` client so that this module needs no Redis import of its own.
    """

    def __init__(self, client: Any, *, prefix: str = default("redis_prefix"),
                 lock_ttl: float = default("lock_ttl"), lock_wait: float = default("lock_wait"),
                 upload_ttl: int = default("upload_session_ttl")) -> None:
        self.redis = client
        self.prefix = prefix
        self.lock_ttl = lock_ttl
        self.lock_wait = lock_wait
        self.upload_ttl = upload_ttl
        self._local = _LocalLocks()
        self._held: dict[int, _RedisBlobLock] = {}  # the locks held now, for the renewer
        self._held_guard = threading.Lock()
        self._renewer: threading.Thread | None = None

    def _blob_key(self, registry: str, digest: str) -> str:
        return f"{self.prefix}blob:{registry}:{digest}"

    def blob_repositories(self, registry: str, digest: str) -> set[str]:
        return {text(member) for member in self.redis.smembers(self._blob_key(registry, digest))}

    def add_blob(self, registry: str, digest: str, repository: str) -> None:
        self.redis.sadd(self._blob_key(registry, digest), repository)

    def forget_blobs(self, registry: str, repository: str, digests: list[str]) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            for digest in digests:
                pipe.srem(self._blob_key(registry, digest), repository)
            pipe.execute()

    def _manifest_place(self, target: str) -> tuple[str, str]:
        """(hash key, field) of a target's record: one hash per repository holds its tags,
        a few dozen bytes each, where a key per tag cost some 400 (issue: Redis per tag)."""
        reference, space, filtered = target.partition(" ")
        slash = reference.rfind("/")
        marks = [at for at in (reference.find("@", slash + 1), reference.find(":", slash + 1))
                 if at >= 0]
        split = min(marks) if marks else len(reference)
        return (f"{self.prefix}manifests:{reference[:split]}",
                reference[split:] + space + filtered)

    def manifest(self, target: str) -> ManifestRecord | None:
        key, field = self._manifest_place(target)
        return unpack_record(self.redis.hget(key, field))

    def record_manifest(self, target: str, record: ManifestRecord) -> None:
        key, field = self._manifest_place(target)
        self.redis.hset(key, field, pack_record(record))

    @contextmanager
    def blob_lock(self, registry: str, digest: str) -> Iterator[BlobLock]:
        """Held by one worker of the fleet at a time; a crashed holder's lock expires.

        The threads of one process queue on a local lock first, so that a blob's lock passes
        between them at once rather than at the next poll of Redis (shared base layers are
        wanted by many copies at the same moment). A waiter gives up waiting after `lock_wait`
        seconds and goes on anyway: a duplicate upload is harmless, a fleet stuck behind a
        lost lock is not. The holder asks the yielded `BlobLock` whether the lock is still its
        own before it acts on the ledger's word.
        """
        with self._local.hold(registry, digest):
            lock = self.redis.lock(f"{self.prefix}lock:{registry}:{digest}",
                                   timeout=self.lock_ttl, sleep=0.05,
                                   blocking_timeout=self.lock_wait, thread_local=False)
            held = _RedisBlobLock(lock, registry, digest, bool(lock.acquire()))
            if held.acquired:
                self._renewed(held, True)
            try:
                yield held
            finally:
                if held.acquired:
                    self._renewed(held, False)
                    with suppress(Exception):  # expired meanwhile: someone may hold it now
                        lock.release()

    def _renewed(self, lock: _RedisBlobLock, held: bool) -> None:
        """Add a lock to (or drop it from) those one thread renews while they are held: most
        are released within a second, long before a renewal, so none needs a thread of its
        own."""
        with self._held_guard:
            if held:
                self._held[id(lock)] = lock
                if self._renewer is None:
                    self._renewer = threading.Thread(target=self._renew_held, daemon=True,
                                                     name="ledger-lock-renewer")
                    self._renewer.start()
            else:
                self._held.pop(id(lock), None)

    def _upload_key(self, registry: str, repository: str, digest: str) -> str:
        return f"{self.prefix}upload:{registry}:{repository}:{digest}"

    def upload_session(self, registry: str, repository: str, digest: str
                       ) -> UploadSession | None:
        values = self.redis.hmget(self._upload_key(registry, repository, digest), "url", "offset")
        if not values[0] or values[1] is None:
            return None
        return UploadSession(text(values[0]), int(values[1]))

    def save_upload_session(self, registry: str, repository: str, digest: str,
                            session: UploadSession | None) -> None:
        key = self._upload_key(registry, repository, digest)
        if session is None:
            self.redis.delete(key)
            return
        # Registries purge idle sessions after a while; so does the TTL here.
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"url": session.url, "offset": session.offset})
            pipe.expire(key, self.upload_ttl)
            pipe.execute()

    def run_number(self) -> int:
        return 0  # the fleet trusts its shared record (settings.trust_ledger)

    def close(self) -> None:
        pass  # the Redis client belongs to the caller

    def _renew_held(self) -> None:
        while True:
            time.sleep(self.lock_ttl / 3)
            with self._held_guard:
                locks = list(self._held.values())
            for held in locks:
                try:
                    held.lock.reacquire()
                except Exception as exc:  # released meanwhile, or lost (expired, taken)
                    with self._held_guard:
                        # Still listed: its holder has not released it, so it was lost, and
                        # the holder must not go on believing it is alone with the blob.
                        still_held = self._held.pop(id(held), None) is not None
                    if still_held:
                        held.mark_lost(exc)


SHA256 = "sha256:"
_HEX = frozenset("0123456789abcdef")


def pack_record(record: ManifestRecord) -> str:
    """A manifest record as the Redis ledger keeps it: 64 characters in the usual case (the
    target holds the source's own manifest), which keeps a repository's hash of up to 128 tags
    in Redis's compact encoding."""
    digest = record.source_digest
    if (record.target_digest == digest and digest.startswith(SHA256)
            and len(digest) == len(SHA256) + 64 and set(digest[len(SHA256):]) <= _HEX):
        return digest[len(SHA256):]
    return f"{record.source_digest} {record.target_digest}"


def unpack_record(value: bytes | str | None) -> ManifestRecord | None:
    """The record `pack_record` wrote; None for nothing, or for what it cannot read."""
    if not value:
        return None
    found = text(value)
    source, space, target = found.partition(" ")
    if space:
        return ManifestRecord(source, target) if source and target else None
    if len(found) == 64 and set(found) <= _HEX:
        return ManifestRecord(SHA256 + found, SHA256 + found)
    return None


def text(value: bytes | str) -> str:
    """A Redis reply as text (clients may or may not decode responses)."""
    return value.decode() if isinstance(value, bytes) else value


class ReadOnlyLedger:
    """A ledger's reads, with every write dropped: what a dry run may touch. It closes nothing:
    the ledger it wraps belongs to the caller."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def blob_repositories(self, registry: str, digest: str) -> set[str]:
        return self._ledger.blob_repositories(registry, digest)

    def add_blob(self, registry: str, digest: str, repository: str) -> None:
        pass

    def forget_blobs(self, registry: str, repository: str, digests: list[str]) -> None:
        pass

    def manifest(self, target: str) -> ManifestRecord | None:
        return self._ledger.manifest(target)

    def record_manifest(self, target: str, record: ManifestRecord) -> None:
        pass

    def blob_lock(self, registry: str, digest: str) -> AbstractContextManager[BlobLock]:
        return nullcontext(HELD)  # nothing is uploaded: no other copy to keep out

    def upload_session(self, registry: str, repository: str, digest: str
                       ) -> UploadSession | None:
        return None

    def save_upload_session(self, registry: str, repository: str, digest: str,
                            session: UploadSession | None) -> None:
        pass

    def run_number(self) -> int:
        return self._ledger.run_number()

    def close(self) -> None:
        pass

