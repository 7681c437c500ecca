"""The Redis ledger against the real Redis: the same contract as the embedded ledgers, plus a
fleet-wide lock that a crashed holder cannot keep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import redis

from migrator.ledger import RedisLedger
from tests.unit.test_ledger import (  # noqa: F401  (the shared contract, run here on Redis)
    DIGEST,
    test_blob_lock_is_single_flight_per_digest,
    test_blobs_are_recorded_per_repository_and_forgotten,
    test_manifest_records_replace_and_forget,
)

REDIS_URL = os.environ.get("MIGRATOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_client():
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def prefix(redis_client):
    """A key prefix of this test's own; its keys are deleted afterwards (never FLUSHALL)."""
    value = f"test:{uuid.uuid4().hex}:"
    yield value
    keys = list(redis_client.scan_iter(f"{value}*"))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def ledger(redis_client, prefix):
    return RedisLedger(redis_client, prefix=prefix, lock_ttl=2.0)


def test_two_ledgers_share_what_they_record(redis_client, prefix):
    first = RedisLedger(redis_client, prefix=prefix)
    second = RedisLedger(redis.Redis.from_url(REDIS_URL), prefix=prefix)
    first.add_blob("reg", DIGEST, "ns/a")
    assert second.blob_repositories("reg", DIGEST) == {"ns/a"}


def test_lock_is_renewed_while_held(ledger, redis_client, prefix):
    key = f"{prefix}lock:reg:{DIGEST}"
    with ledger.blob_lock("reg", DIGEST):
        time.sleep(3.0)  # longer than the 2 s TTL: only renewal keeps it
        assert redis_client.exists(key)
    assert not redis_client.exists(key)


def test_a_crashed_holder_loses_the_lock_when_its_ttl_ends(ledger, prefix):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time, redis
        from migrator.ledger import RedisLedger
        ledger = RedisLedger(redis.Redis.from_url({REDIS_URL!r}), prefix={prefix!r}, lock_ttl=2.0)
        with ledger.blob_lock("reg", {DIGEST!r}):
            print("held", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        started = time.monotonic()
        with ledger.blob_lock("reg", DIGEST):
            waited = time.monotonic() - started
        assert waited < 5.0
    finally:
        holder.kill()


def test_threads_of_one_process_queue_locally_not_on_redis(ledger, redis_client):
    """While one thread holds a blob's lock for a second, another thread of the same process
    waits on a local lock: it does not poll Redis (SET NX every 50 ms would be ~20 tries)."""
    import threading

    def set_calls() -> int:
        return int(redis_client.info("commandstats").get("cmdstat_set", {}).get("calls", 0))

    held = threading.Event()

    def hold() -> None:
        with ledger.blob_lock("reg", DIGEST):
            held.set()
            time.sleep(1.0)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    before = set_calls()
    with ledger.blob_lock("reg", DIGEST):
        pass
    holder.join()
    assert set_calls() - before <= 3  # the waiter's one SET NX, with room for a stray client
