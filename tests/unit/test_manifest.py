"""What the engine reads from manifests: children, blobs, and refusals."""

import json

import pytest

from migrator.errors import DigestMismatch, ManifestUnsupported
from migrator.registry.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    IMAGE_CONFIG_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    config_platform,
    filter_index,
    parse_manifest,
    platform_matches,
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


@pytest.mark.parametrize(("platform", "wanted", "matches"), [
    ("linux/amd64", {"linux/amd64"}, True),
    ("linux/arm64/v8", {"linux/arm64"}, True),  # an entry without variant: any variant
    ("linux/arm/v6", {"linux/arm/v7"}, False),
    ("linux/arm64", {"linux/arm64/v8"}, False),
    ("linux/amd64", {"*/amd64"}, True),  # image-syncer's --arch amd64 alone
    ("windows/amd64", {"*/amd64"}, True),
    ("linux/arm64", {"*/amd64"}, False),
    ("linux/s390x", {"linux/*"}, True),  # --os linux alone
    ("linux/arm/v7", {"linux/*"}, True),
    ("windows/amd64", {"linux/*"}, False),
    ("linux/arm64/v8", {"*/arm64/v8"}, True),
    ("linux/arm64/v9", {"*/arm64/v8"}, False),
    ("linux/arm64", {"*/*"}, True),
    ("linux/riscv64", {"linux/amd64", "*/riscv64"}, True),
    ("", {"*/*"}, False),
])
def test_platform_filter_entries_may_leave_os_or_arch_open(platform, wanted, matches):
    assert platform_matches(platform, frozenset(wanted)) is matches


def test_index_children_are_filtered_with_wildcards():
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {**descriptor("a"), "platform": {"os": "linux", "architecture": "amd64"}},
        {**descriptor("b"), "platform": {"os": "windows", "architecture": "amd64"}},
        {**descriptor("c"), "platform": {"os": "linux", "architecture": "arm64",
                                         "variant": "v8"}},
        descriptor("d"),  # an attestation: no platform, kept
    ]}).encode()
    index = parse_manifest(raw, OCI_INDEX)
    kept = filter_index(index, frozenset({"*/amd64"}))
    assert [child.digest[7] for child in kept.children] == ["a", "b", "d"]
    kept = filter_index(index, frozenset({"linux/*"}))
    assert [child.digest[7] for child in kept.children] == ["a", "c", "d"]


def test_an_image_manifest_names_its_config():
    body = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": descriptor("c", media_type=IMAGE_CONFIG_TYPES[1]),
            "layers": [descriptor("1")]}
    manifest = parse_manifest(json.dumps(body).encode(), "")
    assert manifest.config is not None and manifest.config.digest == "sha256:" + "c" * 64
    assert manifest.config.media_type == IMAGE_CONFIG_TYPES[1]
    assert manifest.blobs[0] == manifest.config
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    assert parse_manifest(index, "").config is None


@pytest.mark.parametrize(("config", "platform"), [
    ({"os": "linux", "architecture": "arm64", "variant": "v8", "rootfs": {}}, "linux/arm64/v8"),
    ({"os": "windows", "architecture": "amd64", "os.version": "10.0.17763"}, "windows/amd64"),
    ({"architecture": "amd64"}, ""),  # no os: nothing to filter on
    ({"os": "linux", "architecture": ""}, ""),
    ({}, ""),  # OCI's empty config
    ([], ""),
])
def test_platform_of_an_image_config(config, platform):
    assert config_platform(json.dumps(config).encode()) == platform


def test_a_config_that_is_not_json_names_no_platform():
    assert config_platform(b"\x1f\x8b not json") == ""
