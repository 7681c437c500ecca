"""Cheap re-syncs: tags declared immutable that the record holds cost no request at all; new
tags are found by diffing the source's tag list against the record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from migrator.cli import EXIT_BAD_INPUT, EXIT_OK, main
from tests.integration.test_fleet import Fleet
from tests.support.images import get_manifest, make_layer, push_image, push_manifest, session_for

IMMUTABLE_DB = 5
TAGS = 1000


def many_tags(source, repository: str, count: int) -> str:
    """One image under `count` tags v0000...; returns its digest."""
    image = push_image(source, repository, "v0000", layers=[make_layer(4096, 1)])
    with session_for(source) as session:
        for n in range(1, count):
            push_manifest(session, source.url, repository, f"v{n:04d}", image.manifest,
                          image.media_type)
    return image.digest


def sync(tmp_path: Path, images: dict, *flags: str) -> int:
    (tmp_path / "images.json").write_text(json.dumps(images))
    (tmp_path / "auth.json").write_text(json.dumps(
        {host.split("/")[0]: {"insecure": True} for pair in images.items() for host in pair}))
    return main(["sync", "--images", str(tmp_path / "images.json"), "--auth",
                 str(tmp_path / "auth.json"), "--state", str(tmp_path / "state"), *flags], {})


def test_a_thousand_unchanged_tags_cost_a_tag_list(tmp_path: Path, capsys, source_registry,
                                                   target_registry) -> None:
    digest = many_tags(source_registry, "ns/app", TAGS)
    push_image(source_registry, "ns/app", "latest", layers=[make_layer(4096, 2)])
    images = {f"{source_registry.host}/ns/app": f"{target_registry.host}/copy/app"}
    assert sync(tmp_path, images, "--immutable-tags", r"v\d+") == EXIT_OK

    mark = source_registry.mark()
    assert sync(tmp_path, images) == EXIT_OK
    without = source_registry.requests(mark)

    push_image(source_registry, "ns/app", "v1000", layers=[make_layer(4096, 3)])  # a new tag
    mark = source_registry.mark()
    target_mark = target_registry.mark()
    assert sync(tmp_path, images, "--immutable-tags", r"v\d+") == EXIT_OK
    with_flag = source_registry.requests(mark)
    at_target = target_registry.requests(target_mark)
    capsys.readouterr()

    # Without the flag: a HEAD per tag (plus the ping and the tag list).
    assert sum(1 for method, *_ in without if method == "HEAD") == TAGS + 1
    assert len(without) == TAGS + 3
    # With it: the ping, the tag list, one HEAD for the mutable `latest`, and the new tag.
    # (The new tag's copy also looks for its referrers, and reads its blobs.)
    by_kind = sorted((method, path.split("?")[0].rsplit("/", 1)[-1])
                     for method, path, _ in with_flag
                     if "/blobs/" not in path and "/referrers/" not in path)
    assert by_kind == [("GET", ""), ("GET", "list"), ("GET", "v1000"), ("HEAD", "latest")]
    assert get_manifest(target_registry, "copy/app", "v1000")
    assert get_manifest(target_registry, "copy/app", "v0999")[2] == digest
    # The target saw nothing about the thousand immutable tags either.
    assert not any("/manifests/v0" in path for _, path, _ in at_target)


def test_the_rule_option_and_the_fleet(tmp_path: Path, capsys, source_registry,
                                       target_registry) -> None:
    many_tags(source_registry, "ns/app", 30)
    url = f"redis://127.0.0.1:6379/{IMMUTABLE_DB}"
    store = redis.Redis.from_url(url)
    store.flushdb()
    fleet = Fleet(tmp_path, capsys, redis_url=url)
    try:
        fleet.write({f"{source_registry.host}/ns/app": {
                        "target": f"{target_registry.host}/copy/app",
                        "immutable_tags": r"v00[0-2]\d"}},
                    {source_registry.host: {"insecure": True},
                     target_registry.host: {"insecure": True}})
        fleet.start_worker("w1")
        code, out, _ = fleet.enqueue("--wait", "--timeout", "60")
        assert code == EXIT_OK, out + fleet.log("w1")
        mark = source_registry.mark()
        code, out, _ = fleet.enqueue("--wait", "--timeout", "60")
        assert code == EXIT_OK, out + fleet.log("w1")
        assert out.splitlines()[-1].startswith("Images(30) migration finished, 0 images")
        log = (tmp_path / "w1.log").read_text()
    finally:
        fleet.stop_all()
        store.flushdb()
    # The second run: the tag list only (the worker pinged in the first run), no image task.
    assert [(m, p.split("?")[0]) for m, p, _ in source_registry.requests(mark)] == [
        ("GET", "/v2/ns/app/tags/list")]
    received = [line for line in log.splitlines() if "sync_image" in line and "received" in line]
    assert len(received) == 30  # the first run's tasks; none in the second


def test_a_bad_regex_is_refused_with_its_place(tmp_path: Path, capsys) -> None:
    (tmp_path / "images.json").write_text(json.dumps(
        {"src.example/ns/app": {"target": "dst.example/ns/app", "immutable_tags": "v(["}}))
    code = main(["sync", "--images", str(tmp_path / "images.json")], {})
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert "immutable_tags: not a valid regex" in err and "src.example/ns/app" in err
    with pytest.raises(SystemExit) as exited:  # argparse's refusal of a bad flag value
        main(["sync", "--images", str(tmp_path / "images.json"), "--immutable-tags", "a("], {})
    assert exited.value.code == EXIT_BAD_INPUT
    assert "--immutable-tags: not a valid regex" in capsys.readouterr().err


@pytest.mark.parametrize("value", [3, "", ["v1"]])
def test_immutable_tags_must_be_a_regex(tmp_path: Path, capsys, value: object) -> None:
    (tmp_path / "images.json").write_text(json.dumps(
        {"src.example/ns/app": {"target": "dst.example/ns/app", "immutable_tags": value}}))
    assert main(["sync", "--images", str(tmp_path / "images.json")], {}) == EXIT_BAD_INPUT
    assert "immutable_tags: must be a regex" in capsys.readouterr().err
