"""What a fleet run leaves in Redis: under 1 KiB per tag once it is finished, the lists that only
served to send work again dropped at once, the rest expiring on the documented schedule, and
`migrator status` of the finished run still whole. Real Redis (a database of this module's
own), real registries, a real worker process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from migrator.cli import EXIT_FAILED, main
from migrator.ledger import ManifestRecord, RedisLedger
from migrator.runs import SUFFIXES, RunStore
from migrator.settings import default
from tests.integration.test_fleet import Fleet, insecure
from tests.support.images import make_layer, push_image
from tests.support.redisdb import flushed_db

REDIS_URL = "redis://127.0.0.1:6379/2"
SHA = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


@pytest.fixture
def db() -> Iterator[redis.Redis]:
    with flushed_db(REDIS_URL) as client:
        yield client


@pytest.fixture
def fleet(tmp_path: Path, capsys: pytest.CaptureFixture[str], db: redis.Redis
          ) -> Iterator[Fleet]:
    instance = Fleet(tmp_path, capsys, REDIS_URL)
    yield instance
    instance.stop_all()
    instance.redis.close()


def per_tag_bytes(client: redis.Redis, tags: int) -> float:
    """MEMORY USAGE of every key a run and the ledger leave, per tag: not the worker's lease,
    the reaper's marks or the broker's bindings, which do not grow with the tags."""
    fixed = (b"migrator:worker", b"migrator:reaper", b"_kombu", b"unacked")
    total = sum(client.memory_usage(key, samples=0) or 0
                for key in client.scan_iter(count=1000) if not key.startswith(fixed))
    return total / tags


def test_a_finished_fleet_run_keeps_under_a_kib_per_tag_and_its_status(
        fleet, source_registry, target_registry, tmp_path):
    src, dst = source_registry.host, target_registry.host
    shared = make_layer(1024, 1)
    repositories, tags = 2, 20
    for r in range(repositories):
        for t in range(tags):
            push_image(source_registry, f"ns/app{r}", f"v{t}",
                       layers=[shared, make_layer(1024, 100 + r * tags + t)])
    rules = {f"{src}/ns/app{r}": f"{dst}/copy/app{r}" for r in range(repositories)}
    rules[f"{src}/ns/missing:1"] = f"{dst}/copy/missing"  # fails: its failure must stay
    fleet.write(rules, insecure(source_registry, target_registry))
    fleet.start_worker("w1")
    code, out, err = fleet.enqueue("--wait", "--timeout", "120")
    assert code == EXIT_FAILED, err + fleet.log("w1")
    run_id = out.splitlines()[0].strip()
    images = repositories * tags + 1

    assert per_tag_bytes(fleet.redis, images) <= 1024
    store = RunStore(fleet.redis)
    for suffix in (":jobs", ":tasks", ":expands"):  # only needed to send work again
        assert not fleet.redis.exists(store.key(run_id, suffix)), suffix
    for suffix in SUFFIXES:
        ttl = fleet.redis.ttl(store.key(run_id, suffix))
        assert ttl == -2 or 0 < ttl <= default("finished_run_ttl"), (suffix, ttl)

    state = store.state(run_id)
    assert state is not None and state.finished and state.total == images
    assert state.succeeded == images - 1 and list(state.failed) == [
        f"{src}/ns/missing:1 -> {dst}/copy/missing:1"]

    succeeded, failed = tmp_path / "ok.json", tmp_path / "failed.json"
    code = main(["status", run_id, "--output-success", str(succeeded),
                 "--output-failed", str(failed)], fleet.env)
    out, err = fleet.capsys.readouterr()
    assert code == EXIT_FAILED
    assert out.splitlines()[-1] == (
        f"Images({images}) migration finished, 1 images tasks failed, 0 tasks generate failed")
    assert "ns/missing:1" in err and "ns/missing" in failed.read_text()
    assert succeeded.read_text().count(f"{dst}/copy/app") == images - 1


def test_the_ending_that_finishes_a_run_compacts_it(db):
    store = RunStore(db, ttl=3600, finished_ttl=600)
    run_id = store.create(name="t", retries=0, jobs=["a -> b", "c -> d"], expands=[])
    store.remember_tasks(run_id, {"a -> b": ("sync", [], {}), "c -> d": ("sync", [], {})})
    assert store.succeeded(run_id, "a -> b", 10)
    assert db.exists(store.key(run_id, ":jobs")) and db.exists(store.key(run_id, ":tasks"))
    assert db.ttl(store.key(run_id, ":ok")) > 600

    store.failed(run_id, "c -> d", "HTTP 404")
    state = store.state(run_id)
    assert state is not None and state.finished and state.total == 2 and state.bytes == 10
    assert state.failed == {"c -> d": "HTTP 404"}
    assert not db.exists(store.key(run_id, ":jobs"), store.key(run_id, ":tasks"))
    assert store.unfinished_tasks(run_id) == []
    for suffix in ("", ":ok", ":failed", ":wake"):
        assert 0 < db.ttl(store.key(run_id, suffix)) <= 600, suffix

    # A late duplicate neither brings the lists back nor keeps the run longer.
    store.succeeded(run_id, "a -> b")
    store.failed(run_id, "a -> b", "a redelivery that failed")
    assert db.ttl(store.key(run_id, ":ok")) <= 600
    assert store.state(run_id).total == 2 and "a -> b" not in store.state(run_id).failed


def test_a_cancel_or_the_reapers_retire_compacts_a_finished_run(db):
    store = RunStore(db, ttl=3600, finished_ttl=600)
    cancelled = store.create(name="t", retries=0, jobs=["a -> b"], expands=["rule"])
    assert store.cancel(cancelled)
    assert store.state(cancelled).finished and store.state(cancelled).total == 1
    assert not db.exists(store.key(cancelled, ":jobs"), store.key(cancelled, ":expands"))

    empty = store.create(name="t", retries=0, jobs=[], expands=[])  # finished as created
    store.retire(empty)
    assert db.hget(store.key(empty), "finished") is not None
    assert 0 < db.ttl(store.key(empty)) <= 600

    running = store.create(name="t", retries=0, jobs=["a -> b"], expands=[])
    store.retire(running)  # not finished: nothing is dropped
    assert db.exists(store.key(running, ":jobs")) and not db.hexists(store.key(running),
                                                                      "finished")


def test_an_ending_of_a_vanished_run_writes_nothing(db):
    store = RunStore(db)
    assert not store.succeeded("gone", "a -> b", 5)
    assert not store.skipped("gone", "a -> b", "no platform")
    store.failed("gone", "a -> b", "x")
    store.expanded("gone", "rule", "x")
    store.up_to_date("gone", ["a -> b"])
    assert not store.cancel("gone")
    assert db.dbsize() == 0


def test_the_run_index_forgets_runs_whose_records_expired(db):
    store = RunStore(db, ttl=3600)
    db.zadd("migrator:runs", {"ancient": time.time() - 7200, "recent": time.time() - 60})
    store.create(name="t", retries=0, jobs=[], expands=[])
    assert [member for member in db.zrange("migrator:runs", 0, -1)
            if member in (b"ancient", b"recent")] == [b"recent"]


def test_manifest_records_of_a_repository_share_one_compact_hash(db):
    ledger = RedisLedger(db)
    for tag in range(100):
        ledger.record_manifest(f"reg:5000/ns/app:v{tag}", ManifestRecord(SHA, SHA))
    assert db.dbsize() == 1
    assert db.memory_usage("migrator:manifests:reg:5000/ns/app", samples=0) / 100 < 100
    assert ledger.manifest("reg:5000/ns/app:v7") == ManifestRecord(SHA, SHA)
    assert ledger.manifest("reg:5000/ns/app:v100") is None
    assert ledger.manifest("reg:5000/ns/other:v7") is None

    # A filtered index differs from its source; by-digest and filtered names are their own.
    ledger.record_manifest("reg:5000/ns/app:v1 platforms=linux/amd64",
                           ManifestRecord(SHA, OTHER))
    ledger.record_manifest(f"reg:5000/ns/app@{SHA}", ManifestRecord(SHA, SHA))
    assert ledger.manifest("reg:5000/ns/app:v1 platforms=linux/amd64") == ManifestRecord(
        SHA, OTHER)
    assert ledger.manifest("reg:5000/ns/app:v1") == ManifestRecord(SHA, SHA)
    assert ledger.manifest(f"reg:5000/ns/app@{SHA}") == ManifestRecord(SHA, SHA)
    assert db.dbsize() == 1
    # A value it cannot read is no record (a cache: the registry answers instead).
    db.hset("migrator:manifests:reg:5000/ns/app", ":broken", "xyz")
    assert ledger.manifest("reg:5000/ns/app:broken") is None
