"""A blob on its way from one registry to another: hashed and counted while it streams."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import requests
import urllib3.exceptions

from migrator.errors import DigestMismatch, RegistryError, TransportError
from migrator.settings import default

# Slow-loris guard: a body must bring this many bytes (or its end) in every read-timeout
# window. The read timeout alone bounds one silent wait, not a server that drips a byte just
# before each timeout; at the default 120 s window this floor is ~550 bytes/s.
MIN_PROGRESS = 64 * 1024
PIECE = 256 * 1024  # the most one read of a blob stream hands over
RECEIVE = 64 * 1024  # the most one socket read asks for (see read_block)


class Pace:
    """Raises `TransportError` when a body brings less than MIN_PROGRESS bytes in a window."""

    def __init__(self, window: float, what: str) -> None:
        self.window = window
        self.what = what
        self._start = time.monotonic()
        self._bytes = 0

    def add(self, count: int) -> None:
        self._bytes += count
        now = time.monotonic()
        if self._bytes >= MIN_PROGRESS:
            self._start, self._bytes = now, 0
        elif now - self._start > self.window:
            raise TransportError(
                f"{self.what}: fewer than {MIN_PROGRESS} bytes in {self.window:g} s "
                "(read timeout): the server is too slow")


def read_capped(response: requests.Response, limit: int, window: float, what: str, *,
                truncate: bool = False, decode: bool = True) -> bytes:
    """At most `limit` bytes of a streamed answer's body, decoded, read at a bounded pace.

    Larger: `RegistryError` (or, with `truncate`, the first `limit` bytes and the connection
    closed), found out from Content-Length before reading when the server declares it. What a
    registry says is never trusted to be small: a manifest, a tag list, an error body or a
    token answer of 100 MiB (or a gzip bomb) costs at most `limit` bytes of memory.
    `decode=False` keeps a Content-Encoding as sent: a blob's digest names its bytes as stored.
    """
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit and not truncate:
        response.close()
        raise RegistryError(f"{what} larger than {limit} bytes refused")
    pace = Pace(window, what)
    parts: list[bytes] = []
    total = 0
    try:
        while total <= limit:
            piece = response.raw.read1(min(RECEIVE, limit + 1 - total), decode_content=decode)
            if not piece:
                break
            parts.append(piece)
            total += len(piece)
            pace.add(len(piece))
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        response.close()
        if isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError):
            raise TransportError(f"{what}: timed out after {total} bytes (no byte in "
                                 f"{window:g} s)") from None
        raise TransportError(f"{what}: {type(exc).__name__} after {total} bytes") from None
    except BaseException:
        response.close()
        raise
    body = b"".join(parts)
    if total > limit:
        response.close()  # the rest stays unread: this connection cannot be reused
        if not truncate:
            raise RegistryError(f"{what} larger than {limit} bytes refused")
        return body[:limit]
    response.raw.release_conn()  # read to its end: the connection goes back to the pool
    return body


def preload(response: requests.Response, limit: int, window: float, what: str, *,
            truncate: bool = False) -> None:
    """Make `response.content` (and `.json()`, `.text`) the capped body of a streamed answer."""
    if response._content_consumed:
        return
    body = read_capped(response, limit, window, what, truncate=truncate)
    response._content = body
    response._content_consumed = True


def read_block(response: requests.Response, want: int, pace: Pace) -> bytes:
    """Up to `want` (at most PIECE) bytes of a streamed body, from socket reads of at most
    RECEIVE bytes, each counted by `pace` so that a source dripping its bytes is cut off.

    Why these sizes, measured with `migrator sync` (28 concurrent uploads): a read allocates
    the size it asks for and shrinks to what arrived, so big reads of a slow source (a WAN:
    16 KiB pieces) leave holes in the heap: 74 MiB peak RSS with reads of 256 KiB, 58 MiB with
    64 KiB; handing over blocks of 1 MiB held pieces and their join, 76 MiB.
    """
    parts: list[bytes] = []
    got = 0
    want = min(want, PIECE)
    while got < want:
        piece = response.raw.read1(min(want - got, RECEIVE), decode_content=False)
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
        pace.add(len(piece))
    return parts[0] if len(parts) == 1 else b"".join(parts)


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
        window: float = default("read_timeout"),
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
        self._pace = Pace(window, f"source stream of {digest}")
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
            data = read_block(self.response, want, self._pace)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransportError(
                f"source stream of {self.digest} broke after about {self.received} bytes: "
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
