"""The benchmark's data: what each scenario pushes to the source, and the byte-for-byte check.

Images are built by tests.support.images (real gzip-framed tar layers of deterministic random
bytes, real image configs with matching diff_ids), so every tool sees genuine content and none
has a reason to re-compress. Scenarios that share ``data`` share the source repositories
(the WAN variant copies many-small's images through latency proxies).
"""

from __future__ import annotations

import json
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tests.support.images import (
    get_manifest,
    list_tags,
    make_layer,
    push_image,
    push_index,
)
from tests.support.registry import RunningRegistry

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


def snapshot(source: RunningRegistry, scenario: Scenario, threads: int = 4) -> Truth:
    """Read back every tag of the scenario from the source (and the children of indexes)."""
    truth = Truth()

    def read(repository: str) -> tuple[str, list[str], list[tuple]]:
        tags = sorted(list_tags(source, repository))
        rows = []
        for tag in tags:
            raw, media, _ = get_manifest(source, repository, tag)
            kids = []
            if "index" in media or "list" in media:
                for child in json.loads(raw)["manifests"]:
                    c_raw, c_media, _ = get_manifest(source, repository, child["digest"])
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


def verify(target: RunningRegistry, truth: Truth, threads: int = 4) -> list[str]:
    """Every tag present in the target, every manifest (and index child) byte-identical."""

    def check(repository: str) -> list[str]:
        problems: list[str] = []
        copy = target_repository(repository)
        tags = sorted(list_tags(target, copy))
        if tags != truth.tags[repository]:
            problems.append(f"{copy}: tags {tags} != source {truth.tags[repository]}")
        for tag in truth.tags[repository]:
            raw, media = truth.manifests[(repository, tag)]
            try:
                got, got_media, _ = get_manifest(target, copy, tag)
            except AssertionError as exc:
                problems.append(f"{copy}:{tag}: {str(exc)[:200]}")
                continue
            if got != raw or got_media != media:
                problems.append(f"{copy}:{tag}: manifest differs from the source "
                                f"({got_media}, {len(got)} bytes vs {media}, {len(raw)} bytes)")
            for digest, c_raw, c_media in truth.children[(repository, tag)]:
                try:
                    got, got_media, _ = get_manifest(target, copy, digest)
                except AssertionError as exc:
                    problems.append(f"{copy}@{digest}: {str(exc)[:200]}")
                    continue
                if got != c_raw or got_media != c_media:
                    problems.append(f"{copy}@{digest}: child manifest differs from the source")
        return problems

    with ThreadPoolExecutor(threads) as pool:
        return [p for found in pool.map(check, list(truth.tags)) for p in found]
