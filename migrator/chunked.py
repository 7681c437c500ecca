"""Large blobs: resumable chunked uploads and Range-resumed downloads.

A blob above `chunked_upload_threshold` goes up as PATCHes of `upload_chunk_size` bytes, then
a PUT with its digest that carries the last piece. After each PATCH the registry's answer (its
`Range`, never our own count) and the session URL it hands back are written to the ledger, so
that the next try, or another worker after the fleet redelivers a crashed task, asks the
registry where the upload stands (GET on the session) and goes on from there.

The digest is still checked by us on every byte: the hash state at each confirmed offset is
kept in memory, and a process that resumes without it (another worker) reads the confirmed
prefix once more from the source to hash it, without sending it again.

Distribution (and the registries built on it) cancels a session whose bytes run past its
recorded offset, which is what a PATCH cut mid-body leaves behind; that session is then
restarted from zero. A cut between PATCHes, or one that a buffering front (nginx's default)
keeps from reaching the registry, resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3.exceptions

from migrator.errors import (
    DigestMismatch,
    MigratorError,
    RegistryError,
    TransportError,
    UploadChunkRefused,
)
from migrator.ledger import Ledger
from migrator.registry.client import RegistryClient
from migrator.registry.manifest import Descriptor
from migrator.registry.retry import retrying
from migrator.registry.stream import Pace, read_block
from migrator.registry.upload import UploadSession
from migrator.settings import Settings

log = logging.getLogger(__name__)

# How often one upload starts again after the registry refused its chunks' size: each refusal
# sets a limit (too large, too small), so two are enough, a third means limits that clash.
MAX_CHUNK_LESSONS = 3

ByteCounter = Any  # Callable[[int], None] | None, as in migrator/copy


class ResumableBlobReader:
    """Reads one source blob from any offset, hashing every byte in order.

    A broken source stream is reopened at the current offset with a Range request, up to
    `http_attempts` times in a row, so that a PATCH being fed from it keeps going.
    """

    def __init__(self, client: RegistryClient, repository: str, blob: Descriptor,
                 settings: Settings, on_bytes: ByteCounter = None) -> None:
        algorithm = blob.digest.partition(":")[0]
        if algorithm not in ("sha256", "sha512"):
            raise DigestMismatch(f"blob {blob.digest}", expected=blob.digest,
                                 got="unsupported algorithm")
        self.client = client
        self.repository = repository
        self.blob = blob
        self.settings = settings
        self.on_bytes = on_bytes
        self.position = 0
        self._hash = hashlib.new(algorithm)
        self._checkpoints: dict[int, Any] = {0: self._hash.copy()}
        self._response: requests.Response | None = None

    def checkpoint(self, offset: int) -> None:
        """The registry confirmed `offset`: keep the hash state there (and only the latest)."""
        if offset == self.position:
            self._checkpoints = {0: self._checkpoints[0], offset: self._hash.copy()}

    def seek(self, offset: int) -> None:
        """Continue from `offset`: from the hash state kept there, else hash the prefix anew."""
        if offset == self.position and self._response is not None:
            return
        self.close()
        state = self._checkpoints.get(offset)
        if state is not None:
            self._hash, self.position = state.copy(), offset
            self._open()
            return
        self._hash, self.position = self._checkpoints[0].copy(), 0
        self._open()
        while self.position < offset:  # read to hash, send nothing
            self._read_some(min(self.settings.chunk_size, offset - self.position))
        log.info("%s: hashed the first %d bytes again to resume its upload", self.blob.digest,
                 offset)

    def _open(self) -> None:
        response = self.client.open_blob(self.repository, self.blob.digest, self.position)
        if self.position and response.status_code == 200:
            # Range ignored: the whole blob comes; skip what is already hashed.
            skip = self.position
            while skip:
                piece = response.raw.read(min(skip, self.settings.chunk_size),
                                          decode_content=False)
                if not piece:
                    response.close()
                    raise TransportError(f"source stream of {self.blob.digest} ended early")
                skip -= len(piece)
        elif self.position:
            start = (response.headers.get("Content-Range") or "").removeprefix("bytes ")
            if not start.startswith(f"{self.position}-"):
                response.close()
                raise RegistryError(
                    f"{self.client.registry}: blob {self.blob.digest}: asked for bytes from "
                    f"{self.position}, got {start or 'no Content-Range'}")
        self._response = response
        self._pace = Pace(self.settings.read_timeout, f"source stream of {self.blob.digest}")

    def _read_some(self, amount: int) -> bytes:
        """Up to `amount` bytes at the current position, reopening a broken stream."""
        failures = 0
        while True:
            if self._response is None:
                self._open()
            assert self._response is not None
            try:
                data = read_block(self._response, amount, self._pace)
            except (urllib3.exceptions.HTTPError, OSError, TransportError) as exc:
                data, error = b"", f"{type(exc).__name__}"
            else:
                error = "ended early"
            if data:
                self._hash.update(data)
                self.position += len(data)
                if self.position == self.blob.size:
                    self._check_digest()
                return data
            failures += 1
            self.close()
            if failures >= self.settings.http_attempts:
                raise TransportError(f"source stream of {self.blob.digest} broke at byte "
                                     f"{self.position} ({error}) {failures} times")
            log.info("%s: source stream broke at byte %d (%s); resuming with a Range request",
                     self.blob.digest, self.position, error)

    def read(self, amount: int) -> bytes:
        remaining = self.blob.size - self.position
        if remaining <= 0:
            return b""
        data = self._read_some(min(amount, remaining))
        if self.on_bytes:
            self.on_bytes(len(data))
        return data

    def _check_digest(self) -> None:
        got = f"{self._hash.name}:{self._hash.hexdigest()}"
        if got != self.blob.digest:
            raise DigestMismatch(f"blob {self.blob.digest}", expected=self.blob.digest, got=got)

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None


class _Chunk:
    """`length` bytes of a reader, as a request body with a known Content-Length."""

    def __init__(self, reader: ResumableBlobReader, length: int) -> None:
        self.reader = reader
        self.remaining = length
        self.length = length

    def __len__(self) -> int:
        return self.length

    def read(self, amount: int = -1) -> bytes:
        if self.remaining <= 0:
            return b""
        data = self.reader.read(self.remaining if amount < 0 else min(amount, self.remaining))
        self.remaining -= len(data)
        return data


def upload_chunked(
    *,
    src: RegistryClient,
    src_repo: str,
    dst: RegistryClient,
    dst_repo: str,
    blob: Descriptor,
    ledger: Ledger,
    settings: Settings,
    fresh_url: str | None = None,
    on_bytes: ByteCounter = None,
) -> None:
    """Copy one large blob in chunks, resuming a session the ledger holds (see module doc).

    A chunk the registry refuses for its size teaches the client (`dst.uploads`) the size it
    takes, and the upload starts again with it; a registry that refuses PATCH altogether
    raises `UploadChunkRefused` with `dst.uploads.chunks_refused` set, for a monolithic PUT.
    """
    reader = ResumableBlobReader(src, src_repo, blob, settings, on_bytes)
    try:
        for lesson in range(MAX_CHUNK_LESSONS + 1):
            try:
                for attempt in retrying(settings, settings.blob_attempts):
                    with attempt:
                        session = _resume_point(dst, dst_repo, blob.digest, ledger, fresh_url)
                        fresh_url = None
                        _send_chunks(dst, dst_repo, blob, ledger, settings, reader, session)
                return
            except UploadChunkRefused as exc:
                dst.uploads.learn(exc.reason, exc.limit, exc.sent)
                if dst.uploads.chunks_refused or lesson == MAX_CHUNK_LESSONS:
                    raise
    finally:
        reader.close()


def _resume_point(dst: RegistryClient, dst_repo: str, digest: str, ledger: Ledger,
                  fresh_url: str | None) -> UploadSession:
    """The recorded session where the registry still knows it, else a fresh one."""
    recorded = ledger.upload_session(dst.registry, dst_repo, digest)
    if recorded is not None and urlsplit(recorded.url).netloc != dst.api_host:
        # Only the registry's own sessions are resumed: a session URL elsewhere (a ledger
        # written by someone else) would receive the blob's bytes.
        log.warning("%s/%s: ignoring a recorded upload session on another host", dst.registry,
                    dst_repo)
        recorded = None
    if recorded is not None:
        status = dst.upload_status(dst_repo, recorded.url)
        if status is not None and status.offset > 0:
            if fresh_url:
                dst.cancel_upload(dst_repo, fresh_url)
            log.info("%s/%s: resuming the upload of %s at byte %d", dst.registry, dst_repo,
                     digest, status.offset)
            return status
        log.info("%s/%s: the upload session of %s is gone; starting again", dst.registry,
                 dst_repo, digest)
        ledger.save_upload_session(dst.registry, dst_repo, digest, None)
    return UploadSession(fresh_url or dst.start_upload(dst_repo), 0)


def _send_chunks(dst: RegistryClient, dst_repo: str, blob: Descriptor, ledger: Ledger,
                 settings: Settings, reader: ResumableBlobReader,
                 session: UploadSession) -> None:
    try:
        reader.seek(session.offset)
        chunk = dst.uploads.chunk(settings.upload_chunk_size)
        while blob.size - session.offset > chunk:
            length = chunk
            expected_end = session.offset + length
            session = dst.upload_chunk(dst_repo, session, _Chunk(reader, length), length)
            if session.offset != expected_end:
                # The registry holds another amount than sent: go on from what it holds.
                log.warning("%s: registry confirmed %d bytes, %d were sent", blob.digest,
                            session.offset, expected_end)
                reader.seek(session.offset)
            reader.checkpoint(session.offset)
            if urlsplit(session.url).netloc == dst.api_host:
                ledger.save_upload_session(dst.registry, dst_repo, blob.digest, session)
        # The last piece (at most one chunk) rides on the closing PUT: one request fewer,
        # and Distribution spends ~30 ms of CPU per PATCH beyond its bytes (measured).
        rest = blob.size - session.offset
        dst.finish_upload(dst_repo, session.url, blob.digest,
                          _Chunk(reader, rest) if rest else b"")
    except (DigestMismatch, UploadChunkRefused):
        # The source serves other bytes than its digest, or the registry will not take this
        # chunk size: this session can never complete.
        reader.close()
        dst.cancel_upload(dst_repo, session.url)
        ledger.save_upload_session(dst.registry, dst_repo, blob.digest, None)
        raise
    except MigratorError:
        reader.close()  # the next try reopens the source where the registry says
        raise
    ledger.save_upload_session(dst.registry, dst_repo, blob.digest, None)
