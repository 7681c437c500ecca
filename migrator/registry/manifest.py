"""Manifest media types and the little we need to read from a manifest body.

Manifests travel as raw bytes with their media type; we parse them only to find what they
reference (child manifests of an index, config and layer blobs of an image). The bytes we PUT
are the bytes we got, so the digest is preserved.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from migrator.errors import DigestMismatch, ManifestUnsupported, RegistryError

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
INDEX_TYPES = (DOCKER_LIST, OCI_INDEX)
IMAGE_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
# Every type in Accept: without the list types a registry answers with one platform's child,
# without any a schema2 manifest may be converted to schema1.
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
# The configs that describe a runnable image, and so name its platform. Any other config type
# (OCI's empty config, Helm's, an SBOM's) belongs to an artifact, which has no platform.
IMAGE_CONFIG_TYPES = (
    "application/vnd.docker.container.image.v1+json",
    "application/vnd.oci.image.config.v1+json",
)

# Layers that must not be pushed anywhere (Windows base layers): the peers skip them too.
FOREIGN_LAYER_TYPES = (
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Descriptor:
    digest: str
    size: int
    media_type: str = ""
    platform: str = ""  # "os/architecture[/variant]" for the children of an index, else ""
    # the descriptor as the registry wrote it (artifactType, annotations...), to pass it on
    raw: dict = field(default_factory=dict, compare=False, hash=False, repr=False)


@dataclass(frozen=True)
class Manifest:
    raw: bytes
    media_type: str
    digest: str
    blobs: tuple[Descriptor, ...] = field(default=())
    children: tuple[Descriptor, ...] = field(default=())
    config: Descriptor | None = None  # an image manifest's config blob (also in `blobs`)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def _descriptor(item: object, where: str) -> Descriptor:
    if not isinstance(item, dict) or not isinstance(item.get("digest"), str):
        raise RegistryError(f"malformed manifest: a descriptor in {where} has no digest")
    size = item.get("size", -1)
    if not isinstance(size, int):
        raise RegistryError(f"malformed manifest: descriptor {item['digest']} has a bad size")
    return Descriptor(item["digest"], size, str(item.get("mediaType", "")),
                      _platform(item.get("platform")), item)


def parse_descriptors(raw: bytes, where: str) -> list[Descriptor]:
    """The `manifests` of an index-shaped JSON body (a referrers API answer)."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise RegistryError(f"{where} is not valid JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("manifests", []), list):
        raise RegistryError(f"{where} is not an image index")
    return [_descriptor(item, where) for item in body.get("manifests") or []]


def _platform(value: object) -> str:
    if not isinstance(value, dict) or not value.get("os") or not value.get("architecture"):
        return ""
    parts = [str(value["os"]), str(value["architecture"])]
    if value.get("variant"):
        parts.append(str(value["variant"]))
    return "/".join(parts)


def platform_matches(platform: str, wanted: frozenset[str]) -> bool:
    """Whether `platform` (`os/arch[/variant]`) is one of `wanted`, where an entry's os or
    architecture may be `*` (image-syncer's `--arch amd64` alone is `*/amd64`, `--os linux`
    alone `linux/*`). An entry without a variant matches every variant: `linux/arm64` matches
    `linux/arm64` and `linux/arm64/v8`; an entry with one only that variant (`linux/arm/v7`)."""
    have = platform.split("/")
    if len(have) < 2:
        return False
    for entry in wanted:
        want = entry.split("/")
        if len(want) < 2 or want[0] not in ("*", have[0]) or want[1] not in ("*", have[1]):
            continue
        if len(want) > 2 and want[2] != "*" and (len(have) < 3 or want[2] != have[2]):
            continue
        return True
    return False


def config_platform(raw: bytes) -> str:
    """`os/architecture[/variant]` named by an image config blob, or "" when it names none
    (no `os` or `architecture`, or not a JSON object): such an image is not filtered out."""
    try:
        body = json.loads(raw)
    except ValueError:
        return ""
    return _platform(body) if isinstance(body, dict) else ""


def filter_index(index: Manifest, platforms: frozenset[str]) -> Manifest:
    """The index with only the children of the wanted platforms: new bytes, a new digest.

    Children without a platform (signatures, attestations, the entries of a referrers index)
    are kept: they are not images of another platform.
    """
    body = json.loads(index.raw)
    kept = [item for item in body.get("manifests") or []
            if not _platform(item.get("platform")) or
            platform_matches(_platform(item.get("platform")), platforms)]
    if not any(_platform(item.get("platform")) for item in kept):
        offered = sorted({child.platform for child in index.children if child.platform})
        raise RegistryError(f"no platform of the index matches {', '.join(sorted(platforms))} "
                            f"(it offers {', '.join(offered) or 'none'})")
    if len(kept) == len(body.get("manifests") or []):
        return index
    body["manifests"] = kept
    raw = json.dumps(body, indent=3).encode()
    return parse_manifest(raw, index.media_type)


def parse_manifest(raw: bytes, content_type: str, digest: str | None = None) -> Manifest:
    """Read a manifest's references. `digest`, when given, is what the bytes must hash to."""
    computed = sha256_digest(raw)
    if digest and digest.startswith("sha256:") and digest != computed:
        raise DigestMismatch("manifest", expected=digest, got=computed)
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise RegistryError(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RegistryError("manifest is not a JSON object")
    media_type = body.get("mediaType") or content_type.split(";")[0].strip()
    if media_type in SCHEMA1 or body.get("schemaVersion") == 1:
        raise ManifestUnsupported(
            "Docker schema1 manifests are deprecated and not copied: rebuild or re-push the "
            "image with a current client to get a schema2 or OCI manifest"
        )
    if not media_type:
        # OCI allows an index or manifest without mediaType; tell them apart by their fields.
        media_type = OCI_INDEX if "manifests" in body else OCI_MANIFEST
    if media_type in INDEX_TYPES:
        children = tuple(_descriptor(m, "manifests") for m in body.get("manifests") or [])
        return Manifest(raw, media_type, computed, children=children)
    if media_type in IMAGE_TYPES:
        blobs = []
        config = None
        if body.get("config") is not None:
            config = _descriptor(body["config"], "config")
            blobs.append(config)
        for layer in body.get("layers") or []:
            descriptor = _descriptor(layer, "layers")
            if descriptor.media_type not in FOREIGN_LAYER_TYPES:
                blobs.append(descriptor)
        return Manifest(raw, media_type, computed, blobs=tuple(blobs), config=config)
    raise ManifestUnsupported(f"unsupported manifest media type {media_type!r}")
