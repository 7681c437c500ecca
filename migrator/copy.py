"""`copy_image()`: the order of one image copy. Every executor (the embedded `migrator sync`,
the Celery workers) calls this one code path; only the ledger and the thread pools differ.

The order, and why:
1. HEAD the source tag: its digest tells whether anything changed (one request when nothing did).
2. HEAD the target tag (unless the ledger vouches for it and the settings allow trusting it):
   equal digests mean there is nothing to do.
3. GET the source manifest by digest (the bytes must hash to it).
4. For an index, each child manifest in turn: its blobs, then the child itself, by digest.
5. The blobs of an image, several at once: skipped when the ledger or a HEAD says the target
   repository has them, mounted from another repository of the target registry when the ledger
   knows one, else streamed GET → PUT with the digest checked on the way.
6. The manifest last, as the raw bytes with their media type: a target tag never points at a
   manifest whose blobs are missing, and digests are preserved.

With a platform filter, a single-platform image whose config names another platform is
skipped (outcome "skipped"), as image-syncer does: neither copied nor failed. With `force`
(image-syncer's `--force`), steps 2 and 4's "already there" answers are ignored: every manifest
is PUT again, while blobs the target holds are still skipped.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Literal

from migrator.auth import AuthFile, RegistryAuth
from migrator.chunked import upload_chunked
from migrator.errors import (
    AuthError,
    BlobUnknownOnPush,
    DigestMismatch,
    RegistryError,
    RetryableError,
)
from migrator.ledger import HELD, BlobLock, Ledger, ManifestRecord, UploadSession
from migrator.registry.client import RegistryClient, retrying
from migrator.registry.manifest import (
    IMAGE_CONFIG_TYPES,
    OCI_INDEX,
    Descriptor,
    Manifest,
    config_platform,
    filter_index,
    parse_manifest,
    platform_matches,
)
from migrator.registry.stream import VerifyingReader
from migrator.rules import Job
from migrator.settings import Settings
from migrator.throttle import LocalThrottle, Throttle

log = logging.getLogger(__name__)

MAX_INDEX_DEPTH = 2
ByteCounter = Callable[[int], None]


class ReadOnlyLedger:
    """A ledger's reads, with every write dropped: what a dry run may touch."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def blob_repositories(self, registry: str, digest: str) -> set[str]:
        return self._ledger.blob_repositories(registry, digest)

    def manifest(self, target: str) -> ManifestRecord | None:
        return self._ledger.manifest(target)

    def add_blob(self, registry: str, digest: str, repository: str) -> None:
        pass

    def forget_blobs(self, registry: str, repository: str, digests: list[str]) -> None:
        pass

    def record_manifest(self, target: str, record: ManifestRecord) -> None:
        pass

    def forget_manifest(self, target: str) -> None:
        pass

    def blob_lock(self, registry: str, digest: str) -> AbstractContextManager[BlobLock]:
        return nullcontext(HELD)

    def upload_session(self, registry: str, repository: str, digest: str
                       ) -> UploadSession | None:
        return None

    def save_upload_session(self, registry: str, repository: str, digest: str,
                            session: UploadSession | None) -> None:
        pass

    def close(self) -> None:
        pass


class ClientPool:
    """One `RegistryClient` per registry and credential, for the whole process: every copy
    shares its connections, its `/v2/` ping and its tokens."""

    def __init__(self, settings: Settings, throttle: Throttle | None = None) -> None:
        self.settings = settings
        self.throttle = throttle or LocalThrottle()  # the fleet's lives in Redis
        self._clients: dict[tuple[str, RegistryAuth], RegistryClient] = {}
        self._lock = threading.Lock()

    def get(self, registry: str, credentials: RegistryAuth) -> RegistryClient:
        key = (registry, credentials)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = RegistryClient(registry, credentials,
                                                             self.settings, self.throttle)
            return client


class Clients:
    """The clients of one set of credentials (an auth file), drawn from a shared pool."""

    def __init__(self, auth: AuthFile, pool: ClientPool) -> None:
        self.auth = auth
        self.pool = pool

    def get(self, registry: str, repository: str) -> RegistryClient:
        return self.pool.get(registry, self.auth.lookup(registry, repository))


@dataclass
class CopyResult:
    job: Job
    outcome: Literal["copied", "up-to-date", "planned", "skipped"] = "copied"
    source_digest: str = ""
    target_digest: str = ""
    blobs_copied: int = 0
    blobs_mounted: int = 0
    blobs_skipped: int = 0
    bytes_copied: int = 0
    new_blobs: dict[str, int] = field(default_factory=dict)  # dry run: digest → size to upload
    referrers: list[str] = field(default_factory=list)  # tags copied as the image's referrers
    # what a user should know about this copy (a digest that changed, why it was skipped)
    note: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, kind: Literal["copied", "mounted", "skipped"], size: int = 0) -> None:
        with self._lock:
            setattr(self, f"blobs_{kind}", getattr(self, f"blobs_{kind}") + 1)
            self.bytes_copied += size if kind == "copied" else 0


def copy_image(
    job: Job,
    *,
    clients: Clients,
    ledger: Ledger,
    settings: Settings,
    blob_pool: Executor | None = None,
    on_bytes: ByteCounter | None = None,
    dry_run: bool = False,
    platforms: frozenset[str] = frozenset(),
    referrers: bool = True,
    immutable_tags: str | None = None,
    force: bool = False,
) -> CopyResult:
    """Copy one image (a tag or a digest, single- or multi-platform) from source to target.

    With `dry_run`, only read: the result counts the blobs that would be uploaded, mounted or
    found, and nothing is written to the target or the ledger. `platforms` (`os/arch[/variant]`,
    os or arch may be `*`; the job's own, from its rule, come first) keeps only those children
    of an index, which then gets a digest of its own, and skips a single-platform image whose
    config names another platform (outcome "skipped", the reason in `note`). `referrers`
    copies the signatures, SBOMs and attestations found for the image with it. A tag that
    `immutable_tags` (a regex, full match) names and that the ledger holds as synced is up to
    date without a request. `force` PUTs every manifest of the image (the index, each child)
    even when the target, the ledger or the tag list says it is there; blobs the target holds
    are still not uploaded again.
    """
    if dry_run:
        ledger = ReadOnlyLedger(ledger)
    chosen = job.platforms or platforms
    known = None if force else synced_immutable(job, ledger, immutable_tags, chosen)
    if known is not None:
        log.info("up to date %s (immutable tag on record)", job)
        return CopyResult(job, outcome="up-to-date", target_digest=known.target_digest,
                          source_digest=known.source_digest)
    return _ImageCopy(job, clients, ledger, settings, blob_pool, on_bytes, dry_run,
                      chosen, referrers, force).run()


def is_immutable(job: Job, immutable_tags: str | None) -> bool:
    """Whether the job copies a tag that the rule (or the run) declares never to change."""
    pattern = job.immutable_tags or immutable_tags
    tag = job.source.tag
    return bool(pattern and tag and not job.source.digest and re.fullmatch(pattern, tag))


def synced_immutable(job: Job, ledger: Ledger | ReadOnlyLedger, immutable_tags: str | None,
                     platforms: frozenset[str] = frozenset()) -> ManifestRecord | None:
    """The ledger's record of an immutable tag already synced (then no request is needed)."""
    if not is_immutable(job, immutable_tags):
        return None
    return _tag_record(job, ledger, platforms)


def _tag_record(job: Job, ledger: Ledger | ReadOnlyLedger,
                platforms: frozenset[str]) -> ManifestRecord | None:
    """The ledger's record of the job's target tag (its digest is not needed to name it)."""
    return ledger.manifest(target_key(job, "", job.platforms or platforms))


def unchanged_on_record(job: Job, clients: Clients, ledger: Ledger | ReadOnlyLedger,
                        platforms: frozenset[str] = frozenset()) -> bool:
    """Whether the source tag still names the manifest that the ledger says was synced from it:
    a copy that trusts the ledger would stop there ("up to date"), so the fleet sends it no
    task. One source HEAD; none when nothing is on record."""
    if job.source.digest or not job.source.tag:
        return False
    record = _tag_record(job, ledger, platforms)
    if record is None:
        return False
    source = clients.get(job.source.registry, job.source.repository)
    head = source.head_manifest(job.source.repository, job.source.manifest_ref)
    return head is not None and head[0] == record.source_digest


def target_key(job: Job, source_digest: str, platforms: frozenset[str] = frozenset()) -> str:
    """The ledger's name of a target manifest: the tag, or the digest when pushed by digest;
    with the platform filter, which makes another index of the same source."""
    if job.target.tag:
        key = str(job.target.with_tag(job.target.tag))
    else:
        key = f"{job.target.name}@{source_digest}"
    return f"{key} platforms={','.join(sorted(platforms))}" if platforms else key


class _ImageCopy:
    def __init__(
        self,
        job: Job,
        clients: Clients,
        ledger: Ledger,
        settings: Settings,
        blob_pool: Executor | None,
        on_bytes: ByteCounter | None,
        dry_run: bool = False,
        platforms: frozenset[str] = frozenset(),
        referrers: bool = False,
        force: bool = False,
    ) -> None:
        self.job = job
        self.dry_run = dry_run
        self.force = force
        self.platforms = platforms
        self.referrers = referrers
        self.clients = clients
        self.src = clients.get(job.source.registry, job.source.repository)
        self.dst = clients.get(job.target.registry, job.target.repository)
        self.src_repo = job.source.repository
        self.dst_repo = job.target.repository
        self.ledger = ledger
        self.settings = settings
        self.blob_pool = blob_pool
        self.on_bytes = on_bytes
        self.result = CopyResult(job)

    def run(self) -> CopyResult:
        job = self.job
        manifest: Manifest | None = None
        if job.source.digest:
            source_digest = job.source.digest
        elif self.force or self.ledger.manifest(target_key(job, "", self.platforms)) is None:
            # Nothing on record (or force): the manifest will most likely be needed, and one
            # GET gives both its digest and its bytes where a HEAD and a GET would be two.
            manifest = self.src.get_manifest(self.src_repo, job.source.manifest_ref)
            source_digest = manifest.digest
        else:
            head = self.src.head_manifest(self.src_repo, job.source.manifest_ref)
            if head is None:
                raise RegistryError(f"{job.source} not found at the source")
            source_digest = head[0]
        self.result.source_digest = source_digest
        target_ref = job.target.tag or source_digest
        key = target_key(job, source_digest, self.platforms)

        record = self.ledger.manifest(key)
        # Under force the record vouches for nothing: the manifests are PUT whatever it says.
        vouched = (not self.force and record is not None
                   and record.source_digest == source_digest)
        if vouched and self.settings.trust_ledger:
            return self._up_to_date(record.target_digest)  # type: ignore[union-attr]
        # What the target tag must point at: the source's manifest, or its filtered index.
        expected = {record.target_digest} if vouched and record else {source_digest}
        # A record of this source digest under this filter means it passed the filter then.
        if self.platforms and not vouched:
            manifest = manifest or self.src.get_manifest(self.src_repo, source_digest)
            if manifest.is_index:
                manifest = filter_index(manifest, self.platforms)
                expected = {manifest.digest}
            else:
                other = self._other_platform(manifest)
                if other:
                    return self._skipped(other)
        head = None
        if not self.force and (record is not None or not self._absent_at_target(target_ref)):
            head = self.dst.head_manifest(self.dst_repo, target_ref)
        if head is not None and head[0] in expected | {source_digest}:
            self.ledger.record_manifest(key, ManifestRecord(source_digest, head[0]))
            return self._up_to_date(head[0])

        if manifest is None:
            manifest = self.src.get_manifest(self.src_repo, source_digest)
            if self.platforms and manifest.is_index:
                manifest = filter_index(manifest, self.platforms)
        self._copy_manifest_content(manifest, depth=0)
        if self.dry_run:
            self.result.outcome = "planned"
            return self.result
        target_digest = self._put(manifest, target_ref)
        if target_digest != manifest.digest:
            raise DigestMismatch(f"target manifest {job.target}", expected=manifest.digest,
                                 got=target_digest)
        if target_digest != source_digest:
            self.result.note = (f"index filtered to {', '.join(sorted(self.platforms))}: its "
                                f"digest {target_digest} differs from the source's "
                                f"{source_digest}")
            log.warning("%s: %s", job, self.result.note)
        self.ledger.record_manifest(key, ManifestRecord(source_digest, target_digest))
        self.result.target_digest = target_digest
        if self.referrers:
            self._copy_referrers(source_digest)
        log.info("copied %s (%d blobs copied, %d mounted, %d present, %d bytes)", job,
                 self.result.blobs_copied, self.result.blobs_mounted, self.result.blobs_skipped,
                 self.result.bytes_copied)
        return self.result

    def _absent_at_target(self, reference: str) -> bool:
        """Whether the target repository's tag list (one request per repository, shared by its
        tags' copies) says the tag is not there, which spares a HEAD per tag on a first copy."""
        if not self.settings.target_tag_list or not self.job.target.tag:
            return False
        listed = self.dst.known_tags(self.dst_repo, max_age=self.settings.tag_list_ttl)
        return listed is not None and reference not in listed

    def _repository_new_at_target(self) -> bool:
        """Whether the target repository had no tag when its tag list was read for this copy:
        then its child manifests are not worth a HEAD each (a child that is there after all, say
        one this process pushed for another tag, is PUT again: the same bytes, one request)."""
        return self.settings.target_tag_list and self.dst.listed_empty(
            self.dst_repo, max_age=self.settings.tag_list_ttl)

    def _copy_referrers(self, digest: str) -> None:
        """Signatures, SBOMs and attestations of the image, copied right after it.

        Found by the OCI 1.1 referrers API where the source offers it, and by the two tag
        conventions that work everywhere: the referrers tag schema (`sha256-<hex>`, an index
        of the referring manifests) and cosign's `sha256-<hex>.sig/.att/.sbom`. Referrers found
        through the API are pushed by digest; a target without the API gets them listed in its
        tag-schema index, so that clients find them there.

        The image is in place by now: a source that will not say what refers to it (an account
        that may pull but not list tags) leaves a note, not a failed copy.
        """
        try:
            found = self.src.referrers(self.src_repo, digest)
        except (RegistryError, AuthError, RetryableError) as exc:
            self._referrers_unknown(exc)
            found = None
        if found:
            for descriptor in found:
                self._copy_by_digest(descriptor.digest)
                self.result.referrers.append(descriptor.digest)
            if self.dst.referrers(self.dst_repo, digest) is None:
                self._index_referrers(digest, found)
        prefix = digest.replace(":", "-", 1)
        try:
            listed = self.src.list_tags(self.src_repo, max_age=self.settings.tag_list_ttl)
        except (RegistryError, AuthError, RetryableError) as exc:
            # Even a transient fault: a retry would find the image up to date and not look.
            self._referrers_unknown(exc)
            listed = []
        tags = [tag for tag in listed if tag == prefix or tag.startswith(prefix + ".")]
        for tag in sorted(tags):
            referrer = Job(self.job.source.with_tag(tag), self.job.target.with_tag(tag),
                           self.job.rule)
            _ImageCopy(referrer, self.clients, self.ledger, self.settings, self.blob_pool,
                       self.on_bytes).run()
            self.result.referrers.append(tag)
        if self.result.referrers:
            log.info("%s: copied %d referrers (%s)", self.job, len(self.result.referrers),
                     ", ".join(self.result.referrers))

    def _referrers_unknown(self, error: Exception) -> None:
        note = f"its referrers (signatures, SBOMs) could not be looked up: {error}"
        log.warning("%s: %s", self.job, note)
        self.result.note = f"{self.result.note}; {note}" if self.result.note else note

    def _copy_by_digest(self, digest: str) -> None:
        job = Job(self.job.source.with_tag(None).with_digest(digest),
                  self.job.target.with_tag(None), self.job.rule)
        _ImageCopy(job, self.clients, self.ledger, self.settings, self.blob_pool,
                   self.on_bytes).run()

    def _index_referrers(self, digest: str, found: list[Descriptor]) -> None:
        """Add `found` to the target's tag-schema index of the image's referrers."""
        tag = digest.replace(":", "-", 1)
        entries: list[dict] = []
        if self.dst.head_manifest(self.dst_repo, tag) is not None:
            entries = list(json.loads(self.dst.get_manifest(self.dst_repo, tag).raw)
                           .get("manifests") or [])
        known = {entry.get("digest") for entry in entries}
        entries += [descriptor.raw for descriptor in found if descriptor.digest not in known]
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                           "manifests": entries}).encode()
        self.dst.put_manifest(self.dst_repo, tag, parse_manifest(body, OCI_INDEX))

    def _other_platform(self, manifest: Manifest) -> str:
        """The platform a single-platform image's config names when the filter does not
        want it, else "". Only an image config names one: an artifact (a signature, a Helm
        chart), a config without os/architecture, or one too large to be a config, is
        copied as before."""
        config = manifest.config
        if config is None or config.media_type not in IMAGE_CONFIG_TYPES:
            return ""
        limit = self.settings.max_manifest_bytes
        if config.size > limit:
            log.warning("%s: config %s of %d bytes not read for its platform: copied "
                        "whatever the filter", self.job, config.digest, config.size)
            return ""
        platform = config_platform(self.src.read_blob(self.src_repo, config.digest, limit))
        if not platform or platform_matches(platform, self.platforms):
            return ""
        return platform

    def _skipped(self, platform: str) -> CopyResult:
        self.result.outcome = "skipped"
        self.result.note = (f"skipped: platform {platform} is not among "
                            f"{', '.join(sorted(self.platforms))}")
        log.info("%s: %s", self.job, self.result.note)
        return self.result

    def _up_to_date(self, target_digest: str) -> CopyResult:
        self.result.outcome = "up-to-date"
        self.result.target_digest = target_digest
        log.info("up to date %s", self.job)
        return self.result

    def _copy_manifest_content(self, manifest: Manifest, depth: int) -> None:
        """Everything a manifest references, so that it can be PUT next."""
        if not manifest.is_index:
            self._copy_blobs(manifest.blobs)
            return
        if depth >= MAX_INDEX_DEPTH:
            raise RegistryError(f"{self.job.source}: indexes nested deeper than {depth} levels")
        missing: list[tuple[Descriptor, Manifest]] = []
        # Under force every child is PUT again, so asking whether it is there is no use.
        ask = not self.force and not self._repository_new_at_target()
        for child in manifest.children:
            if child.digest == manifest.digest:
                raise RegistryError(f"{self.job.source}: an index that lists itself")
            if ask and self.dst.head_manifest(self.dst_repo, child.digest) is not None:
                continue
            missing.append((child, self.src.get_manifest(self.src_repo, child.digest)))
        # The blobs of every platform at once, not one platform after the other.
        self._copy_blobs(tuple(blob for _, child_manifest in missing
                               if not child_manifest.is_index for blob in child_manifest.blobs))
        for child, child_manifest in missing:
            if child_manifest.is_index:
                self._copy_manifest_content(child_manifest, depth + 1)
            if not self.dry_run:
                self._put(child_manifest, child.digest)

    def _put(self, manifest: Manifest, reference: str) -> str:
        try:
            return self.dst.put_manifest(self.dst_repo, reference, manifest)
        except BlobUnknownOnPush:
            if manifest.is_index:
                raise
            # The ledger said the target had blobs it has not (invariant 1): forget, copy again.
            log.warning("%s: target lacks blobs the ledger listed; copying them again", self.job)
            self.ledger.forget_blobs(self.dst.registry, self.dst_repo,
                                     [blob.digest for blob in manifest.blobs])
            self._copy_blobs(manifest.blobs)
            return self.dst.put_manifest(self.dst_repo, reference, manifest)

    def _copy_blobs(self, blobs: tuple[Descriptor, ...]) -> None:
        unique = list({blob.digest: blob for blob in blobs}.values())
        if self.blob_pool is None or len(unique) == 1:
            for blob in unique:
                self._copy_blob(blob)
            return
        futures: list[Future[None]] = [
            self.blob_pool.submit(self._copy_blob, blob) for blob in unique]
        errors = [future.exception() for future in futures]  # waits for every blob
        for error in errors:
            if error is not None:
                raise error

    def _copy_blob(self, blob: Descriptor) -> None:
        registry, digest = self.dst.registry, blob.digest
        if self.dst_repo in self.ledger.blob_repositories(registry, digest):
            self.result.count("skipped")
            return
        if self.dry_run:
            self._plan_blob(blob)
            return
        # Single flight: if another copy is moving this blob into this registry, wait for it and
        # then mount or skip instead of uploading the same bytes twice.
        with self.ledger.blob_lock(registry, digest) as held:
            holders = self.ledger.blob_repositories(registry, digest)
            if holders and held.lost():
                # Another copy may be moving this blob now: the ledger's word is not enough to
                # skip or mount. Ask the target (below), upload if it lacks the blob.
                holders = set()
            if self.dst_repo in holders:
                self.result.count("skipped")
                return
            sources = sorted(holders - {self.dst_repo})
            if self.src.registry == registry and self.src_repo != self.dst_repo:
                sources.insert(0, self.src_repo)
            upload_url = None
            if sources:
                upload_url = self.dst.mount_blob(self.dst_repo, digest, sources[0])
                if upload_url is None:
                    self.ledger.add_blob(registry, digest, self.dst_repo)
                    self.result.count("mounted")
                    return
            else:
                present, upload_url = self._probe(digest)
                if present:
                    self.ledger.add_blob(registry, digest, self.dst_repo)
                    self.result.count("skipped")
                    return
            self._upload(blob, upload_url)
            self.ledger.add_blob(registry, digest, self.dst_repo)
            self.result.count("copied", blob.size)

    def _plan_blob(self, blob: Descriptor) -> None:
        """What `_copy_blob` would do, found out with reads only (a HEAD, never a mount)."""
        holders = self.ledger.blob_repositories(self.dst.registry, blob.digest) - {self.dst_repo}
        if self.dst.blob_exists(self.dst_repo, blob.digest):
            self.result.count("skipped")
        elif holders or (self.src.registry == self.dst.registry
                         and self.src_repo != self.dst_repo):
            self.result.count("mounted")
        else:
            self.result.count("copied", blob.size)
            self.result.new_blobs[blob.digest] = blob.size

    def _probe(self, digest: str) -> tuple[bool, str | None]:
        """Whether the target repository holds a blob, and an upload session if it does not.

        A mount from the repository itself answers both in one request (201 when the blob is
        there, 202 with a session when not) where HEAD + POST would be two. A registry that
        refuses such a mount gets the HEAD.
        """
        if self.settings.mount_probe:
            try:
                upload_url = self.dst.mount_blob(self.dst_repo, digest, self.dst_repo)
                return upload_url is None, upload_url
            except (RegistryError, AuthError) as exc:
                if isinstance(exc, RetryableError):
                    raise
                log.debug("mount probe refused (%s); using HEAD", exc)
        return self.dst.blob_exists(self.dst_repo, digest), None

    def _upload(self, blob: Descriptor, upload_url: str | None) -> None:
        """Stream one blob source → target; a fresh upload session on every try. A large
        blob goes up in chunks that a later try, or another worker, resumes."""
        if blob.size > self.settings.chunked_upload_threshold:
            upload_chunked(src=self.src, src_repo=self.src_repo, dst=self.dst,
                           dst_repo=self.dst_repo, blob=blob, ledger=self.ledger,
                           settings=self.settings, fresh_url=upload_url, on_bytes=self.on_bytes)
            return
        for attempt in retrying(self.settings, self.settings.blob_attempts):
            with attempt:
                url = upload_url or self.dst.start_upload(self.dst_repo)
                upload_url = None
                response = self.src.open_blob(self.src_repo, blob.digest)
                try:
                    size = blob.size
                    declared = response.headers.get("Content-Length")
                    if size < 0 and declared and declared.isdigit():
                        size = int(declared)
                    if declared and declared.isdigit() and int(declared) != size:
                        raise DigestMismatch(f"blob {blob.digest} size", expected=str(size),
                                             got=declared)
                    if size < 0:
                        raise RegistryError(f"blob {blob.digest} has no known size")
                    reader = VerifyingReader(response, blob.digest, size, self.on_bytes,
                                             window=self.settings.read_timeout)
                    self.dst.finish_upload(self.dst_repo, url, blob.digest, reader)
                except BaseException:
                    self.dst.cancel_upload(self.dst_repo, url)
                    raise
                finally:
                    response.close()
