"""The reports a run writes: images files ready to run again, and image-syncer's success file."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from pathlib import Path

from migrator.rules import Job


def add_report_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-success", metavar="FILE",
                        help="write the images copied or up to date as an images file")
    parser.add_argument("--output-failed", metavar="FILE",
                        help="write the failed images as an images file (reasons in "
                             "FILE.reasons.json) to run again")
    parser.add_argument("--output-success-images", metavar="FILE",
                        help="image-syncer's success file: each source with the list of its "
                             "targets copied or up to date")
    parser.add_argument("--output-images-format", choices=("yaml", "json"), default="yaml",
                        help="format of --output-success-images (default yaml)")


def write_report(path: str | None, images: Mapping[Job, str]) -> None:
    """An images file of `images` (ready to run again) and, when any has a reason, a sidecar
    FILE.reasons.json with them. A source copied to several targets keeps them all, as a
    list."""
    if not path:
        return
    import json

    Path(path).write_text(json.dumps(_by_source(images), indent=2, sort_keys=True) + "\n")
    reasons = [{"source": str(job.source), "target": str(job.target), "reason": reason}
               for job, reason in images.items() if reason]
    if reasons:
        Path(f"{path}.reasons.json").write_text(json.dumps(reasons, indent=2) + "\n")


def _by_source(jobs: Iterable[Job]) -> dict[str, str | list[str]]:
    """Each source with its target, or the list of its targets when it has several."""
    targets: dict[str, list[str]] = {}
    for job in jobs:
        found = targets.setdefault(str(job.source), [])
        if str(job.target) not in found:
            found.append(str(job.target))
    return {source: found[0] if len(found) == 1 else sorted(found)
            for source, found in targets.items()}


def write_success_images(path: str | None, form: str, jobs: Iterable[Job]) -> None:
    """image-syncer's `--output-success-images`: every source with the list of its targets,
    in YAML or JSON, as image-syncer writes it."""
    if not path:
        return
    import json

    import yaml

    images = {source: found if isinstance(found, list) else [found]
              for source, found in sorted(_by_source(jobs).items())}
    if form == "json":
        Path(path).write_text(json.dumps(images) + "\n")
    else:
        Path(path).write_text(yaml.safe_dump(images, default_flow_style=False))
