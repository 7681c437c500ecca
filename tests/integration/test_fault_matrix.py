"""The fault matrix: every kind of network and server fault, at a rate, against real registries.

For each fault class a `FaultProxy` sits in front of the source and one in front of the target
and hits the named request classes (manifest / blob / upload; GET, HEAD, POST, PUT, PATCH) at
a rate with a seeded random draw; "registry killed" kill -9s a real registry mid-run and starts
it again on the same port and storage. Then `migrator sync` (in-process) or the fleet (real
workers) copies a set of images with shared layers and a multi-platform index, and every image
is judged at the target by the tests' own client (`audit_copy`):

    correct          the tag is byte-identical to the source, every blob present and right
    failed right     absent at the target and reported failed with a reason of that fault
    written wrong    the tag points at something else, or at a manifest with a missing or
                     wrong blob: must never happen

Every image must be correct or failed right. `MIGRATOR_FAULT_RUNS=N` repeats each class N
times (new seeds); `MIGRATOR_FAULT_REPORT=FILE` writes the tally as JSON
(`scripts/fault_matrix.py` runs both and prints the table of docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from migrator.cli import EXIT_FAILED, EXIT_OK, main
from tests.integration.test_fleet import Fleet
from tests.support.images import (
    PushedImage,
    audit_copy,
    get_manifest,
    make_layer,
    push_image,
    push_index,
)
from tests.support.proxy import BLOB, MANIFEST, UPLOAD, FaultProxy
from tests.support.registry import RunningRegistry, start_registry

RUNS = int(os.environ.get("MIGRATOR_FAULT_RUNS", "1"))
REPORT = os.environ.get("MIGRATOR_FAULT_REPORT")
REDIS_URL = "redis://127.0.0.1:6379/10"  # this file's database on the shared Redis
RUN_TIMEOUT = 120.0  # seconds any one run may take before the test calls it a hang

# Small timeouts and backoffs so that faults cost milliseconds; few attempts so that some
# images do fail and their reasons are checked too.
ENVIRON = {
    "MIGRATOR_CONNECT_TIMEOUT": "2",
    "MIGRATOR_READ_TIMEOUT": "1.5",
    "MIGRATOR_HTTP_ATTEMPTS": "3",
    "MIGRATOR_BLOB_ATTEMPTS": "2",
    "MIGRATOR_BACKOFF_INITIAL": "0.02",
    "MIGRATOR_BACKOFF_MAX": "0.3",
    "MIGRATOR_RETRY_AFTER_MAX": "2",
    "MIGRATOR_RETRY_PASS_DELAY": "0.1",
}

# What a failure's reason must say for each kind of fault.
# (HTTP 502 is the proxy's answer while its upstream is dead; "cannot connect" a registry's
# first contact refused while it was down, which fails its work at once.)
TRANSPORT = (r"ConnectionError|ReadTimeout|ConnectTimeout|ChunkedEncodingError|ProtocolError|"
             r"broke after|ended after|timed out|HTTP 502|cannot connect to \S+: connection "
             r"refused")
# A timeout is a true reason under any fault: on a loaded machine a registry may be slower
# than the matrix's short read timeout without any fault at all.
SLOW = r"ReadTimeout|ConnectTimeout|timed out"
Hit = tuple[str, str, str]  # (side, method, request class)
SOURCE_READS: list[Hit] = [("source", "GET", MANIFEST), ("source", "GET", BLOB)]
EVERY_CLASS: list[Hit] = [
    *SOURCE_READS, ("source", "HEAD", MANIFEST), ("target", "HEAD", MANIFEST),
    ("target", "POST", UPLOAD), ("target", "PATCH", UPLOAD), ("target", "PUT", UPLOAD),
    ("target", "PUT", MANIFEST)]


@dataclass(frozen=True)
class FaultClass:
    name: str
    hits: list[Hit]
    inject: Callable[[FaultProxy, str, str, float], None]  # (proxy, method, path, rate)
    rate: float
    reason: str  # regex a failed image's reason must match

    def apply(self, proxies: dict[str, FaultProxy]) -> None:
        for side, method, path in self.hits:
            self.inject(proxies[side], method, path, self.rate)


def _status(code: int, retry_after: str | None = None) -> Callable[..., None]:
    return lambda p, m, path, rate: p.status(code, m, path, None, retry_after, rate=rate)


CLASSES = {c.name: c for c in [
    FaultClass("reset before body", EVERY_CLASS,
               lambda p, m, path, rate: p.reset(m, path, None, 0, rate=rate), 0.12, TRANSPORT),
    FaultClass("reset mid-body", SOURCE_READS,
               lambda p, m, path, rate: p.reset(m, path, None, 300, rate=rate), 0.25, TRANSPORT),
    FaultClass("truncated body", SOURCE_READS,
               lambda p, m, path, rate: p.truncate(m, path, None, rate=rate), 0.25, TRANSPORT),
    FaultClass("flipped byte", SOURCE_READS,
               lambda p, m, path, rate: p.flip_byte(m, path, None, rate=rate), 0.2,
               r"digest mismatch"),
    FaultClass("trickle", SOURCE_READS,
               lambda p, m, path, rate: p.trickle(16384, 0.01, m, path, None, rate=rate), 0.3,
               r"(?!)"),  # slow is not broken: nothing may fail
    FaultClass("stall", [*SOURCE_READS, ("target", "PUT", MANIFEST)],
               lambda p, m, path, rate: p.stall(m, path, None, after_bytes=None if m == "PUT"
                                                else 300, rate=rate), 0.1,
               r"ReadTimeout|broke|timed out"),
    FaultClass("HTTP 500", EVERY_CLASS, _status(500), 0.15, r"HTTP 500"),
    FaultClass("HTTP 502", EVERY_CLASS, _status(502), 0.15, r"HTTP 502"),
    FaultClass("HTTP 503", EVERY_CLASS, _status(503), 0.15, r"HTTP 503"),
    FaultClass("429 with Retry-After", EVERY_CLASS, _status(429, "1"), 0.06, r"HTTP 429"),
    FaultClass("429 without Retry-After", EVERY_CLASS, _status(429), 0.15, r"HTTP 429"),
]}
KILLED = "registry killed and restarted"
FLEET_CLASSES = ["reset mid-body", "truncated body", "flipped byte", "HTTP 503",
                 "429 with Retry-After"]


@dataclass
class Tally:
    runs: int = 0
    images: int = 0
    correct: int = 0
    failed_right: int = 0
    failed_wrong_reason: int = 0
    lost: int = 0  # reported copied, yet absent at the target
    written_wrong: int = 0
    faults: int = 0  # faults injected (proxy firings, or registry kills mid-run)
    problems: list[str] = field(default_factory=list)


TALLY: dict[str, Tally] = {}


@pytest.fixture(autouse=True)
def report() -> Iterator[None]:
    """The tally so far, rewritten after every test: a long matrix cut short keeps its figures."""
    yield
    if REPORT:
        Path(REPORT).write_text(json.dumps(
            {name: {k: v for k, v in vars(t).items() if k != "problems"} | {
                "problems": t.problems[:20]} for name, t in TALLY.items()}, indent=2) + "\n")


# -- the images -----------------------------------------------------------------------------

IMAGES = [(f"ns/app{r}", f"v{t}") for r in range(3) for t in range(2)] + [("ns/multi", "1.0")]


@dataclass
class Source:
    registry: RunningRegistry
    pushed: dict[tuple[str, str], PushedImage]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    """Seven images: three repositories of two tags over two shared base layers, plus a
    two-platform OCI index whose amd64 child shares a base layer too."""
    registry = start_registry(tmp_path_factory.mktemp("source"))
    base = [make_layer(256 * 1024, 1), make_layer(128 * 1024, 2)]
    pushed: dict[tuple[str, str], PushedImage] = {}
    for n, (repository, tag) in enumerate(IMAGES[:-1]):
        pushed[(repository, tag)] = push_image(registry, repository, tag,
                                               layers=[*base, make_layer(32 * 1024, 10 + n)])
    pushed[IMAGES[-1]] = push_index(registry, "ns/multi", "1.0", media="oci", platforms=[
        ("linux", "amd64", [base[0], make_layer(48 * 1024, 30)]),
        ("linux", "arm64", [make_layer(64 * 1024, 31)])])
    yield Source(registry, pushed)
    registry.close()


def rules(source_host: str, target_host: str, prefix: str) -> dict[str, str]:
    found = {f"{source_host}/ns/app{r}:v0,v1": f"{target_host}/{prefix}/app{r}" for r in range(3)}
    found[f"{source_host}/ns/multi:1.0"] = f"{target_host}/{prefix}/multi"
    return found


@contextmanager
def faulty_run(workdir: Path, source: Source, name: str, run: int, fault: FaultClass
               ) -> Iterator[tuple[RunningRegistry, dict[str, FaultProxy]]]:
    """A fresh target and a seeded fault proxy before each registry, the fault applied;
    everything stopped afterwards."""
    target = start_registry(workdir / "target")
    proxies = {"source": FaultProxy(source.registry.url, seed=seed_of(name, run)),
               "target": FaultProxy(target.url, seed=seed_of(name, run) + 1)}
    try:
        fault.apply(proxies)
        yield target, proxies
    finally:
        for proxy in proxies.values():
            proxy.stop()
        target.close()


def count_and_judge(tally, proxies: dict, target, source, failed, fault, out: str) -> None:
    """Stop the faults, count those that fired, and judge every image at the target."""
    for proxy in proxies.values():
        proxy.clear()
        tally.faults += len(proxy.fired)
    judge(tally, target, "copy", source.pushed, failed, fault.reason, out)


def judge(tally: Tally, target: RunningRegistry, prefix: str, pushed: dict, failed_file: Path,
          reason: str, summary: str) -> None:
    """Count each image of one run into `tally` by what the target holds and what was said."""
    reported: dict[tuple[str, str], str] = {}
    sidecar = Path(f"{failed_file}.reasons.json")
    if sidecar.exists():
        for entry in json.loads(sidecar.read_text()):
            repository, _, tag = entry["source"].split("/", 1)[1].rpartition(":")
            reported[(repository, tag)] = entry["reason"]
    assert f"Images({len(pushed)}) migration finished, {len(reported)} images tasks failed" in (
        summary), summary
    tally.runs += 1
    for (repository, tag), image in pushed.items():
        tally.images += 1
        where = f"{prefix}/{repository.split('/', 1)[1]}:{tag}"
        state = audit_copy(target, f"{prefix}/{repository.split('/', 1)[1]}", tag, image)
        said = reported.get((repository, tag))
        if state is None:
            tally.correct += 1  # also when reported failed: the bytes are right, nothing lost
        elif state != "absent":
            tally.written_wrong += 1
            tally.problems.append(f"{where}: written wrong: {state}")
        elif said is None:
            tally.lost += 1
            tally.problems.append(f"{where}: reported copied but absent")
        elif re.search(reason, said) or re.search(SLOW, said):
            tally.failed_right += 1
        else:
            tally.failed_wrong_reason += 1
            tally.problems.append(f"{where}: failed with the wrong reason: {said}")


def check(tally: Tally) -> None:
    assert tally.written_wrong == 0, tally.problems
    assert tally.lost == 0 and tally.failed_wrong_reason == 0, tally.problems
    assert tally.correct + tally.failed_right == tally.images, tally.problems
    assert tally.faults > 0, "no fault fired: the class tested nothing"


def seed_of(name: str, run: int) -> int:
    return sum(map(ord, name)) * 1000 + run


# -- migrator sync --------------------------------------------------------------------------


def sync(workdir: Path, images: dict, auth: dict, capsys: pytest.CaptureFixture[str]
         ) -> tuple[int, str, Path]:
    (workdir / "images.json").write_text(json.dumps(images))
    (workdir / "auth.json").write_text(json.dumps(auth))
    failed = workdir / "failed.json"
    started = time.monotonic()
    code = main(["sync", "--images", str(workdir / "images.json"), "--auth",
                 str(workdir / "auth.json"), "--no-state", "--workers", "4", "--retries", "1",
                 "--log", str(workdir / "migrator.log"), "--output-failed", str(failed)],
                ENVIRON)
    out, _ = capsys.readouterr()
    assert time.monotonic() - started < RUN_TIMEOUT, "a run took too long: something hung"
    assert code in (EXIT_OK, EXIT_FAILED), out
    return code, out, failed


@pytest.mark.parametrize("name", list(CLASSES))
def test_sync_under_fault(name: str, source: Source, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    fault = CLASSES[name]
    tally = TALLY.setdefault(name, Tally())
    for run in range(RUNS):
        workdir = tmp_path / f"run{run}"
        workdir.mkdir()
        with faulty_run(workdir, source, name, run, fault) as (target, proxies):
            auth = {p.host: {"insecure": True} for p in proxies.values()}
            _, out, failed = sync(workdir, rules(proxies["source"].host,
                                                 proxies["target"].host, "copy"), auth, capsys)
            count_and_judge(tally, proxies, target, source, failed, fault, out)
    check(tally)


def test_sync_with_a_registry_killed_and_restarted(source: Source, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """kill -9 of the target (even runs) or the source (odd runs) at a random moment of the
    run; it comes back on the same port and storage after a random pause. The source is a
    copy of the module's, so the other tests keep theirs."""
    tally = TALLY.setdefault(KILLED, Tally())
    for run in range(RUNS):
        rng = random.Random(seed_of(KILLED, run))
        workdir = tmp_path / f"run{run}"
        workdir.mkdir()
        target = start_registry(workdir / "target")
        victim = target
        if run % 2:
            victim = start_registry(workdir / "source")
            # Same images in a source of its own: re-pushed from the bytes on record.
            _reseed(source, victim)
        src_host = (victim if run % 2 else source.registry).host
        running = threading.Event()
        killed: list[bool] = []

        def chaos(victim: RunningRegistry, rng: random.Random, killed: list[bool],
                  running: threading.Event) -> None:
            time.sleep(rng.uniform(0.05, 0.6))
            killed.append(running.is_set())
            victim.kill()
            time.sleep(rng.uniform(0.2, 1.2))
            victim.start()

        try:
            running.set()
            killer = threading.Thread(target=chaos, args=(victim, rng, killed, running))
            killer.start()
            auth = {src_host: {"insecure": True}, target.host: {"insecure": True}}
            _, out, failed = sync(workdir, rules(src_host, target.host, "copy"), auth, capsys)
            running.clear()
            killer.join(timeout=10)
            assert victim.running
            tally.faults += sum(killed)
            judge(tally, target, "copy", source.pushed, failed, TRANSPORT, out)
        finally:
            target.close()
            if victim is not target:
                victim.close()
    check(tally)


def _reseed(source: Source, registry: RunningRegistry) -> None:
    """Copy the module's source images into `registry` with the tests' own client."""
    from tests.support.images import get_blob, push_blob, push_manifest, session_for

    for (repository, tag), image in source.pushed.items():
        with session_for(registry) as session:
            for child in image.children or [image]:
                for digest in child.blobs:
                    push_blob(session, registry.url, repository,
                              get_blob(source.registry, repository, digest))
                if image.children:
                    push_manifest(session, registry.url, repository, child.digest,
                                  child.manifest, child.media_type)
            push_manifest(session, registry.url, repository, tag, image.manifest,
                          image.media_type)


# -- the fleet ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Two real worker processes on this file's Redis database, for every fleet run here."""
    fleet = Fleet(tmp_path_factory.mktemp("fleet"), None, redis_url=REDIS_URL)  # type: ignore[arg-type]
    fleet.env.update(ENVIRON)
    fleet.redis.flushdb()
    try:
        fleet.start_worker("w1", concurrency=3)
        fleet.start_worker("w2", concurrency=3)
        yield fleet
    finally:
        fleet.stop_all()
        fleet.redis.flushdb()
        fleet.redis.close()


@pytest.mark.parametrize("name", FLEET_CLASSES)
def test_fleet_under_fault(name: str, source: Source, fleet: Fleet, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    fault = CLASSES[name]
    tally = TALLY.setdefault(f"{name} (fleet)", Tally())
    for run in range(RUNS):
        fleet.redis.flushdb()  # no record of an earlier run's registry on a reused port
        workdir = tmp_path / f"run{run}"
        workdir.mkdir()
        with faulty_run(workdir, source, name, run, fault) as (target, proxies):
            (workdir / "images.json").write_text(json.dumps(
                rules(proxies["source"].host, proxies["target"].host, "copy")))
            (workdir / "auth.json").write_text(json.dumps(
                {p.host: {"insecure": True} for p in proxies.values()}))
            failed = workdir / "failed.json"
            code = main(["enqueue", "--images", str(workdir / "images.json"), "--auth",
                         str(workdir / "auth.json"), "--retries", "1", "--wait", "--timeout",
                         str(RUN_TIMEOUT), "--output-failed", str(failed)], fleet.env)
            out, err = capsys.readouterr()
            assert code in (EXIT_OK, EXIT_FAILED), err + fleet.log("w1") + fleet.log("w2")
            assert "migration finished" in out, "the run did not end in time: " + out + err
            count_and_judge(tally, proxies, target, source, failed, fault, out)
    check(tally)


# -- the proxy's new faults, each shown to do what it says ----------------------------------


def test_truncate_trickle_stall_and_rate(source: Source) -> None:
    import requests

    layer = source.pushed[("ns/app0", "v0")].blobs[1]
    url = f"/v2/ns/app0/blobs/{layer}"
    with FaultProxy(source.registry.url, seed=7) as proxy:
        proxy.truncate("GET", BLOB, 1, fraction=0.25)
        response = requests.get(proxy.url + url, stream=True, timeout=10)
        size = int(response.headers["Content-Length"])
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            _ = response.content
        proxy.trickle(65536, 0.1, "GET", BLOB, 1)
        started = time.monotonic()
        assert len(requests.get(proxy.url + url, timeout=10).content) == size
        assert time.monotonic() - started >= 0.3  # 256 KiB in 64 KiB steps, 0.1 s apart
        proxy.stall("GET", BLOB, 1, after_bytes=100)
        started = time.monotonic()
        with pytest.raises(requests.exceptions.ConnectionError):  # urllib3's read timeout
            _ = requests.get(proxy.url + url, timeout=(2, 0.5)).content
        assert 0.4 < time.monotonic() - started < 5
        proxy.status(503, "HEAD", MANIFEST, None, rate=0.5)
        codes = [requests.head(proxy.url + "/v2/ns/app0/manifests/v0", timeout=10).status_code
                 for _ in range(40)]
        assert 8 < codes.count(503) < 32 and codes.count(200) == 40 - codes.count(503)
    with FaultProxy(source.registry.url, seed=7) as again:  # the same seed: the same draws
        again.status(503, "HEAD", MANIFEST, None, rate=0.5)
        assert codes == [requests.head(again.url + "/v2/ns/app0/manifests/v0",
                                       timeout=10).status_code for _ in range(40)]


def test_retry_after_is_honoured(source: Source, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    target = start_registry(tmp_path / "target")
    try:
        with FaultProxy(source.registry.url) as proxy:
            proxy.status(429, "GET", MANIFEST, 1, retry_after="1")
            _, out, _ = sync(tmp_path, {f"{proxy.host}/ns/app0:v0": f"{target.host}/c/app0"},
                             {proxy.host: {"insecure": True}, target.host: {"insecure": True}},
                             capsys)
            assert "0 images tasks failed" in out
            gets = [(status, at) for (method, path, status), at in
                    zip(proxy.requests, proxy.request_times, strict=True)
                    if method == "GET" and "/manifests/" in path]
            assert [status for status, _ in gets[:2]] == [429, 200]
            assert gets[1][1] - gets[0][1] >= 0.95  # waited as told, not the 0.02 s backoff
        assert get_manifest(target, "c/app0", "v0")[2] == source.pushed[("ns/app0", "v0")].digest
    finally:
        target.close()
