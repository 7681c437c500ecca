"""The referrers of an image (signatures, SBOMs, attestations), found and copied after it.

Found by the OCI 1.1 referrers API where the source offers it, and by the two tag conventions
that work everywhere: the referrers tag schema (`sha256-<hex>`, an index of the referring
manifests) and cosign's `sha256-<hex>.sig/.att/.sbom`. Referrers found through the API are
pushed by digest; a target without the API gets them listed in its tag-schema index, so that
clients find them there.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from migrator.errors import AuthError, RegistryError, RetryableError
from migrator.registry.client import RegistryClient
from migrator.registry.manifest import OCI_INDEX, Descriptor, parse_manifest
from migrator.rules import Job
from migrator.settings import Settings

LOOKUP_ERRORS = (RegistryError, AuthError, RetryableError)


def copy_referrers(
    job: Job,
    digest: str,
    *,
    src: RegistryClient,
    dst: RegistryClient,
    settings: Settings,
    copy: Callable[[Job], object],
    unknown: Callable[[Exception], None],
) -> list[str]:
    """Copy what refers to the image `digest` of `job`, each through `copy` (a copy of its
    own, by digest or by tag); the digests and tags copied, in order.

    The image is in place by now: a source that will not say what refers to it (an account
    that may pull but not list tags) is reported to `unknown`, not raised.
    """
    src_repo, dst_repo = job.source.repository, job.target.repository
    copied: list[str] = []
    try:
        found = src.referrers(src_repo, digest)
    except LOOKUP_ERRORS as exc:
        unknown(exc)
        found = None
    if found:
        for descriptor in found:
            copy(Job(job.source.with_tag(None).with_digest(descriptor.digest),
                     job.target.with_tag(None), job.rule))
            copied.append(descriptor.digest)
        if dst.referrers(dst_repo, digest) is None:
            _index_referrers(dst, dst_repo, digest, found)
    prefix = digest.replace(":", "-", 1)
    try:
        listed = src.referrer_tags(src_repo, max_age=settings.tag_list_ttl)
    except LOOKUP_ERRORS as exc:
        # Even a transient fault: a retry would find the image up to date and not look.
        unknown(exc)
        listed = []
    for tag in sorted(tag for tag in listed if tag == prefix or tag.startswith(prefix + ".")):
        copy(Job(job.source.with_tag(tag), job.target.with_tag(tag), job.rule))
        copied.append(tag)
    return copied


def _index_referrers(dst: RegistryClient, repository: str, digest: str,
                     found: list[Descriptor]) -> None:
    """Add `found` to the target's tag-schema index of the image's referrers."""
    tag = digest.replace(":", "-", 1)
    entries: list[dict] = []
    if dst.head_manifest(repository, tag) is not None:
        entries = list(json.loads(dst.get_manifest(repository, tag).raw)
                       .get("manifests") or [])
    known = {entry.get("digest") for entry in entries}
    entries += [descriptor.raw for descriptor in found if descriptor.digest not in known]
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                       "manifests": entries}).encode()
    dst.put_manifest(repository, tag, parse_manifest(body, OCI_INDEX))
