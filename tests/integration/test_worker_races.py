"""Races between concurrent executions in one worker process (`--pool threads`) and between
firings of a schedule, with the task bodies run by Celery's own eager tracer on the real Redis
and real registries."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

import workers.tasks as tasks
from migrator.errors import RetryableError
from tests.support.proxy import MANIFEST, FaultProxy
from workers.schedule import Schedule

REDIS_URL = "redis://127.0.0.1:6379/0"  # keys under a prefix of the test's own, never flushed


@pytest.fixture
def worker_env(monkeypatch, tmp_path) -> Iterator[tuple[redis.Redis, str]]:
    """The worker's context rebuilt from an environment of this test's own: its Redis keys
    under a fresh prefix (deleted afterwards), one HTTP try per request."""
    prefix = f"test:{uuid.uuid4().hex}:"
    for name in [name for name in os.environ if name.startswith("MIGRATOR_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MIGRATOR_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("MIGRATOR_REDIS_PREFIX", prefix)
    monkeypatch.setenv("MIGRATOR_HTTP_ATTEMPTS", "1")
    monkeypatch.setattr(tasks, "_context", None)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        yield client, prefix
    finally:
        if tasks._context is not None:
            tasks._context.blob_pool.shutdown(wait=False)
            tasks._context.redis.close()
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_concurrent_executions_each_retry_as_often_as_their_own_run_says(
        worker_env, monkeypatch, tmp_path, source_registry, target_registry) -> None:
    """Two copies in two threads of one worker, one from a run with `--retries 0`, one with
    `--retries 5`, both against a source answering 503: each is tried as often as its own
    run says (1 and 6 times), whatever the other set meanwhile."""
    proxy = FaultProxy(source_registry.url)
    try:
        proxy.status(503, "GET", MANIFEST, times=None)
        auth = tmp_path / "auth.json"
        auth.write_text(json.dumps({proxy.host: {"insecure": True},
                                    target_registry.host: {"insecure": True}}))
        monkeypatch.setenv("MIGRATOR_AUTH_FILE", str(auth))

        # Both executions start before either fails: the second ("B") begins only once the
        # first ("A") is inside its body, and A goes on only once B is inside too.
        a_in, b_in = threading.Event(), threading.Event()
        real_context = tasks.context

        def context() -> tasks.WorkerContext:
            name = threading.current_thread().name
            if name == "A" and not a_in.is_set():
                a_in.set()
                b_in.wait(10)
            elif name == "B":
                b_in.set()
            return real_context()

        monkeypatch.setattr(tasks, "context", context)
        results: dict[str, object] = {}

        def execute(name: str, repository: str, retries: int) -> None:
            results[name] = tasks.sync_image.apply(
                args=["run-1", f"{proxy.host}/ns/{repository}:1",
                      f"{target_registry.host}/t/{repository}"],
                kwargs={"retries": retries})

        first = threading.Thread(target=execute, args=("A", "a", 0), name="A")
        second = threading.Thread(target=execute, args=("B", "b", 5), name="B")
        first.start()
        assert a_in.wait(10)
        second.start()
        first.join(60)
        second.join(60)

        for result in results.values():
            assert result.state == "FAILURE"  # type: ignore[attr-defined]
            assert isinstance(result.result, RetryableError)  # type: ignore[attr-defined]
        tries = {repository: proxy.count("GET", f"/v2/ns/{repository}/manifests/")
                 for repository in ("a", "b")}
        assert tries == {"a": 1, "b": 6}
    finally:
        proxy.stop()


def test_a_firing_that_outlived_its_lock_leaves_the_next_firings_lock(
        worker_env, monkeypatch, tmp_path) -> None:
    """A firing slower than its lock's TTL: the lock expires, the next firing takes it, and
    the slow firing's end must not delete the lock it no longer owns."""
    client, prefix = worker_env
    lock_key = f"{prefix}schedule:nightly:run:lock"
    images = tmp_path / "images.json"
    images.write_text(json.dumps({"127.0.0.1:9/ns/app:1": "127.0.0.1:9/copy/app"}))
    sent: list[str] = []

    def send(name: str, args: list, kwargs: dict) -> None:
        # Midway through the firing its lock's TTL runs out and the next firing takes it.
        assert client.exists(lock_key)
        client.pexpire(lock_key, 1)
        deadline = time.monotonic() + 5
        while client.exists(lock_key) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.set(lock_key, "the next firing", nx=True, ex=60)
        sent.append(name)  # captured instead of sent: the module's app may use another broker

    monkeypatch.setattr(tasks, "send", send)
    schedule = Schedule(name="nightly", images=str(images), interval=1.0).model_dump(
        exclude_none=True)
    assert tasks.start_scheduled_run(schedule)
    assert sent == ["migrator.sync_image"]
    assert client.get(lock_key) == b"the next firing"

    # A firing that ends in time releases its own lock.
    monkeypatch.setattr(tasks, "send", lambda name, args, kwargs: sent.append(name))
    daily = Schedule(name="daily", images=str(images), interval=1.0).model_dump(
        exclude_none=True)
    assert tasks.start_scheduled_run(daily)
    assert len(sent) == 2 and not client.exists(f"{prefix}schedule:daily:run:lock")
