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
    test_manifest_records_replace,
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


def test_the_holder_of_a_blob_lock_learns_that_another_worker_took_it(ledger, redis_client,
                                                                     prefix, caplog):
    key = f"{prefix}lock:reg:{DIGEST}"
    with ledger.blob_lock("reg", DIGEST) as held:
        assert not held.lost()
        redis_client.set(key, "another worker", px=60_000)  # expired, then taken
        assert held.lost()
    assert redis_client.get(key) == b"another worker"  # not released by who lost it
    assert [record.levelname for record in caplog.records
            if "lost the lock" in record.getMessage()] == ["WARNING"]


def test_a_copy_whose_blob_lock_ran_out_asks_the_target_instead_of_the_ledger(
        redis_client, prefix, source_registry, target_registry, caplog):
    """The lock on a layer runs out under the copy holding it (a pause longer than the TTL)
    and another worker takes it; the ledger then names the target repository as holding the
    layer, which the holder can no longer vouch for (here it is wrong: the target lacks it).
    The renewer logs the loss, naming registry and digest, and the copy asks the target and
    uploads, instead of skipping and having its manifest PUT refused."""
    import logging
    import threading

    from migrator.auth import AuthFile, RegistryAuth
    from migrator.copy import ClientPool, Clients, copy_image
    from migrator.fleet import job_from_args
    from migrator.settings import load_settings
    from tests.support.images import blob_exists, make_layer, push_image

    caplog.set_level(logging.WARNING, logger="migrator")
    image = push_image(source_registry, "ns/app", "1", layers=[make_layer(32 * 1024, 51)])
    layer = image.blobs[-1]
    lock_key = f"{prefix}lock:{target_registry.host}:{layer}"
    loss_logged = threading.Event()

    class Spotter(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "lost the lock" in record.getMessage():
                loss_logged.set()

    class PausedHolder(RedisLedger):
        taken = False
        logged_before_asked = False  # then the renewer told, not the holder's own question

        def blob_repositories(self, registry: str, digest: str) -> set[str]:
            if digest == layer and not self.taken and self.redis.exists(lock_key):
                self.taken = True  # inside the lock, the holder's first look at the ledger
                self.redis.set(lock_key, "another worker", px=60_000)
                self.add_blob(registry, digest, "t/app")
                # The renewer (every TTL/3) finds out, or never does.
                self.logged_before_asked = loss_logged.wait(3)
            return super().blob_repositories(registry, digest)

    spotter = Spotter()
    logging.getLogger("migrator.ledger").addHandler(spotter)
    try:
        settings = load_settings({})
        auth = AuthFile("auth.json", {r.host: RegistryAuth(insecure=True)
                                      for r in (source_registry, target_registry)})
        ledger = PausedHolder(redis_client, prefix=prefix, lock_ttl=0.6)
        mark = target_registry.mark()
        result = copy_image(job_from_args(f"{source_registry.host}/ns/app:1",
                                          f"{target_registry.host}/t/app"),
                            clients=Clients(auth, ClientPool(settings)), ledger=ledger,
                            settings=settings)
    finally:
        logging.getLogger("migrator.ledger").removeHandler(spotter)
    assert ledger.taken and ledger.logged_before_asked
    lost = [record for record in caplog.records if "lost the lock" in record.getMessage()]
    assert len(lost) == 1 and lost[0].levelname == "WARNING"
    assert target_registry.host in lost[0].getMessage() and layer in lost[0].getMessage()
    assert (result.blobs_copied, result.blobs_skipped, result.blobs_mounted) == (2, 0, 0)
    assert [r for r in target_registry.requests(mark)
            if r[0] == "PUT" and "/manifests/" in r[1] and r[2] != 201] == []  # no refusal
    assert blob_exists(target_registry, "t/app", layer)
    assert redis_client.get(lock_key) == b"another worker"  # the new holder's, left alone
