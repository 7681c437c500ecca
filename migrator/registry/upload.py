"""Upload sessions and upload strategy: the client's types, which the ledger stores (the ledger
depends on the client's vocabulary, not the reverse)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Literal

log = logging.getLogger(__name__)

# The smallest PATCH we fall to when a registry refuses big ones without naming its limit.
MIN_CHUNK = 1 << 20


@dataclass(frozen=True)
class UploadSession:
    """A chunked upload in progress: where to send the next chunk, and from which offset."""

    url: str
    offset: int


@dataclass
class UploadPolicy:
    """How blobs go up to one registry: monolithic PUT or PATCH chunks, and their size.

    `mode` and `chunk_size` come from the registry's auth file entry (`upload`, `chunk_size`).
    Otherwise the client learns from the registry's answers, once per run: a PATCH refused
    for its size sets the largest (GHCR: 416 above 4 MiB) or smallest (ECR: parts of at least
    5 MiB) chunk, a registry that refuses PATCH altogether (Artifact Registry) gets monolithic
    PUTs from then on.
    """

    registry: str = ""
    mode: Literal["auto", "monolithic", "chunked"] = "auto"
    chunk_size: int | None = None
    min_chunk: int = 0
    max_chunk: int | None = None
    chunks_refused: bool = False
    # The registry's `Range` after a PATCH it took stayed behind the bytes sent (ECR, 2026:
    # it sticks at the first chunk's end though every chunk is stored). Then the bytes sent
    # count, and the closing PUT's digest check proves the whole blob.
    stale_range: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def chunked(self, size: int, threshold: int) -> bool:
        """Whether a blob of `size` bytes goes up in chunks."""
        if self.mode == "monolithic" or self.chunks_refused:
            return False
        return self.mode == "chunked" or size > threshold

    def chunk(self, default: int) -> int:
        """Bytes per PATCH: the configured or default size within what the registry takes."""
        size = self.chunk_size or default
        if self.max_chunk is not None:
            size = min(size, self.max_chunk)
        return max(size, self.min_chunk)

    def confirmed(self, offset: int, sent_end: int, answered: int | None) -> int:
        """Where an upload stands after a PATCH the registry took (2xx) from `offset` to
        `sent_end` (exclusive), given its `Range` answer (`answered` bytes held, None when it
        gave none). A registry's partial answer is believed, as the protocol says, except one
        that did not move at all past where the PATCH started: that is the stale `Range`
        of a registry that stores every chunk, learnt once for the run."""
        if answered is None:
            return sent_end
        if self.stale_range:
            return sent_end
        if offset > 0 and answered <= offset:
            with self._lock:
                self.stale_range = True
            log.info("%s: the upload Range answer did not move past %d after a PATCH it "
                     "took: going by the bytes sent from now on (the closing digest check "
                     "proves the blob)", self.registry, answered)
            return sent_end
        return answered

    def learn(self, reason: str, limit: int | None, sent: int) -> None:
        """What a refused PATCH (`sent` bytes) says about the registry, remembered for the
        run. Limits that leave no chunk size possible mean monolithic PUTs."""
        with self._lock:
            if reason == "too-large":
                self.max_chunk = min(limit or max(MIN_CHUNK, sent // 2),
                                     self.max_chunk or sent)
                what = f"PATCH bodies above {self.max_chunk} bytes refused"
            elif reason == "too-small":
                self.min_chunk = max(limit or max(5 << 20, sent * 2), self.min_chunk)
                what = f"chunks under {self.min_chunk} bytes (but the last) refused"
            else:
                self.chunks_refused = True
                what = "chunked uploads refused"
            if self.max_chunk is not None and self.min_chunk > self.max_chunk:
                self.chunks_refused = True
        log.info("%s: %s: %s from now on", self.registry, what,
                 "monolithic uploads" if self.chunks_refused else "chunks within that")
