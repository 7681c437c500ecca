"""The per-registry metrics of workers/health.py, in this process: which registry a task's
arguments name, the bound on label values, and what each hook counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from migrator.errors import RegistryError, RetryableStatus
from migrator.fleet import job_from_args
from migrator.rules import Job
from migrator.settings import load_settings
from workers import health


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@dataclass
class Result:  # the fields of migrator.copy.CopyResult that health.copied reads
    job: Job
    outcome: str = "copied"
    blobs_copied: int = 0
    blobs_mounted: int = 0
    blobs_skipped: int = 0
    bytes_copied: int = 0
    note: str = field(default="")


@pytest.fixture
def labels(monkeypatch: pytest.MonkeyPatch) -> health.LabelValues:
    """A fresh label bound, so that tests do not share the registries they have seen."""
    fresh = health.LabelValues(50)
    monkeypatch.setattr(health, "registry_label", fresh)
    return fresh


def test_metrics_listen_on_loopback_unless_told_otherwise():
    assert load_settings({}).metrics_address == "127.0.0.1"
    assert load_settings({"MIGRATOR_METRICS_ADDRESS": "0.0.0.0"}).metrics_address == "0.0.0.0"
    assert load_settings({}).metrics_port == 0  # and no server at all unless asked


@pytest.mark.parametrize(("argument", "registry"), [
    ("quay.io/coreos/etcd:v3.5.0", "quay.io"),
    ("127.0.0.1:5000/ns/app@sha256:" + "a" * 64, "127.0.0.1:5000"),
    ("docker.io/library/nginx:1", "docker.io"),
    ("index.docker.io/library/nginx", "docker.io"),
    ("nginx", "docker.io"),
    ("registry.example.com:8443/team/*", "registry.example.com:8443"),  # a catalog rule
    ("registry.example.com/*", "registry.example.com"),
    ("https://user:pw@host/x", "unknown"),  # never a URL or credentials as a label
    ("not a reference", "unknown"),
    (None, "unknown"),
])
def test_a_registry_label_is_the_host_only(argument, registry):
    assert health.registry_of(argument) == registry


def test_task_registries_read_the_arguments_the_callers_send(labels):
    sync = ["run-1", "quay.io/a/b:1", "registry.example.com/m/b:1"]
    assert health.task_registries(sync, {"rule": "images.json: 'quay.io/a/b'", "retries": 3}) \
        == ("quay.io", "registry.example.com")
    expand = ["run-1", {"source": "ghcr.io/org/*", "target": "registry.example.com/org",
                        "rule": "images.json: 'ghcr.io/org/*'", "catalog": True}]
    assert health.task_registries(expand, {}) == ("ghcr.io", "registry.example.com")
    assert health.task_registries([], {"rule": expand[1]}) == ("ghcr.io", "registry.example.com")
    assert health.task_registries([], {"source": "quay.io/a:1", "target": "x.io/a:1"}) == (
        "quay.io", "x.io")
    assert health.task_registries([{"name": "nightly"}], {}) is None  # start_scheduled_run
    assert health.task_registries(None, None) is None


def test_label_values_are_bounded(labels):
    labels.limit = 3
    assert [labels(f"r{i}.example.com") for i in range(5)] == [
        "r0.example.com", "r1.example.com", "r2.example.com", "other", "other"]
    assert labels("r1.example.com") == "r1.example.com"  # a known one keeps its value


def test_install_takes_the_limit_from_the_settings(monkeypatch, labels):
    from celery import Celery

    monkeypatch.setattr(health, "_state", health._State())
    health.install(Celery("test"), load_settings({"MIGRATOR_METRICS_MAX_REGISTRIES": "7"}))
    assert labels.limit == 7


def test_a_copy_counts_its_bytes_and_outcome_under_its_registry_pair(labels):
    pair = {"source_registry": "src.example.com", "target_registry": "dst.example.com:5000"}
    job = job_from_args("src.example.com/ns/app:1", "dst.example.com:5000/copy/app:1")
    bytes_before = value("migrator_registry_bytes_copied_total", **pair)
    total_before = value("migrator_bytes_copied_total")
    copied_before = value("migrator_registry_images_total", **pair, outcome="copied")
    same_before = value("migrator_registry_images_total", **pair, outcome="up-to-date")

    health.copied(Result(job, "copied", blobs_copied=2, bytes_copied=1234))
    health.copied(Result(job, "up-to-date"))

    assert value("migrator_registry_bytes_copied_total", **pair) - bytes_before == 1234
    assert value("migrator_bytes_copied_total") - total_before == 1234  # the old total too
    assert value("migrator_registry_images_total", **pair, outcome="copied") \
        - copied_before == 1
    assert value("migrator_registry_images_total", **pair, outcome="up-to-date") \
        - same_before == 1


def test_a_pair_past_the_limit_is_counted_as_other(labels):
    labels.limit = 1
    health.copied(Result(job_from_args("one.example.com/a:1", "one.example.com/b:1")))
    other = {"source_registry": "other", "target_registry": "other"}
    before = value("migrator_registry_bytes_copied_total", **other)
    health.copied(Result(job_from_args("two.example.com/a:1", "three.example.com/b:1"),
                         bytes_copied=10))
    assert value("migrator_registry_bytes_copied_total", **other) - before == 10


def test_a_task_start_opens_its_pair_at_zero(labels, monkeypatch):
    monkeypatch.setattr(health, "_state", health._State())  # no heartbeat files
    pair = {"source_registry": "fresh.example.com", "target_registry": "dst.example.com"}
    health._task_started("t-open", SimpleNamespace(name="migrator.sync_image"),
                         args=["run", "fresh.example.com/a:1", "dst.example.com/a:1"])
    health._task_ended("t-open", SimpleNamespace(name="migrator.sync_image"))
    assert REGISTRY.get_sample_value("migrator_registry_bytes_copied_total", pair) == 0
    for outcome in ("copied", "up-to-date", "skipped", "failed"):
        assert REGISTRY.get_sample_value("migrator_registry_images_total",
                                         {**pair, "outcome": outcome}) == 0


def test_failures_and_retries_are_counted_under_the_task_registries(labels):
    pair = {"source_registry": "src.example.com", "target_registry": "dst.example.com"}
    sync = SimpleNamespace(name="migrator.sync_image")
    args = ["run", "src.example.com/ns/app:1", "dst.example.com/copy/app:1"]
    failed = value("migrator_registry_failures_total", task="sync_image", **pair,
                   reason="not_found")
    images_failed = value("migrator_registry_images_total", **pair, outcome="failed")
    retried = value("migrator_registry_retries_total", **pair, reason="http_429")

    health._task_failed(sender=sync, exception=RegistryError("no such tag", status=404),
                        args=args, kwargs={})
    health._task_retried(request=SimpleNamespace(args=args, kwargs={}),
                         reason=RetryableStatus("slow down", status=429))

    assert value("migrator_registry_failures_total", task="sync_image", **pair,
                 reason="not_found") - failed == 1
    assert value("migrator_registry_images_total", **pair, outcome="failed") \
        - images_failed == 1
    assert value("migrator_registry_retries_total", **pair, reason="http_429") - retried == 1

    # an expansion that failed is a failure of its rule's pair, not an image
    expand = SimpleNamespace(name="migrator.expand_rule")
    health._task_failed(sender=expand, exception=RegistryError("denied", status=403),
                        args=["run", {"source": "src.example.com/ns/*",
                                      "target": "dst.example.com/copy", "rule": "r"}])
    assert value("migrator_registry_failures_total", task="expand_rule", **pair,
                 reason="denied") >= 1
    assert value("migrator_registry_images_total", **pair, outcome="failed") \
        - images_failed == 1


def test_no_label_value_is_a_repository_a_tag_or_a_message(labels):
    from prometheus_client import generate_latest

    health._task_failed(sender=SimpleNamespace(name="migrator.sync_image"),
                        exception=RegistryError("secret-ish message", status=500),
                        args=["run-77", "leak.example.com/private/repo:v9",
                              "dst.example.com/private/repo:v9"])
    text = generate_latest(REGISTRY).decode()
    lines = [line for line in text.splitlines() if line.startswith("migrator_")]
    assert any("leak.example.com" in line for line in lines)
    for forbidden in ("private/repo", "v9", "run-77", "secret-ish", "http://", "https://"):
        assert not any(forbidden in line for line in lines), forbidden
