"""Re-runs of `migrator sync` over an unchanged set (docs/reruns.md): a source HEAD per tag,
one target tag list per repository, and a target HEAD for the quarter of the tags whose turn
it is, so that each target tag is checked once in 4 runs; a deleted target tag is copied again
at the next run, one changed in place within 4. Counted from the registries' access logs."""

from __future__ import annotations

import zlib
from collections import Counter
from pathlib import Path

import pytest
import requests

from migrator.cli import EXIT_OK
from tests.integration.test_sync import Sync, insecure, writes
from tests.support.images import get_manifest, make_layer, push_image

EVERY = 4  # the documented default of MIGRATOR_VERIFY_TARGET_EVERY


@pytest.fixture
def sync(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Sync:
    return Sync(tmp_path, capsys)


def seed(registry, repository: str, tags: int) -> dict[str, str]:
    """`tags` tiny images (two 1 KiB layers, one shared); tag → manifest digest."""
    shared = make_layer(1024, 1)
    return {f"v{t}": push_image(registry, repository, f"v{t}",
                                layers=[shared, make_layer(1024, 100 + t)]).digest
            for t in range(tags)}


def test_four_reruns_cost_under_1_3_requests_per_tag_and_head_each_target_tag_once(
        sync, source_registry, target_registry):
    tags = 100
    seed(source_registry, "ns/app", tags)
    rules = {f"{source_registry.host}/ns/app": f"{target_registry.host}/copy/app"}
    auth = insecure(source_registry, target_registry)
    assert sync(rules, auth)[0] == EXIT_OK

    heads: Counter[str] = Counter()
    spent = 0
    for _ in range(EVERY):
        src_mark, dst_mark = source_registry.mark(), target_registry.mark()
        code, out, err = sync(rules, auth)
        assert code == EXIT_OK and f"Images({tags})" in out, err
        assert writes(target_registry, dst_mark) == []
        at_source = source_registry.requests(src_mark)
        at_target = target_registry.requests(dst_mark)
        assert sum(1 for m, p, _ in at_source if m == "HEAD" and "/manifests/" in p) == tags
        assert sum(1 for _, p, _ in at_target if "/tags/list" in p) == 1  # one repository
        heads.update(p.rsplit("/", 1)[1] for m, p, _ in at_target
                     if m == "HEAD" and "/manifests/" in p)
        spent += len(at_source) + len(at_target)
    # Each target tag checked exactly once over the four runs, none twice.
    assert sorted(heads) == sorted(f"v{t}" for t in range(tags)) and set(heads.values()) == {1}
    assert spent / (EVERY * tags) <= 1.3, spent / (EVERY * tags)


def test_a_deleted_target_tag_comes_back_at_once_a_changed_one_within_four_runs(
        sync, source_registry, target_registry):
    source = seed(source_registry, "ns/app", 12)
    rules = {f"{source_registry.host}/ns/app": f"{target_registry.host}/copy/app"}
    auth = insecure(source_registry, target_registry)
    assert sync(rules, auth)[0] == EXIT_OK

    # Someone deletes v5 at the target and pushes another image over v3.
    deleted = requests.delete(f"{target_registry.url}/v2/copy/app/manifests/{source['v5']}",
                              timeout=10)
    assert deleted.status_code == 202
    intruder = push_image(target_registry, "copy/app", "v3", layers=[make_layer(1024, 999)])
    assert get_manifest(target_registry, "copy/app", "v3")[2] == intruder.digest

    repaired_at = None
    for run in range(1, EVERY + 1):
        code, _, err = sync(rules, auth)
        assert code == EXIT_OK, err
        assert get_manifest(target_registry, "copy/app", "v5")[2] == source["v5"]
        if get_manifest(target_registry, "copy/app", "v3")[2] == source["v3"]:
            repaired_at = run
            break
    assert repaired_at is not None, f"v3 still changed after {EVERY} runs"
    # The run whose turn it was: the record's run count (the first copy was run 1).
    key = f"{target_registry.host}/copy/app:v3"
    assert (1 + repaired_at) % EVERY == zlib.crc32(key.encode()) % EVERY


def test_verify_every_1_heads_every_tag_and_repairs_at_the_next_run(
        sync, source_registry, target_registry):
    source = seed(source_registry, "ns/app", 6)
    rules = {f"{source_registry.host}/ns/app": f"{target_registry.host}/copy/app"}
    auth = insecure(source_registry, target_registry)
    assert sync(rules, auth)[0] == EXIT_OK
    push_image(target_registry, "copy/app", "v2", layers=[make_layer(1024, 998)])
    mark = target_registry.mark()
    assert sync(rules, auth, environ={"MIGRATOR_VERIFY_TARGET_EVERY": "1"})[0] == EXIT_OK
    assert get_manifest(target_registry, "copy/app", "v2")[2] == source["v2"]
    assert sum(1 for m, p, _ in target_registry.requests(mark)
               if m == "HEAD" and "/manifests/" in p) == 6
