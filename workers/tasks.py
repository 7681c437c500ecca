"""The fleet's two tasks. Both call the one engine (`migrator.copy.copy_image`); only the
ledger (Redis, shared) and the executor (Celery) differ from `migrator sync`.

Retries are Celery's `retry()`, for the retryable branch of the error tree only (connection
faults, timeouts, 408/429/5xx), with exponential backoff and jitter; the run's `--retries` is
each execution's limit (`RunTask.retried`). Permanent errors fail at once, and every final
failure lands in the run's record with its reason (`on_failure`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import redis
from celery import Task
from celery.utils.time import get_exponential_backoff_interval

from migrator.auth import AuthFile, load_auth, merge
from migrator.copy import (
    ClientPool,
    Clients,
    CopyOptions,
    copy_image,
    synced_immutable,
    unchanged_on_record,
)
from migrator.errors import ConfigError, MigratorError, RetryableError
from migrator.expand import expand
from migrator.fleet import (
    EXPAND_TASK,
    SYNC_TASK,
    auth_from_transport,
    job_from_args,
    job_kwargs,
    rule_from_args,
    start_run,
)
from migrator.ledger import RedisLedger, text
from migrator.rules import Job, Rule, load_rules, resolve_defaults
from migrator.runner import describe
from migrator.runs import RunStore
from migrator.settings import Settings, load_settings
from migrator.throttle import RedisThrottle
from workers import health, reaper
from workers.app import app
from workers.schedule import START_TASK, Schedule

log = logging.getLogger(__name__)
RUN_AUTH_CACHE = 64
# Seconds a worker trusts its last look that a run was not cancelled: a run of many small
# images asks once a second rather than once per image (a cancel reaches every queued task
# of the run within this; a cancelled answer is final and kept).
CANCEL_LOOK_EVERY = 1.0
health.install(app, load_settings())  # liveness heartbeat, metrics, bounded shutdown
reaper.install(app, load_settings())  # the lease in Redis, and the sweep for dead workers' tasks


class WorkerContext:
    """What a worker process shares between its tasks: settings, Redis, the ledger, the
    registry connections, the blob threads. Built after a fork, never inherited across one."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        settings = load_settings()
        if settings.trust_ledger is None:  # the fleet's record is shared: trust it
            settings = settings.model_copy(update={"trust_ledger": True})
        self.settings: Settings = settings
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.ledger = RedisLedger(self.redis, prefix=settings.redis_prefix,
                                  lock_ttl=settings.lock_ttl, lock_wait=settings.lock_wait,
                                  upload_ttl=settings.upload_session_ttl)
        self.runs = RunStore(self.redis, prefix=settings.redis_prefix, ttl=settings.run_ttl,
                             finished_ttl=settings.finished_run_ttl)
        # Limits and pauses per registry are the fleet's, not this process's.
        self.pool = ClientPool(settings,
                               RedisThrottle(self.redis, prefix=settings.redis_prefix))
        self.blob_pool = ThreadPoolExecutor(settings.blob_parallelism * 8,
                                            thread_name_prefix="blob")
        # The worker's own file, if any, then its own Docker config (HOME, DOCKER_CONFIG).
        self.own_auth = load_auth(settings.auth_file or None, environ=os.environ, required=True)
        self._clients: dict[str, Clients] = {}
        self._not_cancelled: dict[str, float] = {}  # run id → when last seen not cancelled
        self._lock = threading.Lock()

    def cancelled(self, run_id: str) -> bool:
        """Whether `migrator cancel` stopped the run (see CANCEL_LOOK_EVERY)."""
        now = time.monotonic()
        with self._lock:
            seen = self._not_cancelled.get(run_id)
        if seen is not None and now - seen < CANCEL_LOOK_EVERY:
            return False
        if self.runs.cancelled(run_id):
            return True
        with self._lock:
            if len(self._not_cancelled) >= RUN_AUTH_CACHE:
                self._not_cancelled.pop(next(iter(self._not_cancelled)))
            self._not_cancelled[run_id] = now
        return False

    def clients(self, run_id: str) -> Clients:
        """The run's credentials over the worker's own file, read once per run."""
        with self._lock:
            clients = self._clients.get(run_id)
        if clients is None:
            run_auth = auth_from_transport(self.runs.auth(run_id), self.settings)
            clients = Clients(merge(self.own_auth, run_auth), self.pool)
            with self._lock:
                if len(self._clients) >= RUN_AUTH_CACHE:
                    self._clients.pop(next(iter(self._clients)))
                self._clients[run_id] = clients
        return clients


_context: WorkerContext | None = None
_context_lock = threading.Lock()


def context() -> WorkerContext:
    global _context
    with _context_lock:
        if _context is None or _context.pid != os.getpid():
            _context = WorkerContext()
        return _context


class RunTask(Task):
    retry_backoff_max = 300
    retry_jitter = True
    max_retries = 3

    @contextmanager
    def retried(self, retries: int) -> Iterator[None]:
        """Retry this execution on a transient fault, at most `retries` times.

        Not `autoretry_for`: it reads the limit from `override_max_retries`, an attribute of
        the one task object that all threads of a `--pool threads` worker share, so two runs
        with different `--retries` took each other's. The limit goes to `retry()` from this
        execution's own argument instead."""
        try:
            yield
        except RetryableError as exc:
            countdown = get_exponential_backoff_interval(
                factor=1, retries=self.request.retries, maximum=self.retry_backoff_max,
                full_jitter=self.retry_jitter)
            raise self.retry(exc=exc, countdown=countdown, max_retries=retries) from exc

    def on_failure(self, exc: BaseException, task_id: str, args: Sequence[Any],
                   kwargs: dict[str, Any], einfo: object) -> None:
        reason = describe(exc)
        run_id = args[0]
        if self.name == SYNC_TASK:
            context().runs.failed(run_id, f"{args[1]} -> {args[2]}", reason)
        else:
            context().runs.expanded(run_id, args[1]["rule"], reason)
        log.error("%s failed for run %s: %s", self.name, run_id, reason)


@app.task(bind=True, base=RunTask, name=SYNC_TASK)
def sync_image(self: RunTask, run_id: str, source: str, target: str, rule: str = "",
               retries: int = 3, **options: Any) -> None:
    """Copy one image (tag or digest) into the target. `options` are the run's
    `CopyOptions` as task kwargs (platforms, referrers, immutable_tags, force)."""
    with self.retried(retries):
        ctx = context()
        if ctx.cancelled(run_id):  # `migrator cancel`: its queued tasks are dropped
            log.info("run %s cancelled: %s -> %s not copied", run_id, source, target)
            return
        job = job_from_args(source, target, rule)
        result = copy_image(job, clients=ctx.clients(run_id), ledger=ctx.ledger,
                            settings=ctx.settings, options=CopyOptions.from_task_kwargs(options),
                            blob_pool=ctx.blob_pool, on_bytes=health.progress(self.request.id))
        health.copied(result)
        if result.outcome == "skipped":  # left out by the platform filter: done, not a success
            recorded = ctx.runs.skipped(run_id, f"{source} -> {target}", result.note)
        else:
            recorded = ctx.runs.succeeded(run_id, f"{source} -> {target}", result.bytes_copied)
        if not recorded:
            # Redis lost the run (flushed, or restarted without its data): the ending is not
            # recorded, lest it recreate a run of 0 images that looks finished and successful.
            log.warning("run %s is no longer in Redis: %s copied, not recorded", run_id, job)


@app.task(bind=True, base=RunTask, name=EXPAND_TASK)
def expand_rule(self: RunTask, run_id: str, rule: dict, retries: int = 3,
                **options: Any) -> None:
    """List a source's tags and send one `sync_image` per tag the rule selects. `options`
    are the run's `CopyOptions` as task kwargs, sent on with every `sync_image`."""
    with self.retried(retries):
        ctx = context()
        if ctx.cancelled(run_id):
            log.info("run %s cancelled: rule %s not expanded", run_id, rule.get("rule"))
            return
        parsed = rule_from_args(rule)
        run_options = CopyOptions.from_task_kwargs(options)
        jobs, retry_later = _expand(ctx, run_id, parsed)
        keys = [str(job) for job in jobs]
        ctx.runs.add_jobs(run_id, keys)
        # Immutable tags already on record: done without a task, let alone a request. A new tag
        # is any the source lists and the record does not hold. Under force (manifests are PUT
        # again whatever the record says) every tag gets its task: neither shortcut applies.
        force, platforms = run_options.force, run_options.platforms
        immutable = run_options.immutable_tags
        if not force:
            ctx.runs.up_to_date(run_id, [
                str(job) for job in jobs
                if synced_immutable(job, ctx.ledger, immutable, platforms)])
        # Send every job not finished yet, not only the new ones: if this task is a redelivery
        # after a crash between recording and sending, its jobs must still be sent. A job sent
        # twice is harmless (copies are idempotent and counted once).
        unfinished = ctx.runs.unfinished(run_id, keys)
        if ctx.settings.trust_ledger and not force:
            unchanged = _unchanged(ctx, run_id, [job for job in jobs if str(job) in unfinished],
                                   platforms)
            ctx.runs.up_to_date(run_id, unchanged)
            unfinished -= set(unchanged)
        tasks = {str(job): (SYNC_TASK, [run_id, str(job.source), str(job.target)],
                            job_kwargs(job, retries, run_options))
                 for job in jobs if str(job) in unfinished}
        ctx.runs.remember_tasks(run_id, tasks)
        for _, args, kwargs in tasks.values():
            sync_image.apply_async(args=args, kwargs=kwargs)
        if retry_later is not None:
            raise retry_later  # Celery retries the expansion; the jobs sent again are harmless
        ctx.runs.expanded(run_id, rule["rule"])


CATALOG_THREADS = 8  # tag lists read (or tags asked about) at once by one expansion


def _unchanged(ctx: WorkerContext, run_id: str, jobs: list[Job],
               platforms: frozenset[str]) -> list[str]:
    """The jobs whose source tag still names what the ledger says was synced: done without a
    task (a re-sync of an unchanged repository is one source HEAD per tag and no message).
    A HEAD that fails sends the job's task as usual, which retries and reports."""
    if not jobs:
        return []
    clients = ctx.clients(run_id)

    def unchanged(job: Job) -> bool:
        try:
            return unchanged_on_record(job, clients, ctx.ledger, platforms)
        except MigratorError:
            return False

    with ThreadPoolExecutor(CATALOG_THREADS, thread_name_prefix="expand") as pool:
        return [str(job) for job, same in zip(jobs, pool.map(unchanged, jobs), strict=True)
                if same]


def _expand(ctx: WorkerContext, run_id: str, rule: Rule
            ) -> tuple[list[Job], RetryableError | None]:
    """The jobs of a rule. The rule's own listing (its tags, or a catalog's repositories)
    failing fails this expansion. A catalog's repository whose tags cannot be read is recorded
    as a failed rule of its own, so the rest of the namespace is still copied; a transient
    failure there is handed back, to retry the whole expansion once the rest is sent."""
    jobs: list[Job] = []
    retry_later: RetryableError | None = None
    with ThreadPoolExecutor(CATALOG_THREADS, thread_name_prefix="expand") as pool:
        for outcome in expand([rule], ctx.clients(run_id), pool):
            error = outcome.error
            if error is None:
                jobs.extend(outcome.jobs)
            elif outcome.rule is rule or not isinstance(error, MigratorError):
                raise error
            elif isinstance(error, RetryableError):
                retry_later = error
            else:
                ctx.runs.expanded(run_id, outcome.rule.origin, describe(error))
    return jobs, retry_later


def send(name: str, args: list, kwargs: dict) -> None:
    app.send_task(name, args=args, kwargs=kwargs)


@app.task(name=START_TASK)
def start_scheduled_run(schedule: dict) -> str | None:
    """Fired by celery beat: start a run of one schedule unless its last run is in flight."""
    ctx = context()
    entry = Schedule(**schedule)
    last_key = f"{ctx.settings.redis_prefix}schedule:{entry.name}:run"
    # One firing at a time per schedule, even with two beats by mistake. A token lock: once
    # its TTL ran out the next firing may hold it, and only the owner's token releases it.
    lock = ctx.redis.lock(f"{last_key}:lock", timeout=60, thread_local=False)
    if not lock.acquire(blocking=False):
        log.warning("schedule %s: another firing is starting a run; skipped", entry.name)
        return None
    try:
        last = ctx.redis.get(last_key)
        state = ctx.runs.state(text(last)) if last else None
        if state is not None and not state.finished:
            log.warning("schedule %s: run %s still in flight; this firing is skipped",
                        entry.name, state.run_id)
            return None
        try:
            auth = load_auth(entry.auth, environ=os.environ, required=True) if entry.auth else (
                AuthFile(""))
            registry, namespace = resolve_defaults(entry.registry, entry.namespace, os.environ)
            rules = load_rules(entry.images, default_registry=registry,
                               default_namespace=namespace)
            started = start_run(rules, auth, ctx.settings, store=ctx.runs, send=send,
                                name=f"schedule {entry.name}", retries=entry.retries)
        except ConfigError as exc:
            # Bad rules, a missing variable...: a failed run that `migrator status` lists with
            # its reason, not only a traceback in a worker's log.
            run_id = failed_firing(ctx.runs, entry.name, exc.problems)
            ctx.redis.set(last_key, run_id, ex=ctx.settings.run_ttl)
            log.error("schedule %s: run %s failed to start: %s", entry.name, run_id,
                      "; ".join(exc.problems))
            return run_id
        ctx.redis.set(last_key, started.run_id, ex=ctx.settings.run_ttl)
        log.info("schedule %s: started run %s with %d tasks", entry.name, started.run_id,
                 started.tasks)
        return started.run_id
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            log.warning("schedule %s: the firing lock expired before this firing ended; "
                        "left to its new holder", entry.name)


def failed_firing(runs: RunStore, schedule: str, problems: list[str]) -> str:
    """Record a firing whose input could not be read as a run that failed to generate."""
    rule = f"schedule {schedule}"
    run_id = runs.create(name=rule, retries=0, jobs=[], expands=[rule])
    runs.expanded(run_id, rule, "; ".join(problems))
    return run_id
