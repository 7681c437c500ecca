"""Docker schema1 manifests made by the tests, signed as a Docker client of old signed them
(a JWS in the "pretty" form: the manifest's own JSON with a `signatures` member spliced in
before its closing brace), with an EC P-256 key made here.

The digest of a signed schema1 manifest is not the hash of the bytes served: it is the hash
of the signed payload, the bytes without `signatures`, which each signature's protected
header rebuilds (the bytes up to `formatLength`, then `formatTail`). Distribution verifies
the signature against the `jwk` in its header, so the key has to be a real one.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.support.images import Target, _base, push_blob, session_for, sha256_digest

SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
UNSIGNED = "application/vnd.docker.distribution.manifest.v1+json"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class Schema1:
    """A schema1 manifest: the bytes a registry serves and the digest it names them by."""

    raw: bytes
    digest: str
    payload: bytes  # the signed part (== raw when unsigned)
    blobs: list[str]  # fsLayers' blobSums as listed (newest first, duplicates kept)


def schema1_payload(name: str, tag: str, blob_sums: list[str], *,
                    architecture: str = "amd64") -> bytes:
    """The unsigned manifest, indented with three spaces as Docker wrote it. One history
    entry per layer (Distribution checks the two lists have the same length)."""
    history = [{"v1Compatibility": json.dumps(
        {"id": f"{index:064x}", "created": "2016-01-01T00:00:00Z",
         **({"architecture": architecture, "os": "linux"} if index == 0 else {})},
        separators=(",", ":"))} for index in range(len(blob_sums))]
    body = {"schemaVersion": 1, "name": name, "tag": tag, "architecture": architecture,
            "fsLayers": [{"blobSum": digest} for digest in blob_sums], "history": history}
    return json.dumps(body, indent=3).encode()


def sign(payload: bytes, key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    """The payload as a pretty JWS signed with ES256 by `key` (a fresh P-256 key if None)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    closing = len(payload.rstrip())
    assert payload[closing - 1:closing] == b"}"
    length = len(payload[:closing - 1].rstrip())  # the payload up to its last member
    protected = b64url(json.dumps({"formatLength": length,
                                   "formatTail": b64url(payload[length:]),
                                   "time": "2016-01-01T00:00:00Z"}).encode())
    signing_input = f"{protected}.{b64url(payload)}".encode()
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    numbers = key.public_key().public_numbers()
    jwk = {"crv": "P-256", "kty": "EC", "x": b64url(numbers.x.to_bytes(32, "big")),
           "y": b64url(numbers.y.to_bytes(32, "big"))}
    signatures = [{"header": {"jwk": jwk, "alg": "ES256"},
                   "signature": b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big")),
                   "protected": protected}]
    spliced = json.dumps(signatures, indent=3).replace("\n", "\n   ")
    return payload[:length] + f',\n   "signatures": {spliced}\n}}'.encode()


def signed_schema1(name: str, tag: str, blob_sums: list[str], *,
                   architecture: str = "amd64") -> Schema1:
    payload = schema1_payload(name, tag, blob_sums, architecture=architecture)
    return Schema1(sign(payload), sha256_digest(payload), payload, list(blob_sums))


def unsigned_schema1(name: str, tag: str, blob_sums: list[str], *,
                     architecture: str = "amd64") -> Schema1:
    payload = schema1_payload(name, tag, blob_sums, architecture=architecture)
    return Schema1(payload, sha256_digest(payload), payload, list(blob_sums))


def signed_payload(raw: bytes) -> bytes:
    """The payload of a pretty JWS, rebuilt from its first signature's protected header."""
    first = json.loads(raw)["signatures"][0]
    protected = json.loads(base64.urlsafe_b64decode(_padded(first["protected"])))
    return raw[:protected["formatLength"]] + base64.urlsafe_b64decode(
        _padded(protected["formatTail"]))


def _padded(text: str) -> str:
    return text + "=" * (-len(text) % 4)


def push_schema1(registry: Target, repository: str, tag: str, layers: list[bytes], *,
                 architecture: str = "amd64", order: list[int] | None = None) -> Schema1:
    """Push the layers, then a signed schema1 manifest listing them (`order`: the indexes of
    `layers` as fsLayers lists them, newest first, repeats allowed)."""
    with session_for(registry, None, None) as session:
        sums = [push_blob(session, _base(registry), repository, layer) for layer in layers]
        manifest = signed_schema1(repository, tag, [sums[index] for index in
                                                    (order or range(len(layers)))],
                                  architecture=architecture)
        response = session.put(f"{_base(registry)}/v2/{repository}/manifests/{tag}",
                               data=manifest.raw, headers={"Content-Type": SIGNED}, timeout=60)
        assert response.status_code == 201, response.text
        assert response.headers["Docker-Content-Digest"] == manifest.digest
    return manifest
