"""From the images a cluster runs to rules: references normalised as `docker pull` reads
them, duplicates folded, conflicts and skipped images reported, an existing file merged, never
overwritten.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from migrator.documents import SCHEME, load_document, quote
from migrator.errors import ConfigError, InvalidReference
from migrator.kube.scan import WORKLOADS, ScanResult, Sighting
from migrator.reference import (
    MAX_NAME_LENGTH,
    Reference,
    check_registry,
    check_repository,
    normalize,
)
from migrator.rules import Rule, parse_rules, resolve_defaults

NAMESPACE_NAME = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")  # DNS-1123 label


@dataclass(frozen=True)
class Skipped:
    image: str  # as written in the spec
    reason: str
    seen: tuple[Sighting, ...]


@dataclass(frozen=True)
class Conflict:
    """Several source repositories that would land in one target repository."""

    target: str
    kept: str  # the source repository that keeps the target
    dropped: tuple[str, ...]
    seen: tuple[Sighting, ...]  # where the dropped images run


@dataclass
class Plan:
    """The images file to write and what to tell the user about it."""

    rules: dict[str, str | list[str] | None]  # the whole file, existing entries included
    added: dict[str, str]  # source -> target written by this run
    images: int  # distinct images found in the cluster (normalised when valid)
    present: int = 0  # images the merged file copies already
    skipped: list[Skipped] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_repo(text: str) -> str:
    """`-t/--repo`: `registry/namespace[/...]`, checked as rule targets are."""
    value = text.strip().rstrip("/")
    example = "e.g. registry.example.com/test"
    if SCHEME.match(value):
        raise ConfigError(f"-t/--repo {quote(text)}: write it without a scheme such as "
                          f"https:// ({example})")
    parts = value.split("/")
    if len(parts) < 2 or "@" in value or ":" in parts[-1]:
        raise ConfigError(f"-t/--repo {quote(text)}: expected registry/namespace, with no tag "
                          f"({example})")
    try:
        registry = check_registry(parts[0])
        namespace = check_repository("/".join(parts[1:]))
    except InvalidReference as exc:
        raise ConfigError(f"-t/--repo {quote(text)}: {exc}") from None
    return f"{registry}/{namespace}"


def parse_namespaces(values: Sequence[str] | None) -> list[str] | None:
    """`-n a,b -n c` → ['a', 'b', 'c']; None when not given (all namespaces)."""
    if not values:
        return None
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    problems = [f"-n/--namespaces: {quote(name)} is not a namespace name (lowercase letters, "
                "digits and '-', at most 63)" for name in names
                if not NAMESPACE_NAME.fullmatch(name)]
    if not names:
        problems.append("-n/--namespaces: no namespace given")
    if problems:
        raise ConfigError(problems)
    return list(dict.fromkeys(names))


def target_repository(source: Reference, repo: str, *, keep_namespace: bool) -> str:
    """Where a source repository goes: `<repo>/<name>`, or with `keep_namespace`
    `<repo>/<path-with-dashes>` (`quay.io/x/nginx` → `<repo>/x-nginx`).

    The flattened form stays one path component below `repo`: many managed registries (SWR,
    ACR personal, Docker Hub) refuse deeper paths.
    """
    if keep_namespace:
        name = source.repository.replace("/", "-")
    else:
        name = source.repository.rsplit("/", 1)[-1]
    check_repository(f"{repo.partition('/')[2]}/{name}")  # a long dashed name may not fit
    if len(f"{repo}/{name}") > MAX_NAME_LENGTH:
        raise InvalidReference(f"name longer than {MAX_NAME_LENGTH} characters, registry "
                             f"included ({len(repo) + 1 + len(name)})")
    return f"{repo}/{name}"


def _in_repo(reference: Reference, repo: str) -> bool:
    return reference.name.startswith(repo + "/")


def _covered_by(rules: Sequence[Rule], source: Reference, target_name: str) -> Rule | None:
    """An existing rule that already copies this tag into the same target repository."""
    for rule in rules:
        if rule.source.name != source.name or rule.target.name != target_name:
            continue
        if rule.source.digest is not None or not rule.needs_tag_list or source.tag is None:
            continue
        if rule.tag_pattern is None or re.fullmatch(rule.tag_pattern, source.tag):
            return rule
    return None


def plan(
    images: Mapping[str, Sequence[Sighting]],
    repo: str,
    *,
    keep_namespace: bool = False,
    include_old_revisions: bool = False,
    existing: Mapping[str, Any] | None = None,
    existing_rules: Sequence[Rule] = (),
) -> Plan:
    """Rules for `images` into `repo` (already checked by `parse_repo`).

    Deterministic: sources are handled in sorted order, so the first source in that order
    keeps a contested target. `existing` (raw entries of the file merged into) and
    `existing_rules` (the same, parsed) always win: kept as they are, they claim their
    targets first.
    """
    found, skipped = _normalise(images)
    total = len(found) + len(skipped)
    skipped += _leave_out(found, repo, include_old_revisions)
    targets, conflicts, unnamed = _claim_repositories(found, repo, keep_namespace,
                                                      existing_rules)
    skipped += unnamed
    existing = existing or {}
    added, present, notes, tag_conflicts = _claim_tags(found, targets, existing,
                                                       existing_rules)
    rules: dict[str, str | list[str] | None] = {**existing, **added}
    return Plan(
        rules=dict(sorted(rules.items())),
        added=dict(sorted(added.items())),
        images=total,
        present=present,
        skipped=skipped,
        conflicts=conflicts + tag_conflicts,
        notes=notes,
    )


def _normalise(
    images: Mapping[str, Sequence[Sighting]],
) -> tuple[dict[Reference, list[Sighting]], list[Skipped]]:
    """Images as `docker pull` reads them, spellings of one image folded together."""
    found: dict[Reference, list[Sighting]] = {}
    skipped: list[Skipped] = []
    for image in sorted(images):
        seen = list(images[image])
        if not image:
            skipped.append(Skipped(image, "the container names no image", tuple(seen)))
            continue
        try:
            reference = normalize(image)
        except InvalidReference as exc:
            skipped.append(Skipped(image, f"not a valid image reference: {exc}", tuple(seen)))
            continue
        found.setdefault(reference, []).extend(seen)
    # `repo@sha256:x` is copied anyway by `repo:tag@sha256:x`, which also writes the tag.
    # `str | None`: the lookup below passes a digest that its list's filter made a str, which
    # mypy does not carry out of the comprehension.
    tagged_pins: dict[tuple[str, str | None], Reference] = {
        (r.name, r.digest): r for r in sorted(found, key=str, reverse=True) if r.digest and r.tag}
    for reference in [r for r in found if r.digest and not r.tag]:
        tagged = tagged_pins.get((reference.name, reference.digest))
        if tagged is not None:
            found[tagged].extend(found.pop(reference))
    return found, skipped


def _leave_out(
    found: dict[Reference, list[Sighting]], repo: str, include_old_revisions: bool
) -> list[Skipped]:
    """Take out (and report) the images that get no rule. Changes `found`."""
    skipped = []
    for reference in sorted(found, key=str):
        seen = tuple(found[reference])
        if _in_repo(reference, repo):
            reason = f"already in the target {repo}"
        elif not include_old_revisions and all(s.old_revision for s in seen):
            reason = ("only in past revisions of a Deployment (ReplicaSets scaled to 0): "
                      "--include-old-revisions copies them too")
        else:
            continue
        skipped.append(Skipped(str(reference), reason, seen))
        del found[reference]
    return skipped


def _claim_repositories(
    found: Mapping[Reference, list[Sighting]], repo: str, keep_namespace: bool,
    existing_rules: Sequence[Rule],
) -> tuple[dict[str, str], list[Conflict], list[Skipped]]:
    """Source repository → target repository, one source per target: the existing file's
    rules first, then the sources in sorted order. Returns (targets, conflicts, skipped)."""
    claims: dict[str, str] = {}
    for rule in existing_rules:
        claims.setdefault(rule.target.name, rule.source.name)
    by_name: dict[str, list[Reference]] = {}
    for reference in sorted(found, key=str):
        by_name.setdefault(reference.name, []).append(reference)
    targets: dict[str, str] = {}
    skipped: list[Skipped] = []
    dropped: dict[tuple[str, str], list[str]] = {}
    where: dict[tuple[str, str], list[Sighting]] = {}
    for name, references in sorted(by_name.items()):
        try:
            target = target_repository(references[0], repo, keep_namespace=keep_namespace)
        except InvalidReference as exc:
            skipped += [Skipped(str(r), f"no valid target name: {exc}", tuple(found[r]))
                        for r in references]
            continue
        owner = claims.setdefault(target, name)
        if owner == name:
            targets[name] = target
            continue
        dropped.setdefault((target, owner), []).append(name)
        for reference in references:
            where.setdefault((target, owner), []).extend(found[reference])
    conflicts = [Conflict(target, owner, tuple(names), tuple(where[(target, owner)]))
                 for (target, owner), names in sorted(dropped.items())]
    return targets, conflicts, skipped


def _claim_tags(
    found: Mapping[Reference, list[Sighting]], targets: Mapping[str, str],
    existing: Mapping[str, Any], existing_rules: Sequence[Rule],
) -> tuple[dict[str, str], int, list[str], list[Conflict]]:
    """One rule per image; a target tag written from one source only, as the rules loader
    demands. Returns (added rules, images the existing file covers, notes, conflicts)."""
    writes: dict[str, str] = {}  # target tag -> the source that writes it
    for rule in existing_rules:
        if not rule.needs_tag_list:
            for job in rule.jobs():
                if job.target.tag:
                    writes.setdefault(f"{job.target.name}:{job.target.tag}", str(job.source))
    added: dict[str, str] = {}
    notes: list[str] = []
    conflicts: list[Conflict] = []
    present = 0
    # Unpinned tags first: `nginx:1.25` keeps the tag; a pinned `nginx:1.25@sha256:…` seen too
    # is then copied by digest only, so neither overwrites the other.
    ordered = sorted((r for r in found if r.name in targets),
                     key=lambda r: (r.digest is not None, str(r)))
    for reference in ordered:
        source = str(reference)
        target_name = targets[reference.name]
        if source in existing:
            present += 1
            continue
        if reference.tag is None:  # pinned by digest alone: pushed by digest, writes no tag
            added[source] = target_name
            continue
        target = f"{target_name}:{reference.tag}"
        writer = writes.get(target)
        if writer == source or (reference.digest is None
                                and _covered_by(existing_rules, reference, target_name)):
            present += 1  # the existing file copies it already
        elif writer is None:
            writes[target] = source
            added[source] = target
        elif reference.digest is not None:
            # Written without its tag: a target without a tag would keep the source's tag.
            added[f"{reference.name}@{reference.digest}"] = target_name
            notes.append(f"{source}: {target} is written from {writer}, so this pinned image "
                         f"is copied by digest only ({target_name}@{reference.digest})")
        else:
            conflicts.append(Conflict(target, writer, (source,), tuple(found[reference])))
    return added, present, notes, conflicts


# -- the file ----------------------------------------------------------------------------------


def is_yaml(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in (".yaml", ".yml")


def render(rules: Mapping[str, Any], *, as_yaml: bool) -> str:
    """The images file: keys sorted, 2-space indent, trailing newline."""
    if as_yaml:
        import yaml  # PyYAML loads only when a YAML file is written

        return yaml.safe_dump(dict(rules), sort_keys=True, default_flow_style=False, indent=2,
                              allow_unicode=True, width=1 << 16)
    return json.dumps(rules, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def write_file(path: str, text: str, *, replace: bool) -> None:
    """Write `text` to `path`. Without `replace`, an existing file is never touched (even one
    created while the cluster was scanned); with it, the file is swapped in atomically."""
    if not replace:
        try:
            with open(path, "x", encoding="utf-8") as handle:
                handle.write(text)
        except FileExistsError:
            raise ConfigError(f"{path}: the file appeared while the cluster was read: "
                              "pass --force to overwrite it or --merge to add to it") from None
        return
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".images-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def load_existing(
    path: str, *, repo: str, environ: Mapping[str, str]
) -> tuple[dict[str, Any], list[Rule]]:
    """The file `--merge` adds to, validated as `migrator sync` would read it."""
    document = load_document(path, required=False)
    if document.problems:
        raise ConfigError(document.problems)
    if not document.found:
        return {}, []
    registry, namespace = _defaults(repo, environ)
    rules = parse_rules(document.data, filename=path, default_registry=registry,
                        default_namespace=namespace)
    assert isinstance(document.data, Mapping)
    return dict(document.data), rules


def _defaults(repo: str, environ: Mapping[str, str]) -> tuple[str, str]:
    """Defaults for empty targets: DEFAULT_REGISTRY/DEFAULT_NAMESPACE, else the --repo."""
    registry, namespace = resolve_defaults(None, None, environ)
    repo_registry, _, repo_namespace = repo.partition("/")
    return registry or repo_registry, namespace or repo_namespace


def check_loadable(rules: Mapping[str, Any], filename: str, repo: str,
                   environ: Mapping[str, str]) -> None:
    """The file written must be one `migrator sync` accepts: check it with the same loader."""
    registry, namespace = _defaults(repo, environ)
    try:
        parse_rules(rules, filename=filename, default_registry=registry,
                    default_namespace=namespace)
    except ConfigError as exc:
        raise ConfigError([f"the rules made from the cluster do not load (a bug, please report "
                           f"it): {problem}" for problem in exc.problems]) from None



def _where(seen: Sequence[Sighting]) -> str:
    if not seen:
        return ""
    more = f" and {len(seen) - 1} more" if len(seen) > 1 else ""
    return f" (in {seen[0]}{more})"


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def summarize(
    result: ScanResult, outcome: Plan, *, namespaces_given: bool, merging: bool = False
) -> list[str]:
    """The report for stderr: what was scanned and found, and every image left out and why."""
    lines = []
    scanned = plural(len(result.namespaces), "namespace")
    if namespaces_given:
        scanned += f" ({', '.join(result.namespaces)})"
    kinds = ", ".join(f"{result.workloads[r.kind]} {r.kind}" for r in WORKLOADS)
    lines.append(f"scanned {scanned}: {plural(sum(result.workloads.values()), 'workload')} "
                 f"({kinds})")
    counts = [plural(len(outcome.added), "new rule")]
    if merging:
        counts.append(f"{outcome.present} already in the file")
    counts += [plural(len(outcome.conflicts), "conflict"), f"{len(outcome.skipped)} skipped"]
    lines.append(f"found {plural(outcome.images, 'image')}: {', '.join(counts)}")
    for resource in result.unserved:
        lines.append(f"note: the API server does not serve {resource.qualified}: none read")
    for item in outcome.skipped:
        lines.append(f"skipped {quote(item.image)}{_where(item.seen)}: {item.reason}")
    for conflict in outcome.conflicts:
        lines.append(
            f"conflict: {', '.join(conflict.dropped)}{_where(conflict.seen)} would also go to "
            f"{conflict.target}, which {conflict.kept} takes: left out; --keep-namespace keeps "
            "each source's namespace in the target name")
    lines.extend(f"note: {note}" for note in outcome.notes)
    return lines
