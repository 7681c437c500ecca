"""`migrator verify`: every image the rules name, compared at the source and the target with
HEADs only (the rules expanded as `migrator sync` expands them)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from migrator.copy import Clients
from migrator.errors import MigratorError
from migrator.expand import each, expand
from migrator.rules import Job, Rule
from migrator.runner import describe_unexpected


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
        for outcome in expand(rules, clients, pool):
            if outcome.error is None:
                jobs.extend(outcome.jobs)
            else:
                report.errors[outcome.rule.origin] = describe_unexpected(outcome.rule,
                                                                         outcome.error)
        for job, digests, error in each(pool, compare, list(dict.fromkeys(jobs))):
            if error is not None:
                report.errors[str(job)] = describe_unexpected(job, error)
            elif digests is None or digests[1] is None:
                report.missing.append(job)
            elif digests[0] != digests[1]:
                report.differ[job] = (digests[0], digests[1])
            else:
                report.agree.append(job)
    return report
