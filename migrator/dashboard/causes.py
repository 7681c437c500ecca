"""Failures grouped by cause: the same refusal on 300 images is one line with 300 images.

A reason names the image it happened to (its reference, repository, tag, digest, upload id,
byte counts), so reasons are normalised first: the job's own references become `<source>` and
`<target>`, and what varies between images becomes a placeholder. What tells causes apart
stays: the registry host, the namespace, the HTTP status and the OCI error code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_DIGEST = re.compile(r"\b(sha256|sha384|sha512):[0-9a-fA-F]{32,128}\b")
_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                   r"[0-9a-fA-F]{12}\b")
# The API path names the repository and the tag or digest: /v2/<name>/manifests/<reference>
_V2_PATH = re.compile(r"/v2/[^\s?#)]+?/(manifests|blobs|tags|referrers)(/[^\s?#),]*)?")
# A number standing alone (a byte count, seconds, a size): not part of a host, a version or a
# name (nor a port=), and not the status after "HTTP", which is a cause of its own.
_NUMBER = re.compile(r"(?<![\w.:/<=-])(?<!HTTP )\d+(?:\.\d+)?(?!\.?[\w:/>-])")
_SPACES = re.compile(r"\s+")


def _reference_forms(reference: str) -> list[str]:
    """The ways a message may spell an image reference, longest first: the whole reference,
    without its tag or digest, and its repository path without the registry host."""
    name = reference.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    forms = [reference, name]
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        forms.append(rest)
    return [form for form in dict.fromkeys(forms) if len(form) > 2]


def _name_char(char: str) -> bool:
    return char.isalnum() or char in "_.-"


def _continues(text: str, end: int) -> bool:
    """Whether a name goes on at `end`: a name character, or a `/` or `.` followed by one (a
    full stop ending a sentence does not continue it)."""
    here, then = text[end:end + 1], text[end + 1:end + 2]
    if here in ("/", "."):
        return bool(then) and _name_char(then)
    return bool(here) and _name_char(here)


def _replace_whole(text: str, form: str, placeholder: str) -> str:
    """`form` replaced where it stands whole: not inside a longer name, and not the start of a
    longer path (`ns/app` in `ns/app/sub`). Plain string search, not a regex per job: a run
    with 20 000 failures would compile 60 000 patterns at every sample."""
    out, start = [], 0
    while (at := text.find(form, start)) >= 0:
        end = at + len(form)
        if (at and _name_char(text[at - 1])) or _continues(text, end):
            out.append(text[start:at + 1])
            start = at + 1
            continue
        out += [text[start:at], placeholder]
        start = end
    out.append(text[start:])
    return "".join(out)


def normalise(reason: str, job: str = "") -> str:
    """The cause in `reason`, with what is particular to `job` ("src -> dst") replaced."""
    text = reason
    source, _, target = job.partition(" -> ")
    for label, reference in (("source", source), ("target", target)):
        if not reference:
            continue
        forms = _reference_forms(reference)
        for index, form in enumerate(forms):
            placeholder = f"<{label}>" if index < 2 else f"<{label} repository>"
            text = _replace_whole(text, form, placeholder)
    text = _DIGEST.sub("<digest>", text)
    text = _UUID.sub("<id>", text)
    text = _V2_PATH.sub(lambda m: f"/v2/<repository>/{m.group(1)}"
                        + ("/<reference>" if m.group(2) else ""), text)
    text = _NUMBER.sub("<n>", text)
    return _SPACES.sub(" ", text).strip()


@dataclass
class Cause:
    """One normalised reason and the images (or rules) that ended with it."""

    cause: str
    count: int = 0
    items: list[tuple[str, str]] = field(default_factory=list)  # (job or rule, raw reason)


def group(failed: Mapping[str, str], *, per_cause: int = 100,
          jobs: bool = True) -> list[Cause]:
    """Failures (job or rule → reason) grouped by normalised cause, the largest group first.
    Each group lists at most `per_cause` items (sorted) but counts them all. Rules (`jobs`
    False) are not "src -> dst" pairs, so only the generic placeholders apply to them."""
    causes: dict[str, Cause] = {}
    for key in sorted(failed):
        reason = failed[key]
        cause = normalise(reason, key if jobs else "") or "(no reason recorded)"
        entry = causes.setdefault(cause, Cause(cause))
        entry.count += 1
        if len(entry.items) < per_cause:
            entry.items.append((key, reason))
    return sorted(causes.values(), key=lambda entry: (-entry.count, entry.cause))
