"""`copy_image()`: the order of one image copy. Every executor (the embedded `migrator sync`,
the Celery workers) calls this one code path; only the ledger and the thread pools differ.

The order, and why:
1. HEAD the source tag: its digest tells whether anything changed (one request when nothing did).
2. HEAD the target tag (unless the ledger vouches for it and the settings allow trusting it):
   equal digests mean there is nothing to do.
3. GET the source manifest by digest (the bytes must hash to it).
4. For an index, each child manifest in turn: its blobs, then the child itself, by digest.
5. The blobs of an image, several at once (`blobs.py`): skipped when the ledger or a HEAD says
   the target repository has them, mounted from another repository of the target registry
   when the ledger knows one, else streamed GET → PUT with the digest checked on the way.
6. The manifest last, as the raw bytes with their media type: a target tag never points at a
   manifest whose blobs are missing, and digests are preserved.
7. Then its referrers (`referrers.py`), each a copy of its own.

With a platform filter, a single-platform image whose config names another platform is
skipped (outcome "skipped"), as image-syncer does: neither copied nor failed. With `force`
(image-syncer's `--force`), steps 2 and 4's "already there" answers are ignored: every manifest
is PUT again, while blobs the target holds are still skipped.
"""

from __future__ import annotations

import logging
import re
import threading
import zlib
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import Literal

from migrator.copy.blobs import BlobCopy, ByteCounter
from migrator.copy.clients import Clients
from migrator.copy.options import CopyOptions
from migrator.copy.referrers import copy_referrers
from migrator.errors import BlobUnknownOnPush, DigestMismatch, RegistryError
from migrator.ledger import Ledger, ManifestRecord, ReadOnlyLedger
from migrator.registry.manifest import (
    IMAGE_CONFIG_TYPES,
    Descriptor,
    Manifest,
    config_platform,
    filter_index,
    platform_matches,
)
from migrator.rules import Job
from migrator.settings import Settings

log = logging.getLogger(__name__)

MAX_INDEX_DEPTH = 2
# How a referrer is copied: as found, every platform, never its own referrers (no chains).
REFERRER_OPTIONS = CopyOptions(referrers=False)


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
    options: CopyOptions = CopyOptions(),  # noqa: B008 - frozen, shared safely
    blob_pool: Executor | None = None,
    on_bytes: ByteCounter | None = None,
    notes_shown: bool = False,
) -> CopyResult:
    """Copy one image (a tag or a digest, single- or multi-platform) from source to target.

    The job's own platforms and immutable tags (its rule's) win over the `options`' (the
    run's). With `dry_run`, only read: the result counts the blobs that would be uploaded,
    mounted or found, and nothing is written to the target or the ledger. `platforms` keeps
    only those children of an index, which then gets a digest of its own, and skips a
    single-platform image whose config names another platform (outcome "skipped", the reason
    in `note`). `referrers` copies the signatures, SBOMs and attestations found for the image
    with it. A tag that `immutable_tags` names and that the ledger holds as synced is up to
    date without a request. `force` PUTs every manifest of the image (the index, each child)
    even when the target, the ledger or the tag list says it is there; blobs the target holds
    are still not uploaded again.

    A `note` is logged as it happens (INFO, WARNING for a changed digest), the one place a
    fleet worker's operator reads it. `notes_shown`: the caller shows every result's note to
    people itself (`migrator sync` prints them after the run), so the log keeps them at DEBUG
    and the terminal says each once.
    """
    options = options.for_job(job)
    if options.dry_run:
        ledger = ReadOnlyLedger(ledger)
    known = None if options.force else synced_immutable(job, ledger, options.immutable_tags,
                                                        options.platforms)
    if known is not None:
        log.info("up to date %s (immutable tag on record)", job)
        return CopyResult(job, outcome="up-to-date", target_digest=known.target_digest,
                          source_digest=known.source_digest)
    return _ImageCopy(job, clients=clients, ledger=ledger, settings=settings, options=options,
                      blob_pool=blob_pool, on_bytes=on_bytes, notes_shown=notes_shown).run()


def is_immutable(job: Job, immutable_tags: str | None) -> bool:
    """Whether the job copies a tag that the rule (or the run) declares never to change."""
    pattern = job.immutable_tags or immutable_tags
    tag = job.source.tag
    return bool(pattern and tag and not job.source.digest and re.fullmatch(pattern, tag))


def synced_immutable(job: Job, ledger: Ledger, immutable_tags: str | None,
                     platforms: frozenset[str] = frozenset()) -> ManifestRecord | None:
    """The ledger's record of an immutable tag already synced (then no request is needed)."""
    if not is_immutable(job, immutable_tags):
        return None
    return _tag_record(job, ledger, platforms)


def _tag_record(job: Job, ledger: Ledger, platforms: frozenset[str]) -> ManifestRecord | None:
    """The ledger's record of the job's target tag (its digest is not needed to name it)."""
    return ledger.manifest(target_key(job, "", job.platforms or platforms))


def unchanged_on_record(job: Job, clients: Clients, ledger: Ledger,
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
    """One image, its index's children, its blobs, then its referrers. `options` are the
    job's already (`CopyOptions.for_job`)."""

    def __init__(
        self,
        job: Job,
        *,
        clients: Clients,
        ledger: Ledger,
        settings: Settings,
        options: CopyOptions,
        blob_pool: Executor | None = None,
        on_bytes: ByteCounter | None = None,
        notes_shown: bool = False,
    ) -> None:
        self.job = job
        self.notes_shown = notes_shown
        self.options = options
        self.platforms = options.platforms
        self.clients = clients
        self.src = clients.get(job.source.registry, job.source.repository)
        self.dst = clients.get(job.target.registry, job.target.repository)
        self.src_repo = job.source.repository
        self.dst_repo = job.target.repository
        self.ledger = ledger
        self.settings = settings
        self.blob_pool = blob_pool
        self.on_bytes = on_bytes
        self.blobs = BlobCopy(src=self.src, src_repo=self.src_repo, dst=self.dst,
                              dst_repo=self.dst_repo, ledger=ledger, settings=settings,
                              dry_run=options.dry_run, pool=blob_pool, on_bytes=on_bytes)
        self.result = CopyResult(job)

    def run(self) -> CopyResult:
        job = self.job
        force = self.options.force
        if self.options.dry_run:
            # What a push would meet and a plan should say first: a target repository,
            # project or namespace that does not exist and that no push creates.
            missing = self.dst.target_missing(self.dst_repo)
            if missing is not None:
                raise missing
        manifest: Manifest | None = None
        # A tag's record is named without the source digest: read once, before the source
        # is asked, and used again below (one Redis round trip per copy, not two).
        tag_record: ManifestRecord | None = None
        if job.source.digest:
            source_digest = job.source.digest
        elif force or ((tag_record := self.ledger.manifest(target_key(job, "", self.platforms)))
                       is None and not self.src.counts_pulls):
            # Nothing on record (or force): the manifest will most likely be needed, and one
            # GET gives both its digest and its bytes where a HEAD and a GET would be two.
            # Not where a GET costs a pull of a quota and a HEAD does not (Docker Hub): there
            # the HEADs of source and target come first, and a GET only if they differ.
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

        # Under force the record vouches for nothing: the manifests are PUT whatever it says.
        record = None if force else (tag_record if job.target.tag and not job.source.digest
                                     else self.ledger.manifest(key))
        vouched = not force and record is not None and record.source_digest == source_digest
        # `vouched` implies a record; the test again is for mypy, which cannot tell.
        if vouched and record is not None and (self.settings.trust_ledger
                                               or self._vouched_enough(target_ref, key)):
            return self._up_to_date(record.target_digest)
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
        if not force and (record is not None or not self._absent_at_target(target_ref)):
            head = self.dst.head_manifest(self.dst_repo, target_ref, target=True)
        if head is not None and head[0] in expected | {source_digest}:
            self.ledger.record_manifest(key, ManifestRecord(source_digest, head[0]))
            return self._up_to_date(head[0])

        if manifest is None:
            manifest = self.src.get_manifest(self.src_repo, source_digest)
            if self.platforms and manifest.is_index:
                manifest = filter_index(manifest, self.platforms)
        self._copy_manifest_content(manifest, depth=0)
        if self.options.dry_run:
            self.result.outcome = "planned"
            return self.result
        target_digest = self._put(manifest, target_ref)
        if target_digest != manifest.digest:
            raise DigestMismatch(f"target manifest {job.target}", expected=manifest.digest,
                                 got=target_digest)
        if target_digest != source_digest:
            self._note(logging.WARNING, f"index filtered to {', '.join(sorted(self.platforms))}"
                       f": its digest {target_digest} differs from the source's {source_digest}")
        self.ledger.record_manifest(key, ManifestRecord(source_digest, target_digest))
        self.result.target_digest = target_digest
        if self.options.referrers:
            self._copy_referrers(source_digest)
        log.info("copied %s (%d blobs copied, %d mounted, %d present, %d bytes)", job,
                 self.result.blobs_copied, self.result.blobs_mounted, self.result.blobs_skipped,
                 self.result.bytes_copied)
        return self.result

    def _vouched_enough(self, reference: str, key: str) -> bool:
        """Whether a re-run may take the record's word for a target tag without a HEAD
        (docs/reruns.md): this is not one of the runs that check it (one in
        `verify_target_every`, by a hash of its name and the record's run count, so that
        each run checks its share of the tags and each tag is checked that often), and the
        target's tag list, read once per repository, still has it."""
        every = self.settings.verify_target_every
        if every <= 1 or not self.job.target.tag or not self.settings.target_tag_list:
            return False
        if zlib.crc32(key.encode()) % every == self.ledger.run_number() % every:
            return False  # this run's turn to check the tag
        listed = self.dst.known_tags(self.dst_repo, max_age=self.settings.tag_list_ttl)
        return listed is not None and reference in listed

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
        """Signatures, SBOMs and attestations of the image, copied right after it."""
        self.result.referrers += copy_referrers(
            self.job, digest, src=self.src, dst=self.dst, settings=self.settings,
            copy=self._copy_referrer, unknown=self._referrers_unknown)
        if self.result.referrers:
            log.info("%s: copied %d referrers (%s)", self.job, len(self.result.referrers),
                     ", ".join(self.result.referrers))

    def _copy_referrer(self, job: Job) -> CopyResult:
        return _ImageCopy(job, clients=self.clients, ledger=self.ledger, settings=self.settings,
                          options=REFERRER_OPTIONS, blob_pool=self.blob_pool,
                          on_bytes=self.on_bytes, notes_shown=self.notes_shown).run()

    def _referrers_unknown(self, error: Exception) -> None:
        self._note(logging.WARNING,
                   f"its referrers (signatures, SBOMs) could not be looked up: {error}")

    def _note(self, level: int, note: str) -> None:
        """Add `note` to the result's, and log it (see `copy_image` on `notes_shown`)."""
        self.result.note = f"{self.result.note}; {note}" if self.result.note else note
        log.log(logging.DEBUG if self.notes_shown else level, "%s: %s", self.job, note)

    def _other_platform(self, manifest: Manifest) -> str:
        """The platform a single-platform image's config names when the filter does not
        want it, else "". Only an image config names one: an artifact (a signature, a Helm
        chart), a config without os/architecture, or one too large to be a config, is
        copied as before. A schema1 manifest has no config and names its platform itself."""
        if manifest.platform:
            return "" if platform_matches(manifest.platform, self.platforms) \
                else manifest.platform
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
        self._note(logging.INFO, f"skipped: platform {platform} is not among "
                                 f"{', '.join(sorted(self.platforms))}")
        return self.result

    def _up_to_date(self, target_digest: str) -> CopyResult:
        self.result.outcome = "up-to-date"
        self.result.target_digest = target_digest
        log.info("up to date %s", self.job)
        return self.result

    def _copy_manifest_content(self, manifest: Manifest, depth: int) -> None:
        """Everything a manifest references, so that it can be PUT next."""
        if not manifest.is_index:
            self._copy_blobs(self._blobs_of(manifest))
            return
        if depth >= MAX_INDEX_DEPTH:
            raise RegistryError(f"{self.job.source}: indexes nested deeper than {depth} levels")
        missing: list[tuple[Descriptor, Manifest]] = []
        # Under force every child is PUT again, so asking whether it is there is no use.
        ask = not self.options.force and not self._repository_new_at_target()
        for child in manifest.children:
            if child.digest == manifest.digest:
                raise RegistryError(f"{self.job.source}: an index that lists itself")
            if ask and self.dst.head_manifest(self.dst_repo, child.digest,
                                              target=True) is not None:
                continue
            missing.append((child, self.src.get_manifest(self.src_repo, child.digest)))
        # The blobs of every platform at once, not one platform after the other.
        self._copy_blobs(tuple(blob for _, child_manifest in missing if not child_manifest.is_index
                               for blob in self._blobs_of(child_manifest)))
        for child, child_manifest in missing:
            if child_manifest.is_index:
                self._copy_manifest_content(child_manifest, depth + 1)
            if not self.options.dry_run:
                self._put(child_manifest, child.digest)

    def _put(self, manifest: Manifest, reference: str) -> str:
        try:
            return self.dst.put_manifest(self.dst_repo, reference, manifest)
        except BlobUnknownOnPush:
            if manifest.is_index:
                raise
            # The ledger said the target had blobs it has not (invariant 1): forget, copy again.
            log.warning("%s: target lacks blobs the ledger listed; copying them again", self.job)
            blobs = self._blobs_of(manifest)
            self.ledger.forget_blobs(self.dst.registry, self.dst_repo,
                                     [blob.digest for blob in blobs])
            self._copy_blobs(blobs)
            return self.dst.put_manifest(self.dst_repo, reference, manifest)

    def _blobs_of(self, manifest: Manifest) -> tuple[Descriptor, ...]:
        """The blobs an image's manifest needs at the target: its foreign layers only when
        asked (`foreign_layers`); otherwise they stay where their `urls` point."""
        return manifest.blobs + manifest.foreign if self.options.foreign_layers \
            else manifest.blobs

    def _copy_blobs(self, blobs: tuple[Descriptor, ...]) -> None:
        for blob, outcome in self.blobs.copy(self._sized(blobs)):
            self.result.count(outcome, max(blob.size, 0))
            if outcome == "copied" and self.options.dry_run:
                self.result.new_blobs[blob.digest] = max(blob.size, 0)

    def _sized(self, blobs: tuple[Descriptor, ...]) -> tuple[Descriptor, ...]:
        """The blobs with their sizes: a schema1 manifest names none, so the source is asked
        (a HEAD each) for what the upload strategy, the plan and the byte counts need. A size
        the source will not tell (a HEAD redirected to storage) stays unknown: the upload
        then takes the download's Content-Length."""
        if all(blob.size >= 0 for blob in blobs):
            return blobs
        return tuple(blob if blob.size >= 0 else replace(
            blob, size=self.src.blob_size(self.src_repo, blob.digest) or -1) for blob in blobs)
