"""An upload session as the registry hands it out: the client's type, which the ledger stores
(the ledger depends on the client's vocabulary, not the reverse)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UploadSession:
    """A chunked upload in progress: where to send the next chunk, and from which offset."""

    url: str
    offset: int
