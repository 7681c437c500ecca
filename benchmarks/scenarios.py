"""The benchmark's data: what each scenario pushes to the source, and the byte-for-byte check.

Images are built by tests.support.images (real gzip-framed tar layers of deterministic random
bytes, real image configs with matching diff_ids), so every tool sees genuine content and none
has a reason to re-compress. Scenarios that share ``data`` share the source repositories
(the WAN variant copies many-small's images through latency proxies).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import requests

from tests.support.images import (
    ACCEPT,
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    diff_id,
    make_config,
    make_layer,
    push_image,
    push_index,
    sha256_digest,
)
from tests.support.registry import RunningRegistry, start_registry

KIB, MIB = 1024, 1024 * 1024
TARGET_NAMESPACE = "copy"


@dataclass(frozen=True)
class Scenario:
    name: str
    data: str  # the source namespace holding its images
    description: str
    repositories: int
    tags: int
    layers: int  # per image (per platform of an index)
    shared_layers: int  # of those, the same base layers in every image (of one platform)
    layer_size: int
    platforms: tuple[str, ...] = ()  # empty: plain images; else an index of these os/arch
    media: str = "docker"
    rtt: float = 0.0  # seconds added to every request at both registries (WAN)

    @property
    def images(self) -> int:
        """Tags to copy: the unit of "per image" figures."""
        return self.repositories * self.tags

    def source_repositories(self) -> list[str]:
        return [f"{self.data}/app{r:02d}" for r in range(self.repositories)]

    def tag_names(self) -> list[str]:
        return [f"v{t}" for t in range(self.tags)]

    def describe(self) -> dict[str, object]:
        per_platform = max(1, len(self.platforms))
        unique_layers = per_platform * (
            self.shared_layers + self.images * (self.layers - self.shared_layers))
        return {
            "description": self.description,
            "repositories": self.repositories,
            "tags": self.images,
            "layers_per_image": self.layers,
            "shared_layers": self.shared_layers,
            "layer_bytes": self.layer_size,
            "platforms": list(self.platforms),
            "media": self.media,
            "rtt_s": self.rtt,
            "unique_layers": unique_layers,
            "unique_layer_bytes": unique_layers * self.layer_size,
        }


def target_repository(source_repository: str) -> str:
    """Where every tool puts a source repository: `copy/<last component>` (skopeo sync's rule)."""
    return f"{TARGET_NAMESPACE}/{source_repository.rsplit('/', 1)[-1]}"


FULL: dict[str, Scenario] = {s.name: s for s in (
    Scenario("many-small", "small", "50 repositories x 4 tags, 5 layers of 256 KiB per image, "
             "3 of them base layers shared by all", 50, 4, 5, 3, 256 * KIB),
    Scenario("few-large", "large", "2 repositories x 1 tag, 3 layers of 256 MiB", 2, 1, 3, 0,
             256 * MIB),
    Scenario("multi-arch", "multi", "10 repositories x 2 tags, each an OCI index of "
             "linux/amd64 + linux/arm64 images of 5 layers of 256 KiB (3 shared per platform)",
             10, 2, 5, 3, 256 * KIB, platforms=("linux/amd64", "linux/arm64"), media="oci"),
    Scenario("wan", "small", "many-small through a proxy in front of each registry adding "
             "50 ms to every request (25 ms each way)", 50, 4, 5, 3, 256 * KIB, rtt=0.05),
)}

QUICK: dict[str, Scenario] = {s.name: s for s in (
    Scenario("many-small", "small", "3 repositories x 2 tags, 3 layers of 16 KiB (2 shared)",
             3, 2, 3, 2, 16 * KIB),
    Scenario("few-large", "large", "1 repository x 1 tag, 2 layers of 4 MiB", 1, 1, 2, 0,
             4 * MIB),
    Scenario("multi-arch", "multi", "2 repositories x 1 tag, OCI index of 2 platforms, "
             "2 layers of 16 KiB (1 shared per platform)", 2, 1, 2, 1, 16 * KIB,
             platforms=("linux/amd64", "linux/arm64"), media="oci"),
    Scenario("wan", "small", "quick many-small through proxies adding 10 ms per request",
             3, 2, 3, 2, 16 * KIB, rtt=0.01),
)}


def _seed(*parts: object) -> int:
    return zlib.crc32("/".join(str(p) for p in parts).encode())


def _layers(scenario: Scenario, base: dict[str, list[bytes]], repository: str, tag: str,
            platform: str) -> list[bytes]:
    own = [make_layer(scenario.layer_size, _seed(repository, tag, platform, i))
           for i in range(scenario.layers - scenario.shared_layers)]
    return [*base[platform], *own]


def seed_source(source: RunningRegistry, scenario: Scenario, threads: int = 4) -> None:
    """Push the scenario's images into the source: repositories in parallel, tags in order."""
    platforms = scenario.platforms or ("linux/amd64",)
    base = {p: [make_layer(scenario.layer_size, _seed(scenario.data, "base", p, i))
                for i in range(scenario.shared_layers)] for p in platforms}

    def push_repository(repository: str) -> None:
        for tag in scenario.tag_names():
            if scenario.platforms:
                push_index(source, repository, tag, media=scenario.media,  # type: ignore[arg-type]
                           platforms=[(*p.split("/", 1),
                                       _layers(scenario, base, repository, tag, p))
                                      for p in scenario.platforms])  # type: ignore[misc]
            else:
                push_image(source, repository, tag, media=scenario.media,  # type: ignore[arg-type]
                           layers=_layers(scenario, base, repository, tag, platforms[0]))

    big = scenario.layer_size * scenario.layers >= 64 * MIB  # bound the memory of seeding
    with ThreadPoolExecutor(1 if big else threads) as pool:
        list(pool.map(push_repository, scenario.source_repositories()))


@dataclass
class Truth:
    """The source's manifests as the registry serves them: what every target must equal."""

    tags: dict[str, list[str]] = field(default_factory=dict)  # repository -> sorted tags
    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    children: dict[tuple[str, str], list[tuple[str, bytes, str]]] = field(default_factory=dict)


class Http:
    """One keep-alive session per thread to one registry: checking or seeding tens of thousands
    of manifests through a new connection each (tests.support.images' helpers) costs more than
    the runs being measured."""

    def __init__(self, registry: RunningRegistry) -> None:
        self.base = registry.url.rstrip("/")
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.trust_env = False  # no proxies or CA bundles from the environment
        return session

    def manifest(self, repository: str, ref: str) -> tuple[int, bytes, str]:
        """(status, raw bytes, media type) of a manifest GET with every media type accepted."""
        resp = self.session.get(f"{self.base}/v2/{repository}/manifests/{ref}",
                                headers={"Accept": ACCEPT}, timeout=60)
        return (resp.status_code, resp.content,
                resp.headers.get("Content-Type", "").split(";")[0].strip())

    def tags(self, repository: str) -> list[str]:
        """Every tag, following `Link` pages; [] for an unknown repository."""
        tags: list[str] = []
        url: str | None = f"{self.base}/v2/{repository}/tags/list"
        while url:
            resp = self.session.get(url, timeout=60)
            if resp.status_code == 404:
                return []
            resp.raise_for_status()
            tags.extend(resp.json().get("tags") or [])
            nxt = resp.links.get("next", {}).get("url")
            url = urljoin(resp.url, nxt) if nxt else None
        return tags

    def push_blob(self, repository: str, data: bytes) -> str:
        """Monolithic upload (POST, then PUT with ?digest=): the registry checks the digest."""
        digest = sha256_digest(data)
        start = self.session.post(f"{self.base}/v2/{repository}/blobs/uploads/", timeout=60)
        _expect(start, 202)
        location = urljoin(start.url, start.headers["Location"])
        sep = "&" if "?" in location else "?"
        _expect(self.session.put(f"{location}{sep}digest={digest}", data=data, timeout=60,
                                 headers={"Content-Type": "application/octet-stream"}), 201)
        return digest

    def mount_blob(self, repository: str, digest: str, source: str) -> None:
        resp = self.session.post(f"{self.base}/v2/{repository}/blobs/uploads/",
                                 params={"mount": digest, "from": source}, timeout=60)
        _expect(resp, 201)

    def put_manifest(self, repository: str, ref: str, body: bytes, media_type: str) -> None:
        resp = self.session.put(f"{self.base}/v2/{repository}/manifests/{ref}", data=body,
                                headers={"Content-Type": media_type}, timeout=60)
        _expect(resp, 201)
        if resp.headers.get("Docker-Content-Digest", sha256_digest(body)) != sha256_digest(body):
            raise RuntimeError(f"{repository}:{ref}: the registry stored other bytes")


def _expect(resp: requests.Response, status: int) -> None:
    if resp.status_code != status:
        raise RuntimeError(f"{resp.request.method} {resp.url} -> {resp.status_code} "
                           f"(wanted {status}): {resp.text[:300]}")


def snapshot(source: RunningRegistry, scenario: Scenario, threads: int = 4) -> Truth:
    """Read back every tag of the scenario from the source (and the children of indexes)."""
    truth = Truth()
    http = Http(source)

    def read(repository: str) -> tuple[str, list[str], list[tuple]]:
        tags = sorted(http.tags(repository))
        rows = []
        for tag in tags:
            status, raw, media = http.manifest(repository, tag)
            if status != 200:
                raise RuntimeError(f"source {repository}:{tag}: manifest GET answered {status}")
            kids = []
            if "index" in media or "list" in media:
                for child in json.loads(raw)["manifests"]:
                    _, c_raw, c_media = http.manifest(repository, child["digest"])
                    kids.append((child["digest"], c_raw, c_media))
            rows.append((tag, raw, media, kids))
        return repository, tags, rows

    with ThreadPoolExecutor(threads) as pool:
        for repository, tags, rows in pool.map(read, scenario.source_repositories()):
            truth.tags[repository] = tags
            for tag, raw, media, kids in rows:
                truth.manifests[(repository, tag)] = (raw, media)
                truth.children[(repository, tag)] = kids
    expected = scenario.images
    if len(truth.manifests) != expected:
        raise RuntimeError(f"{scenario.name}: the source holds {len(truth.manifests)} tags, "
                           f"{expected} were pushed")
    return truth


def verify(target: RunningRegistry, truth: Truth, threads: int = 8) -> list[str]:
    """Every tag present in the target, every manifest (and index child) byte-identical."""
    http = Http(target)

    def check(repository: str) -> list[str]:
        problems: list[str] = []
        copy = target_repository(repository)
        tags = sorted(http.tags(copy))
        if tags != truth.tags[repository]:
            shown = tags if len(tags) <= 20 else f"{len(tags)} tags"
            wanted = truth.tags[repository]
            problems.append(f"{copy}: tags {shown} != source "
                            f"{wanted if len(wanted) <= 20 else f'{len(wanted)} tags'}")
        for tag in truth.tags[repository]:
            raw, media = truth.manifests[(repository, tag)]
            status, got, got_media = http.manifest(copy, tag)
            if status != 200:
                problems.append(f"{copy}:{tag}: manifest GET answered {status}")
                continue
            if got != raw or got_media != media:
                problems.append(f"{copy}:{tag}: manifest differs from the source "
                                f"({got_media}, {len(got)} bytes vs {media}, {len(raw)} bytes)")
            for digest, c_raw, c_media in truth.children[(repository, tag)]:
                status, got, got_media = http.manifest(copy, digest)
                if status != 200:
                    problems.append(f"{copy}@{digest}: manifest GET answered {status}")
                elif got != c_raw or got_media != c_media:
                    problems.append(f"{copy}@{digest}: child manifest differs from the source")
        return problems

    with ThreadPoolExecutor(threads) as pool:
        return [p for found in pool.map(check, list(truth.tags)) for p in found]


# -- the scale data: many tiny images, seeded once and kept ------------------------------

SEED_FORMAT = 1  # bump when what seed_fast pushes changes: a cache of another format is redone


def image_parts(scenario: Scenario, base: list[bytes], repository: str, tag: str
                ) -> tuple[bytes, list[bytes], bytes]:
    """(config, layers, manifest) of one single-platform Docker image of the scenario: the
    same images seed_source pushes through tests.support.images."""
    layers = _layers(scenario, {"linux/amd64": base}, repository, tag, "linux/amd64")
    config = make_config("linux", "amd64", [diff_id(layer) for layer in layers])
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": len(config),
                   "digest": sha256_digest(config)},
        "layers": [{"mediaType": DOCKER_LAYER, "size": len(layer),
                    "digest": sha256_digest(layer)} for layer in layers],
    }
    return config, layers, json.dumps(manifest, indent=3).encode()


def seed_fast(source: RunningRegistry, scenario: Scenario, repositories: list[str],
              threads: int = 8) -> dict[str, dict[str, str]]:
    """Push ``repositories`` of a single-platform scenario as fast as the registry takes them:
    the shared base layers uploaded once and mounted into every other repository, then every
    image (config, own layers, manifest) from a pool of threads with a keep-alive session
    each. Returns repository -> tag -> manifest text."""
    if scenario.platforms or scenario.media != "docker":
        raise ValueError("seed_fast pushes single-platform Docker images only")
    http = Http(source)
    base = [make_layer(scenario.layer_size, _seed(scenario.data, "base", "linux/amd64", i))
            for i in range(scenario.shared_layers)]
    home = f"{scenario.data}/base"  # where the base layers live, to be mounted from
    base_digests = [http.push_blob(home, layer) for layer in base]

    def mount(repository: str) -> None:
        for digest in base_digests:
            http.mount_blob(repository, digest, home)

    def push(item: tuple[str, str]) -> tuple[str, str, str]:
        repository, tag = item
        config, layers, manifest = image_parts(scenario, base, repository, tag)
        http.push_blob(repository, config)
        for layer in layers[scenario.shared_layers:]:
            http.push_blob(repository, layer)
        http.put_manifest(repository, tag, manifest, DOCKER_MANIFEST)
        return repository, tag, manifest.decode()

    seeded: dict[str, dict[str, str]] = {r: {} for r in repositories}
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(mount, repositories))
        items = [(r, t) for r in repositories for t in scenario.tag_names()]
        for repository, tag, manifest in pool.map(push, items):
            seeded[repository][tag] = manifest
    return seeded


class SeedCache:
    """A source registry whose storage survives between benchmark runs.

    ``DIR/registry`` is the registry's work directory (its storage, config and log);
    ``DIR/seeded.json`` records the repositories completely seeded, with their manifests, so
    that a run checks each repository's tag list (one request) instead of pushing it again,
    and knows the exact bytes every copy must equal without reading them back.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.record_path = directory / "seeded.json"
        self.record: dict[str, dict[str, str]] = {}
        if self.record_path.exists():
            saved = json.loads(self.record_path.read_text())
            if saved.get("format") == SEED_FORMAT:
                self.record = saved["repositories"]
            else:  # another format: start afresh
                shutil.rmtree(directory / "registry", ignore_errors=True)
        self.source: RunningRegistry | None = None

    def start(self) -> RunningRegistry:
        workdir = self.directory / "registry"
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "registry.log").unlink(missing_ok=True)  # counts start from this run
        self.source = start_registry(workdir)
        return self.source

    def save(self) -> None:
        tmp = self.record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"format": SEED_FORMAT, "repositories": self.record}))
        tmp.replace(self.record_path)

    def ensure(self, scenario: Scenario, threads: int = 8) -> tuple[Truth, float, int]:
        """Seed what the cache lacks of ``scenario``; returns (truth, seconds spent seeding,
        repositories seeded now)."""
        assert self.source is not None, "start() first"
        began = time.monotonic()
        http = Http(self.source)
        wanted = scenario.tag_names()

        def complete(repository: str) -> bool:
            known = self.record.get(repository)
            return (known is not None and sorted(known) == sorted(wanted)
                    and sorted(http.tags(repository)) == sorted(wanted))

        with ThreadPoolExecutor(threads) as pool:
            done = dict(zip(scenario.source_repositories(),
                            pool.map(complete, scenario.source_repositories()), strict=True))
        missing = [r for r, ok in done.items() if not ok]
        if missing:
            self.record.update(seed_fast(self.source, scenario, missing, threads))
            self.save()
        truth = Truth()
        for repository in scenario.source_repositories():
            truth.tags[repository] = sorted(self.record[repository])
            for tag, manifest in self.record[repository].items():
                truth.manifests[(repository, tag)] = (manifest.encode(), DOCKER_MANIFEST)
                truth.children[(repository, tag)] = []
        return truth, time.monotonic() - began, len(missing)
