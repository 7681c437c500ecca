"""The embedded executor of `migrator sync`: a thread pool in one process, a local ledger.

It does what image-syncer does, in the same order: expand every rule into image tasks
("generate"), run them, then retry the failed ones `retries` times after the pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol, TypeVar

from migrator.auth import AuthFile
from migrator.copy import ClientPool, Clients, CopyResult, copy_image
from migrator.errors import MigratorError
from migrator.ledger import Ledger
from migrator.rules import Job, Rule
from migrator.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class Reporter(Protocol):
    """What the runner tells whoever watches: phases, totals, each image, bytes."""

    def phase(self, text: str) -> None: ...

    def add_total(self, images: int) -> None: ...

    def image_done(self, job: Job, result: CopyResult | None, error: str | None) -> None: ...

    def add_bytes(self, count: int) -> None: ...


@dataclass
class Summary:
    images: int = 0
    results: list[CopyResult] = field(default_factory=list)  # copied, up to date or planned
    # Left out by the platform filter: neither failed nor retried, and kept apart from
    # `results` because image-syncer does not list them among the images it synced.
    skipped: list[CopyResult] = field(default_factory=list)
    failed: dict[Job, str] = field(default_factory=dict)
    generate_failed: dict[Rule, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.generate_failed

    def line(self) -> str:
        return (f"Images({self.images}) migration finished, {len(self.failed)} images tasks "
                f"failed, {len(self.generate_failed)} tasks generate failed")


def describe(error: BaseException) -> str:
    """One line for a person; unexpected errors keep their type name."""
    if isinstance(error, MigratorError):
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"{type(error).__name__}: {error}"


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
        dry_run: bool = False,
        platforms: frozenset[str] = frozenset(),
        referrers: bool = True,
        immutable_tags: str | None = None,
        force: bool = False,
    ) -> None:
        if settings.trust_ledger is None:  # a local record may be stale: the registry decides
            settings = settings.model_copy(update={"trust_ledger": False})
        self.clients = Clients(auth, ClientPool(settings))
        self.ledger = ledger
        self.settings = settings
        self.reporter = reporter
        self.workers = max(1, workers)
        self.retries = max(0, retries)
        self.dry_run = dry_run
        self.platforms = platforms
        self.referrers = referrers
        self.immutable_tags = immutable_tags
        self.force = force

    def run(self, rules: Sequence[Rule]) -> Summary:
        summary = Summary()
        jobs: dict[Job, None] = {}  # ordered and without duplicates
        with ThreadPoolExecutor(self.workers, thread_name_prefix="image") as image_pool, \
                ThreadPoolExecutor(self.workers * self.settings.blob_parallelism,
                                   thread_name_prefix="blob") as blob_pool:
            self.reporter.phase("Start to generate images tasks, please wait ...")
            pending_rules = list(rules)
            pending_jobs: list[Job] = []
            for attempt in range(self.retries + 1):
                if attempt:
                    delay = self.settings.retry_pass_delay * 2 ** (attempt - 1)
                    log.info("retry pass %d of %d in %.1fs: %d images, %d rules", attempt,
                             self.retries, delay, len(pending_jobs), len(pending_rules))
                    time.sleep(delay)
                new_jobs = self._generate(pending_rules, image_pool, summary)
                pending_rules = list(summary.generate_failed)
                fresh = [job for job in new_jobs if job not in jobs]
                jobs.update(dict.fromkeys(fresh))
                self.reporter.add_total(len(fresh))
                if attempt == 0:
                    self.reporter.phase("Start to handle images tasks, please wait ...")
                pending_jobs = self._handle(pending_jobs + fresh, image_pool, blob_pool, summary)
                if not pending_jobs and not pending_rules:
                    break
        summary.images = len(jobs)
        return summary

    def _generate(self, rules: list[Rule], pool: ThreadPoolExecutor, summary: Summary) -> list[Job]:
        def expand(rule: Rule) -> list[Job]:
            if not rule.needs_tag_list:
                return rule.jobs()
            client = self.clients.get(rule.source.registry, rule.source.repository)
            return rule.jobs(client.list_tags(rule.source.repository))

        # A catalog rule (`registry/ns/*`) first becomes one all-tags rule per repository the
        # registry lists; each of those is then expanded, and retried, on its own.
        listed = [rule for rule in rules if not rule.catalog]
        catalogs = [rule for rule in rules if rule.catalog]
        for rule, found, error in _run_all(pool, partial(catalog_rules, self.clients), catalogs):
            if error is None:
                summary.generate_failed.pop(rule, None)
                listed.extend(found or [])
            else:
                summary.generate_failed[rule] = error
                log.error("generate failed for %s: %s", rule.origin, error)

        jobs: list[Job] = []
        for rule, outcome, error in _run_all(pool, expand, listed):
            if error is None:
                summary.generate_failed.pop(rule, None)
                jobs.extend(outcome or [])
            else:
                summary.generate_failed[rule] = error
                log.error("generate failed for %s: %s", rule.origin, error)
        return jobs

    def _handle(
        self,
        jobs: list[Job],
        image_pool: ThreadPoolExecutor,
        blob_pool: ThreadPoolExecutor,
        summary: Summary,
    ) -> list[Job]:
        def copy(job: Job) -> CopyResult:
            return copy_image(job, clients=self.clients, ledger=self.ledger,
                              settings=self.settings, blob_pool=blob_pool,
                              on_bytes=self.reporter.add_bytes, dry_run=self.dry_run,
                              platforms=self.platforms, referrers=self.referrers,
                              immutable_tags=self.immutable_tags, force=self.force)

        failed: list[Job] = []
        for job, result, error in _run_all(image_pool, copy, jobs):
            if error is None:
                summary.failed.pop(job, None)
                assert result is not None
                (summary.skipped if result.outcome == "skipped" else summary.results).append(result)
            else:
                summary.failed[job] = error
                failed.append(job)
                log.error("failed %s: %s", job, error)
            self.reporter.image_done(job, result, error)
        return failed


def catalog_rules(clients: Clients, rule: Rule) -> list[Rule]:
    """A catalog rule as one all-tags rule per repository the registry's catalog lists."""
    client = clients.get(rule.source.registry, rule.source.repository)
    return rule.repositories(client.list_repositories(rule.source.repository))


def _run_all(
    pool: ThreadPoolExecutor, work: Callable[[T], R], items: Sequence[T]
) -> Iterator[tuple[T, R | None, str | None]]:
    """Run `work` on every item; yield (item, result, None) or (item, None, error) as each ends."""
    futures: dict[Future[R], T] = {pool.submit(work, item): item for item in items}
    for future in as_completed(futures):
        item = futures[future]
        error = future.exception()
        if error is None:
            yield item, future.result(), None
        else:
            if not isinstance(error, MigratorError):
                log.error("unexpected error on %s", item, exc_info=error)
            yield item, None, describe(error)


@dataclass
class Verification:
    agree: list[Job] = field(default_factory=list)
    missing: list[Job] = field(default_factory=list)
    differ: dict[Job, tuple[str, str]] = field(default_factory=dict)  # job → (source, target)
    errors: dict[str, str] = field(default_factory=dict)  # job or rule → reason

    @property
    def ok(self) -> bool:
        return not self.missing and not self.differ and not self.errors


def verify(rules: Sequence[Rule], clients: Clients, workers: int = 7) -> Verification:
    """Compare every image of the rules at the source and the target, with HEADs only."""
    report = Verification()

    def expand(rule: Rule) -> list[Job]:
        if not rule.needs_tag_list:
            return rule.jobs()
        client = clients.get(rule.source.registry, rule.source.repository)
        return rule.jobs(client.list_tags(rule.source.repository))

    def compare(job: Job) -> tuple[str, str | None]:
        if job.source.digest:
            source_digest = job.source.digest
        else:
            head = clients.get(job.source.registry, job.source.repository).head_manifest(
                job.source.repository, job.source.manifest_ref)
            if head is None:
                raise MigratorError(f"{job.source} not found at the source")
            source_digest = head[0]
        target = clients.get(job.target.registry, job.target.repository).head_manifest(
            job.target.repository, job.target.tag or source_digest)
        return source_digest, target[0] if target else None

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="verify") as pool:
        jobs: list[Job] = []
        expandable = [rule for rule in rules if not rule.catalog]
        catalogs = [rule for rule in rules if rule.catalog]
        for rule, repositories, error in _run_all(pool, partial(catalog_rules, clients),
                                                  catalogs):
            if error is None:
                expandable.extend(repositories or [])
            else:
                report.errors[rule.origin] = error
        for rule, found, error in _run_all(pool, expand, expandable):
            if error is None:
                jobs.extend(found or [])
            else:
                report.errors[rule.origin] = error
        for job, digests, error in _run_all(pool, compare, list(dict.fromkeys(jobs))):
            if error is not None:
                report.errors[str(job)] = error
            elif digests is None or digests[1] is None:
                report.missing.append(job)
            elif digests[0] != digests[1]:
                report.differ[job] = (digests[0], digests[1])
            else:
                report.agree.append(job)
    return report
