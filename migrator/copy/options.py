"""`CopyOptions`: how one run copies, handed whole through every copy (containers/image's
`copy.Options`), and its one encoding as the kwargs of a fleet task."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from migrator.rules import Job

TASK_KEYS = frozenset({"platforms", "referrers", "immutable_tags", "force", "foreign_layers"})


@dataclass(frozen=True)
class CopyOptions:
    """What a run asks of each copy.

    `dry_run`: only read; count what would be uploaded, write nothing (never sent to the
    fleet, which has no dry run). `platforms` (`os/arch[/variant]`, os or arch may be `*`):
    keep only these children of an index, skip a single-platform image of another platform.
    `referrers`: copy the signatures, SBOMs and attestations of an image with it.
    `immutable_tags` (a regex, full match): tags that never change once synced. `force`: PUT
    every manifest again, whatever the target or the ledger says. `foreign_layers`: copy the
    foreign / non-distributable layers of images (Windows base layers) from the source
    registry too; by default they are left where their `urls` point, as skopeo and crane do.
    """

    dry_run: bool = False
    platforms: frozenset[str] = frozenset()
    referrers: bool = True
    immutable_tags: str | None = None
    force: bool = False
    foreign_layers: bool = False

    def for_job(self, job: Job) -> CopyOptions:
        """These options with the job's own (its rule's) platforms and immutable tags, which
        win over the run's."""
        return replace(self, platforms=job.platforms or self.platforms,
                       immutable_tags=job.immutable_tags or self.immutable_tags)

    def to_task_kwargs(self) -> dict[str, Any]:
        """The options as a fleet task's kwargs: plain JSON a person reads in Flower, with the
        keys and types of the messages already queued. Only what differs from the defaults is
        written (a worker fills in the rest), so a run without options sends none."""
        if self.dry_run:
            raise ValueError("the fleet has no dry run: plan with `migrator plan`")
        kwargs: dict[str, Any] = {}
        if self.platforms:
            kwargs["platforms"] = sorted(self.platforms)
        if not self.referrers:
            kwargs["referrers"] = False
        if self.immutable_tags:
            kwargs["immutable_tags"] = self.immutable_tags
        if self.force:
            kwargs["force"] = True
        if self.foreign_layers:
            kwargs["foreign_layers"] = True
        return kwargs

    @classmethod
    def from_task_kwargs(cls, kwargs: Mapping[str, Any]) -> CopyOptions:
        """The options of a task's kwargs, as any producer version wrote them (an empty list
        of platforms, `referrers: true`, a null pattern all mean the defaults). An unknown
        key is refused, as the task's keyword arguments refused it: better a failed task
        than a copy made without an option its producer asked for."""
        unknown = set(kwargs) - TASK_KEYS
        if unknown:
            raise TypeError(f"unknown copy options in the task: {', '.join(sorted(unknown))}")
        return cls(platforms=frozenset(kwargs.get("platforms") or ()),
                   referrers=bool(kwargs.get("referrers", True)),
                   immutable_tags=str(kwargs["immutable_tags"]) if kwargs.get("immutable_tags")
                   else None,
                   force=bool(kwargs.get("force", False)),
                   foreign_layers=bool(kwargs.get("foreign_layers", False)))

