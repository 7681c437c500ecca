"""The worker's liveness check, metrics and shutdown, against real worker processes.

Each test starts `celery -A workers worker` subprocesses on Redis DB 12 (flushed before and
after, never FLUSHALL) and runs the liveness probe exactly as the kubelet does: `python -m
workers.health` in a new process with the worker's environment.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests

from migrator.cli import EXIT_OK, main
from migrator.settings import load_settings
from tests.integration.test_fleet import Fleet, get_manifest_exists, insecure
from tests.support.images import get_manifest, make_layer, push_image, sha256_digest
from workers.health import EXIT_HANDED_BACK, check

ROOT = Path(__file__).resolve().parents[2]
HEALTH_DB = 12
REDIS_URL = f"redis://127.0.0.1:6379/{HEALTH_DB}"
QUEUE = "migrator"  # MIGRATOR_QUEUE's default: kombu keeps the queue in a list of that name


@pytest.fixture
def fleet(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    instance = Fleet(tmp_path, capsys)
    instance.redis.close()
    instance.redis = redis.Redis.from_url(REDIS_URL)
    instance.env.update({"MIGRATOR_REDIS_URL": REDIS_URL,
                         # long: a task back in the queue was handed back, not timed out
                         "MIGRATOR_VISIBILITY_TIMEOUT": "600"})
    instance.redis.flushdb()
    yield instance
    instance.stop_all()
    instance.redis.flushdb()
    instance.redis.close()


def health_env(fleet: Fleet, name: str, **settings: str) -> dict[str, str]:
    return {"MIGRATOR_HEALTH_DIR": str(fleet.dir / f"health-{name}"),
            "MIGRATOR_LIVENESS_TIMEOUT": "2.5", **settings}


def probe(fleet: Fleet, env: dict[str, str]) -> tuple[int, str]:
    """The liveness probe, run as the kubelet runs it: a new process, the container's env."""
    out = subprocess.run([sys.executable, "-m", "workers.health"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30,
                         env={**os.environ, **fleet.env, **env, "PYTHONPATH": str(ROOT)})
    return out.returncode, out.stdout + out.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def metrics(port: int) -> dict[str, float]:
    """The worker's samples by name and labels: `migrator_blobs_total{result="mounted"}`
    (labels sorted by name)."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = {}
    for name, labels, value in re.findall(r"^(migrator_\w+)(?:\{(.*)\})? (\S+)$", text, re.M):
        pairs = ",".join(sorted(re.findall(r'\w+="[^"]*"', labels)))
        samples[f"{name}{{{pairs}}}" if pairs else name] = float(value)
    return samples


def wait_for(condition, timeout: float = 30.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(interval)


def status(fleet: Fleet, run_id: str, timeout: float = 60) -> tuple[int, str]:
    code = main(["status", run_id, "--wait", "--timeout", str(timeout)], fleet.env)
    out, err = fleet.capsys.readouterr()
    return code, out + err


def test_liveness_passes_on_a_healthy_worker_and_fails_on_a_stopped_one(fleet):
    env = health_env(fleet, "w")
    worker = fleet.start_worker("w", extra_env=env)
    time.sleep(3.0)  # idle longer than the timeout: an idle worker's loop still beats
    code, out = probe(fleet, env)
    assert code == 0, out
    assert "ok: 1 worker(s), 0 task(s) running" in out

    os.kill(worker.pid, signal.SIGSTOP)  # a worker that no longer runs at all
    try:
        time.sleep(3.0)
        code, out = probe(fleet, env)
        assert code == 1
        assert f"worker {worker.pid}: its consumer loop has been silent" in out
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    wait_for(lambda: probe(fleet, env)[0] == 0, timeout=10, interval=0.2)  # and it recovers

    fleet.kill("w")
    report = check(load_settings({**fleet.env, **env}))  # the probe's code, in this process
    assert report.problems == [f"no live worker heartbeat in {env['MIGRATOR_HEALTH_DIR']} "
                               "(starting, or exited)"]


def test_a_stalled_copy_fails_liveness_and_the_metrics_count_copies(
        fleet, source_registry, target_registry, fault_proxy):
    layer = make_layer(2 * 1024 * 1024, 21)
    image = push_image(source_registry, "ns/slow", "1", layers=[layer])
    proxy = fault_proxy(source_registry.url)
    proxy.delay(5.0, method="GET", path=sha256_digest(layer), times=1)  # no byte for 5 s
    port = free_port()
    env = health_env(fleet, "w", MIGRATOR_STALL_TIMEOUT="1.5", MIGRATOR_METRICS_PORT=str(port),
                     MIGRATOR_METRICS_ADDRESS="127.0.0.1")
    fleet.write({f"{proxy.host}/ns/slow:1,missing": f"{target_registry.host}/copy/slow"},
                {proxy.host: {"insecure": True}, **insecure(target_registry)})
    fleet.start_worker("w", extra_env=env)
    before = metrics(port)
    assert before["migrator_images_total{outcome=\"copied\"}"] == 0
    assert before["migrator_tasks_in_progress"] == 0

    code, out, _ = fleet.enqueue("--retries", "0")
    assert code == EXIT_OK
    run_id = out.strip()
    wait_for(lambda: proxy.fired)
    # The stalled copy, once the task of the missing tag has failed (on a loaded machine it
    # may still be ending when the stall begins); the stall lasts 5 s.
    wait_for(lambda: metrics(port)["migrator_tasks_in_progress"] == 1, timeout=4)
    time.sleep(2.0)
    # The probe's own code, in this process: a loaded machine may take seconds to start the
    # probe's Python, and the copy resumes 5 s after it stalled.
    report = check(load_settings({**fleet.env, **env}))
    assert not report.healthy and report.tasks == 1
    (problem,) = report.problems  # the copy, not the loop: that one still turns
    assert "moved no byte for" in problem

    code, out = status(fleet, run_id)
    assert "Images(2) migration finished, 1 images tasks failed" in out, out + fleet.log("w")
    assert get_manifest(target_registry, "copy/slow", "1")[2] == image.digest
    assert probe(fleet, env)[0] == 0  # the copy ended: nothing is stalled any more

    after = metrics(port)
    assert after["migrator_images_total{outcome=\"copied\"}"] == 1
    assert after["migrator_images_total{outcome=\"failed\"}"] == 1
    assert after["migrator_failures_total{reason=\"not_found\",task=\"sync_image\"}"] == 1
    assert after["migrator_blobs_total{result=\"uploaded\"}"] == 2  # the layer and the config
    assert after["migrator_bytes_copied_total"] > len(layer)
    assert after["migrator_bytes_streamed_total"] >= after["migrator_bytes_copied_total"]
    assert after["migrator_tasks_in_progress"] == 0
    assert after["migrator_task_seconds_count{task=\"sync_image\"}"] == 2

    fleet.write({f"{proxy.host}/ns/slow:1": f"{target_registry.host}/copy/slow"},
                {proxy.host: {"insecure": True}, **insecure(target_registry)})
    code, out, _ = fleet.enqueue("--wait", "--timeout", "60")
    assert code == EXIT_OK, out
    again = metrics(port)
    assert again["migrator_images_total{outcome=\"up-to-date\"}"] == 1
    assert again["migrator_bytes_copied_total"] == after["migrator_bytes_copied_total"]


def start_slow_copy(fleet, source_registry, target_registry, fault_proxy, seconds: float):
    """Rules copying an image of one 24 MiB blob whose download answers `seconds` late (a
    copy in flight once `proxy.fired`); returns the image and the proxy."""
    big = make_layer(24 * 1024 * 1024, 22)
    image = push_image(source_registry, "ns/big", "1", layers=[big])
    proxy = fault_proxy(source_registry.url)
    proxy.delay(seconds, method="GET", path=sha256_digest(big), times=1)
    fleet.write({f"{proxy.host}/ns/big:1": f"{target_registry.host}/copy/big"},
                {proxy.host: {"insecure": True}, **insecure(target_registry)})
    return image, proxy


def test_sigterm_mid_copy_lets_the_copy_finish(fleet, source_registry, target_registry,
                                               fault_proxy):
    image, proxy = start_slow_copy(fleet, source_registry, target_registry, fault_proxy, 3.0)
    worker = fleet.start_worker("w", concurrency=1,
                                extra_env={"MIGRATOR_SHUTDOWN_TIMEOUT": "30"})
    code, out, _ = fleet.enqueue()
    run_id = out.strip()
    wait_for(lambda: proxy.fired)
    os.kill(worker.pid, signal.SIGTERM)  # what the kubelet sends first
    assert worker.wait(timeout=30) == 0  # exited on its own once the copy was done
    fleet.workers.pop("w")
    assert "Warm shutdown" in fleet.log("w") and "handed back" not in fleet.log("w")
    assert get_manifest(target_registry, "copy/big", "1")[2] == image.digest
    assert fleet.redis.llen(QUEUE) == 0 and fleet.redis.hlen("unacked") == 0  # acknowledged
    code, out = status(fleet, run_id, timeout=5)
    assert code == EXIT_OK and "Images(1) migration finished, 0 images tasks failed" in out


def test_sigterm_past_the_shutdown_timeout_hands_the_task_back(fleet, source_registry,
                                                               target_registry, fault_proxy):
    image, proxy = start_slow_copy(fleet, source_registry, target_registry, fault_proxy, 8.0)
    worker = fleet.start_worker("doomed", concurrency=1,
                                extra_env={"MIGRATOR_SHUTDOWN_TIMEOUT": "2"})
    code, out, _ = fleet.enqueue()
    run_id = out.strip()
    wait_for(lambda: proxy.fired)
    sent = time.monotonic()
    os.kill(worker.pid, signal.SIGTERM)
    assert worker.wait(timeout=10) == EXIT_HANDED_BACK
    assert time.monotonic() - sent < 5  # well before the blob would have arrived
    fleet.workers.pop("doomed")
    assert "handed back to the queue" in fleet.log("doomed")
    # back in the queue at once, not after the 600 s visibility timeout
    assert fleet.redis.llen(QUEUE) == 1 and fleet.redis.hlen("unacked") == 0
    assert not get_manifest_exists(target_registry, "copy/big", "1")

    fleet.start_worker("rescuer", concurrency=1)
    code, out = status(fleet, run_id)
    assert code == EXIT_OK, out + fleet.log("rescuer")
    assert "Images(1) migration finished, 0 images tasks failed" in out
    assert get_manifest(target_registry, "copy/big", "1")[2] == image.digest


def test_sigkill_after_the_grace_period_leaves_the_task_to_redis(fleet, source_registry,
                                                                 target_registry, fault_proxy):
    """The kubelet's last resort: SIGTERM, then SIGKILL before anything was handed back. The
    unacknowledged task comes back after the visibility timeout and the run completes."""
    fleet.env["MIGRATOR_VISIBILITY_TIMEOUT"] = "5"
    image, proxy = start_slow_copy(fleet, source_registry, target_registry, fault_proxy, 6.0)
    worker = fleet.start_worker("doomed", concurrency=1)  # no shutdown timeout: waits
    code, out, _ = fleet.enqueue()
    run_id = out.strip()
    wait_for(lambda: proxy.fired)
    os.kill(worker.pid, signal.SIGTERM)
    time.sleep(1.0)
    assert worker.poll() is None  # still waiting for its copy, as a warm shutdown does
    fleet.kill("doomed")
    assert fleet.redis.hlen("unacked") == 1 and fleet.redis.llen(QUEUE) == 0

    fleet.start_worker("rescuer", concurrency=1)
    code, out = status(fleet, run_id)
    assert code == EXIT_OK, out + fleet.log("rescuer")
    assert get_manifest(target_registry, "copy/big", "1")[2] == image.digest
