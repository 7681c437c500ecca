"""`migrator sync` (and, for a subset, the fleet) through every registry personality
(tests/support/personalities.py), as source and as target: a single image, a multi-platform
index, two images over shared base layers, one 20 MiB blob (sent in chunks, so that each
target's chunk rules apply), every tag of a repository, and a re-run that writes nothing.

Two real registries serve the whole module: `origin` holds the scenario images, `sink` takes
the copies; a personality stands in front of one of them. The copies are checked with the
tests' own client on the plain registry, never through the product.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from migrator.cli import EXIT_FAILED, EXIT_OK, main
from tests.integration.test_fleet import Fleet
from tests.support.images import (
    PushedImage,
    audit_copy,
    list_tags,
    make_layer,
    push_image,
    push_index,
    sha256_digest,
)
from tests.support.personalities import (
    DROP,
    PERSONALITIES,
    Behaviour,
    MiB,
    MustExist,
    PersonalityFront,
    PullQuota,
    Request,
    _ecr_missing,
)
from tests.support.registry import RunningRegistry, start_registry

NAMES = sorted(PERSONALITIES)
WRITES = ("POST", "PUT", "PATCH", "DELETE")
# The 20 MiB blob goes up in chunks of 4.5 MiB: above GHCR's 4 MiB, under ECR's 5 MiB parts,
# refused by Artifact Registry's "no PATCH": each target has to find its own way.
ENVIRON = {
    "MIGRATOR_CHUNKED_UPLOAD_THRESHOLD": str(8 * MiB),
    "MIGRATOR_UPLOAD_CHUNK_SIZE": str(9 * MiB // 2),
    "MIGRATOR_BACKOFF_INITIAL": "0.05",
    "MIGRATOR_BACKOFF_MAX": "2",  # above SWR's one-second window of pushes
    # With backoffs this short, the copies resume together after each flow-control pause and
    # part of them meet SWR's 503 again (a streamed upload is tried again as a whole blob):
    # enough tries that none runs out (the default backoff of up to 30 s spreads them).
    "MIGRATOR_HTTP_ATTEMPTS": "12",
    "MIGRATOR_BLOB_ATTEMPTS": "12",
}
SCENARIOS = ("single", "multi", "base-a", "base-b", "big", "tags")
_run = itertools.count()


@dataclass
class Origin:
    registry: RunningRegistry
    images: dict[tuple[str, str, str], PushedImage]  # (media, scenario, tag) → image

    @property
    def host(self) -> str:
        return self.registry.host


def _seed(registry: RunningRegistry) -> dict[tuple[str, str, str], PushedImage]:
    base = [make_layer(96 * 1024, seed) for seed in (1, 2)]
    big = make_layer(20 * MiB, 3)
    images: dict[tuple[str, str, str], PushedImage] = {}
    for media in ("docker", "oci"):
        repo = f"src/{media}"
        own = 10 if media == "docker" else 20
        images[(media, "single", "1.0")] = push_image(
            registry, f"{repo}/single", "1.0", media=media,
            layers=[make_layer(32 * 1024, own)])
        images[(media, "multi", "1.0")] = push_index(
            registry, f"{repo}/multi", "1.0", media=media,
            platforms=[("linux", "amd64", [make_layer(16 * 1024, own + 1)]),
                       ("linux", "arm64", [make_layer(16 * 1024, own + 2)])])
        for name, seed in (("base-a", own + 3), ("base-b", own + 4)):
            images[(media, name, "1.0")] = push_image(
                registry, f"{repo}/{name}", "1.0", media=media,
                layers=[*base, make_layer(8 * 1024, seed)])
        images[(media, "big", "1.0")] = push_image(
            registry, f"{repo}/big", "1.0", media=media,
            layers=[big])
        for number, tag in enumerate(("a", "b", "c")):
            images[(media, "tags", tag)] = push_image(
                registry, f"{repo}/tags", tag, media=media,
                layers=[make_layer(4 * 1024, own + 5 + number)])
    return images


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    registry = start_registry(tmp_path_factory.mktemp("origin"))
    try:
        yield Origin(registry, _seed(registry))
    finally:
        registry.close()


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    registry = start_registry(tmp_path_factory.mktemp("sink"))
    yield registry
    registry.close()


@pytest.fixture
def fronts() -> Iterator[list[PersonalityFront]]:
    started: list[PersonalityFront] = []
    yield started
    for front in started:
        front.close()


class Run:
    """`migrator sync` with rules and auth written from dicts, its own state directory."""

    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.dir = tmp_path
        self.capsys = capsys
        self.log = tmp_path / "migrator.log"

    def __call__(self, images: dict, hosts: list[str], *flags: str, state: str = "state",
                 auth: dict | None = None) -> tuple[int, str, str]:
        (self.dir / "images.json").write_text(json.dumps(images))
        (self.dir / "auth.json").write_text(json.dumps(
            {**{host: {"insecure": True} for host in hosts}, **(auth or {})}))
        code = main(["sync", "--images", str(self.dir / "images.json"), "--auth",
                     str(self.dir / "auth.json"), "--log", str(self.log), "--state",
                     str(self.dir / state), "--retries", "1", *flags], ENVIRON)
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(tmp_path, capsys)


def rules(source_host: str, source_prefix: str, target_host: str,
          target_prefix: str) -> dict[str, str]:
    """Every scenario: one tag each, and every tag of `tags` (a rule without a tag)."""
    found = {f"{source_host}/{source_prefix}/{name}:1.0": f"{target_host}/{target_prefix}/{name}"
             for name in SCENARIOS if name != "tags"}
    found[f"{source_host}/{source_prefix}/tags"] = f"{target_host}/{target_prefix}/tags"
    return found


def audit_all(registry: RunningRegistry, prefix: str, origin: Origin, media: str) -> None:
    for (image_media, name, tag), image in origin.images.items():
        if image_media == media:
            assert audit_copy(registry, f"{prefix}/{name}", tag, image) is None, (name, tag)
    assert sorted(list_tags(registry, f"{prefix}/tags")) == ["a", "b", "c"]


def writes(registry: RunningRegistry, since: int) -> list[tuple[str, str, int]]:
    return [entry for entry in registry.requests(since) if entry[0] in WRITES]


@pytest.mark.parametrize("name", NAMES)
def test_personality_as_source(name, origin, sink, fronts, run):
    front = PersonalityFront(name, origin.registry.url)
    fronts.append(front)
    media = front.media
    prefix = f"from-{name}/{next(_run)}"
    images = rules(front.host, f"src/{media}", sink.host, prefix)

    code, out, err = run(images, [front.host, sink.host])
    assert code == EXIT_OK, err + out
    assert "Images(8) migration finished, 0 images tasks failed" in out
    audit_all(sink, prefix, origin, media)
    if front.store is not None:  # blobs came from the signed store, never with credentials
        assert front.store.seen and not front.store.refused
        signatures = {re.search(r"X-Amz-Signature=(\w+)", url)[1]
                      for url in front.store.seen}
        logged = run.log.read_text() + out + err
        assert not any(signature in logged for signature in signatures)

    mark = sink.mark()
    blob_gets = front.count("GET", "/blobs/sha256:")
    code, out, err = run(images, [front.host, sink.host])
    assert code == EXIT_OK, err + out
    assert writes(sink, mark) == []
    assert front.count("GET", "/blobs/sha256:") == blob_gets


@pytest.mark.parametrize("name", NAMES)
def test_personality_as_target(name, origin, sink, fronts, run):
    front = PersonalityFront(name, sink.url)
    fronts.append(front)
    media = front.media
    prefix = f"to-{name}/{next(_run)}"
    images = rules(origin.host, f"src/{media}", front.host, prefix)
    front.create(*{front.namespace_of(f"{prefix}/{scenario}") for scenario in SCENARIOS})

    code, out, err = run(images, [origin.host, front.host])
    assert code == EXIT_OK, err + out
    assert "Images(8) migration finished, 0 images tasks failed" in out
    audit_all(sink, prefix, origin, media)
    # The chunk rules met on the way, each refused once and then followed for the run.
    patches = [status for method, _, status in front.log if method == "PATCH"]
    if name == "ghcr":
        assert patches.count(416) == 1 and patches.count(202) >= 4
    elif name == "ecr":
        assert patches.count(400) == 1 and patches.count(201) >= 3
    elif name == "artifact-registry":
        assert patches == [405]
    else:  # SWR's flow control answers 503 to some, which are tried again
        assert 202 in patches and set(patches) <= ({202, 503} if name == "swr" else {202})
    if name in ("harbor", "dockerhub"):  # shared layers: the mount refused, then uploaded
        assert front.count("POST", "mount=", 401) >= 1

    mark = sink.mark()
    code, out, err = run(images, [origin.host, front.host])
    assert code == EXIT_OK, err + out
    assert writes(sink, mark) == []


# -- what a refusing target says --------------------------------------------------------------


def basic(registry: RunningRegistry) -> str:
    assert registry.username and registry.password
    token = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    return f"Basic {token}"


def failed_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("failed")]


# What sync and plan say for a target whose namespace is missing: (personality, the two
# repositories pushed to, the words of sync's line(s), the words of plan's, lines expected).
MISSING = [
    ("ecr", ("to-ecr/app", "to-ecr/web"),  # a repository must exist: a line for each
     "knows no repository 'to-ecr/app' and will not create it on push: create 'to-ecr/app' on "
     "the registry first", None, 2),
    ("artifact-registry", ("proj/repo/app", "proj/repo/web"),
     "knows no 'proj/repo' (which would hold 'proj/repo/app') and will not create it on push: "
     "create 'proj/repo' on the registry first", None, 1),
    ("artifact-registry", ("short/app", "short/web"),
     "refuses the repository name 'short/app': it needs more path components", None, 2),
    ("swr", ("org/app", "org/web"),
     "user 'tester' may not push to 'org/app': does the namespace 'org' exist, and may this "
     "account push to it?",
     "user 'tester' is denied even reading 'org/app': does the namespace 'org' exist, and may "
     "this account push to it? (create 'org' on the registry first)", 1),
    ("acr", ("team/app", "team/web"),
     "may not push to 'team/app': does the namespace 'team' exist", "is denied even reading", 1),
    ("harbor", ("project/app", "project/web"),
     "user 'tester' may not push to 'project/app': does the namespace 'project' exist, and may "
     "this account push to it?",
     "Harbor has no project 'project', and a push does not create one: create 'project' on "
     "the registry first (or set create_namespace: true", 1),
]


@pytest.mark.parametrize(("name", "targets", "words", "plan_words", "lines"), MISSING)
def test_a_missing_namespace_is_one_line_that_names_it(name, targets, words, plan_words, lines,
                                                       origin, registry_factory, fronts, run):
    """Five images into two repositories of a namespace that does not exist: one line per
    namespace (per repository where each must exist), the summary counting all five and
    --output-failed listing each; `migrator plan` says it first, with reads only."""
    upstream = registry_factory(auth="htpasswd")
    front = PersonalityFront(name, upstream.url)
    fronts.append(front)
    images = {f"{origin.host}/src/docker/tags:{tag}": [
        f"{front.host}/{target}" for target in targets if tag != "c" or target == targets[0]]
        for tag in ("a", "b", "c")}
    auth = {front.host: {"username": upstream.username, "password": upstream.password,
                         "insecure": True}}

    code, out, err = run(images, [origin.host], "--output-failed",
                         str(run.dir / "failed.yaml"), auth=auth)
    assert code == EXIT_FAILED
    found = failed_lines(err)
    assert len(found) == lines, found
    # Where each repository must exist, each has its line, in the same words; a namespace's
    # line quotes the first of its images, whichever repository that is.
    for target in targets[:lines]:
        assert sum(any(words.replace(targets[0], either) in line for either in (
            (target,) if lines > 1 else targets)) for line in found) == 1, found
    if lines == 1:
        namespace = front.namespace_of(targets[0])
        assert found[0].startswith(f"failed: 5 images into {front.host}/{namespace} (")
        assert "and 3 more): " in found[0]
    assert "Images(5) migration finished, 5 images tasks failed" in out
    assert len(json.loads((run.dir / "failed.yaml.reasons.json").read_text())) == 5
    assert upstream.password not in err
    assert all(list_tags(upstream, target, auth=upstream.auth) == [] for target in targets)

    before = len(front.log)
    (run.dir / "images.json").write_text(json.dumps(images))
    code = main(["plan", "--images", str(run.dir / "images.json"), "--auth",
                 str(run.dir / "auth.json"), "--log", str(run.log)], ENVIRON)
    out, err = run.capsys.readouterr()
    assert code == EXIT_FAILED, out + err
    planned = failed_lines(err)
    assert len(planned) == lines, planned
    for target in targets[:lines]:
        assert sum(any((plan_words or words).replace(targets[0], either) in line
                       for either in ((target,) if lines > 1 else targets))
                   for line in planned) == 1, planned
    assert not [entry for entry in front.log[before:] if entry[0] in WRITES]
    assert "Plan: 0 of 5 images to copy" in out


class DropFirstUploadPost(Behaviour):
    """The first upload POST loses its connection, whatever the repository: a reset."""

    def __init__(self) -> None:
        self.dropped = 0

    def before(self, front: PersonalityFront, request: Request) -> str | None:
        if request.method == "POST" and request.kind == "blobs/uploads" and not self.dropped:
            self.dropped += 1
            return DROP
        return None


def probes(front: PersonalityFront, repository: str) -> int:
    """The read-only probes of a push target (`RegistryClient.target_missing`)."""
    return sum(1 for method, path, _ in front.log
               if method == "GET" and path == f"/v2/{repository}/tags/list?n=1")


def ecr_behaviours(**must_exist: object) -> list[Behaviour]:
    return [MustExist(None, _ecr_missing, reads=_ecr_missing, **must_exist)  # type: ignore[arg-type]
            if isinstance(behaviour, MustExist) else behaviour
            for behaviour in PERSONALITIES["ecr"].behaviours()]


def test_a_dropped_upload_post_into_a_missing_ecr_repository_is_the_one_line(
        origin, sink, fronts, run):
    """ECR may drop the connection of an upload POST into a repository that does not exist:
    the read-only probe tells it from a reset, and the copy fails with the same one line,
    without retry passes; a drop where the repository exists is a reset, tried again."""
    front = PersonalityFront("ecr", sink.url, behaviours=ecr_behaviours(drop_uploads=True))
    fronts.append(front)
    images = {f"{origin.host}/src/docker/tags:{tag}": f"{front.host}/dropped/app"
              for tag in ("a", "b")}
    code, _, err = run(images, [origin.host, front.host], "--retries", "2")
    assert code == EXIT_FAILED
    (line,) = failed_lines(err)
    assert line.startswith(f"failed: 2 images into {front.host}/dropped/app (")
    assert "knows no repository 'dropped/app' and will not create it on push: create " \
           "'dropped/app' on the registry first" in line
    assert "retry pass" not in run.log.read_text()
    assert probes(front, "dropped/app") == 1  # the probe, once

    reset = PersonalityFront("ecr", sink.url, behaviours=[
        DropFirstUploadPost(), *ecr_behaviours()])
    fronts.append(reset)
    reset.create("reset/app")
    code, out, err = run({f"{origin.host}/src/docker/single:1.0": f"{reset.host}/reset/app"},
                         [origin.host, reset.host], state="reset")
    assert code == EXIT_OK, err + out
    assert audit_copy(sink, "reset/app", "1.0", origin.images[("docker", "single", "1.0")]) \
        is None
    assert probes(reset, "reset/app") == 1  # asked, and it exists


def test_create_namespace_makes_harbor_projects_once_and_is_refused_elsewhere(
        origin, registry_factory, fronts, run):
    """`create_namespace: true`: Harbor's projects API makes each missing project once, before
    the first push into it (a plan creates nothing; a later run finds them, 409); on a
    registry that does not answer as Harbor the setting fails the copies with one line."""
    upstream = registry_factory(auth="htpasswd")
    front = PersonalityFront("harbor", upstream.url)
    fronts.append(front)
    entry = {"username": upstream.username, "password": upstream.password, "insecure": True,
             "create_namespace": True}
    images = {f"{origin.host}/src/docker/tags:a": [f"{front.host}/made-a/app",
                                                  f"{front.host}/made-a/web",
                                                  f"{front.host}/made-b/app"],
              f"{origin.host}/src/docker/tags:b": f"{front.host}/made-a/app"}
    (run.dir / "images.json").write_text(json.dumps(images))
    (run.dir / "auth.json").write_text(json.dumps({front.host: entry,
                                                   origin.host: {"insecure": True}}))
    code = main(["plan", "--images", str(run.dir / "images.json"), "--auth",
                 str(run.dir / "auth.json"), "--log", str(run.log)], ENVIRON)
    out, err = run.capsys.readouterr()
    assert code == EXIT_OK, out + err
    assert "Plan: 4 of 4 images to copy" in out and front.created == set()

    code, out, err = run(images, [origin.host], auth={front.host: entry})
    assert code == EXIT_OK, err + out
    assert sorted(front.projects_created) == ["made-a", "made-b"]
    assert front.count("POST", "/api/v2.0/projects") == 2
    assert sorted(list_tags(upstream, "made-a/app", auth=upstream.auth)) == ["a", "b"]
    # Another run, one new image in an existing project: asked once, found (409), pushed.
    code, out, err = run({f"{origin.host}/src/docker/tags:c": f"{front.host}/made-b/other"},
                         [origin.host], state="again", auth={front.host: entry})
    assert code == EXIT_OK, err + out
    assert front.count("POST", "/api/v2.0/projects", 409) == 1
    assert list_tags(upstream, "made-b/other", auth=upstream.auth) == ["c"]

    ecr = PersonalityFront("ecr", upstream.url)
    fronts.append(ecr)
    code, _, err = run({f"{origin.host}/src/docker/tags:a": f"{ecr.host}/made-c/app"},
                       [origin.host], state="ecr", auth={ecr.host: {**entry}})
    assert code == EXIT_FAILED
    (line,) = failed_lines(err)
    assert (f"{ecr.host}: create_namespace is set in the auth file, but the registry does not "
            "answer as Harbor (GET /api/v2.0/ping), the one namespace API migrator speaks: "
            "create 'made-c' on the registry first and drop the setting") in line
    assert not [entry for entry in ecr.log if entry[0] in WRITES]


@pytest.mark.parametrize(("name", "media", "words"), [
    ("zot", "docker", "refused the Docker manifest format (application/vnd.docker.distribution."
                      "manifest.v2+json) of to-zot/app:1.0: it takes OCI manifests only"),
    ("swr", "oci", "refused the OCI manifest format (application/vnd.oci.image.manifest.v1+json)"
                   " of to-swr/app:1.0: it takes Docker manifests only"),
])
def test_a_refused_format_says_which(name, media, words, origin, sink, fronts, run):
    front = PersonalityFront(name, sink.url)
    fronts.append(front)
    front.create(f"to-{name}")
    code, _, err = run({f"{origin.host}/src/{media}/single:1.0": f"{front.host}/to-{name}/app"},
                       [origin.host, front.host])
    assert code == EXIT_FAILED
    (line,) = failed_lines(err)
    assert words in line and "copied unchanged" in line


def test_an_immutable_tag_is_a_permanent_failure_that_says_so(origin, sink, fronts, run):
    front = PersonalityFront("harbor", sink.url)
    fronts.append(front)
    front.create("locked")
    push_image(sink, "locked/app", "v1", layers=[make_layer(1024, 77)])  # another image
    code, _, err = run({f"{origin.host}/src/docker/single:1.0": f"{front.host}/locked/app:v1"},
                       [origin.host, front.host], "--retries", "3")
    assert code == EXIT_FAILED
    (line,) = failed_lines(err)
    assert "tag locked/app:v1 is immutable on the target" in line and "HTTP 412 DENIED" in line
    assert "retry pass" not in run.log.read_text()


# -- tag lists, quotas, compression -----------------------------------------------------------


@pytest.fixture(scope="module")
def many_tags(origin: Origin) -> list[str]:
    tags = [f"t{number:03d}" for number in range(120)]
    layer = [make_layer(1024, 500)]
    for tag in tags:
        push_image(origin.registry, "src/docker/many", tag, layers=layer)
    return tags


@pytest.mark.parametrize("name", ["quay", "ecr", "artifact-registry", "dockerhub"])
def test_every_tag_is_listed_whatever_the_paging(name, origin, many_tags, fronts, run, sink):
    """Quay: pages of 50 behind a relative `next_page` token; ECR: `n` above 1000 refused and
    its own pages; Artifact Registry: one page with a `manifest` map; Docker Hub: a bare-text
    429 on the first listing. `migrator plan` lists them all."""
    front = PersonalityFront(name, origin.registry.url)
    fronts.append(front)
    (run.dir / "images.json").write_text(json.dumps(
        {f"{front.host}/src/docker/many": f"{sink.host}/listed-{name}/many"}))
    (run.dir / "auth.json").write_text(json.dumps({front.host: {"insecure": True},
                                                   sink.host: {"insecure": True}}))
    code = main(["plan", "--images", str(run.dir / "images.json"), "--auth",
                 str(run.dir / "auth.json"), "--log", str(run.log)],
                {**ENVIRON, "MIGRATOR_TAG_PAGE_SIZE": "5000"})
    out, err = run.capsys.readouterr()
    assert code == EXIT_OK, err + out
    assert f"of {len(many_tags)} images to copy" in out
    listings = [path for method, path, status in front.log
                if method == "GET" and "/tags/list" in path and status == 200]
    assert len(listings) == {"quay": 3, "ecr": 3, "artifact-registry": 1, "dockerhub": 1}[name]


def test_an_all_tags_rule_of_a_docker_hub_repository_without_tags_is_one_line(
        origin, sink, fronts, run):
    """Docker Hub answers 404 to the tag list of a repository without tags: the rule says so
    in one line (it cannot tell from one that does not exist) and the other rules go on."""
    front = PersonalityFront("dockerhub", origin.registry.url)
    fronts.append(front)
    prefix = f"empty/{next(_run)}"
    code, out, err = run({f"{front.host}/src/docker/never-tagged": f"{sink.host}/{prefix}/none",
                          f"{front.host}/src/docker/single:1.0": f"{sink.host}/{prefix}/single"},
                         [front.host, sink.host])
    assert code == EXIT_FAILED
    (line,) = [line for line in err.splitlines() if line.startswith("generate failed")]
    assert line.endswith(f"{front.host}/src/docker/never-tagged has no tags, or does not exist "
                         f"(its tag list answers 404): nothing to copy from it (GET "
                         f"http://{front.host}/v2/src/docker/never-tagged/tags/list) HTTP 404 "
                         "NAME_UNKNOWN: repository name not known to registry"), line
    assert out.splitlines()[-1] == ("Images(1) migration finished, 0 images tasks failed, "
                                    "1 tasks generate failed")
    assert audit_copy(sink, f"{prefix}/single", "1.0",
                      origin.images[("docker", "single", "1.0")]) is None


def test_docker_hub_quota_heads_come_first_on_a_rerun(origin, sink, fronts, run):
    """A manifest GET is a pull of Docker Hub's quota, a HEAD is not: once the quota headers
    showed, a run that finds everything in place spends (almost) no pull."""
    front = PersonalityFront("dockerhub", origin.registry.url)
    fronts.append(front)
    quota = front.behaviour(PullQuota)
    assert isinstance(quota, PullQuota)
    images = rules(front.host, "src/docker", sink.host, f"quota/{next(_run)}")
    assert run(images, [front.host, sink.host])[0] == EXIT_OK
    first = quota.pulls
    code, out, err = run(images, [front.host, sink.host], "--workers", "1", state="fresh")
    assert code == EXIT_OK, err + out
    assert quota.pulls - first <= 1 < first  # the first answer tells; HEADs from then on


def test_gzip_on_the_wire_is_refused_by_asking_for_identity(origin, fronts):
    """Quay's storage gzips a blob for a client that accepts gzip (requests' default): the
    bytes on the wire are not the blob. The copies above pass because blobs are asked for
    as `identity`; this shows the behaviour is there to meet."""
    front = PersonalityFront("quay", origin.registry.url)
    fronts.append(front)
    image = origin.images[("docker", "single", "1.0")]
    digest = image.blobs[-1]
    response = requests.get(f"{front.url}/v2/src/docker/single/blobs/{digest}", stream=True,
                            timeout=30)
    assert response.headers.get("Content-Encoding") == "gzip"
    assert sha256_digest(response.raw.read(decode_content=False)) != digest
    plain = requests.get(f"{front.url}/v2/src/docker/single/blobs/{digest}", timeout=30,
                         headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers and sha256_digest(plain.content) == digest


def test_a_signed_redirect_gets_no_credentials_and_never_shows(origin, registry_factory,
                                                               fronts, run, sink):
    """A source with credentials whose blobs are redirected to storage: the registry's
    Authorization never reaches the storage host (S3 would answer 400), and the signed URL is
    in no log line, not even with --debug."""
    upstream = registry_factory(auth="htpasswd")
    image = push_image(upstream, "ns/app", "1", auth=upstream.auth,
                       layers=[make_layer(64 * 1024, 88), make_layer(10 * MiB, 89)])
    front = PersonalityFront("ecr", upstream.url, upstream_auth=basic(upstream))
    fronts.append(front)
    # An earlier run in this process without --debug quietened urllib3; --debug wants it all.
    urllib3_log = logging.getLogger("urllib3")
    level = urllib3_log.level
    urllib3_log.setLevel(logging.NOTSET)
    try:
        code, out, err = run({f"{front.host}/ns/app:1": f"{sink.host}/signed/app"},
                             [sink.host], "--debug", auth={front.host: {
                                 "username": upstream.username, "password": upstream.password,
                                 "insecure": True}})
    finally:
        urllib3_log.setLevel(level)
    assert code == EXIT_OK, err + out
    assert audit_copy(sink, "signed/app", "1", image) is None
    assert front.store is not None and len(front.store.seen) >= 3 and not front.store.refused
    logged = run.log.read_text()
    assert "X-Amz-Signature" not in logged + out + err and upstream.password not in logged
    assert "/blobs/" in logged  # the debug log does name the requests


# -- the fleet ---------------------------------------------------------------------------------
# Two worker processes serve the whole module; each test hands them its own rules. Redis: DB 0
# under a key prefix and a Celery queue of the module's own, deleted afterwards, never flushed.
FLEET_REDIS = "redis://127.0.0.1:6379/0"
FLEET_SCENARIOS = ("single", "multi", "base-a", "base-b", "tags")  # the big blob: sync's


@pytest.fixture(scope="module")
def fleet_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    run = uuid.uuid4().hex[:12]
    prefix, queue = f"test:personalities:{run}:", f"personalities-{run}"
    instance = Fleet(tmp_path_factory.mktemp("fleet"), None,  # type: ignore[arg-type]
                     redis_url=FLEET_REDIS)
    instance.env.update({**ENVIRON, "MIGRATOR_REDIS_PREFIX": prefix, "MIGRATOR_QUEUE": queue})
    try:
        for name in ("personalities-1", "personalities-2"):
            instance.start_worker(name, concurrency=4)
        yield instance
    finally:
        instance.stop_all()
        keys = [*instance.redis.scan_iter(f"{prefix}*"), queue, f"_kombu.binding.{queue}",
                f"_kombu.binding_permanent.{queue}"]
        instance.redis.delete(*keys)
        instance.redis.close()


@pytest.fixture
def fleet(fleet_workers: Fleet, capsys: pytest.CaptureFixture[str]) -> Fleet:
    fleet_workers.capsys = capsys
    return fleet_workers


def worker_logs(fleet: Fleet) -> str:
    return "\n".join(fleet.log(name) for name in ("personalities-1", "personalities-2"))


def fleet_rules(source_host: str, source_prefix: str, target_host: str,
                target_prefix: str) -> dict[str, str]:
    return {source: target for source, target in rules(
        source_host, source_prefix, target_host, target_prefix).items()
        if source.rsplit("/", 1)[1].split(":")[0] in FLEET_SCENARIOS}


def audit_fleet(registry: RunningRegistry, prefix: str, origin: Origin, media: str) -> None:
    for (image_media, name, tag), image in origin.images.items():
        if image_media == media and name in FLEET_SCENARIOS:
            assert audit_copy(registry, f"{prefix}/{name}", tag, image) is None, (prefix, name)
    assert sorted(list_tags(registry, f"{prefix}/tags")) == ["a", "b", "c"], prefix


def test_the_fleet_copies_into_every_personality(fleet, origin, sink, fronts):
    """One fleet run, every personality a target (each learning its chunk and mount rules on
    its own in each worker), plus three images into an Artifact Registry repository that does
    not exist: one line for it; the re-run writes nothing."""
    run_id = uuid.uuid4().hex[:8]
    images: dict[str, list[str]] = {}  # one source, a target in each personality
    targets: dict[str, tuple[PersonalityFront, str]] = {}
    for name in NAMES:
        front = PersonalityFront(name, sink.url)
        fronts.append(front)
        prefix = f"fleet-to-{name}/{run_id}"
        front.create(*{front.namespace_of(f"{prefix}/{scenario}") for scenario in SCENARIOS})
        for source, target in fleet_rules(origin.host, f"src/{front.media}", front.host,
                                          prefix).items():
            images.setdefault(source, []).append(target)
        targets[name] = (front, prefix)
    registry = targets["artifact-registry"][0]
    images[f"{origin.host}/src/docker/tags"].append(f"{registry.host}/nowhere/repo/app")
    fleet.write(images, {origin.host: {"insecure": True},
                         **{front.host: {"insecure": True} for front, _ in targets.values()}})

    code, out, err = fleet.enqueue("--wait", "--timeout", "120")
    assert code == EXIT_FAILED, err + out + worker_logs(fleet)
    (line,) = failed_lines(err)
    assert line.startswith(f"failed: 3 images into {registry.host}/nowhere/repo (")
    assert "create 'nowhere/repo' on the registry first" in line, line
    total = 7 * len(NAMES) + 3
    assert f"Images({total}) migration finished, 3 images tasks failed" in out
    for front, prefix in targets.values():
        audit_fleet(sink, prefix, origin, front.media)

    mark = sink.mark()
    code, out, err = fleet.enqueue("--wait", "--timeout", "60")
    assert f"Images({total}) migration finished, 3 images tasks failed" in out, err + out
    assert writes(sink, mark) == []


def test_the_fleet_copies_from_every_personality(fleet, origin, registry_factory, fronts):
    """One fleet run, every personality a source: redirects to signed storage, paged and
    unpaged tag lists, quotas, missing digests, each met by the workers. A fresh target, so
    that blobs come from the sources (the fleet's ledger knows none of them there)."""
    target = registry_factory()
    run_id = uuid.uuid4().hex[:8]
    images: dict[str, str] = {}
    sources: list[tuple[PersonalityFront, str]] = []
    for name in NAMES:
        front = PersonalityFront(name, origin.registry.url)
        fronts.append(front)
        prefix = f"fleet-from-{name}/{run_id}"
        images.update(fleet_rules(front.host, f"src/{front.media}", target.host, prefix))
        sources.append((front, prefix))
    fleet.write(images, {target.host: {"insecure": True},
                         **{front.host: {"insecure": True} for front, _ in sources}})

    code, out, err = fleet.enqueue("--wait", "--timeout", "120")
    assert code == EXIT_OK, err + out + worker_logs(fleet)
    assert f"Images({7 * len(NAMES)}) migration finished, 0 images tasks failed" in out
    for front, prefix in sources:
        audit_fleet(target, prefix, origin, front.media)
    # Each blob is read once into the target, then mounted there: from whichever source came
    # first, signed storage included, and never with the registry's credentials.
    stores = [front.store for front, _ in sources if front.store is not None]
    assert any(store.seen for store in stores)
    assert not any(store.refused for store in stores)


@pytest.mark.parametrize(("source", "target"), [("dockerhub", "ecr"),
                                                ("quay", "artifact-registry")])
def test_the_fleet_copies_between_personalities(source, target, fleet, origin, sink, fronts):
    """The 20 MiB blob through the fleet: each worker learns the target's chunk rules."""
    src = PersonalityFront(source, origin.registry.url)
    dst = PersonalityFront(target, sink.url)
    fronts.extend((src, dst))
    prefix = f"fleet-{target}/{uuid.uuid4().hex[:8]}"
    dst.create(*{dst.namespace_of(f"{prefix}/{scenario}") for scenario in SCENARIOS})
    fleet.write(rules(src.host, "src/docker", dst.host, prefix),
                {src.host: {"insecure": True}, dst.host: {"insecure": True}})

    code, out, err = fleet.enqueue("--wait", "--timeout", "120")
    assert code == EXIT_OK, err + out + worker_logs(fleet)
    audit_all(sink, prefix, origin, "docker")
    assert src.store is not None and src.store.seen and not src.store.refused
    patches = [status for method, _, status in dst.log if method == "PATCH"]
    # ECR: the 4.5 MiB part refused once per worker that met it, then 5 MiB parts (answered
    # 201); Artifact Registry: PATCH refused once per worker, then monolithic PUTs.
    if target == "ecr":
        assert 1 <= patches.count(400) <= 2 and 201 in patches, patches
    else:
        assert patches and set(patches) == {405} and len(patches) <= 2, patches

    mark = sink.mark()
    code, out, err = fleet.enqueue("--wait", "--timeout", "60")
    assert code == EXIT_OK, err + out
    assert writes(sink, mark) == []
