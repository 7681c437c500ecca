"""Failed images as a person reads them: one line per image, except where one cause stops a
whole namespace (a project, organisation or repository that does not exist on the target, or
that the account may not push to): its images then share one line that names it.

`migrator sync` and the fleet's `enqueue --wait`/`status` print these lines; the summary line
counts every image, and `--output-failed` lists every image with its own reason.

The fleet keeps only reasons as text, so the namespace is read from the words the registry
client writes for such failures (migrator/registry/client.py): "create 'X' on the registry
first" names what to create, "does the namespace 'X' exist" what to check, "refuses the
repository name 'X'" a name the registry will not take.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TypeVar

K = TypeVar("K")

_PLACES = (re.compile(r"create '([^']+)' on the registry first"),
           re.compile(r"does the namespace '([^']+)' exist"),
           re.compile(r"refuses the repository name '([^']+)'"))
SHOWN = 2  # images named in a shared line; the others counted


def namespace_of(reason: str) -> str | None:
    """The namespace (or repository) a failure's reason blames, if it blames one."""
    for pattern in _PLACES:
        found = pattern.search(reason)
        if found:
            return found[1]
    return None


def failure_lines(failed: Mapping[K, str], target_of: Callable[[K], str]) -> list[str]:
    """`failed: <image>: <reason>` per image, and `failed: N images into <registry>/<namespace>
    (<image>, <image> and M more): <reason>` for the images one missing namespace stopped.
    `target_of` gives an image's target reference (its registry is the first component)."""
    # (registry, namespace) for a namespace's images, ("", position) for any other image
    groups: dict[tuple[str, str], list[K]] = {}
    for position, (job, reason) in enumerate(failed.items()):
        place = namespace_of(reason)
        key = ("", str(position)) if place is None else (target_of(job).split("/", 1)[0], place)
        groups.setdefault(key, []).append(job)
    lines = []
    for (registry, place), jobs in groups.items():
        reason = failed[jobs[0]]
        if len(jobs) == 1:
            lines.append(f"failed: {jobs[0]}: {reason}")
            continue
        named = ", ".join(str(job) for job in jobs[:SHOWN])
        more = f" and {len(jobs) - SHOWN} more" if len(jobs) > SHOWN else ""
        lines.append(f"failed: {len(jobs)} images into {registry}/{place} ({named}{more}): "
                     f"{reason}")
    return lines
