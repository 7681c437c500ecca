"""A blob on its way from one registry to another: hashed and counted while it streams."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import requests
import urllib3.exceptions

from migrator.errors import DigestMismatch, TransportError


class VerifyingReader:
    """File-like view of a streamed GET that the upload PUT reads from.

    Memory stays at one read's worth, whatever the blob size. The sha256 is updated with every
    read; the read that would hand over the last bytes checks the digest first and raises
    `DigestMismatch` instead, so the target never receives a complete body with a wrong digest
    (and the registry's own `?digest=` check is a second line of defence). `__len__` lets
    requests send a Content-Length instead of chunked framing.
    """

    def __init__(
        self,
        response: requests.Response,
        digest: str,
        size: int,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        algorithm, _, _ = digest.partition(":")
        if algorithm not in ("sha256", "sha512"):
            raise DigestMismatch(f"blob {digest}", expected=digest, got="unsupported algorithm")
        self.response = response
        self.digest = digest
        self.size = size
        self.on_bytes = on_bytes
        self.received = 0
        self._hash = hashlib.new(algorithm)
        if size == 0:
            self._check_digest()

    def __len__(self) -> int:
        return self.size

    def read(self, amount: int = -1) -> bytes:
        remaining = self.size - self.received
        if remaining <= 0:
            return b""
        want = remaining if amount is None or amount < 0 else min(amount, remaining)
        try:
            data = self.response.raw.read(want, decode_content=False)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransportError(
                f"source stream of {self.digest} broke after {self.received} bytes: "
                f"{type(exc).__name__}"
            ) from None
        if not data:
            raise TransportError(
                f"source stream of {self.digest} ended after {self.received} of {self.size} bytes"
            )
        self._hash.update(data)
        self.received += len(data)
        if self.received == self.size:
            self._check_digest()
        if self.on_bytes:
            self.on_bytes(len(data))
        return data

    def _check_digest(self) -> None:
        got = f"{self._hash.name}:{self._hash.hexdigest()}"
        if got != self.digest:
            raise DigestMismatch(f"blob {self.digest}", expected=self.digest, got=got)
        # A source that sends more than the descriptor's size serves another blob than named.
        extra = self.response.raw.read(1, decode_content=False)
        if extra:
            raise DigestMismatch(
                f"blob {self.digest}", expected=f"{self.size} bytes", got="more bytes"
            )

    def close(self) -> None:
        self.response.close()
