"""The fleet end to end: real Redis, real `celery -A workers worker` processes, real registries.

Each test gets its own Redis database (flushed before and after: never FLUSHALL) and starts
its own worker processes; the producer runs in-process through `main(argv, environ)`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from migrator.cli import EXIT_BAD_INPUT, EXIT_OK, main
from tests.support.images import get_manifest, make_layer, push_image, push_index, sha256_digest

ROOT = Path(__file__).resolve().parents[2]
FLEET_DB = int(os.environ.get("MIGRATOR_TEST_REDIS_DB", "13"))
REDIS_URL = f"redis://127.0.0.1:6379/{FLEET_DB}"
WRITES = ("POST", "PUT", "PATCH", "DELETE")


class Fleet:
    """Worker processes plus the producer's environment, for one test."""

    def __init__(self, workdir: Path, capsys: pytest.CaptureFixture[str],
                 redis_url: str = REDIS_URL) -> None:
        self.dir = workdir
        self.capsys = capsys
        self.env = {
            "MIGRATOR_REDIS_URL": redis_url,
            "MIGRATOR_BACKOFF_INITIAL": "0.05",
            "MIGRATOR_VISIBILITY_TIMEOUT": "8",
            "MIGRATOR_LOCK_TTL": "2",
        }
        self.workers: dict[str, subprocess.Popen] = {}
        self.redis = redis.Redis.from_url(redis_url)

    def start_worker(self, name: str, *, concurrency: int = 4, pool: str = "threads",
                     extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers", "worker", "--pool", pool,
             "--concurrency", str(concurrency), "--hostname", f"{name}@%h", "--loglevel", "INFO",
             "--without-gossip", "--without-mingle"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **self.env, **(extra_env or {}), "PYTHONPATH": str(ROOT)})
        log.close()
        self.workers[name] = process
        deadline = time.monotonic() + 30
        while b"ready." not in (self.dir / f"{name}.log").read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker {name} did not start:\n" + self.log(name))
            time.sleep(0.1)
        return process

    def log(self, name: str) -> str:
        return (self.dir / f"{name}.log").read_text(errors="replace")[-4000:]

    def kill(self, name: str) -> None:
        process = self.workers.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for name in list(self.workers):
            process = self.workers.pop(name)
            with _suppress_lookup():
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def write(self, images: dict, auth: dict) -> None:
        (self.dir / "images.json").write_text(json.dumps(images))
        (self.dir / "auth.json").write_text(json.dumps(auth))

    def enqueue(self, *flags: str, environ: dict[str, str] | None = None
                ) -> tuple[int, str, str]:
        argv = ["enqueue", "--images", str(self.dir / "images.json"),
                "--auth", str(self.dir / "auth.json"), *flags]
        code = main(argv, {**self.env, **(environ or {})})
        out, err = self.capsys.readouterr()
        return code, out, err


class _suppress_lookup:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, traceback) -> bool:  # type: ignore[no-untyped-def]
        return kind is ProcessLookupError


@pytest.fixture
def fleet(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    instance = Fleet(tmp_path, capsys)
    instance.redis.flushdb()
    yield instance
    instance.stop_all()
    instance.redis.flushdb()
    instance.redis.close()


def insecure(*registries) -> dict:
    return {registry.host: {"insecure": True} for registry in registries}


def seed(source, repositories: int = 4, tags: int = 8):
    """`repositories × tags` images over three shared base layers, plus one two-platform index."""
    base = [make_layer(192 * 1024, seed) for seed in (1, 2, 3)]
    pushed = {}
    for r in range(repositories):
        for t in range(tags):
            own = make_layer(32 * 1024, 100 + r * tags + t)
            pushed[(f"ns/app{r}", f"v{t}")] = push_image(source, f"ns/app{r}", f"v{t}",
                                                         layers=[*base, own])
    pushed[("ns/multi", "1.0")] = push_index(source, "ns/multi", "1.0", media="oci", platforms=[
        ("linux", "amd64", [base[0], make_layer(16 * 1024, 900)]),
        ("linux", "arm64", [make_layer(16 * 1024, 901)])])
    return base, pushed


def uploads_by_digest(registry, since: int = 0) -> Counter:
    counts: Counter = Counter()
    for method, path, status in registry.requests(since):
        if method == "PUT" and "/blobs/uploads/" in path and status == 201:
            digest = path.split("digest=", 1)[1].split("&", 1)[0].replace("%3A", ":")
            counts[digest] += 1
    return counts


def test_two_workers_copy_everything_and_each_shared_blob_once(fleet, source_registry,
                                                                target_registry):
    base, pushed = seed(source_registry)
    rules = {f"{source_registry.host}/ns/app{r}": f"{target_registry.host}/copy/app{r}"
             for r in range(4)}
    rules[f"{source_registry.host}/ns/multi:1.0"] = f"{target_registry.host}/copy/multi"
    fleet.write(rules, insecure(source_registry, target_registry))
    fleet.start_worker("w1")
    fleet.start_worker("w2")
    code, out, err = fleet.enqueue("--wait", "--timeout", "120")
    assert code == EXIT_OK, err + fleet.log("w1") + fleet.log("w2")
    assert out.splitlines()[-1] == (
        "Images(33) migration finished, 0 images tasks failed, 0 tasks generate failed")
    for (repository, tag), image in pushed.items():
        target_repository = repository.replace("ns/", "copy/")
        raw, _, digest = get_manifest(target_registry, target_repository, tag)
        assert raw == image.manifest and digest == image.digest
    uploads = uploads_by_digest(target_registry)
    for layer in base:
        assert uploads[sha256_digest(layer)] == 1
    assert max(uploads.values()) == 1
    mounts = [r for r in target_registry.requests() if r[0] == "POST" and "mount=" in r[1]]
    assert len(mounts) >= 4  # the base layers reach the other repositories by mounting
    both = {"w1", "w2"} & {name for name in ("w1", "w2") if "succeeded" in fleet.log(name)}
    assert both == {"w1", "w2"}  # the work was shared


def test_rerun_writes_nothing_and_redis_flush_stays_correct(fleet, source_registry,
                                                            target_registry):
    _, pushed = seed(source_registry, repositories=2, tags=3)
    rules = {f"{source_registry.host}/ns/app0": f"{target_registry.host}/copy/app0",
             f"{source_registry.host}/ns/app1:v0,v1,v2": f"{target_registry.host}/copy/app1",
             f"{source_registry.host}/ns/multi:1.0": f"{target_registry.host}/copy/multi"}
    fleet.write(rules, insecure(source_registry, target_registry))
    fleet.start_worker("w1")
    assert fleet.enqueue("--wait", "--timeout", "60")[0] == EXIT_OK

    src_mark, dst_mark = source_registry.mark(), target_registry.mark()
    code, out, _ = fleet.enqueue("--wait", "--timeout", "60")
    assert code == EXIT_OK and "Images(7)" in out
    assert target_registry.requests(dst_mark) == []  # the shared record vouches for every tag
    at_source = source_registry.requests(src_mark)
    heads = [r for r in at_source if r[0] == "HEAD"]
    assert len(heads) == 7 and len(at_source) == 7 + 1  # + the tag list of the tagless rule
    # The tagless rule's expansion asked about its 3 tags itself: no task was sent for them,
    # only the producer's 4 (the rules that name their tags) and 1 expansion. (A finished
    # run keeps how many tasks it sent, not their messages.)
    run_id = out.splitlines()[0].strip()
    assert int(fleet.redis.hget(f"migrator:run:{run_id}", "sent")) == 4 + 1

    fleet.redis.flushdb()  # the record is lost: the registries are still the truth
    dst_mark = target_registry.mark()
    code, out, _ = fleet.enqueue("--wait", "--timeout", "60")
    assert code == EXIT_OK and "Images(7)" in out
    assert [r for r in target_registry.requests(dst_mark) if r[0] in WRITES] == []
    for (repository, tag), image in pushed.items():
        if repository in ("ns/app0", "ns/multi") or tag in ("v0", "v1", "v2"):
            target_repository = repository.replace("ns/", "copy/")
            assert get_manifest(target_registry, target_repository, tag)[2] == image.digest


def test_worker_killed_mid_blob_its_task_is_redelivered_and_nothing_partial_shows(
        fleet, source_registry, target_registry, fault_proxy):
    big = make_layer(24 * 1024 * 1024, 7)
    image = push_image(source_registry, "ns/big", "1", layers=[big])
    proxy = fault_proxy(source_registry.url)
    proxy.delay(4.0, method="GET", path=sha256_digest(big), times=1)  # the first copy is slow
    fleet.write({f"{proxy.host}/ns/big:1": f"{target_registry.host}/copy/big"},
                {proxy.host: {"insecure": True}, **insecure(target_registry)})
    fleet.start_worker("doomed", concurrency=1)
    code, out, _ = fleet.enqueue()
    run_id = out.strip()
    assert code == EXIT_OK
    deadline = time.monotonic() + 30
    while not proxy.fired and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.fired, "the blob download never started"
    fleet.kill("doomed")  # kill -9 of the whole worker while the blob is in flight
    assert not get_manifest_exists(target_registry, "copy/big", "1")

    seen_partial = []
    watching = threading.Event()

    def watch_target() -> None:
        while not watching.is_set():
            if get_manifest_exists(target_registry, "copy/big", "1"):
                digest = get_manifest(target_registry, "copy/big", "1")[2]
                seen_partial.append(digest != image.digest)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_target)
    watcher.start()
    fleet.start_worker("rescuer", concurrency=1)
    code = main(["status", run_id, "--wait", "--timeout", "90"], fleet.env)
    out, err = fleet.capsys.readouterr()
    watching.set()
    watcher.join()
    assert code == EXIT_OK, err + fleet.log("rescuer")
    assert out.splitlines()[-1].startswith("Images(1) migration finished, 0 images tasks failed")
    assert get_manifest(target_registry, "copy/big", "1")[2] == image.digest
    assert seen_partial == [False]


def get_manifest_exists(registry, repository: str, tag: str) -> bool:
    from tests.support.images import manifest_exists

    return manifest_exists(registry, repository, tag)


def test_permanent_failures_are_recorded_with_reasons_and_written_out(fleet, source_registry,
                                                                      target_registry):
    push_image(source_registry, "ns/ok", "1", layers=[make_layer(4096, 11)])
    fleet.write({
        f"{source_registry.host}/ns/ok:1,missing": f"{target_registry.host}/copy/ok",
        f"{source_registry.host}/ns/absent": f"{target_registry.host}/copy/absent",
    }, insecure(source_registry, target_registry))
    fleet.start_worker("w1")
    failed_file, ok_file = fleet.dir / "failed.json", fleet.dir / "ok.json"
    code, out, err = fleet.enqueue("--wait", "--timeout", "60", "--retries", "1",
                                   "--output-failed", str(failed_file),
                                   "--output-success", str(ok_file))
    assert code == 1
    assert out.splitlines()[-1] == (
        "Images(2) migration finished, 1 images tasks failed, 1 tasks generate failed")
    assert "ns/ok:missing" in err and "not found" in err
    assert "ns/absent" in err
    assert json.loads(failed_file.read_text()) == {
        f"{source_registry.host}/ns/ok:missing": f"{target_registry.host}/copy/ok:missing"}
    reasons = json.loads((fleet.dir / "failed.json.reasons.json").read_text())
    assert [r["source"] for r in reasons] == [f"{source_registry.host}/ns/ok:missing"]
    assert json.loads(ok_file.read_text()) == {
        f"{source_registry.host}/ns/ok:1": f"{target_registry.host}/copy/ok:1"}


def test_bad_rules_enqueue_nothing(fleet, source_registry, target_registry):
    fleet.write({source_registry.host: f"{target_registry.host}/copy/x"},  # a whole registry
                insecure(source_registry, target_registry))
    code, _, err = fleet.enqueue()
    assert code == EXIT_BAD_INPUT
    assert "images.json" in err
    assert fleet.redis.dbsize() == 0  # no run, no task, not even a queue


def test_credentials_travel_sealed_and_never_in_plaintext(fleet, source_registry, tls_registry):
    from cryptography.fernet import Fernet

    image = push_image(source_registry, "ns/secret", "1", layers=[make_layer(4096, 12)])
    key = Fernet.generate_key().decode()
    fleet.env["MIGRATOR_SECRET_KEY"] = key
    fleet.write({f"{source_registry.host}/ns/secret:1": f"{tls_registry.host}/copy/secret"}, {
        **insecure(source_registry),
        tls_registry.host: {"username": tls_registry.username, "password": "${TARGET_PW}",
                            "ca_file": str(tls_registry.ca_file)}})
    fleet.start_worker("w1")
    code, out, err = fleet.enqueue("--wait", "--timeout", "60",
                                   environ={"TARGET_PW": tls_registry.password})
    assert code == EXIT_OK, err + fleet.log("w1")
    assert get_manifest(tls_registry, "copy/secret", "1", auth=tls_registry.auth)[2] == (
        image.digest)
    password = tls_registry.password.encode()
    for key_name in fleet.redis.scan_iter("*"):
        kind = fleet.redis.type(key_name).decode()
        dump = {"string": lambda k: fleet.redis.get(k),
                "hash": lambda k: repr(fleet.redis.hgetall(k)).encode(),
                "set": lambda k: repr(fleet.redis.smembers(k)).encode(),
                "zset": lambda k: repr(fleet.redis.zrange(k, 0, -1)).encode(),
                "list": lambda k: repr(fleet.redis.lrange(k, 0, -1)).encode()}[kind](key_name)
        assert password not in dump, key_name
    assert tls_registry.password not in out + err + fleet.log("w1")


def test_a_worker_without_the_key_fails_the_run_with_a_clear_reason(fleet, source_registry,
                                                                     tls_registry):
    from cryptography.fernet import Fernet

    push_image(source_registry, "ns/nokey", "1", layers=[make_layer(4096, 13)])
    fleet.write({f"{source_registry.host}/ns/nokey:1": f"{tls_registry.host}/copy/nokey"}, {
        **insecure(source_registry),
        tls_registry.host: {"username": tls_registry.username,
                            "password": tls_registry.password,
                            "ca_file": str(tls_registry.ca_file)}})
    fleet.start_worker("w1", extra_env={"MIGRATOR_SECRET_KEY": Fernet.generate_key().decode()})
    code, out, err = fleet.enqueue("--wait", "--timeout", "60", "--retries", "0", environ={
        "MIGRATOR_SECRET_KEY": Fernet.generate_key().decode()})
    assert code == 1
    assert "MIGRATOR_SECRET_KEY" in err


@pytest.fixture
def tls_redis(tmp_path: Path):
    """A Redis of the test's own that wants TLS (a CA made here) and a password."""
    import socket

    from tests.support.registry import make_tls_files

    ca = make_tls_files(tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    password = "redis-" + os.urandom(8).hex()
    process = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(tmp_path / "server.crt"),
         "--tls-key-file", str(tmp_path / "server.key"), "--tls-ca-cert-file", str(ca),
         "--tls-auth-clients", "no", "--requirepass", password, "--save", "",
         "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"rediss://:{password}@127.0.0.1:{port}/0?ssl_ca_certs={ca}&ssl_cert_reqs=required"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.05)
    yield url, password
    process.kill()
    process.wait()


def test_fleet_over_redis_with_tls_and_a_password(tmp_path, capsys, tls_redis, source_registry,
                                                  target_registry):
    url, password = tls_redis
    fleet = Fleet(tmp_path, capsys, redis_url=url)
    try:
        image = push_image(source_registry, "ns/tls", "1", layers=[make_layer(4096, 14)])
        fleet.write({f"{source_registry.host}/ns/tls:1": f"{target_registry.host}/copy/tls"},
                    insecure(source_registry, target_registry))
        fleet.start_worker("w1")
        code, out, err = fleet.enqueue("--wait", "--timeout", "60")
        assert code == EXIT_OK, err + fleet.log("w1")
        assert get_manifest(target_registry, "copy/tls", "1")[2] == image.digest
        assert password not in out + err + fleet.log("w1")
    finally:
        fleet.stop_all()


def test_platform_filter_referrers_and_src_dst_through_the_fleet(fleet, source_registry,
                                                                target_registry):
    index = push_index(source_registry, "ns/multi", "1", media="oci", platforms=[
        ("linux", "amd64", [make_layer(4096, 40)]), ("linux", "arm64", [make_layer(4096, 41)])])
    signature = push_image(source_registry, "ns/multi", index.digest.replace(":", "-") + ".sig",
                           layers=[make_layer(512, 42)])
    fleet.write({}, insecure(source_registry, target_registry))
    fleet.start_worker("w1")
    code, out, err = fleet.enqueue(
        "--wait", "--timeout", "60", "--platform", "linux/arm64",
        "--src", f"{source_registry.host}/ns/multi:1", "--dst", f"{target_registry.host}/t/m")
    assert code == EXIT_BAD_INPUT and "--src and --images" in err  # one or the other

    code = main(["enqueue", "--auth", str(fleet.dir / "auth.json"), "--wait", "--timeout", "60",
                 "--platform", "linux/arm64", "--src", f"{source_registry.host}/ns/multi:1",
                 "--dst", f"{target_registry.host}/t/m"], fleet.env)
    out, err = fleet.capsys.readouterr()
    assert code == EXIT_OK, err + fleet.log("w1")
    raw, _, digest = get_manifest(target_registry, "t/m", "1")
    assert digest != index.digest
    assert [m["platform"]["architecture"] for m in json.loads(raw)["manifests"]] == ["arm64"]
    assert get_manifest(target_registry, "t/m", signature.tag)[2] == signature.digest
