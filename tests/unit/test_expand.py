"""`migrator.expand`: rules → jobs, with registry clients stood in for by a fake."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from migrator.errors import RegistryError
from migrator.expand import expand
from migrator.rules import parse_rules


class FakeClient:
    def __init__(self, tags: dict[str, list[str]], catalog: list[str]) -> None:
        self.tags, self.catalog = tags, catalog
        self.asked: list[str] = []

    def list_tags(self, repository: str) -> list[str]:
        self.asked.append(repository)
        if repository not in self.tags:
            raise RegistryError(f"{repository}: no such repository")
        return self.tags[repository]

    def list_repositories(self, namespace: str) -> list[str]:
        return self.catalog


class FakeClients:
    def __init__(self, client: FakeClient) -> None:
        self.client = client

    def get(self, registry: str, repository: str) -> FakeClient:
        return self.client


@pytest.fixture
def pool():
    with ThreadPoolExecutor(4) as executor:
        yield executor


def rules_of(images: dict) -> list:
    return parse_rules(images, filename="images.json", default_registry=None,
                       default_namespace=None, allow_catalog=True)


def test_tag_lists_catalogs_and_failures_each_reported_per_rule(pool):
    client = FakeClient({"ns/app": ["1", "2"], "team/a": ["x"]},
                        catalog=["team/a", "team/gone", "other/b"])
    rules = rules_of({"a.io/ns/app": "b.io/ns/app", "a.io/ns/pinned:7": "b.io/ns/pinned",
                      "a.io/team/*": "b.io/copy"})
    outcomes = list(expand(rules, FakeClients(client), pool))  # type: ignore[arg-type]

    catalog = next(rule for rule in rules if rule.catalog)
    assert outcomes[0].rule == catalog and outcomes[0].jobs == [] and outcomes[0].error is None
    jobs = {str(job) for outcome in outcomes for job in outcome.jobs}
    assert jobs == {"a.io/ns/app:1 -> b.io/ns/app:1", "a.io/ns/app:2 -> b.io/ns/app:2",
                    "a.io/ns/pinned:7 -> b.io/ns/pinned:7", "a.io/team/a:x -> b.io/copy/a:x"}
    failed = [outcome for outcome in outcomes if outcome.error is not None]
    assert [outcome.rule.source.repository for outcome in failed] == ["team/gone"]
    assert isinstance(failed[0].error, RegistryError)
    assert "ns/pinned" not in client.asked  # its tag is written: no list needed
