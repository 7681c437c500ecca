"""Chaos against the fleet: workers killed with SIGKILL over and over, Redis restarted and
Redis flushed mid-run, two producers racing with the same rules, a target tag changed by
someone else during a run, and a connection that stalls for ever.

Real worker processes, real registries, a real Redis: the shared one on DB 10 only, or a
redis-server of the test's own where Redis itself is the victim (the shared one is never
restarted or flushed). Every wait is bounded; a run that does not end in time fails the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from migrator.cli import EXIT_OK, main
from tests.integration.test_fleet import Fleet, uploads_by_digest
from tests.support.images import (
    PushedImage,
    audit_copy,
    make_layer,
    push_image,
    push_index,
)
from tests.support.proxy import BLOB, MANIFEST, FaultProxy
from tests.support.registry import RunningRegistry

REDIS_URL = "redis://127.0.0.1:6379/10"  # this file's database on the shared Redis
KILLS = 20
SEED = 20240611
WAIT = 150.0  # the longest any run here may take: beyond it, something hangs
FAST = {
    "MIGRATOR_CONNECT_TIMEOUT": "2",
    "MIGRATOR_READ_TIMEOUT": "2",
    "MIGRATOR_BACKOFF_INITIAL": "0.05",
    "MIGRATOR_BACKOFF_MAX": "0.5",
    "MIGRATOR_VISIBILITY_TIMEOUT": "5",  # a killed worker's task is back after 5 s
    "MIGRATOR_LOCK_TTL": "2",
}


class ChaosFleet(Fleet):
    """A Fleet whose workers may be started and killed from two threads at once."""

    def __init__(self, workdir: Path, capsys: pytest.CaptureFixture[str], redis_url: str
                 ) -> None:
        super().__init__(workdir, capsys, redis_url)
        self.env.update(FAST)
        self.lock = threading.Lock()
        self.ready: list[str] = []
        self.started = 0

    def spawn(self) -> None:
        """Start one more worker and wait until it is ready (call from any thread)."""
        with self.lock:
            self.started += 1
            name = f"w{self.started}"
        super().start_worker(name, concurrency=2)
        with self.lock:
            self.ready.append(name)

    def kill_one(self, rng: random.Random) -> str | None:
        with self.lock:
            if not self.ready:
                return None
            # A worker with a copy in hand when there is one: that is the kill that matters.
            busy = [name for name in self.ready if self.busy(name)] or self.ready
            name = busy[rng.randrange(len(busy))]
            self.ready.remove(name)
        self.kill(name)
        return name

    def busy(self, name: str) -> bool:
        """Whether the worker had a task in hand when it died (received, not yet ended)."""
        lines = [line for line in (self.dir / f"{name}.log").read_text(errors="replace")
                 .splitlines() if "Task migrator.sync_image[" in line]
        received = sum(1 for line in lines if line.endswith("received"))
        ended = sum(1 for line in lines if " succeeded in " in line or " retry: " in line
                    or "] raised " in line)
        return received > ended

    def enqueue_run(self, images: dict, auth: dict) -> str:
        self.write(images, auth)
        code, out, err = self.enqueue()
        assert code == EXIT_OK, err
        return out.strip().splitlines()[-1]

    def wait(self, run_id: str, *flags: str) -> tuple[int, str, str]:
        started = time.monotonic()
        code = main(["status", run_id, "--wait", "--timeout", str(WAIT), *flags], self.env)
        out, err = self.capsys.readouterr()
        assert time.monotonic() - started < WAIT + 10, "status --wait overran its timeout"
        return code, out, err


@pytest.fixture
def chaos(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[ChaosFleet]:
    fleet = ChaosFleet(tmp_path, capsys, REDIS_URL)
    fleet.redis.flushdb()
    yield fleet
    fleet.stop_all()
    fleet.redis.flushdb()
    fleet.redis.close()


class OwnRedis:
    """A redis-server of the test's own on a free port: the one these tests may break."""

    def __init__(self, workdir: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.dir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--dbfilename", "dump.rdb"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_timeout=2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            finally:
                client.close()

    def restart(self, down: float) -> None:
        """Stop keeping the data (SHUTDOWN SAVE writes it to disk), stay down, start again:
        a Redis pod restarted with persistence."""
        assert self.process is not None
        # The server closes the connection on its way out.
        with redis.Redis(port=self.port) as client, contextlib.suppress(redis.ConnectionError):
            client.shutdown(save=True)
        self.process.wait(timeout=10)
        time.sleep(down)
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    yield server
    server.stop()


def seed(registry: RunningRegistry, repositories: int, tags: int
         ) -> dict[tuple[str, str], PushedImage]:
    """`repositories × tags` images over two shared base layers, plus one two-platform index."""
    base = [make_layer(96 * 1024, 1), make_layer(64 * 1024, 2)]
    pushed = {}
    for r in range(repositories):
        for t in range(tags):
            pushed[(f"ns/app{r}", f"v{t}")] = push_image(
                registry, f"ns/app{r}", f"v{t}",
                layers=[*base, make_layer(8 * 1024, 100 + r * tags + t)])
    pushed[("ns/multi", "1")] = push_index(registry, "ns/multi", "1", media="oci", platforms=[
        ("linux", "amd64", [base[0], make_layer(8 * 1024, 900)]),
        ("linux", "arm64", [make_layer(8 * 1024, 901)])])
    return pushed


def rules(source_host: str, target_host: str, repositories: int) -> dict[str, str]:
    found = {f"{source_host}/ns/app{r}": f"{target_host}/copy/app{r}"
             for r in range(repositories)}
    found[f"{source_host}/ns/multi:1"] = f"{target_host}/copy/multi"
    return found


def auth(*hosts: str) -> dict:
    return {host: {"insecure": True} for host in hosts}


def assert_all_correct(target: RunningRegistry, pushed: dict) -> None:
    wrong = {f"{repository}:{tag}": state for (repository, tag), image in pushed.items()
             if (state := audit_copy(target, repository.replace("ns/", "copy/"), tag, image))}
    assert wrong == {}


def test_workers_killed_twenty_times_mid_run(chaos: ChaosFleet, source_registry,
                                             target_registry, fault_proxy) -> None:
    pushed = seed(source_registry, repositories=5, tags=5)
    proxy = fault_proxy(source_registry)
    proxy.delay(0.8, "GET", BLOB, None)  # every blob takes a while: kills land mid-copy
    for _ in range(3):
        chaos.spawn()
    run_id = chaos.enqueue_run(rules(proxy.host, target_registry.host, 5),
                               auth(proxy.host, target_registry.host))
    rng = random.Random(SEED)
    kills: list[tuple[str, bool]] = []
    spawners: list[threading.Thread] = []
    deadline = time.monotonic() + WAIT
    while len(kills) < KILLS and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.1, 0.7))
        name = chaos.kill_one(rng)
        if name is None:
            continue  # every worker is still starting
        kills.append((name, chaos.busy(name)))
        spawner = threading.Thread(target=chaos.spawn)  # its replacement boots meanwhile
        spawner.start()
        spawners.append(spawner)
    for spawner in spawners:
        spawner.join(timeout=60)
    assert len(kills) >= KILLS
    code, out, err = chaos.wait(run_id)
    # On failure: which images never ended, and what the live workers last said.
    unfinished = sorted(job.decode() for job in chaos.redis.sdiff(
        f"migrator:run:{run_id}:jobs", f"migrator:run:{run_id}:ok"))
    assert code == EXIT_OK, (err + out[-300:] + f"\nunfinished: {unfinished}\n"
                             + "".join(chaos.log(name)[-1500:] for name in chaos.ready))
    assert out.splitlines()[-1] == (
        f"Images({len(pushed)}) migration finished, 0 images tasks failed, "
        "0 tasks generate failed")
    assert_all_correct(target_registry, pushed)
    busy = sum(1 for _, was_busy in kills if was_busy)
    assert busy >= 3, kills  # kills in the middle of a copy, whose task must come back
    print(f"chaos: {len(kills)} kills ({busy} mid-task), {len(pushed)} images checked")


def _slow_source_fleet(tmp_path: Path, capsys: pytest.CaptureFixture[str], own_redis: OwnRedis,
                       source_registry: RunningRegistry, fault_proxy
                       ) -> tuple[dict, FaultProxy, ChaosFleet]:
    """9 images behind a proxy that slows every blob GET, and two workers on `own_redis`:
    a run of them is still copying when the test strikes."""
    pushed = seed(source_registry, repositories=3, tags=3)
    proxy = fault_proxy(source_registry)
    proxy.delay(0.3, "GET", BLOB, None)
    fleet = ChaosFleet(tmp_path, capsys, own_redis.url)
    try:
        fleet.spawn()
        fleet.spawn()
    except BaseException:
        fleet.stop_all()
        raise
    return pushed, proxy, fleet


def test_redis_restarted_mid_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 own_redis: OwnRedis, source_registry, target_registry,
                                 fault_proxy) -> None:
    pushed, proxy, fleet = _slow_source_fleet(tmp_path, capsys, own_redis, source_registry,
                                              fault_proxy)
    images = rules(proxy.host, target_registry.host, 3)
    try:
        run_id = fleet.enqueue_run(images, auth(proxy.host, target_registry.host))
        _wait_for(lambda: proxy.count("GET", "/blobs/") >= 6, "the copies never started")
        own_redis.restart(down=1.0)
        code, out, err = fleet.wait(run_id)
        assert code == EXIT_OK, err + out + fleet.log("w1") + fleet.log("w2")
        assert f"Images({len(pushed)}) migration finished, 0 images tasks failed" in out
        assert_all_correct(target_registry, pushed)
    finally:
        fleet.stop_all()


def test_redis_flushed_mid_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               own_redis: OwnRedis, source_registry, target_registry,
                               fault_proxy) -> None:
    """Everything in Redis is lost mid-run: the queue, the run, the record. What was written
    must be right; the lost run must not claim success; the same rules enqueued again end
    with every image right (the registry is the truth)."""
    pushed, proxy, fleet = _slow_source_fleet(tmp_path, capsys, own_redis, source_registry,
                                              fault_proxy)
    images = rules(proxy.host, target_registry.host, 3)
    try:
        run_id = fleet.enqueue_run(images, auth(proxy.host, target_registry.host))
        _wait_for(lambda: proxy.count("GET", "/blobs/") >= 6, "the copies never started")
        fleet.redis.flushall()  # our own server: nobody else's data
        time.sleep(3)  # the copies in flight end meanwhile
        for (repository, tag), image in pushed.items():
            state = audit_copy(target_registry, repository.replace("ns/", "copy/"), tag, image)
            assert state in (None, "absent"), f"{repository}:{tag}: {state}"
        code, out, _ = fleet.wait(run_id)
        assert code != EXIT_OK, out  # the run's record is gone: no claim of success
        second = fleet.enqueue_run(images, auth(proxy.host, target_registry.host))
        code, out, err = fleet.wait(second)
        assert code == EXIT_OK, err + out
        assert f"Images({len(pushed)}) migration finished, 0 images tasks failed" in out
        assert_all_correct(target_registry, pushed)
    finally:
        fleet.stop_all()


def test_two_producers_enqueue_the_same_rules_at_once(chaos: ChaosFleet, source_registry,
                                                      target_registry) -> None:
    """Each image right, and no blob uploaded twice (docs/fleet.md: "No blob copied twice into
    a registry"), counted in the target's own access log."""
    pushed = seed(source_registry, repositories=3, tags=3)
    chaos.spawn()
    chaos.spawn()
    chaos.write(rules(source_registry.host, target_registry.host, 3),
                auth(source_registry.host, target_registry.host))
    argv = ["-m", "migrator", "enqueue", "--images", str(chaos.dir / "images.json"),
            "--auth", str(chaos.dir / "auth.json")]
    env = {**os.environ, **chaos.env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    producers = [subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=env) for _ in range(2)]
    run_ids = []
    for producer in producers:
        out, err = producer.communicate(timeout=60)
        assert producer.returncode == EXIT_OK, err.decode()
        run_ids.append(out.decode().strip().splitlines()[-1])
    assert run_ids[0] != run_ids[1]
    for run_id in run_ids:
        code, out, err = chaos.wait(run_id)
        assert code == EXIT_OK, err + out
        assert f"Images({len(pushed)}) migration finished, 0 images tasks failed" in out
    assert_all_correct(target_registry, pushed)
    uploads = uploads_by_digest(target_registry)
    assert uploads and max(uploads.values()) == 1, uploads


def test_target_tag_changed_by_someone_else_during_a_run(chaos: ChaosFleet, source_registry,
                                                         target_registry, fault_proxy,
                                                         tmp_path: Path) -> None:
    """The tool mirrors: a run makes each target tag point at its source image. Someone else
    pushes another image to a tag while the run copies it (after the tool looked at the
    target, before its manifest PUT). Correct: the run's claim is true when it ends — the tag
    holds the source image, complete — and `migrator verify` (which asks the registries, not
    the record) agrees. When the other push lands after the run wrote the tag, the run's
    later claim must not hide it: verify reports the tag as different and a `migrator sync`
    puts the source image back."""
    pushed = seed(source_registry, repositories=1, tags=2)
    intruder = make_layer(8 * 1024, 4242)
    target_proxy = fault_proxy(target_registry)
    # The run's manifest PUT of copy/app0:v0 waits 2 s: the other push lands in that gap.
    target_proxy.delay(2.0, "PUT", r"/copy/app0/manifests/v0$", 1)
    chaos.spawn()
    images = {f"{source_registry.host}/ns/app0:v0,v1": f"{target_proxy.host}/copy/app0"}
    run_id = chaos.enqueue_run(images, auth(source_registry.host, target_proxy.host))
    _wait_for(lambda: bool(target_proxy.fired), "the run never reached the manifest PUT")
    push_image(target_registry, "copy/app0", "v0", layers=[intruder])
    code, out, err = chaos.wait(run_id)
    assert code == EXIT_OK, err + out
    assert audit_copy(target_registry, "copy/app0", "v0", pushed[("ns/app0", "v0")]) is None

    # After the run: someone overwrites v1. The fleet's record still says it is in sync.
    other = push_image(target_registry, "copy/app0", "v1", layers=[intruder])
    (tmp_path / "verify.json").write_text(json.dumps(images))
    (tmp_path / "auth.json").write_text(json.dumps(auth(source_registry.host,
                                                        target_proxy.host)))
    code = main(["verify", "--images", str(tmp_path / "verify.json"), "--auth",
                 str(tmp_path / "auth.json")], chaos.env)
    out, _ = chaos.capsys.readouterr()
    assert code != EXIT_OK and "differs" in out and "copy/app0:v1" in out, out
    code = main(["sync", "--images", str(tmp_path / "verify.json"), "--auth",
                 str(tmp_path / "auth.json"), "--state", str(tmp_path / "state"),
                 "--log", str(tmp_path / "sync.log")], chaos.env)
    out, _ = chaos.capsys.readouterr()
    assert code == EXIT_OK, out
    assert audit_copy(target_registry, "copy/app0", "v1", pushed[("ns/app0", "v1")]) is None
    assert other.digest != pushed[("ns/app0", "v1")].digest


def test_a_stalled_connection_ends_by_the_read_timeout_and_the_copy_is_retried(
        chaos: ChaosFleet, source_registry, target_registry, fault_proxy,
        tmp_path: Path) -> None:
    """The proxy goes silent for ever in the middle of a blob and before a manifest's answer:
    neither `migrator sync` nor a worker may wait for it; both time out and try again."""
    pushed = seed(source_registry, repositories=1, tags=1)
    image = pushed[("ns/app0", "v0")]
    for executor in ("sync", "fleet"):
        proxy = fault_proxy(source_registry)
        proxy.stall("GET", image.blobs[1], 1, after_bytes=1000)  # a 96 KiB layer
        proxy.stall("GET", MANIFEST, 1)
        images = {f"{proxy.host}/ns/app0:v0": f"{target_registry.host}/{executor}/app0"}
        started = time.monotonic()
        if executor == "sync":
            (tmp_path / "images.json").write_text(json.dumps(images))
            (tmp_path / "auth.json").write_text(json.dumps(auth(proxy.host,
                                                                target_registry.host)))
            code = main(["sync", "--images", str(tmp_path / "images.json"), "--auth",
                         str(tmp_path / "auth.json"), "--no-state", "--retries", "0",
                         "--log", str(tmp_path / "sync.log")], chaos.env)
            out, _ = chaos.capsys.readouterr()
        else:
            chaos.spawn()
            code, out, _ = chaos.wait(chaos.enqueue_run(images, auth(proxy.host,
                                                                     target_registry.host)))
        elapsed = time.monotonic() - started
        assert code == EXIT_OK, out
        assert len(proxy.fired) == 2  # both stalls happened...
        assert elapsed < 30, elapsed  # ...and cost a read timeout each, not for ever
        assert audit_copy(target_registry, f"{executor}/app0", "v0", image) is None
        gets = [path for method, path, _ in proxy.requests if method == "GET"]
        for stalled in proxy.fired:  # each stalled request was sent again, and answered
            assert gets.count(stalled.path) >= 2, (stalled, gets)
        proxy.stop()


def _wait_for(condition, message: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.05)

