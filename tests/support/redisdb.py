"""A Redis database of a test's own on the local server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis


@contextmanager
def flushed_db(url: str) -> Iterator[redis.Redis]:
    """A client of the database in `url`, emptied before and after (FLUSHDB, never FLUSHALL)."""
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()
