"""What the engine reads from manifests: children, blobs, and refusals."""

import json

import pytest

from migrator.errors import DigestMismatch, ManifestUnsupported
from migrator.registry.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    parse_manifest,
    sha256_digest,
)


def descriptor(char: str, size: int = 10, media_type: str = "") -> dict:
    item = {"digest": "sha256:" + char * 64, "size": size}
    if media_type:
        item["mediaType"] = media_type
    return item


def test_image_manifest_lists_config_then_layers_and_skips_foreign_layers():
    body = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": descriptor("c"),
        "layers": [
            descriptor("1"),
            descriptor("2", media_type="application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"),
        ],
    }
    raw = json.dumps(body).encode()
    manifest = parse_manifest(raw, "")
    assert [b.digest[7] for b in manifest.blobs] == ["c", "1"]
    assert manifest.digest == sha256_digest(raw)
    assert not manifest.is_index


@pytest.mark.parametrize("media_type", [DOCKER_LIST, OCI_INDEX])
def test_index_lists_children(media_type):
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [descriptor("a"), descriptor("b")],
        }
    ).encode()
    manifest = parse_manifest(raw, media_type)
    assert manifest.is_index and len(manifest.children) == 2


def test_media_type_from_header_or_fields_when_body_has_none():
    raw = json.dumps({"schemaVersion": 2, "config": descriptor("c"), "layers": []}).encode()
    assert parse_manifest(raw, OCI_MANIFEST + "; charset=utf-8").media_type == OCI_MANIFEST
    index = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    assert parse_manifest(index, "").media_type == OCI_INDEX


def test_schema1_is_refused_with_a_reason():
    raw = json.dumps({"schemaVersion": 1, "name": "x", "fsLayers": []}).encode()
    with pytest.raises(ManifestUnsupported, match="schema1"):
        parse_manifest(raw, "application/vnd.docker.distribution.manifest.v1+prettyjws")


def test_bytes_must_hash_to_the_digest_asked_for():
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    with pytest.raises(DigestMismatch) as caught:
        parse_manifest(raw, "", "sha256:" + "0" * 64)
    assert caught.value.expected == "sha256:" + "0" * 64
    assert caught.value.got == sha256_digest(raw)
