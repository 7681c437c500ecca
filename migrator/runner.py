"""The embedded executor of `migrator sync`: a thread pool in one process, a local ledger.

It does what image-syncer does, in the same order: expand every rule into image tasks
("generate"), run them, then retry the failed ones `retries` times after the pass. Only what
another try may cure is retried (the `RetryableError` branch: resets, timeouts, 408, 429, 5xx),
the policy of the fleet's tasks too; a 401, 403, 404 or TLS failure is reported after the
pass it happened in.

A first interrupt drains the run (`interrupt`): copies in flight finish, nothing new starts,
and what did not start is reported as not copied; the command decides what a second one does.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, TypeVar

from migrator.auth import AuthFile
from migrator.copy import ClientPool, Clients, CopyOptions, CopyResult, copy_image
from migrator.errors import Interrupted, MigratorError, RetryableError
from migrator.expand import expand, outcome_error
from migrator.ledger import Ledger
from migrator.rules import Job, Rule
from migrator.settings import Settings
from migrator.summary import summary_line

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class Reporter(Protocol):
    """What the runner tells whoever watches: phases, totals, each image, bytes."""

    def phase(self, text: str) -> None: ...

    def add_total(self, images: int) -> None: ...

    def image_started(self, job: Job) -> None: ...

    def image_done(self, job: Job, result: CopyResult | None, error: str | None) -> None: ...

    def add_bytes(self, count: int) -> None: ...


class Ended(NamedTuple):
    """What the command reports of an image that ended well: a few words rather than its whole
    `CopyResult` (digests, counters, a lock), as a run may keep one for each of its tags."""

    job: Job
    outcome: str  # "copied", "up-to-date", "planned" or "skipped"
    note: str = ""


@dataclass
class Summary:
    images: int = 0
    # Copied, up to date or planned: each of them when the runner keeps each (reports and
    # plans list them), else only those with a note (the progress display counts the others).
    results: list[Ended] = field(default_factory=list)
    # Left out by the platform filter: neither failed nor retried, and kept apart from
    # `results` because image-syncer does not list them among the images it synced.
    skipped: list[Ended] = field(default_factory=list)
    # A dry run's images to copy, whole: what the plan prints of each.
    planned: list[CopyResult] = field(default_factory=list)
    failed: dict[Job, str] = field(default_factory=dict)
    generate_failed: dict[Rule, str] = field(default_factory=dict)
    # The failed jobs that never started because the run was interrupted.
    not_started: set[Job] = field(default_factory=set)
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and not self.generate_failed

    def line(self) -> str:
        return summary_line(self.images, len(self.failed), len(self.generate_failed))


def describe(error: BaseException) -> str:
    """One line for a person; unexpected errors keep their type name."""
    if isinstance(error, MigratorError):
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"{type(error).__name__}: {error}"


class DrainablePool(Executor):
    """A thread pool that can stop taking work: `drain` cancels what has not started, and
    anything submitted later ends at once as `Interrupted`; what runs goes on."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self._pool = pool
        self._lock = threading.Lock()
        self._pending: set[Future] = set()
        self.draining = False

    def submit(self, fn: Callable[..., R], /, *args: object, **kwargs: object) -> Future[R]:
        with self._lock:
            if self.draining:
                future: Future[R] = Future()
                future.set_exception(Interrupted())
                return future
            future = self._pool.submit(fn, *args, **kwargs)
            self._pending.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)

    def drain(self) -> int:
        """Stop: cancel the work not started; the number of items still running."""
        with self._lock:
            self.draining = True
            pending = list(self._pending)
        return sum(not future.cancel() and not future.done() for future in pending)


class EmbeddedRunner:
    def __init__(
        self,
        *,
        auth: AuthFile,
        ledger: Ledger,
        settings: Settings,
        reporter: Reporter,
        workers: int = 7,
        retries: int = 3,
        options: CopyOptions = CopyOptions(),  # noqa: B008 - frozen, shared safely
        keep_each: bool = True,
    ) -> None:
        """`options` apply to every copy (a rule's own platforms and immutable tags win).
        Without `keep_each`, an image that ended well without a note is not kept in the
        summary: a 20 000-tag run that writes no report keeps 1.5 MiB less."""
        if settings.trust_ledger is None:  # a local record may be stale: the registry decides
            settings = settings.model_copy(update={"trust_ledger": False})
        self.clients = Clients(auth, ClientPool(settings))
        self.ledger = ledger
        self.settings = settings
        self.reporter = reporter
        self.workers = max(1, workers)
        self.retries = max(0, retries)
        self.options = options
        self.keep_each = keep_each
        self._image_pool: DrainablePool | None = None

    def interrupt(self) -> int:
        """Drain the run (safe from a signal handler): copies in flight finish, nothing else
        starts, no retry pass follows. The number of copies (or tag listings) in flight."""
        pool = self._image_pool
        return 0 if pool is None else pool.drain()

    @property
    def interrupted(self) -> bool:
        return self._image_pool is not None and self._image_pool.draining

    def run(self, rules: Sequence[Rule]) -> Summary:
        summary = Summary()
        jobs: dict[Job, None] = {}  # ordered and without duplicates
        with ThreadPoolExecutor(self.workers, thread_name_prefix="image") as threads, \
                ThreadPoolExecutor(self.workers * self.settings.blob_parallelism,
                                   thread_name_prefix="blob") as blob_pool:
            image_pool = self._image_pool = DrainablePool(threads)
            self.reporter.phase("Start to generate images tasks, please wait ...")
            pending_rules = list(rules)
            pending_jobs: list[Job] = []
            for attempt in range(self.retries + 1):
                if attempt and self.interrupted:
                    break
                if attempt:
                    delay = self.settings.retry_pass_delay * 2 ** (attempt - 1)
                    log.info("retry pass %d of %d in %.1fs: %d images, %d rules", attempt,
                             self.retries, delay, len(pending_jobs), len(pending_rules))
                    time.sleep(delay)
                new_jobs, pending_rules = self._generate(pending_rules, image_pool, summary)
                fresh = [job for job in new_jobs if job not in jobs]
                jobs.update(dict.fromkeys(fresh))
                self.reporter.add_total(len(fresh))
                if attempt == 0:
                    self.reporter.phase("Start to handle images tasks, please wait ...")
                pending_jobs = self._handle(pending_jobs + fresh, image_pool, blob_pool, summary)
                if not pending_jobs and not pending_rules:
                    break
        summary.images = len(jobs)
        summary.interrupted = self.interrupted
        return summary

    def _generate(self, rules: list[Rule], pool: Executor, summary: Summary
                  ) -> tuple[list[Job], list[Rule]]:
        """The jobs of `rules`, and the rules to try again on the next pass (those that failed
        retryably). A catalog rule's repositories are rules of their own, expanded and retried
        each on its own."""
        jobs: list[Job] = []
        again: list[Rule] = []
        for outcome in expand(rules, self.clients, pool):
            if outcome.error is None:
                summary.generate_failed.pop(outcome.rule, None)
                jobs.extend(outcome.jobs)
            else:
                reason = describe_unexpected(outcome.rule, outcome.error)
                summary.generate_failed[outcome.rule] = reason
                log.error("generate failed for %s: %s", outcome.rule.origin, reason)
                if isinstance(outcome.error, RetryableError):
                    again.append(outcome.rule)
        return jobs, again

    def _handle(
        self,
        jobs: list[Job],
        image_pool: Executor,
        blob_pool: ThreadPoolExecutor,
        summary: Summary,
    ) -> list[Job]:
        """Copy `jobs`; the failed ones worth another pass (retryable) are returned."""

        def copy(job: Job) -> CopyResult:
            self.reporter.image_started(job)
            return copy_image(job, clients=self.clients, ledger=self.ledger,
                              settings=self.settings, options=self.options,
                              blob_pool=blob_pool, on_bytes=self.reporter.add_bytes,
                              notes_shown=True)  # `sync` prints each note once, at the end

        again: list[Job] = []
        # Twice the copies at once: a copy that ends finds the next one already queued.
        for job, result, error in _as_done(image_pool, copy, jobs, window=2 * self.workers):
            reason = None if error is None else describe_unexpected(job, error)
            if reason is None:
                summary.failed.pop(job, None)
                assert result is not None
                ended = Ended(result.job, result.outcome, result.note)
                if result.outcome == "skipped":
                    summary.skipped.append(ended)
                elif self.keep_each or result.note:
                    summary.results.append(ended)
                if result.outcome == "planned":
                    summary.planned.append(result)
            elif isinstance(error, Interrupted):
                summary.failed[job] = reason
                summary.not_started.add(job)
            else:
                summary.failed[job] = reason
                summary.not_started.discard(job)
                if isinstance(error, RetryableError):
                    again.append(job)
                log.error("failed %s: %s", job, reason)
            self.reporter.image_done(job, result, reason)
        return again


def _as_done(
    pool: Executor, work: Callable[[T], R], items: Sequence[T], *, window: int
) -> Iterator[tuple[T, R | None, BaseException | None]]:
    """`work` on every item; (item, result, None) or (item, None, error) as each ends, so that
    progress moves with the copies (`expand.each` keeps the items' order instead).

    At most `window` items are submitted at a time: a future per tag of a 20 000-tag run,
    all queued at once, would cost memory in proportion to the run for no speed."""
    remaining = iter(items)
    pending: dict[Future[R], T] = {}

    def submit(count: int) -> None:
        for item in itertools.islice(remaining, count):
            pending[pool.submit(work, item)] = item

    submit(window)
    while pending:
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        submit(len(done))
        for future in done:
            item = pending.pop(future)
            error = outcome_error(future)
            if error is None:
                yield item, future.result(), None
            else:
                yield item, None, error


def describe_unexpected(item: object, error: BaseException) -> str:
    """`describe`, and the traceback in the log for an error that is no `MigratorError`."""
    if not isinstance(error, MigratorError):
        log.error("unexpected error on %s", item, exc_info=error)
    return describe(error)
