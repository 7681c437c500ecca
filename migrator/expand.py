"""Rules → jobs: the one expansion every executor calls (`migrator sync`, `migrator verify`,
the fleet's `expand_rule` task).

    catalog rule  `registry/ns/*`   →  the registry's catalog, listed once
        → one all-tags rule per repository below the namespace  (`catalog_rules`)
    repository rule                 →  its tag list, when its jobs depend on it (all tags, a
        regex), filtered by the rule  →  one job per tag or digest  (`rule_jobs`)

Executors keep their own concurrency and error bookkeeping: `expand` reports each rule's
outcome, failures included, and raises nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import TypeVar

from migrator.copy import Clients
from migrator.errors import Interrupted
from migrator.rules import Job, Rule

T = TypeVar("T")
R = TypeVar("R")


def catalog_rules(rule: Rule, clients: Clients) -> list[Rule]:
    """A catalog rule as one all-tags rule per repository the registry's catalog lists."""
    client = clients.get(rule.source.registry, rule.source.repository)
    return rule.repositories(client.list_repositories(rule.source.repository))


def rule_jobs(rule: Rule, clients: Clients) -> list[Job]:
    """The jobs of a repository rule: its tags as written, or as the source lists them."""
    if not rule.needs_tag_list:
        return rule.jobs()
    client = clients.get(rule.source.registry, rule.source.repository)
    return rule.jobs(client.list_tags(rule.source.repository))


@dataclass
class Expanded:
    """One rule's outcome: its jobs, or why it has none. A catalog rule that listed its
    repositories ends with no jobs of its own: each repository is a rule of its own."""

    rule: Rule
    jobs: list[Job] = field(default_factory=list)
    error: BaseException | None = None


def expand(rules: Sequence[Rule], clients: Clients, pool: Executor) -> Iterator[Expanded]:
    """The outcome of every rule, on `pool`: first the catalog rules (whose repositories join
    the rest), then each repository rule, in the order given. A rule that fails (a catalog or
    a tag list that cannot be read) is reported and fails alone."""
    listed = [rule for rule in rules if not rule.catalog]
    catalogs = [rule for rule in rules if rule.catalog]
    for rule, repositories, error in each(pool, lambda one: catalog_rules(one, clients),
                                          catalogs):
        listed.extend(repositories or [])
        yield Expanded(rule, error=error)
    for rule, jobs, error in each(pool, lambda one: rule_jobs(one, clients), listed):
        yield Expanded(rule, jobs or [], error)


def each(pool: Executor, work: Callable[[T], R], items: Sequence[T]
         ) -> Iterator[tuple[T, R | None, BaseException | None]]:
    """`work` on every item at once; (item, result, None) or (item, None, error) in the order
    of the items, so that the jobs keep the order of the rules."""
    futures = [(item, pool.submit(work, item)) for item in items]
    for item, future in futures:
        error = outcome_error(future)
        yield item, None if error is not None else future.result(), error


def outcome_error(future: Future) -> BaseException | None:
    """A finished future's error; `Interrupted` for one cancelled before it started."""
    return Interrupted() if future.cancelled() else future.exception()
