"""Reading Docker schema1 manifests: the digest rule of a signed one (the hash of its payload,
not of the bytes served), its layers, its platform, and what a malformed one is."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from migrator.errors import DigestMismatch, ManifestUnsupported, RegistryError
from migrator.registry.client import _schema1_refusal
from migrator.registry.manifest import (
    ACCEPT,
    DOCKER_MANIFEST,
    SCHEMA1_LAYER,
    SCHEMA1_SIGNED,
    SCHEMA1_UNSIGNED,
    parse_manifest,
    sha256_digest,
)
from tests.support.schema1 import schema1_payload, sign, signed_schema1, unsigned_schema1

NEW, EMPTY, BASE = ("sha256:" + digit * 64 for digit in "abc")


def test_a_signed_manifest_is_named_by_its_payload_and_lists_each_layer_once():
    image = signed_schema1("old/app", "1.0", [NEW, EMPTY, BASE, EMPTY])
    manifest = parse_manifest(image.raw, SCHEMA1_SIGNED)
    assert manifest.digest == image.digest == sha256_digest(image.payload)
    assert manifest.digest != sha256_digest(image.raw)
    assert manifest.raw == image.raw and manifest.media_type == SCHEMA1_SIGNED
    assert [blob.digest for blob in manifest.blobs] == [NEW, EMPTY, BASE]
    assert {(blob.size, blob.media_type) for blob in manifest.blobs} == {(-1, SCHEMA1_LAYER)}
    assert manifest.config is None and not manifest.is_index
    assert manifest.platform == "linux/amd64"


def test_the_same_payload_signed_again_by_another_key_keeps_its_digest():
    """What a registry that re-signs serves: other bytes, the same digest (by tag or digest)."""
    payload = schema1_payload("old/app", "1.0", [NEW])
    first, second = (sign(payload, ec.generate_private_key(ec.SECP256R1())) for _ in range(2))
    assert first != second
    digest = sha256_digest(payload)
    assert parse_manifest(first, SCHEMA1_SIGNED, digest).digest == digest
    assert parse_manifest(second, "application/json", digest).digest == digest


def test_bytes_that_do_not_sign_the_digest_asked_for_are_a_mismatch():
    image = signed_schema1("old/app", "1.0", [NEW])
    with pytest.raises(DigestMismatch) as caught:
        parse_manifest(image.raw, SCHEMA1_SIGNED, sha256_digest(image.raw))
    assert caught.value.got == image.digest
    other = signed_schema1("old/app", "2.0", [NEW])
    with pytest.raises(DigestMismatch):
        parse_manifest(other.raw, SCHEMA1_SIGNED, image.digest)


def test_an_unsigned_manifest_is_named_by_its_bytes_and_typed_as_unsigned():
    image = unsigned_schema1("old/app", "1.0", [BASE], architecture="arm64")
    manifest = parse_manifest(image.raw, "application/json")
    assert manifest.digest == sha256_digest(image.raw)
    assert manifest.media_type == SCHEMA1_UNSIGNED
    assert manifest.platform == "linux/arm64"


def _with_signatures(raw: bytes, signatures: list) -> bytes:
    body = json.loads(raw)
    body["signatures"] = signatures
    return json.dumps(body, indent=3).encode()


def _protected(length: int, tail: bytes) -> str:
    header = json.dumps({"formatLength": length,
                         "formatTail": base64.urlsafe_b64encode(tail).decode().rstrip("=")})
    return base64.urlsafe_b64encode(header.encode()).decode().rstrip("=")


@pytest.mark.parametrize("signatures", [
    [],
    ["not an object"],
    [{"protected": "%%%"}],
    [{"protected": _protected(0, b"}")}],
    [{"protected": _protected(10**9, b"}")}],
    [{"protected": _protected(40, b"\n}")}, {"protected": _protected(41, b"\n}")}],
], ids=["none", "no-object", "not-base64", "zero-length", "too-long", "disagreeing"])
def test_signatures_that_rebuild_no_single_payload_are_malformed(signatures):
    raw = _with_signatures(schema1_payload("old/app", "1.0", [NEW]), signatures)
    with pytest.raises(RegistryError, match="schema1"):
        parse_manifest(raw, SCHEMA1_SIGNED)


def test_a_schema1_manifest_without_layers_is_refused():
    raw = json.dumps({"schemaVersion": 1, "name": "x", "fsLayers": [{"blobSum": 3}]}).encode()
    with pytest.raises(ManifestUnsupported, match="fsLayers"):
        parse_manifest(raw, SCHEMA1_UNSIGNED)


def test_schema1_is_accepted_last():
    types = [item.strip() for item in ACCEPT.split(",")]
    assert types[-2:] == [SCHEMA1_UNSIGNED, SCHEMA1_SIGNED]
    assert types.index(DOCKER_MANIFEST) < types.index(SCHEMA1_UNSIGNED)


@pytest.mark.parametrize(("status", "code", "refusal"), [
    (500, "UNKNOWN", True),  # Distribution 2.8 without compatibility.schema1
    (400, "MANIFEST_INVALID", True),
    (415, "", True),
    (400, "MANIFEST_BLOB_UNKNOWN", False),  # blobs missing: copied again, not a refusal
    (401, "UNAUTHORIZED", False),
    (404, "NAME_UNKNOWN", False),
    (503, "", False),
])
def test_which_answers_to_a_schema1_put_mean_no_schema1_here(status, code, refusal):
    assert _schema1_refusal(RegistryError("x", status=status, code=code)) is refusal
