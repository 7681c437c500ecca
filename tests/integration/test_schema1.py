"""Docker schema1 manifests, as old repositories still serve them, through `migrator sync`,
`migrator plan` and the fleet, between real Distribution registries: one that takes schema1
(`compatibility.schema1.enabled`), one that does not (its default).

The source image is signed by the test (an ES256 JWS with a key made here, which Distribution
verifies). A registry that takes schema1 stores the signed payload and serves it signed again
with its own key: the digest is what a copy keeps, and what these tests compare, with the
payload itself and every layer's bytes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from migrator.cli import EXIT_FAILED, EXIT_OK, main
from migrator.progress import human_bytes
from tests.integration.test_fleet import Fleet
from tests.support.images import get_blob, list_tags, make_layer, sha256_digest
from tests.support.personalities import PersonalityFront
from tests.support.registry import RunningRegistry
from tests.support.schema1 import SIGNED, Schema1, push_schema1, signed_payload

ENVIRON = {"MIGRATOR_BACKOFF_INITIAL": "0.05"}
# what a refusing target's line says: which format, and the two ways out
REFUSED = "refused the Docker schema1 manifest (application/vnd.docker.distribution.manifest." \
          "v1+prettyjws) of app/old:1.0"
CHOICE = ("enable schema1 on the target if it can (Distribution: compatibility.schema1."
          "enabled), or re-push the image at the source with a current Docker client or crane")


class Legacy:
    """A schema1-enabled source holding `old/app:1.0` (amd64) and `old/app:arm` (arm64)."""

    def __init__(self, registry: RunningRegistry) -> None:
        self.registry = registry
        # newest first, the empty layer twice, as `docker build` wrote them
        self.layers = [make_layer(40_000, 301), make_layer(0, 302), make_layer(60_000, 303)]
        self.amd64 = push_schema1(registry, "old/app", "1.0", self.layers, order=[0, 1, 2, 1])
        self.arm64 = push_schema1(registry, "old/app", "arm", [make_layer(30_000, 304)],
                                  architecture="arm64")

    @property
    def host(self) -> str:
        return self.registry.host

    def rule(self, target: RunningRegistry) -> dict[str, str]:
        """`old/app:1.0` into `app/old` of `target`."""
        return {f"{self.host}/old/app:1.0": f"{target.host}/app/old"}


@pytest.fixture
def legacy(registry_factory) -> Legacy:
    return Legacy(registry_factory(schema1=True))


def sync(tmp_path: Path, capsys, images: dict, hosts: list[str], *flags: str,
         command: str = "sync", auth: dict | None = None) -> tuple[int, str, str]:
    (tmp_path / "images.json").write_text(json.dumps(images))
    (tmp_path / "auth.json").write_text(json.dumps(
        {host: {"insecure": True, **(auth or {}).get(host, {})} for host in hosts}))
    state = () if command == "plan" else ("--state", str(tmp_path / "state"))
    code = main([command, "--images", str(tmp_path / "images.json"), "--auth",
                 str(tmp_path / "auth.json"), "--log", str(tmp_path / "migrator.log"),
                 "--retries", "1", *state, *flags], ENVIRON)
    out, err = capsys.readouterr()
    return code, out, err


def served(registry: RunningRegistry, repository: str, reference: str) -> requests.Response:
    response = requests.get(f"{registry.url}/v2/{repository}/manifests/{reference}",
                            headers={"Accept": SIGNED}, timeout=10)
    assert response.status_code == 200, response.text
    return response


def assert_copied(registry: RunningRegistry, repository: str, tag: str, image: Schema1,
                  layers: list[bytes]) -> None:
    """The target names the tag by the source's digest, serves the same signed payload (under
    a signature of its own), and holds every layer, byte for byte."""
    response = served(registry, repository, tag)
    assert response.headers["Docker-Content-Digest"] == image.digest
    assert response.headers["Content-Type"] == SIGNED
    assert signed_payload(response.content) == image.payload
    assert sha256_digest(image.payload) == image.digest
    assert served(registry, repository, image.digest).headers["Docker-Content-Digest"] == \
        image.digest
    for layer in layers:
        assert get_blob(registry, repository, sha256_digest(layer)) == layer


def failed_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("failed")]


def test_a_schema1_image_is_copied_unchanged_where_the_target_takes_schema1(
        tmp_path, capsys, legacy, registry_factory):
    target = registry_factory(schema1=True)
    rules = legacy.rule(target)
    code, out, err = sync(tmp_path, capsys, rules, [legacy.host, target.host])
    assert code == EXIT_OK, err + out
    assert "Images(1) migration finished, 0 images tasks failed" in out
    assert_copied(target, "app/old", "1.0", legacy.amd64, legacy.layers)
    # the empty layer is listed twice and uploaded once
    assert target.count("PUT", "/blobs/uploads/") == 3

    mark = target.mark()
    code, out, err = sync(tmp_path, capsys, rules, [legacy.host, target.host])
    assert code == EXIT_OK, err + out
    assert [entry for entry in target.requests(mark) if entry[0] in ("PUT", "POST", "PATCH")] \
        == []


@pytest.mark.parametrize(("name", "upload"), [("dockerhub", "chunked"), ("quay", "")])
def test_a_schema1_image_from_a_registry_that_redirects_its_blobs(name, upload, tmp_path, capsys,
                                                                  legacy, registry_factory):
    """Where old images mostly live: blobs behind signed storage URLs (whose HEAD tells no
    size, so the upload takes the download's length in one PUT, even where the auth file asks
    for chunks), Docker Hub's pull quota, Quay's gzip."""
    front = PersonalityFront(name, legacy.registry.url)
    try:
        target = registry_factory(schema1=True)
        code, out, err = sync(tmp_path, capsys,
                              {f"{front.host}/old/app:1.0": f"{target.host}/app/old"},
                              [front.host, target.host],
                              auth={target.host: {"upload": upload}} if upload else None)
        assert code == EXIT_OK, err + out
        assert_copied(target, "app/old", "1.0", legacy.amd64, legacy.layers)
        assert front.store is not None and len(front.store.seen) >= 3  # layers via storage
    finally:
        front.close()


def test_a_target_that_refuses_schema1_fails_with_one_line_that_names_the_choice(
        tmp_path, capsys, legacy, registry_factory):
    target = registry_factory()  # Distribution's default: no schema1
    code, out, err = sync(tmp_path, capsys, legacy.rule(target), [legacy.host, target.host])
    assert code == EXIT_FAILED
    assert "Images(1) migration finished, 1 images tasks failed" in out
    (line,) = failed_lines(err)
    assert REFUSED in line and CHOICE in line, line
    assert "a conversion to schema2 changes its digest" in line
    assert list_tags(target, "app/old") == []
    # two tries of the PUT tell a refusal from a passing fault; no retry pass after it
    assert target.count("PUT", "/manifests/") == 2


def test_plan_lists_a_schema1_image_and_its_layers_once_each(tmp_path, capsys, legacy,
                                                              registry_factory):
    target = registry_factory()
    mark = target.mark()
    code, out, err = sync(tmp_path, capsys, legacy.rule(target), [legacy.host, target.host],
                          command="plan")
    assert code == EXIT_OK, err + out
    # a schema1 manifest names no sizes: the plan asks the source for them
    size = human_bytes(sum(len(layer) for layer in legacy.layers))
    assert f"1 of 1 images to copy, 3 blobs new to the target ({size})" in out, out
    assert [entry for entry in target.requests(mark) if entry[0] != "GET" and entry[0] != "HEAD"] \
        == []


def test_the_architecture_filter_reads_a_schema1_image_s_own_architecture(
        tmp_path, capsys, legacy, registry_factory):
    target = registry_factory(schema1=True)
    code, out, err = sync(tmp_path, capsys, {f"{legacy.host}/old/app": f"{target.host}/app/old"},
                          [legacy.host, target.host], "--arch", "arm64")
    assert code == EXIT_OK, err + out
    assert list_tags(target, "app/old") == ["arm"]
    assert_copied(target, "app/old", "arm", legacy.arm64, [])
    assert "skipped: platform linux/amd64 is not among */arm64" in err + out, err + out


# -- the fleet: a key prefix and a queue of this module's own on DB 0, deleted afterwards ----


@pytest.fixture
def fleet(tmp_path: Path, capsys) -> Iterator[Fleet]:
    run = uuid.uuid4().hex[:12]
    prefix, queue = f"test:schema1:{run}:", f"schema1-{run}"
    instance = Fleet(tmp_path, capsys, redis_url="redis://127.0.0.1:6379/0")
    instance.env.update({**ENVIRON, "MIGRATOR_REDIS_PREFIX": prefix, "MIGRATOR_QUEUE": queue})
    try:
        yield instance
    finally:
        instance.stop_all()
        keys = [*instance.redis.scan_iter(f"{prefix}*"), queue, f"_kombu.binding.{queue}",
                f"_kombu.binding_permanent.{queue}"]
        instance.redis.delete(*keys)
        instance.redis.close()


def test_the_fleet_copies_schema1_where_taken_and_says_why_where_refused(fleet, legacy,
                                                                          registry_factory):
    taker, refuser = registry_factory(schema1=True), registry_factory()
    fleet.write({f"{legacy.host}/old/app:1.0": [legacy.rule(taker)[f"{legacy.host}/old/app:1.0"],
                                                legacy.rule(refuser)[f"{legacy.host}/old/app:1.0"]]},
                {host: {"insecure": True} for host in (legacy.host, taker.host, refuser.host)})
    fleet.start_worker("schema1-w1")
    code, out, err = fleet.enqueue("--wait", "--timeout", "60")
    assert code == EXIT_FAILED, err + out + fleet.log("schema1-w1")
    assert "Images(2) migration finished, 1 images tasks failed" in out
    (line,) = failed_lines(err)
    assert REFUSED in line and CHOICE in line, line
    assert_copied(taker, "app/old", "1.0", legacy.amd64, legacy.layers)
    assert list_tags(refuser, "app/old") == []
