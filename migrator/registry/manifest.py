"""Manifest media types and the little we need to read from a manifest body.

Manifests travel as raw bytes with their media type; we parse them only to find what they
reference (child manifests of an index, config and layer blobs of an image). The bytes we PUT
are the bytes we got, so the digest is preserved. That holds for the Docker schema1 manifests
of old images too, though a signed one is named by the hash of its payload (the bytes without
their `signatures`), not of the bytes served: a registry that re-signs it serves other bytes
under the same digest.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field

from migrator.errors import DigestMismatch, ManifestUnsupported, RegistryError

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
SCHEMA1_UNSIGNED = "application/vnd.docker.distribution.manifest.v1+json"
SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
SCHEMA1 = (SCHEMA1_UNSIGNED, SCHEMA1_SIGNED)
# What a schema1 manifest's layers are (it names no media type of its own).
SCHEMA1_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
INDEX_TYPES = (DOCKER_LIST, OCI_INDEX)
IMAGE_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
# Every type in Accept: without the list types a registry answers with one platform's child,
# without any a schema2 manifest may be converted to schema1. Schema1 itself comes last, for
# the old images that only exist in it (a registry may refuse to serve it to a client that
# does not list it; one that has schema2 serves schema2 to a client that lists both).
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST, *SCHEMA1))
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
    # Foreign / non-distributable layers (Windows base layers), not in `blobs`: copied only
    # when asked (`CopyOptions.foreign_layers`), as skopeo and crane do.
    foreign: tuple[Descriptor, ...] = field(default=())
    # "os/architecture" named by the manifest itself: only schema1 does (it has no config)
    platform: str = ""

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


def _b64url(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise RegistryError(f"malformed schema1 signature: {what} is not a string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise RegistryError(f"malformed schema1 signature: {what} is not base64url") from None


def schema1_payload(raw: bytes, body: dict) -> bytes:
    """What a signed schema1 manifest's digest is the hash of: its bytes without the
    `signatures` member, rebuilt from each signature's protected header (the first
    `formatLength` bytes, then `formatTail`). Every signature must rebuild the same payload.
    An unsigned one (no `signatures`) is its own payload."""
    signatures = body.get("signatures")
    if signatures is None:
        return raw
    if not isinstance(signatures, list) or not signatures:
        raise RegistryError("malformed schema1 manifest: `signatures` is empty or no list")
    payloads = set()
    for signature in signatures:
        if not isinstance(signature, dict):
            raise RegistryError("malformed schema1 signature: not an object")
        try:
            protected = json.loads(_b64url(signature.get("protected"), "protected"))
        except ValueError:
            raise RegistryError("malformed schema1 signature: protected is not JSON") from None
        length = protected.get("formatLength") if isinstance(protected, dict) else None
        if not isinstance(length, int) or isinstance(length, bool) or not 0 < length <= len(raw):
            raise RegistryError("malformed schema1 signature: bad formatLength")
        payloads.add(raw[:length] + _b64url(protected.get("formatTail"), "formatTail"))
    if len(payloads) != 1:
        raise RegistryError("malformed schema1 manifest: its signatures sign different payloads")
    return payloads.pop()


def _parse_schema1(raw: bytes, body: dict, content_type: str, digest: str | None) -> Manifest:
    """A Docker schema1 manifest, signed or not: its layers are `fsLayers[].blobSum` (newest
    first, the same blob possibly more than once), with no size and no config; its platform
    is its top-level `architecture` (and the os of its newest history entry)."""
    computed = sha256_digest(schema1_payload(raw, body))
    if digest and digest.startswith("sha256:") and digest != computed:
        raise DigestMismatch("schema1 manifest", expected=digest, got=computed)
    layers = body.get("fsLayers")
    if not isinstance(layers, list) or not layers or not all(
            isinstance(layer, dict) and isinstance(layer.get("blobSum"), str) for layer in layers):
        raise ManifestUnsupported("malformed Docker schema1 manifest: no fsLayers[].blobSum")
    blobs = tuple(Descriptor(blob_sum, -1, SCHEMA1_LAYER)
                  for blob_sum in dict.fromkeys(layer["blobSum"] for layer in layers))
    media_type = content_type if content_type in SCHEMA1 else (
        SCHEMA1_SIGNED if "signatures" in body else SCHEMA1_UNSIGNED)
    architecture = body.get("architecture")
    platform = f"{_schema1_os(body)}/{architecture}" \
        if isinstance(architecture, str) and architecture else ""
    return Manifest(raw, media_type, computed, blobs=blobs, platform=platform)


def _schema1_os(body: dict) -> str:
    """The os of a schema1 image: its newest history entry's, else linux (schema1 predates
    images of any other os in practice, and names none at the top level)."""
    history = body.get("history")
    if isinstance(history, list) and history and isinstance(history[0], dict):
        try:
            v1 = json.loads(history[0].get("v1Compatibility") or "{}")
        except (TypeError, ValueError):
            v1 = {}
        if isinstance(v1, dict) and isinstance(v1.get("os"), str) and v1["os"]:
            return str(v1["os"])
    return "linux"


def parse_manifest(raw: bytes, content_type: str, digest: str | None = None) -> Manifest:
    """Read a manifest's references. `digest`, when given, is what the manifest must have:
    the hash of the bytes (of a signed schema1 manifest's payload, see `schema1_payload`)."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        computed = sha256_digest(raw)
        if digest and digest.startswith("sha256:") and digest != computed:
            raise DigestMismatch("manifest", expected=digest, got=computed) from None
        raise RegistryError(f"manifest is not valid JSON: {exc}") from None
    content_type = content_type.split(";")[0].strip()
    if isinstance(body, dict) and body.get("schemaVersion") == 1:
        return _parse_schema1(raw, body, content_type, digest)
    computed = sha256_digest(raw)
    if digest and digest.startswith("sha256:") and digest != computed:
        raise DigestMismatch("manifest", expected=digest, got=computed)
    if not isinstance(body, dict):
        raise RegistryError("manifest is not a JSON object")
    media_type = body.get("mediaType") or content_type
    if not media_type:
        # OCI allows an index or manifest without mediaType; tell them apart by their fields.
        media_type = OCI_INDEX if "manifests" in body else OCI_MANIFEST
    if media_type in INDEX_TYPES:
        children = tuple(_descriptor(m, "manifests") for m in body.get("manifests") or [])
        return Manifest(raw, media_type, computed, children=children)
    if media_type in IMAGE_TYPES:
        blobs: list[Descriptor] = []
        foreign: list[Descriptor] = []
        config = None
        if body.get("config") is not None:
            config = _descriptor(body["config"], "config")
            blobs.append(config)
        for layer in body.get("layers") or []:
            descriptor = _descriptor(layer, "layers")
            (foreign if descriptor.media_type in FOREIGN_LAYER_TYPES else blobs).append(descriptor)
        return Manifest(raw, media_type, computed, blobs=tuple(blobs), config=config,
                        foreign=tuple(foreign))
    raise ManifestUnsupported(f"unsupported manifest media type {media_type!r}")
