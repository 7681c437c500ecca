"""A polite fleet: request-rate limits and 429 pauses shared by every worker through Redis,
quota headers read before the quota runs out, proxies per registry, one `/v2/` ping per
registry and process.

The registry's patience is played by a front before a real registry that counts what reaches
it: it answers 429 above R requests in any second, or hands out quota headers.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from migrator.cli import EXIT_OK, main
from migrator.throttle import Limits as ThrottleLimits
from migrator.throttle import LocalThrottle, RedisThrottle, parse_rate_limit
from tests.integration.test_fleet import Fleet
from tests.support.front import Front
from tests.support.images import get_manifest, make_layer, push_image
from tests.support.redisdb import flushed_db

POLITE_DB = 6
MANIFESTS = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json"])
REDIS_URL = f"redis://127.0.0.1:6379/{POLITE_DB}"


@pytest.fixture
def store() -> Iterator[redis.Redis]:
    with flushed_db(REDIS_URL) as client:
        yield client


class Impatient:
    """An answer hook: 429 for a request that would make more than `limit` in the last
    second (all of them, when `limit` is 0), or for the requests `refuse_at` names."""

    def __init__(self, limit: int, retry_after: str | None = None,
                 refuse_at: tuple[int, ...] = ()) -> None:
        self.limit = limit
        self.retry_after = retry_after
        self.refuse_at = refuse_at
        self.arrivals: list[float] = []  # every request, answered or refused
        self.refused: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, method: str, path: str) -> tuple[int, dict[str, str], bytes] | None:
        with self._lock:
            now = time.monotonic()
            self.arrivals.append(now)
            recent = sum(1 for t in self.arrivals[:-1] if now - t < 1.0)
            if (self.limit and recent >= self.limit) or len(self.arrivals) in self.refuse_at:
                self.refused.append(now)
                headers = {"Content-Type": "application/json"}
                if self.retry_after is not None:
                    headers["Retry-After"] = self.retry_after
                return 429, headers, b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow"}]}'
        return None

    def busiest_second(self) -> int:
        return max(sum(1 for t in self.arrivals if start <= t < start + 1.0)
                   for start in self.arrivals)


def seed(source, repositories: int = 3, tags: int = 4) -> dict[tuple[str, str], str]:
    base = make_layer(64 * 1024, 1)
    pushed = {}
    for r in range(repositories):
        for t in range(tags):
            image = push_image(source, f"ns/app{r}", f"v{t}",
                               layers=[base, make_layer(16 * 1024, 10 + r * tags + t)])
            pushed[(f"ns/app{r}", f"v{t}")] = image.digest
    return pushed


def test_a_fleet_of_two_stays_under_the_registry_rate(tmp_path: Path, capsys, store,
                                                      source_registry, target_registry) -> None:
    pushed = seed(source_registry)
    impatient = Impatient(limit=25)
    front = Front(target_registry.url, impatient)
    fleet = Fleet(tmp_path, capsys, redis_url=REDIS_URL)
    try:
        fleet.write({f"{source_registry.host}/ns/app{r}": f"{front.host}/copy/app{r}"
                     for r in range(3)},
                    {source_registry.host: {"insecure": True},
                     front.host: {"insecure": True, "requests_per_second": 20}})
        fleet.start_worker("w1")
        fleet.start_worker("w2")
        code, out, _ = fleet.enqueue("--wait", "--timeout", "120")
        assert code == EXIT_OK, out + fleet.log("w1") + fleet.log("w2")
    finally:
        fleet.stop_all()
        front.close()
    assert impatient.refused == []  # never above 25 in a second: no 429 at all
    assert impatient.busiest_second() <= 22
    assert len(impatient.arrivals) > 60  # enough requests for the limit to matter
    for (repository, tag), digest in pushed.items():
        assert get_manifest(target_registry, repository.replace("ns/", "copy/"), tag)[2] == digest
    both = [name for name in ("w1", "w2") if "succeeded" in fleet.log(name)]
    assert both == ["w1", "w2"]


@pytest.mark.parametrize("retry_after", ["2", None])
def test_a_429_pauses_the_whole_fleet(tmp_path: Path, capsys, store, source_registry,
                                      target_registry, retry_after: str | None) -> None:
    pushed = seed(source_registry)
    impatient = Impatient(limit=0, retry_after=retry_after, refuse_at=(40,))
    front = Front(target_registry.url, impatient)
    fleet = Fleet(tmp_path, capsys, redis_url=REDIS_URL)
    environ = {"MIGRATOR_BACKOFF_INITIAL": "1.5", "MIGRATOR_BACKOFF_MAX": "1.5"}
    try:
        fleet.write({f"{source_registry.host}/ns/app{r}": f"{front.host}/copy/app{r}"
                     for r in range(3)},
                    {source_registry.host: {"insecure": True}, front.host: {"insecure": True}})
        fleet.start_worker("w1", extra_env=environ)
        fleet.start_worker("w2", extra_env=environ)
        code, out, _ = fleet.enqueue("--wait", "--timeout", "120")
        assert code == EXIT_OK, out + fleet.log("w1") + fleet.log("w2")
    finally:
        fleet.stop_all()
        front.close()
    assert len(impatient.refused) == 1
    refused = impatient.refused[0]
    # Requests already on their way may land just after the 429; then nothing, from either
    # worker, until the pause ends: 2 s (Retry-After), or 0.75–1.5 s (backoff with jitter).
    quiet = 2.0 if retry_after else 0.75
    during = [t - refused for t in impatient.arrivals if refused + 0.3 < t < refused + quiet - 0.05]
    assert during == []
    assert any(t > refused + quiet - 0.05 for t in impatient.arrivals)
    for (repository, tag), digest in pushed.items():
        assert get_manifest(target_registry, repository.replace("ns/", "copy/"), tag)[2] == digest


def quota_front(upstream, remaining: list[int], window: int = 40,
                seen: list[tuple[float, str, str]] | None = None) -> Front:
    """A front that hands out Docker Hub's quota headers on manifest answers, counting down;
    `seen` collects (time, method, path) of every request."""
    import requests

    def quota(method: str, path: str):
        if seen is not None:
            seen.append((time.monotonic(), method, path))
        with requests.Session() as session:
            session.trust_env = False
            upstream_answer = session.request(method, upstream.url + path, timeout=10,
                                              allow_redirects=False,
                                              headers={"Accept": MANIFESTS})
        headers = {k: v for k, v in upstream_answer.headers.items()
                   if k.lower() not in ("content-length", "transfer-encoding", "connection")}
        if "/manifests/" in path:
            remaining[0] = max(0, remaining[0] - 1)
            headers["RateLimit-Limit"] = f"100;w={window}"
            headers["RateLimit-Remaining"] = f"{remaining[0]};w={window}"
        return upstream_answer.status_code, headers, upstream_answer.content

    return Front(upstream.url, quota)


def test_quota_headers_pause_before_the_quota_runs_out(tmp_path: Path, source_registry,
                                                       target_registry) -> None:
    """Docker Hub announces its pull quota on manifest answers; with 5 left (the reserve),
    `migrator sync` waits for the window to give some back instead of running into 429s."""
    push_image(source_registry, "ns/app", "v1", layers=[make_layer(16 * 1024, 1)])
    push_image(source_registry, "ns/app", "v2", layers=[make_layer(16 * 1024, 2)])
    seen: list[tuple[float, str, str]] = []
    front = quota_front(source_registry, [6], seen=seen)
    try:
        (tmp_path / "images.json").write_text(json.dumps(
            {f"{front.host}/ns/app:v1,v2": f"{target_registry.host}/copy/app"}))
        (tmp_path / "auth.json").write_text(json.dumps(
            {front.host: {"insecure": True}, target_registry.host: {"insecure": True}}))
        log = tmp_path / "sync.log"
        code = main(["sync", "--images", str(tmp_path / "images.json"), "--auth",
                     str(tmp_path / "auth.json"), "--no-state", "--log", str(log),
                     "-w", "1"], {})
    finally:
        front.close()
    assert code == EXIT_OK
    text = log.read_text()
    # 5 left of 100 per 40 s: 0.4 s a request, one more than the reserve → 0.4 s pause
    assert "pausing requests for 0.4 s (quota: 5 of 100 requests left per 40 s)" in text
    first = next(i for i, (_, _, path) in enumerate(seen) if "/manifests/" in path)
    assert seen[first + 1][0] - seen[first][0] >= 0.35  # the next request waited the pause


def test_the_fleet_says_when_it_pauses_for_a_quota(tmp_path: Path, capsys, store,
                                                   source_registry, target_registry) -> None:
    push_image(source_registry, "ns/app", "v1", layers=[make_layer(16 * 1024, 1)])
    front = quota_front(source_registry, [2])  # 1 left after the first manifest: 2 s pause
    fleet = Fleet(tmp_path, capsys, redis_url=REDIS_URL)
    try:
        fleet.write({f"{front.host}/ns/app:v1": f"{target_registry.host}/copy/app"},
                    {front.host: {"insecure": True}, target_registry.host: {"insecure": True}})
        fleet.start_worker("w1")
        code, out, _ = fleet.enqueue("--wait", "--timeout", "60")
        log = fleet.log("w1")
    finally:
        fleet.stop_all()
        front.close()
    assert code == EXIT_OK, out + log
    said = re.search(rf"{re.escape(front.host)}: the fleet pauses its requests for (\d) s "
                     r"\(quota: 1 of 100 requests left per 40 s\)", out)
    assert said and int(said[1]) in (1, 2), out  # as much of the 2 s as was left when seen
    assert "pausing the fleet's requests for 2.0 s (quota: 1 of 100" in log


def test_proxy_per_registry_and_from_the_environment(tmp_path: Path, monkeypatch,
                                                     source_registry, target_registry) -> None:
    push_image(source_registry, "ns/app", "v1", layers=[make_layer(16 * 1024, 1)])
    proxy = Front("http://unused.invalid", lambda method, path: None)
    try:
        (tmp_path / "images.json").write_text(json.dumps(
            {f"{source_registry.host}/ns/app:v1": f"{target_registry.host}/copy/app"}))
        (tmp_path / "auth.json").write_text(json.dumps(
            {source_registry.host: {"insecure": True, "proxy": proxy.url},
             target_registry.host: {"insecure": True}}))
        argv = ["sync", "--images", str(tmp_path / "images.json"), "--auth",
                str(tmp_path / "auth.json"), "--no-state"]
        monkeypatch.delenv("HTTP_PROXY", raising=False)
        monkeypatch.delenv("http_proxy", raising=False)
        assert main(argv, {}) == EXIT_OK
        via_entry = list(proxy.seen)
        assert via_entry and all(url.startswith(f"http://{source_registry.host}/")
                                 for _, url in via_entry)

        # The standard variables, with NO_PROXY keeping the target (named localhost) direct.
        target = "localhost:" + target_registry.host.rsplit(":", 1)[1]
        push_image(source_registry, "ns/app", "v2", layers=[make_layer(16 * 1024, 2)])
        (tmp_path / "images.json").write_text(json.dumps(
            {f"{source_registry.host}/ns/app:v2": f"{target}/copy/app"}))
        (tmp_path / "auth.json").write_text(json.dumps(
            {source_registry.host: {"insecure": True}, target: {"insecure": True}}))
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "localhost")
        assert main(argv, {}) == EXIT_OK
    finally:
        proxy.close()
    via_env = proxy.seen[len(via_entry):]
    assert any("/ns/app/manifests/v2" in url for _, url in via_env)
    assert not any(target in url or target_registry.host in url for _, url in proxy.seen)
    assert get_manifest(target_registry, "copy/app", "v2")


def test_one_ping_per_registry_per_worker_process(tmp_path: Path, capsys, store,
                                                  source_registry, target_registry) -> None:
    seed(source_registry, repositories=2, tags=3)
    marks = {registry.host: registry.mark() for registry in (source_registry, target_registry)}
    fleet = Fleet(tmp_path, capsys, redis_url=REDIS_URL)
    try:
        fleet.write({f"{source_registry.host}/ns/app{r}": f"{target_registry.host}/copy/app{r}"
                     for r in range(2)},
                    {source_registry.host: {"insecure": True},
                     target_registry.host: {"insecure": True}})
        fleet.start_worker("w1")
        for _ in range(2):  # two runs, 12 image tasks, one worker process
            code, out, _ = fleet.enqueue("--wait", "--timeout", "60")
            assert code == EXIT_OK, out + fleet.log("w1")
    finally:
        fleet.stop_all()
    for registry in (source_registry, target_registry):
        assert [r for r in registry.requests(marks[registry.host]) if r[1] == "/v2/"] == [
            ("GET", "/v2/", 200)]


def test_token_bucket_is_shared_between_processes(store) -> None:
    """Two throttles (as in two workers) on one bucket of 20 requests per second."""
    throttles = [RedisThrottle(redis.Redis.from_url(REDIS_URL)) for _ in range(2)]
    limits = ThrottleLimits(requests_per_second=20)
    times: list[float] = []
    lock = threading.Lock()

    def go(throttle: RedisThrottle) -> None:
        for _ in range(20):
            with throttle.request("registry.example", limits), lock:
                times.append(time.monotonic())

    threads = [threading.Thread(target=go, args=(t,)) for t in throttles for _ in range(2)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(times) == 80
    assert time.monotonic() - start >= 80 / 20 - 0.5  # 4 s at 20 a second, less the burst


def test_concurrency_slots_are_shared(store) -> None:
    throttles = [RedisThrottle(redis.Redis.from_url(REDIS_URL)), LocalThrottle()]
    for throttle in throttles:
        limits = ThrottleLimits(concurrent_requests=2)
        inside, peak = [0], [0]
        lock = threading.Lock()

        def go(throttle=throttle, limits=limits, inside=inside, peak=peak, lock=lock) -> None:
            with throttle.request("registry.example", limits):
                with lock:
                    inside[0] += 1
                    peak[0] = max(peak[0], inside[0])
                time.sleep(0.05)
                with lock:
                    inside[0] -= 1

        threads = [threading.Thread(target=go) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert peak[0] == 2
    assert store.zcard("migrator:slots:registry.example") == 0


def test_rate_limit_header_grammar() -> None:
    assert parse_rate_limit("76;w=21600") == (76, 21600.0)
    assert parse_rate_limit("100") == (100, None)
    assert parse_rate_limit("x;w=1") is None
    assert parse_rate_limit(None) is None


def test_a_run_that_vanishes_while_watched_ends_with_a_clear_message(store, capsys) -> None:
    """Redis flushed under `migrator status --wait`: a message and exit 1, no traceback."""
    from migrator.runs import RunStore

    run_id = RunStore(store).create(name="test", retries=0, jobs=["a -> b"], expands=[])
    threading.Timer(1.5, store.flushdb).start()
    code = main(["status", run_id, "--wait", "--timeout", "20"],
                {"MIGRATOR_REDIS_URL": REDIS_URL})
    err = capsys.readouterr().err
    assert code == 1
    assert "is no longer in Redis" in err and "Traceback" not in err


def test_a_watcher_wakes_when_the_last_job_ends_not_at_its_next_poll(store) -> None:
    """The run's last ending wakes `watch` (BLPOP on the run's wake key): with a poll interval
    of 60 s, a run that ends 0.3 s in is seen as finished long before the first poll."""
    from migrator.fleet import watch
    from migrator.runs import RunStore

    runs = RunStore(store)
    run_id = runs.create(name="test", retries=0, jobs=["a -> b", "c -> d"], expands=[])
    threading.Timer(0.1, runs.failed, (run_id, "c -> d", "HTTP 404")).start()
    threading.Timer(0.3, runs.succeeded, (run_id, "a -> b")).start()
    started = time.monotonic()
    state = watch(runs, run_id, interval=60.0, timeout=120)
    assert state.finished and state.succeeded == 1 and list(state.failed) == ["c -> d"]
    assert time.monotonic() - started < 30
    store.flushdb()


def test_the_watcher_lists_pauses_without_walking_the_key_space(store) -> None:
    """`enqueue --wait` asks for the fleet's pauses at every look: with a large run's ledger
    in the same database, a SCAN per look made watching cost grow with the square of the
    tags. The pauses come from their own index, and an ended pause leaves it."""
    from migrator.throttle import RedisThrottle

    store.mset({f"migrator:blob:r.example/{n}": b"x" for n in range(5000)})
    throttle = RedisThrottle(store, prefix="migrator:")
    throttle.pause("quay.io", 30, "HTTP 429 Retry-After")
    throttle.pause("ghcr.io", 0.3, "quota")
    commands: list[str] = []
    original = store.execute_command

    def counted(*args, **kwargs):
        commands.append(str(args[0]).upper())
        return original(*args, **kwargs)

    store.execute_command = counted
    try:
        assert sorted(throttle.pauses()) == ["ghcr.io", "quay.io"]
        time.sleep(0.4)
        (pause,) = throttle.pauses().items()
    finally:
        del store.execute_command
    assert pause[0] == "quay.io" and pause[1].reason == "HTTP 429 Retry-After"
    assert "SCAN" not in commands and len(commands) <= 6, commands
    assert store.zrange("migrator:paused", 0, -1) == [b"quay.io"]
