"""The blobs of one image: skipped when the target repository has them, mounted from another
repository of the target registry, else streamed source → target with the digest checked on
the way (a large blob in resumable chunks, see `migrator.chunked`).

Single flight: while one copy in the process (or, with the Redis ledger, in the fleet) moves a
blob into a registry, the others wait for it, then mount or skip.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Literal

from migrator.chunked import upload_chunked
from migrator.errors import (
    AuthError,
    DigestMismatch,
    NamespaceMissing,
    RegistryError,
    RegistryUnreachable,
    RetryableError,
    UploadChunkRefused,
)
from migrator.ledger import Ledger
from migrator.registry.client import RegistryClient
from migrator.registry.manifest import Descriptor
from migrator.registry.retry import retrying
from migrator.registry.stream import VerifyingReader
from migrator.settings import Settings

log = logging.getLogger(__name__)

ByteCounter = Callable[[int], None]
BlobOutcome = Literal["copied", "mounted", "skipped"]


class BlobCopy:
    """Moves blobs from one source repository into one target repository. With `dry_run`,
    only finds out what it would do, with reads (a HEAD, never a mount)."""

    def __init__(
        self,
        *,
        src: RegistryClient,
        src_repo: str,
        dst: RegistryClient,
        dst_repo: str,
        ledger: Ledger,
        settings: Settings,
        dry_run: bool = False,
        pool: Executor | None = None,
        on_bytes: ByteCounter | None = None,
    ) -> None:
        self.src, self.src_repo = src, src_repo
        self.dst, self.dst_repo = dst, dst_repo
        self.ledger = ledger
        self.settings = settings
        self.dry_run = dry_run
        self.pool = pool
        self.on_bytes = on_bytes

    def copy(self, blobs: tuple[Descriptor, ...]) -> list[tuple[Descriptor, BlobOutcome]]:
        """Every distinct blob, several at once with a pool; what became of each. The first
        error is raised once every blob has ended."""
        unique = list({blob.digest: blob for blob in blobs}.values())
        if self.pool is None or len(unique) == 1:
            return [(blob, self.copy_one(blob)) for blob in unique]
        futures: list[Future[BlobOutcome]] = [
            self.pool.submit(self.copy_one, blob) for blob in unique]
        errors = [future.exception() for future in futures]  # waits for every blob
        for error in errors:
            if error is not None:
                raise error
        return [(blob, future.result()) for blob, future in zip(unique, futures, strict=True)]

    def copy_one(self, blob: Descriptor) -> BlobOutcome:
        registry, digest = self.dst.registry, blob.digest
        if self.dst_repo in self.ledger.blob_repositories(registry, digest):
            return "skipped"
        if self.dry_run:
            return self._plan(blob)
        # Single flight: if another copy is moving this blob into this registry, wait for it and
        # then mount or skip instead of uploading the same bytes twice.
        with self.ledger.blob_lock(registry, digest) as held:
            holders = self.ledger.blob_repositories(registry, digest)
            if holders and held.lost():
                # Another copy may be moving this blob now: the ledger's word is not enough to
                # skip or mount. Ask the target (below), upload if it lacks the blob.
                holders = set()
            if self.dst_repo in holders:
                return "skipped"
            sources = sorted(holders - {self.dst_repo})
            if self.src.registry == registry and self.src_repo != self.dst_repo:
                sources.insert(0, self.src_repo)
            upload_url = None
            if sources:
                mounted, upload_url = self._mount(digest, sources[0])
                if mounted:
                    self.ledger.add_blob(registry, digest, self.dst_repo)
                    return "mounted"
            if upload_url is None:  # no source to mount from, or the mount was refused
                present, upload_url = self._probe(digest)
                if present:
                    self.ledger.add_blob(registry, digest, self.dst_repo)
                    return "skipped"
            self._upload(blob, upload_url)
            self.ledger.add_blob(registry, digest, self.dst_repo)
            return "copied"

    def _mount(self, digest: str, source: str) -> tuple[bool, str | None]:
        """(mounted, the upload session the mount opened instead). A refused mount is no
        failure: Harbor answers 401 "project X not found" for a source project it lacks,
        Docker Hub 401 without pull rights on the source; the blob is uploaded instead. A
        registry known to grant one scope per token is not asked."""
        if not self.dst.mounts_across:
            return False, None
        try:
            upload_url = self.dst.mount_blob(self.dst_repo, digest, source)
        except (RegistryError, AuthError) as exc:
            if isinstance(exc, RetryableError | RegistryUnreachable) or getattr(
                    exc, "namespace", None):
                raise
            log.info("%s/%s: mount of %s from %s refused (%s); uploading it instead",
                     self.dst.registry, self.dst_repo, digest, source, exc)
            return False, None
        return upload_url is None, upload_url

    def _plan(self, blob: Descriptor) -> BlobOutcome:
        """What `copy_one` would do, found out with reads only (a HEAD, never a mount)."""
        holders = self.ledger.blob_repositories(self.dst.registry, blob.digest) - {self.dst_repo}
        if self.dst.blob_exists(self.dst_repo, blob.digest, target=True):
            return "skipped"
        if holders or (self.src.registry == self.dst.registry
                       and self.src_repo != self.dst_repo):
            return "mounted"
        return "copied"

    def _probe(self, digest: str) -> tuple[bool, str | None]:
        """Whether the target repository holds a blob, and an upload session if it does not.

        A mount from the repository itself answers both in one request (201 when the blob is
        there, 202 with a session when not) where HEAD + POST would be two. A registry that
        refuses such a mount gets the HEAD.
        """
        if self.settings.mount_probe:
            try:
                upload_url = self.dst.mount_blob(self.dst_repo, digest, self.dst_repo)
                return upload_url is None, upload_url
            except (RegistryError, AuthError) as exc:
                if isinstance(exc, RetryableError | NamespaceMissing):
                    raise
                log.debug("mount probe refused (%s); using HEAD", exc)
        return self.dst.blob_exists(self.dst_repo, digest, target=True), None

    def _upload(self, blob: Descriptor, upload_url: str | None) -> None:
        """Stream one blob source → target; a fresh upload session on every try. A large
        blob goes up in chunks that a later try, or another worker, resumes. One of unknown
        size (a schema1 layer whose source would not tell) goes up in one PUT."""
        if blob.size >= 0 and self.dst.uploads.chunked(blob.size,
                                                       self.settings.chunked_upload_threshold):
            try:
                upload_chunked(src=self.src, src_repo=self.src_repo, dst=self.dst,
                               dst_repo=self.dst_repo, blob=blob, ledger=self.ledger,
                               settings=self.settings, fresh_url=upload_url,
                               on_bytes=self.on_bytes)
                return
            except UploadChunkRefused:
                if not self.dst.uploads.chunks_refused:
                    raise
                upload_url = None  # no PATCH here: one monolithic PUT from now on
        for attempt in retrying(self.settings, self.settings.blob_attempts):
            with attempt:
                url = upload_url or self.dst.start_upload(self.dst_repo)
                upload_url = None
                response = self.src.open_blob(self.src_repo, blob.digest)
                try:
                    size = blob.size
                    declared = response.headers.get("Content-Length")
                    if size < 0 and declared and declared.isdigit():
                        size = int(declared)
                    if declared and declared.isdigit() and int(declared) != size:
                        raise DigestMismatch(f"blob {blob.digest} size", expected=str(size),
                                             got=declared)
                    if size < 0:
                        raise RegistryError(f"blob {blob.digest} has no known size")
                    reader = VerifyingReader(response, blob.digest, size, self.on_bytes,
                                             window=self.settings.read_timeout)
                    self.dst.finish_upload(self.dst_repo, url, blob.digest, reader)
                except BaseException:
                    self.dst.cancel_upload(self.dst_repo, url)
                    raise
                finally:
                    response.close()
