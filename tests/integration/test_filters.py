"""Choosing what to copy, end to end: tag filters and whole namespaces through the catalog.

Real Distribution registries on both sides; the product runs in-process through
`main(argv, environ)` (and, once, through a real Celery worker). What arrived is read with the
tests' own client, so the product's code is never on both sides of an assertion.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from migrator.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, main
from tests.integration.test_fleet import Fleet, insecure
from tests.support.images import (
    get_manifest,
    list_tags,
    make_layer,
    push_image,
    push_manifest,
    session_for,
)

TAGS = ["latest", "nightly", "v1.2.3", "1.10.0", "1.9.0", "2.0.0-rc.1", "1.9.1-alpine",
        "v3.4.1", "3.5.0", "4.0.0"]
FILTERS_DB = int(os.environ.get("MIGRATOR_TEST_FILTERS_REDIS_DB", "11"))


def seed(registry, repository: str, tags: list[str], seed: int = 1, auth=None) -> str:
    """One small image under every tag (one push, then the manifest re-tagged); its digest."""
    image = push_image(registry, repository, tags[0], layers=[make_layer(2048, seed)], auth=auth)
    with session_for(registry, auth) as session:
        for tag in tags[1:]:
            push_manifest(session, registry.url, repository, tag, image.manifest,
                          image.media_type)
    return image.digest


def catalog(registry) -> list[str]:
    with session_for(registry) as session:
        return session.get(f"{registry.url}/v2/_catalog", timeout=30).json()["repositories"]


class Run:
    """`migrator <command>` with the rules written as JSON or YAML."""

    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.dir = tmp_path
        self.capsys = capsys

    def __call__(self, images: dict, auth: dict, *flags: str, command: str = "sync",
                 fmt: str = "json", environ: dict[str, str] | None = None
                 ) -> tuple[int, str, str]:
        rules = self.dir / f"images.{fmt}"
        rules.write_text(json.dumps(images) if fmt == "json" else yaml.safe_dump(images))
        (self.dir / "auth.json").write_text(json.dumps(auth))
        argv = [command, "--images", str(rules), "--auth", str(self.dir / "auth.json"),
                *(["--no-state", "--retries", "0"] if command == "sync" else []), *flags]
        code = main(argv, environ or {})
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(tmp_path, capsys)


def test_filters_choose_exactly_these_tags(run, source_registry, target_registry):
    names = ("include", "range", "pre", "newest", "mixed")
    for name in names:
        seed(source_registry, f"ns/{name}", TAGS)
    src, dst = source_registry.host, target_registry.host
    code, out, err = run({
        f"{src}/ns/include": {"target": f"{dst}/f/include", "include": ["^v"],
                              "exclude": ["^v1\\."]},
        f"{src}/ns/range:/[0-9].*/": {"target": f"{dst}/f/range", "semver": ">=1.9, <3"},
        f"{src}/ns/pre": {"target": f"{dst}/f/pre", "semver": ">=2.0.0-rc.0 <4"},
        f"{src}/ns/newest": {"target": f"{dst}/f/newest", "semver": ">=1", "newest": 2},
        f"{src}/ns/mixed": {"target": f"{dst}/f/mixed", "newest": 2},
    }, insecure(source_registry, target_registry), fmt="yaml")
    assert code == EXIT_OK, err
    assert out.splitlines()[-1] == (
        "Images(10) migration finished, 0 images tasks failed, 0 tasks generate failed")
    arrived = {name: sorted(list_tags(target_registry, f"f/{name}")) for name in names}
    assert arrived == {
        "include": ["v3.4.1"],
        "range": ["1.10.0", "1.9.0"],  # 2.0.0-rc.1 is a pre-release: the range names none
        "pre": ["2.0.0-rc.1", "3.5.0", "v3.4.1"],
        "newest": ["3.5.0", "4.0.0"],  # version order: 4.0.0 > 3.5.0 > v3.4.1 > ...
        # Not all versions: the last two in the order the registry lists them.
        "mixed": sorted(list_tags(source_registry, "ns/mixed")[-2:]),
    }


def test_a_namespace_through_the_catalog_keeps_the_paths_below_it(
        run, source_registry, target_registry):
    seed(source_registry, "team/api", ["v1", "v2", "v2-rc"], seed=2)
    seed(source_registry, "team/tools/cli", ["1.0"], seed=3)
    seed(source_registry, "team/tools/deep/x", ["1.0", "2.0"], seed=4)
    seed(source_registry, "other/app", ["1.0"], seed=5)
    seed(source_registry, "teams/app", ["1.0"], seed=6)  # shares a prefix, not the namespace
    src, dst = source_registry.host, target_registry.host
    auth = insecure(source_registry, target_registry)
    small_pages = {"MIGRATOR_TAG_PAGE_SIZE": "1"}  # every catalog and tag-list page has one name
    code, out, err = run({f"{src}/team/*": {"target": f"{dst}/mirror", "exclude": ["-rc$"]}},
                         auth, "--allow-catalog", environ=small_pages)
    assert code == EXIT_OK, err
    assert "Images(5)" in out.splitlines()[-1]
    assert sorted(catalog(target_registry)) == ["mirror/api", "mirror/tools/cli",
                                                "mirror/tools/deep/x"]
    assert sorted(list_tags(target_registry, "mirror/api")) == ["v1", "v2"]
    assert sorted(list_tags(target_registry, "mirror/tools/deep/x")) == ["1.0", "2.0"]
    pages = [path for method, path, _ in source_registry.requests() if "/v2/_catalog" in path]
    assert len(pages) >= 5  # five repositories, one per page: the Link header was followed

    # `verify` expands the same rule; a whole registry goes below the default namespace.
    code, out, err = run({f"{src}/team/*": {"target": f"{dst}/mirror", "exclude": "-rc$"}},
                         auth, "--allow-catalog", command="verify")
    assert code == EXIT_OK, out + err
    assert out.splitlines()[-1].startswith("Verified 5 images: 5 agree")
    code, out, err = run({f"{src}/*": {"catalog": True, "target": None, "include": ["^1\\."]}},
                         auth, "--registry", dst, "--namespace", "all")
    assert code == EXIT_OK, err
    assert sorted(name for name in catalog(target_registry) if name.startswith("all/")) == [
        "all/other/app", "all/team/tools/cli", "all/team/tools/deep/x", "all/teams/app"]


def test_a_namespace_source_needs_the_opt_in(run, source_registry, target_registry):
    mark = source_registry.mark()
    code, _, err = run({f"{source_registry.host}/team/*": f"{target_registry.host}/mirror"},
                       insecure(source_registry, target_registry))
    assert code == EXIT_BAD_INPUT
    assert "the source names every repository of a namespace" in err
    assert "pass --allow-catalog" in err and "catalog: true" in err
    assert source_registry.requests(mark) == []  # nothing was asked of any registry


def test_a_registry_without_a_catalog_says_so(run, source_registry, target_registry,
                                              fault_proxy, token_registry):
    seed(source_registry, "team/api", ["v1"])
    proxy = fault_proxy(source_registry)
    proxy.status(404, path="/v2/_catalog", times=None)  # as Docker Hub, GHCR and others do
    code, out, err = run({f"{proxy.host}/team/*": f"{target_registry.host}/mirror"},
                         {proxy.host: {"insecure": True}, **insecure(target_registry)},
                         "--allow-catalog")
    assert code == EXIT_FAILED
    assert out.splitlines()[-1] == (
        "Images(0) migration finished, 0 images tasks failed, 1 tasks generate failed")
    assert (f"generate failed: {run.dir}/images.json: '{proxy.host}/team/*': {proxy.host} does "
            "not offer its catalog (the list of its repositories): write one rule per "
            f"repository (GET http://{proxy.host}/v2/_catalog) HTTP 404") in err

    # One repository of the namespace whose tags cannot be read fails alone.
    seed(source_registry, "team/locked", ["v1"], seed=7)
    locked = fault_proxy(source_registry)
    locked.status(403, path="/v2/team/locked/tags/list", times=None)
    code, out, err = run({f"{locked.host}/team/*": f"{target_registry.host}/mirror"},
                         {locked.host: {"insecure": True}, **insecure(target_registry)},
                         "--allow-catalog")
    assert code == EXIT_FAILED
    assert out.splitlines()[-1] == (
        "Images(1) migration finished, 0 images tasks failed, 1 tasks generate failed")
    assert (f"generate failed: {run.dir}/images.json: '{locked.host}/team/*' "
            f"({locked.host}/team/locked): {locked.host}: anonymous access may not pull "
            "'team/locked': does it exist, and may this account pull it?") in err
    assert list_tags(target_registry, "mirror/api") == ["v1"]

    # A token registry whose token service refuses `registry:catalog:*` to this account.
    seed(token_registry, "team/api", ["v1"], auth=token_registry.auth)
    code, _, err = run({f"{token_registry.host}/team/*": f"{target_registry.host}/mirror"},
                       {token_registry.host: {"insecure": True}, **insecure(target_registry)},
                       "--allow-catalog")
    assert code == EXIT_FAILED
    assert (f"{token_registry.host} refuses its catalog (the list of its repositories) to "
            "anonymous access: give an account with catalog rights") in err


@pytest.fixture
def fleet(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    instance = Fleet(tmp_path, capsys, redis_url=f"redis://127.0.0.1:6379/{FILTERS_DB}")
    instance.redis.flushdb()
    yield instance
    instance.stop_all()
    instance.redis.flushdb()
    instance.redis.close()


def test_filters_and_catalogs_through_the_fleet(fleet, source_registry, target_registry,
                                                fault_proxy):
    seed(source_registry, "ns/app", TAGS)
    seed(source_registry, "team/api", ["v1", "v2", "v2-rc"], seed=2)
    seed(source_registry, "team/tools/cli", ["1.0"], seed=3)
    seed(source_registry, "team/locked", ["1.0"], seed=4)
    proxy = fault_proxy(source_registry)
    proxy.status(403, path="/v2/team/locked/tags/list", times=None)  # this one fails alone
    src, dst = proxy.host, target_registry.host
    fleet.write({
        f"{src}/ns/app": {"target": f"{dst}/f/app", "semver": "^1", "newest": 2},
        f"{src}/team/*": {"catalog": True, "target": f"{dst}/mirror", "exclude": "-rc"},
    }, {src: {"insecure": True}, **insecure(target_registry)})
    fleet.start_worker("w1")
    code, out, err = fleet.enqueue("--wait", "--timeout", "60")
    assert code == EXIT_FAILED, err + fleet.log("w1")
    assert out.splitlines()[-1] == (
        "Images(5) migration finished, 0 images tasks failed, 1 tasks generate failed")
    assert (f"generate failed: {fleet.dir}/images.json: '{src}/team/*' -> {dst}/mirror "
            f"({src}/team/locked): {src}: anonymous access may not pull 'team/locked': does "
            "it exist, and may this account pull it?") in err
    assert sorted(list_tags(target_registry, "f/app")) == ["1.10.0", "1.9.0"]
    assert sorted(list_tags(target_registry, "mirror/api")) == ["v1", "v2"]
    assert list_tags(target_registry, "mirror/tools/cli") == ["1.0"]
    assert get_manifest(target_registry, "mirror/tools/cli", "1.0")[2] == get_manifest(
        source_registry, "team/tools/cli", "1.0")[2]
