"""The per-registry metrics of a real worker (`celery -A workers worker`), scraped over HTTP
from its metrics server after real copies between real registries; and that server's
default address, loopback only.

Redis DB 3 of the local server (`MIGRATOR_TEST_METRICS_REDIS_DB`), flushed before and after.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest

from migrator.cli import EXIT_OK
from tests.integration.test_fleet import Fleet, insecure
from tests.integration.test_worker_health import free_port, metrics, status, wait_for
from tests.support.images import PushedImage, get_manifest, make_layer, push_image

METRICS_DB = int(os.environ.get("MIGRATOR_TEST_METRICS_REDIS_DB", "3"))
REDIS_URL = f"redis://127.0.0.1:6379/{METRICS_DB}"
PAIR_SERIES = re.compile(r'source_registry="([^"]*)",target_registry="([^"]*)"')


@pytest.fixture
def fleet(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MIGRATOR_METRICS_ADDRESS", raising=False)  # the default, whatever CI has
    instance = Fleet(tmp_path, capsys, redis_url=REDIS_URL)
    instance.env.update({"MIGRATOR_VISIBILITY_TIMEOUT": "600",
                         "MIGRATOR_HEALTH_DIR": str(tmp_path / "health")})
    instance.redis.flushdb()
    yield instance
    instance.stop_all()
    instance.redis.flushdb()
    instance.redis.close()


def image_bytes(image: PushedImage) -> int:
    """The bytes a first copy uploads: the config blob and every layer."""
    manifest = json.loads(image.manifest)
    return manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])


def pair(source: str, target: str, **labels: str) -> str:
    """A key of `metrics()`: labels sorted by name."""
    every = {"source_registry": source, "target_registry": target, **labels}
    return "{" + ",".join(f'{key}="{every[key]}"' for key in sorted(every)) + "}"


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def test_per_registry_series_after_real_copies_on_a_loopback_only_server(
        fleet, registry_factory, fault_proxy):
    source, target_a, target_b = registry_factory(), registry_factory(), registry_factory()
    image_a = push_image(source, "ns/a", "1", layers=[make_layer(64 * 1024, 41)])
    image_b = push_image(source, "ns/b", "1", layers=[make_layer(96 * 1024, 42),
                                                     make_layer(32 * 1024, 43)])
    # The same source through a proxy: a second source registry (host:port) for the labels,
    # and one 503 on its manifest, which with one HTTP attempt makes a task retry.
    proxy = fault_proxy(source)
    proxy.status(503, path="/v2/ns/b/manifests/", times=1)
    rules = {f"{source.host}/ns/a:1,missing": f"{target_a.host}/copy/a",
             f"{proxy.host}/ns/b:1": f"{target_b.host}/copy/b"}
    auth = {**insecure(source, target_a, target_b), proxy.host: {"insecure": True}}
    fleet.write(rules, auth)
    port = free_port()
    fleet.start_worker("w", extra_env={"MIGRATOR_METRICS_PORT": str(port),
                                       "MIGRATOR_HTTP_ATTEMPTS": "1"})

    # Loopback only: 127.0.0.2 reaches a socket bound to every address on this machine (the
    # control below), yet not the metrics server.
    assert f"metrics on http://127.0.0.1:{port}/metrics" in fleet.log("w")
    assert accepts("127.0.0.1", port)
    assert not accepts("127.0.0.2", port)
    with socket.socket() as control:
        control.bind(("0.0.0.0", 0))
        control.listen()
        assert accepts("127.0.0.2", control.getsockname()[1])

    code, out, _ = fleet.enqueue()
    assert code == EXIT_OK, out
    run_id = out.strip()
    code, out = status(fleet, run_id)
    assert "Images(3) migration finished, 1 images tasks failed" in out, out + fleet.log("w")
    assert get_manifest(target_b, "copy/b", "1")[2] == image_b.digest
    assert proxy.fired  # the 503 was answered

    a, b = (source.host, target_a.host), (proxy.host, target_b.host)
    # Celery records the failure in the run (on_failure) before the task_failure signal counts it
    failed = f"migrator_registry_failures_total{pair(*a, task='sync_image', reason='not_found')}"
    wait_for(lambda: metrics(port).get(failed) == 1, timeout=10)
    after = metrics(port)
    assert after[f"migrator_registry_bytes_copied_total{pair(*a)}"] == image_bytes(image_a)
    assert after[f"migrator_registry_bytes_copied_total{pair(*b)}"] == image_bytes(image_b)
    assert after["migrator_bytes_copied_total"] == image_bytes(image_a) + image_bytes(image_b)
    assert after[f"migrator_registry_images_total{pair(*a, outcome='copied')}"] == 1
    assert after[f"migrator_registry_images_total{pair(*a, outcome='failed')}"] == 1
    assert after[f"migrator_registry_images_total{pair(*b, outcome='copied')}"] == 1
    assert after[f"migrator_registry_images_total{pair(*b, outcome='failed')}"] == 0
    assert after[f"migrator_registry_retries_total{pair(*b, reason='http_5xx')}"] == 1
    assert after["migrator_retries_total{reason=\"http_5xx\"}"] == 1
    # Only these two pairs, and only hosts as values: no repository, tag, run or URL.
    pairs = {found for key in after for found in PAIR_SERIES.findall(key)}
    assert pairs == {a, b}
    assert not [key for key in after if "ns/" in key or "copy/" in key or run_id in key]

    # A second run of the same images: up to date, per pair; no byte more.
    fleet.write({f"{source.host}/ns/a:1": f"{target_a.host}/copy/a",
                 f"{proxy.host}/ns/b:1": f"{target_b.host}/copy/b"}, auth)
    code, out, _ = fleet.enqueue("--wait", "--timeout", "60")
    assert code == EXIT_OK, out + fleet.log("w")
    again = metrics(port)
    for key in (a, b):
        assert again[f"migrator_registry_images_total{pair(*key, outcome='up-to-date')}"] == 1
        assert again[f"migrator_registry_bytes_copied_total{pair(*key)}"] == after[
            f"migrator_registry_bytes_copied_total{pair(*key)}"]
