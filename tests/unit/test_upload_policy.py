"""How the client reads a refused PATCH and what it then does for the rest of the run."""

from __future__ import annotations

import pytest

from migrator.errors import RegistryError, RetryableStatus
from migrator.registry.client import _chunk_refusal
from migrator.registry.upload import UploadPolicy

MiB = 1 << 20


@pytest.mark.parametrize(("status", "code", "detail", "offset", "reason", "limit"), [
    (416, "REQUESTED_RANGE_NOT_SATISFIABLE", "the request body is too large and exceeds the "
     "maximum permissible limit of 4.00MiB", 9 * MiB, "too-large", 4 * MiB),  # GHCR
    (416, "", "", 0, "too-large", None),  # a fresh session's offset cannot be wrong
    (400, "UNSUPPORTED", "LayerPartTooSmallException: Layer part size must be at least "
     "5242880 bytes", 9 * MiB, "too-small", 5 * MiB),  # ECR
    (405, "UNSUPPORTED", "chunked upload is not supported", 0, "unsupported", None),
])
def test_a_refused_patch_names_its_cause(status, code, detail, offset, reason, limit):
    refused = _chunk_refusal(RegistryError("x", method="PATCH", url="u", status=status,
                                           code=code, detail=detail), offset, 9 * MiB // 2)
    assert refused is not None and (refused.reason, refused.limit) == (reason, limit)


@pytest.mark.parametrize("error", [
    RegistryError("x", status=416, code="BLOB_UPLOAD_INVALID", detail="bad range"),  # lost
    RegistryError("x", status=404, code="BLOB_UPLOAD_UNKNOWN", detail="gone"),
    RegistryError("x", status=403, code="DENIED", detail="at least push rights"),
    RetryableStatus("x", status=503),
])
def test_a_lost_session_or_a_denial_is_no_chunk_refusal(error):
    assert _chunk_refusal(error, 8 * MiB, MiB) is None


def test_the_policy_learns_limits_and_falls_back_to_monolithic():
    policy = UploadPolicy("ghcr.io")
    assert policy.chunked(100 * MiB, 64 * MiB) and not policy.chunked(MiB, 64 * MiB)
    policy.learn("too-large", 4 * MiB, 9 * MiB // 2)
    assert policy.chunk(128 * MiB) == 4 * MiB
    policy.learn("too-small", 5 * MiB, 4 * MiB)  # limits that clash: no chunk size fits
    assert policy.chunks_refused and not policy.chunked(100 * MiB, 0)


def test_the_auth_file_sets_the_strategy():
    assert not UploadPolicy(mode="monolithic").chunked(10 << 30, 64 * MiB)
    assert UploadPolicy(mode="chunked").chunked(MiB, 64 * MiB)
    assert UploadPolicy(chunk_size=6 * MiB).chunk(128 * MiB) == 6 * MiB
    assert UploadPolicy(min_chunk=5 * MiB, chunk_size=MiB).chunk(128 * MiB) == 5 * MiB


def test_auth_file_entries_take_upload_and_chunk_size():
    from migrator.auth import parse_auth
    from migrator.errors import ConfigError

    auth = parse_auth({"ghcr.io": {"upload": "chunked", "chunk_size": 4 * MiB}}, name="a.json",
                      environ={}, base_dir=".")
    entry = auth.lookup("ghcr.io", "org/app")
    assert (entry.upload, entry.chunk_size) == ("chunked", 4 * MiB)
    with pytest.raises(ConfigError) as refused:
        parse_auth({"x.io": {"upload": "streamed"}}, name="a.json", environ={}, base_dir=".")
    assert "a.json: 'x.io': upload:" in str(refused.value)


def test_a_range_that_sticks_after_a_taken_patch_is_learnt_once_and_the_bytes_sent_count():
    # ECR (2026): after the first PATCH, Range stays at the first chunk's end though every
    # chunk is stored; believing it would send the second chunk again, forever.
    policy = UploadPolicy("ecr.example")
    assert policy.confirmed(0, 5 << 20, 5 << 20) == 5 << 20
    assert not policy.stale_range
    assert policy.confirmed(5 << 20, 10 << 20, 5 << 20) == 10 << 20
    assert policy.stale_range
    assert policy.confirmed(10 << 20, 15 << 20, 5 << 20) == 15 << 20


def test_a_partial_range_is_believed_where_the_registry_moves():
    policy = UploadPolicy("r.example")
    # the registry took part of the chunk: go on from what it holds
    assert policy.confirmed(4096, 8192, 6000) == 6000
    assert policy.confirmed(0, 4096, None) == 4096
    assert not policy.stale_range
