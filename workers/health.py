"""A worker's health: the liveness check, the product's Prometheus counters, and a shutdown
that lets running copies finish or hands their tasks back.

Liveness: `python -m workers.health` (the Kubernetes liveness and startup probe)
    Each worker process keeps small files in `MIGRATOR_HEALTH_DIR` (local to its container):

      worker-<pid>            touched every few seconds by a timer on the consumer's event
                              loop; it ages when that loop stops turning (a deadlock, a
                              stopped process, a consumer stuck reconnecting to Redis)
      task-<pid>-<task id>    created when a task starts, touched (at most once a second)
                              while its copy moves bytes, removed when the task ends; it ages
                              when a copy is stalled
      worker-<pid>.stopping   written on SIGTERM: a draining worker's loop is stopped on
                              purpose, so only its tasks are judged

    The check exits 1 when a live worker's loop has been silent for `MIGRATOR_LIVENESS_TIMEOUT`
    seconds, when one of its tasks moved no byte for `MIGRATOR_STALL_TIMEOUT` seconds, or when
    there is no live worker at all; 0 otherwise. Files of processes that no longer exist are
    ignored (a restarted worker removes them). It reads files only, no Redis: a probe costs
    a Python start (importing the `workers` package, about 0.5 s of CPU) and a few stat().

Metrics: `MIGRATOR_METRICS_PORT` (0, the default: off) on `MIGRATOR_METRICS_ADDRESS` (127.0.0.1)
    Each worker process serves `/metrics` for Prometheus: bytes copied and streamed, blobs
    uploaded / mounted / skipped, images copied / up-to-date / skipped (platform filter) /
    failed, final failures and retries by reason class (a small fixed set: `auth`,
    `not_found`, `denied`, `transport`, `http_429`, `http_5xx`, `digest_mismatch`, ...),
    tasks in progress and task durations; and the same bytes, images, failures and retries
    per `source_registry` and `target_registry` (`migrator_registry_*`). A registry label
    holds a host[:port] only, and at most `MIGRATOR_METRICS_MAX_REGISTRIES` of them per
    process (later ones: `other`). No run, repository, tag or message is ever a label value
    (docs/metrics.md says why there is no `run` label).
    With `--pool prefork`, set `PROMETHEUS_MULTIPROC_DIR` so the children's counts add up.

Shutdown: `MIGRATOR_SHUTDOWN_TIMEOUT` (0, the default: Celery's warm shutdown, unbounded)
    SIGTERM makes Celery stop taking tasks and wait for the running ones. With a timeout, a
    copy still running when it expires has its task handed back to the queue at once
    (rejected with requeue: no wait for the Redis visibility timeout) and the process exits
    with EXIT_HANDED_BACK, before the orchestrator's SIGKILL. Copies are idempotent, so the
    worker that picks the task up again finishes it; blobs already uploaded are skipped.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery, bootsteps, signals
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from migrator.errors import (
    AuthError,
    BlobUnknownOnPush,
    ConfigError,
    DigestMismatch,
    ManifestUnsupported,
    MigratorError,
    RegistryError,
    RetryableStatus,
    TransportError,
)
from migrator.reference import check_registry, parse
from migrator.settings import Settings, default, load_settings

log = logging.getLogger(__name__)

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1
EXIT_HANDED_BACK = os.EX_TEMPFAIL  # the worker exited with tasks handed back to the queue
PROGRESS_TOUCH_INTERVAL = 1.0  # seconds between two touches of a task's progress file
HAND_BACK_NOT_BEFORE = 2.0  # seconds after SIGTERM (see _hand_back_after)

# -- metrics -----------------------------------------------------------------------------

BYTES_COPIED = Counter(
    "migrator_bytes_copied", "Bytes of blobs uploaded to targets (complete, verified blobs)")
BYTES_STREAMED = Counter(
    "migrator_bytes_streamed", "Bytes read from sources while streaming blobs (tries included)")
BLOBS = Counter("migrator_blobs", "Blobs handled, by result", ["result"])
IMAGES = Counter("migrator_images", "Images (tags or digests) handled, by outcome", ["outcome"])
FAILURES = Counter("migrator_failures", "Tasks that failed for good, by task and reason class",
                   ["task", "reason"])
RETRIES = Counter("migrator_retries", "Task retries, by reason class", ["reason"])
IN_PROGRESS = Gauge("migrator_tasks_in_progress", "Tasks running in this worker",
                    multiprocess_mode="livesum")
TASK_SECONDS = Histogram("migrator_task_seconds", "Task run time in seconds", ["task"],
                         buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600))
for _result in ("uploaded", "mounted", "skipped"):
    BLOBS.labels(result=_result)
for _outcome in ("copied", "up-to-date", "skipped", "failed"):
    IMAGES.labels(outcome=_outcome)

# The same counts per registry pair. New families beside the ones above, not labels added to
# them: those keep their exact series, so existing queries and dashboards are unchanged.
PAIR = ("source_registry", "target_registry")
REGISTRY_BYTES = Counter("migrator_registry_bytes_copied",
                         "Bytes of blobs uploaded to targets, by source and target registry", PAIR)
REGISTRY_IMAGES = Counter("migrator_registry_images",
                          "Images handled, by source and target registry and outcome",
                          [*PAIR, "outcome"])
REGISTRY_FAILURES = Counter("migrator_registry_failures",
                            "Tasks that failed for good, by task, source and target registry "
                            "and reason class", ["task", *PAIR, "reason"])
REGISTRY_RETRIES = Counter("migrator_registry_retries",
                           "Task retries, by source and target registry and reason class",
                           [*PAIR, "reason"])
OTHER_REGISTRY = "other"  # a registry past the label limit
UNKNOWN_REGISTRY = "unknown"  # task arguments that name no registry


class LabelValues:
    """The first `limit` distinct values one process gives a label; any later one is
    `other`. The rules choose the registries, so this is what bounds the series."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return OTHER_REGISTRY


registry_label = LabelValues(default("metrics_max_registries"))  # install() sets the limit


def registry_of(reference: object) -> str:
    """The registry host[:port] of a task argument (`host/repo:tag`, or a catalog rule's
    `host/ns/*`); never its repository or tag, which would make a series per image."""
    if not isinstance(reference, str):
        return UNKNOWN_REGISTRY
    try:
        return parse(reference).registry
    except ConfigError:
        pass
    try:  # a catalog source: `*` is no repository, but its first component is the host
        return check_registry(reference.split("/", 1)[0])
    except ConfigError:
        return UNKNOWN_REGISTRY


def task_registries(args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None
                    ) -> tuple[str, str] | None:
    """(source, target) registry labels of a task, from its arguments as the callers send
    them: `sync_image(run_id, source, target, ...)`, `expand_rule(run_id, {"source": ...,
    "target": ...}, ...)`; None for a task that copies nothing."""
    args, kwargs = list(args or ()), dict(kwargs or {})
    rule = args[1] if len(args) > 1 else kwargs.get("rule")
    if isinstance(rule, Mapping):
        source, target = rule.get("source"), rule.get("target")
    elif len(args) > 2:
        source, target = args[1], args[2]
    elif "source" in kwargs or "target" in kwargs:
        source, target = kwargs.get("source"), kwargs.get("target")
    else:
        return None
    return registry_label(registry_of(source)), registry_label(registry_of(target))


def _open_pair(pair: tuple[str, str]) -> None:
    """Create a pair's bytes and image series at 0 when its first task starts: rate() and
    increase() count no increment of a series born at its first value."""
    source, target = pair
    REGISTRY_BYTES.labels(source_registry=source, target_registry=target)
    for outcome in ("copied", "up-to-date", "skipped", "failed"):
        REGISTRY_IMAGES.labels(source_registry=source, target_registry=target, outcome=outcome)


def reason_class(error: BaseException) -> str:
    """A failure's class for a metric label: a small fixed set, never a message or a URL."""
    error = getattr(error, "exc", None) or error  # celery's Retry wraps the original error
    if isinstance(error, TransportError):
        return "transport"
    if isinstance(error, RetryableStatus):
        return "http_429" if error.status == 429 else "http_5xx" if (
            error.status or 0) >= 500 else "http_retryable"
    if isinstance(error, DigestMismatch):
        return "digest_mismatch"
    if isinstance(error, ManifestUnsupported):
        return "unsupported_manifest"
    if isinstance(error, BlobUnknownOnPush):
        return "blob_unknown"
    if isinstance(error, AuthError):
        return "auth"
    if isinstance(error, RegistryError):
        if error.status == 404:
            return "not_found"
        if error.status in (401, 403):
            return "denied"
        return "registry"
    if isinstance(error, ConfigError):
        return "config"
    if isinstance(error, MigratorError):
        return "other"
    return "unexpected"


def copied(result: Any) -> None:
    """Count one finished `copy_image` (a `migrator.copy.CopyResult`)."""
    IMAGES.labels(outcome=result.outcome).inc()
    BLOBS.labels(result="uploaded").inc(result.blobs_copied)
    BLOBS.labels(result="mounted").inc(result.blobs_mounted)
    BLOBS.labels(result="skipped").inc(result.blobs_skipped)
    BYTES_COPIED.inc(result.bytes_copied)
    source = registry_label(result.job.source.registry)
    target = registry_label(result.job.target.registry)
    REGISTRY_IMAGES.labels(source_registry=source, target_registry=target,
                           outcome=result.outcome).inc()
    # inc(0) too: an up-to-date pair has its bytes series, at 0, from its first image on
    REGISTRY_BYTES.labels(source_registry=source, target_registry=target).inc(
        result.bytes_copied)


def metrics_registry() -> CollectorRegistry:
    """What the metrics server exposes: this process, or every process of a prefork pool."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    from prometheus_client import REGISTRY

    return REGISTRY


# -- heartbeat files ---------------------------------------------------------------------


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except FileNotFoundError:
        path.touch()


class Progress:
    """The progress file of one running task; called with each chunk's size as bytes move
    (the `on_bytes` of `copy_image`, from any of the copy's blob threads)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.started = time.monotonic()
        self._last = self.started
        if path is not None:
            _touch(path)

    def __call__(self, size: int) -> None:
        BYTES_STREAMED.inc(size)
        now = time.monotonic()
        if self.path is not None and now - self._last >= PROGRESS_TOUCH_INTERVAL:
            self._last = now
            try:
                _touch(self.path)
            except OSError as exc:  # a full or vanished dir must not fail the copy
                log.debug("cannot touch %s: %s", self.path, exc)

    def close(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class _State:
    """This process's health settings and running tasks (one per process, set by install)."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.tasks: dict[str, Progress] = {}
        self.lock = threading.Lock()
        self.handing_back = False  # a hand-back is armed (a second SIGTERM arms no other)

    @property
    def dir(self) -> Path | None:
        return self.settings.health_dir if self.settings is not None else None


_state = _State()


def progress(task_id: str | None) -> Progress:
    """The progress callback of a running task (a no-op file-wise outside a worker)."""
    with _state.lock:
        found = _state.tasks.get(task_id or "")
    return found if found is not None else Progress(None)


def heartbeat_interval(settings: Settings) -> float:
    return max(0.2, min(10.0, settings.liveness_timeout / 4))


def _worker_file(pid: int | None = None) -> Path:
    assert _state.dir is not None
    return _state.dir / f"worker-{pid or os.getpid()}"


def _clean_dead(directory: Path) -> None:
    """Remove the files of processes that no longer exist (a previous run of the container)."""
    for path in directory.iterdir():
        pid = _pid_of(path.name)
        if pid is not None and not _alive(pid):
            path.unlink(missing_ok=True)


class LivenessBeat(bootsteps.StartStopStep):
    """Consumer step: touch `worker-<pid>` from the consumer's own event loop timer, so the
    file ages exactly when the loop that polls Redis and dispatches tasks stops turning."""

    label = "Liveness heartbeat"

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.tref: Any = None
        self.failing = False

    def start(self, c: Any) -> None:
        if _state.settings is None:
            return
        self.failing = False
        try:
            path = _worker_file()
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.with_name(path.name + ".stopping").unlink(missing_ok=True)
        except OSError as exc:
            log.error("liveness heartbeat in %s: %s", _state.dir, exc)
        self.beat()
        self.tref = c.timer.call_repeatedly(heartbeat_interval(_state.settings), self.beat)

    def beat(self) -> None:
        try:
            _touch(_worker_file())
            self.failing = False
        except OSError as exc:  # the probe will say so; the worker itself goes on
            if not self.failing:
                log.error("liveness heartbeat not written: %s", exc)
            self.failing = True

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop


class MetricsServer(bootsteps.StartStopStep):
    """Worker step: serve `/metrics` on `MIGRATOR_METRICS_ADDRESS`:`MIGRATOR_METRICS_PORT` for
    as long as the worker runs."""

    label = "Prometheus metrics"

    def __init__(self, w: Any, **kwargs: Any) -> None:
        super().__init__(w, **kwargs)
        self.server: Any = None

    def include_if(self, w: Any) -> bool:
        return _state.settings is not None and _state.settings.metrics_port > 0

    def start(self, w: Any) -> None:
        from prometheus_client import start_http_server

        assert _state.settings is not None
        address, port = _state.settings.metrics_address, _state.settings.metrics_port
        try:
            self.server, _ = start_http_server(port, addr=address, registry=metrics_registry())
        except OSError as exc:  # no metrics is no reason to stop copying
            log.error("no metrics: cannot listen on %s:%d: %s", address, port, exc)
            return
        log.info("metrics on http://%s:%d/metrics", address, port)

    def stop(self, w: Any) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    shutdown = stop


def install(app: Celery, settings: Settings) -> None:
    """Give the worker app its heartbeat and metrics steps; the signal handlers below are
    connected when this module is imported."""
    _state.settings = settings
    registry_label.limit = settings.metrics_max_registries
    app.steps["consumer"].add(LivenessBeat)
    app.steps["worker"].add(MetricsServer)


@signals.worker_init.connect
def _prepare_dir(**_: Any) -> None:
    if _state.dir is None:
        return
    try:
        _state.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _clean_dead(_state.dir)
    except OSError as exc:
        log.error("liveness heartbeat directory %s: %s", _state.dir, exc)


@signals.task_prerun.connect
def _task_started(task_id: str, task: Any, args: Sequence[Any] | None = None,
                  kwargs: Mapping[str, Any] | None = None, **_: Any) -> None:
    pair = task_registries(args, kwargs)
    if pair is not None:
        _open_pair(pair)
    directory = _state.dir
    path = directory / f"task-{os.getpid()}-{task_id}" if directory is not None else None
    try:
        tracker = Progress(path)
    except OSError as exc:
        log.warning("task progress file not written: %s", exc)
        tracker = Progress(None)
    with _state.lock:
        _state.tasks[task_id] = tracker
    IN_PROGRESS.inc()


@signals.task_postrun.connect
def _task_ended(task_id: str, task: Any, **_: Any) -> None:
    with _state.lock:
        tracker = _state.tasks.pop(task_id, None)
    IN_PROGRESS.dec()
    if tracker is not None:
        TASK_SECONDS.labels(task=_short(task.name)).observe(time.monotonic() - tracker.started)
        tracker.close()


@signals.task_failure.connect
def _task_failed(sender: Any = None, exception: BaseException | None = None,
                 args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
                 **_: Any) -> None:
    name = _short(getattr(sender, "name", "") or "")
    reason = reason_class(exception or Exception())
    FAILURES.labels(task=name, reason=reason).inc()
    if name == "sync_image":
        IMAGES.labels(outcome="failed").inc()
    pair = task_registries(args, kwargs)
    if pair is not None:
        source, target = pair
        REGISTRY_FAILURES.labels(task=name, source_registry=source, target_registry=target,
                                 reason=reason).inc()
        if name == "sync_image":
            REGISTRY_IMAGES.labels(source_registry=source, target_registry=target,
                                   outcome="failed").inc()


@signals.task_retry.connect
def _task_retried(request: Any = None, reason: BaseException | None = None,
                  **_: Any) -> None:
    why = reason_class(reason or Exception())
    RETRIES.labels(reason=why).inc()
    pair = task_registries(getattr(request, "args", None), getattr(request, "kwargs", None))
    if pair is not None:
        REGISTRY_RETRIES.labels(source_registry=pair[0], target_registry=pair[1],
                                reason=why).inc()


@signals.worker_process_shutdown.connect
def _process_gone(pid: int | None = None, **_: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())


def _short(task_name: str) -> str:
    return task_name.rsplit(".", 1)[-1]


# -- shutdown ----------------------------------------------------------------------------


@signals.worker_shutting_down.connect
def _shutting_down(how: str = "Warm", **_: Any) -> None:
    """Runs in the MainProcess's signal handler: mark the worker as draining and, with a
    shutdown timeout, arm the hand-back of whatever is still running when it expires."""
    settings = _state.settings
    if settings is None:
        return
    try:
        marker = _worker_file()
        marker.with_name(marker.name + ".stopping").touch()
    except OSError:
        pass
    if how == "Warm" and settings.shutdown_timeout > 0 and not _state.handing_back:
        _state.handing_back = True
        threading.Thread(target=_hand_back_after, args=(settings.shutdown_timeout,),
                         name="hand-back", daemon=True).start()


def _hand_back_after(timeout: float) -> None:
    from celery.worker import state

    # Not before the consumer's last BRPOP (1 s) has expired: a task pushed back while it
    # is pending would be delivered to this very worker, which no longer reads it.
    deadline = time.monotonic() + max(timeout, HAND_BACK_NOT_BEFORE)
    while time.monotonic() < deadline:
        if not state.reserved_requests and not state.active_requests:
            return  # everything finished: Celery's warm shutdown ends on its own
        time.sleep(0.1)
    requests = [request for request in (*state.active_requests, *state.reserved_requests)
                if not request.acknowledged]
    handed = []
    for request in dict.fromkeys(requests):
        try:
            # The message itself, now: Request.reject() would only schedule the reject on
            # the consumer's event loop, which a warm shutdown has stopped.
            request.message.reject(requeue=True)
            request.acknowledged = True  # nothing may ack it any more
            handed.append(request.id)
        except Exception as exc:  # the broker is gone: the visibility timeout will do it
            log.error("task %s could not be handed back (%s); Redis redelivers it after "
                      "MIGRATOR_VISIBILITY_TIMEOUT", request.id, exc)
    log.warning("shutdown: %d running task(s) still unfinished after %gs, handed back to "
                "the queue: %s", len(handed), timeout, ", ".join(handed) or "-")
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_HANDED_BACK)


# -- the check ---------------------------------------------------------------------------


@dataclass
class Report:
    problems: list[str]
    workers: int
    tasks: int

    @property
    def healthy(self) -> bool:
        return not self.problems


def _pid_of(name: str) -> int | None:
    parts = name.split("-")
    if len(parts) >= 2 and parts[0] in ("worker", "task"):
        digits = parts[1].split(".", 1)[0]
        if digits.isdigit():
            return int(digits)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie answers kill(0) but is dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def check(settings: Settings, now: float | None = None) -> Report:
    """Judge every live worker process that keeps its files in `settings.health_dir`."""
    now = time.time() if now is None else now
    directory = settings.health_dir
    try:
        entries = list(directory.iterdir())
    except OSError as exc:
        return Report([f"no heartbeat directory {directory}: {exc.strerror or exc}"], 0, 0)
    names = {path.name for path in entries}
    problems: list[str] = []
    workers = tasks = 0
    for path in sorted(entries):
        pid = _pid_of(path.name)
        if pid is None or path.name.endswith(".stopping") or not _alive(pid):
            continue
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:  # a task that just ended
            continue
        if path.name.startswith("worker-"):
            workers += 1
            if age > settings.liveness_timeout and f"{path.name}.stopping" not in names:
                problems.append(f"worker {pid}: its consumer loop has been silent for "
                                f"{age:.0f}s (limit {settings.liveness_timeout:g}s)")
        else:
            tasks += 1
            if age > settings.stall_timeout:
                task_id = path.name.split("-", 2)[2]
                problems.append(f"worker {pid}: task {task_id} moved no byte for {age:.0f}s "
                                f"(limit {settings.stall_timeout:g}s)")
    if not workers:
        problems.append(f"no live worker heartbeat in {directory} (starting, or exited)")
    return Report(problems, workers, tasks)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workers.health",
        description="Liveness of the Celery workers of this container: exit 0 when every "
                    "worker's consumer loop turns and no task is stalled, 1 otherwise.")
    parser.parse_args(argv)
    report = check(load_settings())
    for problem in report.problems:
        print(f"unhealthy: {problem}", file=sys.stderr)
    if report.healthy:
        print(f"ok: {report.workers} worker(s), {report.tasks} task(s) running")
        return EXIT_HEALTHY
    return EXIT_UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
