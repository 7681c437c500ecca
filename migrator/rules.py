"""The images file: rules that map a source image to one or more targets.

The format is image-syncer's / image-migrator's `images.json` (or YAML): an object whose keys
are sources and whose values are targets. `docs/rules.md` describes it for users. Everything is
validated before any work starts: every problem of the file is collected, one line each naming
the file and the entry, and raised together as one `ConfigError`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from migrator.documents import (
    SCHEME,
    describe_type,
    duplicate_keys,
    duplicate_problem,
    load_document,
    quote,
)
from migrator.errors import ConfigError
from migrator.reference import (
    DOCKER_HUB,
    DOCKER_HUB_ALIASES,
    TAG,
    Reference,
    ReferenceError,
    check_digest,
    check_registry,
    check_repository,
    check_tag,
    split,
    split_name,
)


@dataclass(frozen=True)
class Job:
    """One copy: a source image (tag, or digest when pinned) to a target image."""

    source: Reference
    # With a tag; with neither tag nor digest only when the source is pinned by digest and the
    # target names no tag: the manifest is then pushed by digest.
    target: Reference
    rule: str  # origin of the job, e.g. "images.json: 'quay.io/coreos/etcd'"

    def __str__(self) -> str:
        return f"{self.source} -> {self.target}"


@dataclass(frozen=True)
class Rule:
    """One (source, target) pair of the images file, validated."""

    origin: str  # "images.json: '<source key>'"
    # registry + repository; digest set when pinned. The tag is None, except for a source
    # written `repo:tag@digest`: the digest is copied and the tag is the default target tag.
    source: Reference
    tags: tuple[str, ...]  # explicit tags; () when all tags, a regex or a digest
    tag_pattern: str | None  # regex (full match) when the source is `repo:/regex/`
    target: Reference  # tag None: keep the source tag

    @property
    def needs_tag_list(self) -> bool:
        """True when the jobs depend on the source's tag list (all tags, or a regex)."""
        return not self.tags and self.source.digest is None

    def jobs(self, available_tags: Sequence[str] | None = None) -> list[Job]:
        """The copies of this rule; `available_tags` (the source's tag list, in its order) is
        required when `needs_tag_list`, ignored otherwise."""
        if self.source.digest is not None:
            target = self.target if self.target.tag else self.target.with_tag(self.source.tag)
            return [Job(self.source, target, self.origin)]
        if self.tags:
            return [
                Job(
                    self.source.with_tag(tag),
                    self.target.with_tag(self.target.tag or tag),
                    self.origin,
                )
                for tag in self.tags
            ]
        if available_tags is None:
            raise ValueError(f"{self.origin}: the rule needs the source's tag list")
        pattern = re.compile(self.tag_pattern) if self.tag_pattern is not None else None
        jobs: list[Job] = []
        seen: set[str] = set()
        for tag in available_tags:
            # A tag outside the grammar could not be pushed anywhere (and must not reach a URL).
            if tag in seen or not TAG.fullmatch(tag):
                continue
            if pattern is not None and not pattern.fullmatch(tag):
                continue
            seen.add(tag)
            jobs.append(Job(self.source.with_tag(tag), self.target.with_tag(tag), self.origin))
        return jobs


class _Bad(Exception):
    """One problem of one entry (the caller adds the file and entry)."""


@dataclass(frozen=True)
class _Source:
    registry: str
    repository: str
    tags: tuple[str, ...]
    digest: str | None
    pattern: str | None

    @property
    def last_component(self) -> str:
        return self.repository.rsplit("/", 1)[-1]


def _looks_like_host(text: str) -> bool:
    return "." in text or ":" in text or text == "localhost"


def _check_name(name: str, *, what: str, hint: str | None = None) -> tuple[str, str]:
    """`registry/ns/.../repo` → (registry, repository); rules 1 and 3 with helpful messages."""
    parts = name.split("/")
    if len(parts) < 3 and all(parts) and not any(ch.isspace() for ch in name):
        if _looks_like_host(parts[0]):
            unit = "registry" if len(parts) == 1 else "namespace"
            if what == "source":
                message = (
                    f"the source names a whole {unit}: a rule cannot copy a whole namespace or "
                    "registry, only one repository: write registry/namespace/repository"
                )
            else:
                message = f"the target names a whole {unit}, not a repository"
                message += f": write {hint}" if hint else ": write registry/namespace/repository"
            if parts[0] in (DOCKER_HUB, *DOCKER_HUB_ALIASES) and len(parts) == 2:
                message += f" (for an official image: docker.io/library/{parts[1]})"
            raise _Bad(message)
        example = "docker.io/library/" + parts[-1] if len(parts) == 1 else "docker.io/" + name
        raise _Bad(
            f"the {what} must contain at least registry/namespace/repository: the first "
            f"component is always the registry (for Docker Hub write {example})"
        )
    try:
        return split_name(name)
    except ReferenceError as exc:
        raise _Bad(str(exc)) from None


def _parse_tags(tagpart: str) -> tuple[str, ...]:
    items = [item.strip() for item in tagpart.split(",")]
    if any(not item for item in items):
        raise _Bad(f"empty tag in {quote(tagpart)}" if "," in tagpart else "empty tag after ':'")
    try:
        for item in items:
            check_tag(item)
    except ReferenceError as exc:
        raise _Bad(str(exc)) from None
    return tuple(dict.fromkeys(items))  # duplicates folded, order kept


def _parse_source(text: str) -> tuple[_Source, str | None]:
    """The source key → (source, tag written before a digest)."""
    text = text.strip()
    if not text:
        raise _Bad("the source is empty: every rule needs a source image")
    if SCHEME.match(text):
        raise _Bad("write the source without a scheme such as https://")
    start = text.find(":/")  # `:/` cannot occur in a name (a port is digits), so it opens a regex
    if start != -1:
        if not text.endswith("/") or len(text) < start + 3:
            raise _Bad("a tag regex is written between slashes: registry/ns/repository:/regex/")
        name, pattern = text[:start], text[start + 2 : -1]
        registry, repository = _check_name(name, what="source")
        if not pattern:
            raise _Bad("the tag regex is empty")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise _Bad(f"invalid tag regex {quote(pattern)}: {exc}") from None
        return _Source(registry, repository, (), None, pattern), None
    name, tagpart, digest = split(text)
    registry, repository = _check_name(name, what="source")
    tags = _parse_tags(tagpart) if tagpart is not None else ()
    if digest is None:
        return _Source(registry, repository, tags, None, None), None
    try:
        check_digest(digest)
    except ReferenceError as exc:
        raise _Bad(str(exc)) from None
    if len(tags) > 1:
        raise _Bad("a source pinned by digest cannot name several tags")
    return _Source(registry, repository, (), digest, None), (tags[0] if tags else None)


def _parse_target(text: str, source: _Source | None) -> Reference:
    if SCHEME.match(text):
        raise _Bad("write the target without a scheme such as https://")
    if ":/" in text:
        raise _Bad("a target cannot hold a tag regex: only a source filters tags")
    name, tagpart, digest = split(text)
    hint = f"{name}/{source.last_component}" if source else None
    registry, repository = _check_name(name, what="target", hint=hint)
    tag = None
    if tagpart is not None:
        if "," in tagpart:
            raise _Bad("a target names at most one tag")
        tag = _parse_tags(tagpart)[0]
    if digest is not None:
        try:
            check_digest(digest)
        except ReferenceError as exc:
            raise _Bad(str(exc)) from None
        # image-syncer accepts a target digest equal to the source's: nothing to do with it.
        if source is None or digest != source.digest:
            raise _Bad(
                "a target cannot name a digest: pin the source instead (a pinned image is "
                "pushed by digest when the target names no tag)"
            )
    return Reference(registry, repository, tag)


def resolve_defaults(
    registry_flag: str | None, namespace_flag: str | None, environ: Mapping[str, str]
) -> tuple[str | None, str | None]:
    """Defaults for empty targets (rule 8): `--registry`/`--namespace` win over
    `DEFAULT_REGISTRY`/`DEFAULT_NAMESPACE`. Empty values count as unset."""

    def pick(flag: str | None, variable: str) -> str | None:
        for value in (flag, environ.get(variable)):
            if value is not None and value.strip():
                return value.strip()
        return None

    return pick(registry_flag, "DEFAULT_REGISTRY"), pick(namespace_flag, "DEFAULT_NAMESPACE")


class _Defaults:
    """The default registry/namespace for empty targets, checked once, reported per entry."""

    def __init__(self, registry: str | None, namespace: str | None) -> None:
        self.registry = self.namespace = None
        self.problem: str | None = None
        missing = [
            what for what, value in (("registry", registry), ("namespace", namespace)) if not value
        ]
        if missing:
            flags = " and ".join(f"--{what}" for what in missing)
            variables = " and ".join(f"DEFAULT_{what.upper()}" for what in missing)
            are = "are" if len(missing) == 2 else "is"
            self.problem = (
                f"the target is empty and no default {' and '.join(missing)} {are} set: "
                f"pass {flags} or set {variables}"
            )
            return
        assert registry is not None and namespace is not None
        try:
            self.registry = check_registry(registry, what="default registry")
            self.namespace = check_repository(namespace.strip("/"))
        except ReferenceError as exc:
            self.problem = (
                f"the target is empty and the default registry/namespace is invalid: {exc} "
                "(from --registry/--namespace or DEFAULT_REGISTRY/DEFAULT_NAMESPACE)"
            )

    def target(self, source: _Source) -> Reference:
        if self.problem is not None:
            raise _Bad(self.problem)
        repository = f"{self.namespace}/{source.last_component}"
        try:
            check_repository(repository)
        except ReferenceError as exc:
            raise _Bad(f"the default target is invalid: {exc}") from None
        assert self.registry is not None
        return Reference(self.registry, repository)


def _make_rule(origin: str, source: _Source, source_tag: str | None, target: Reference) -> Rule:
    """Check the source/target pair (rules 6 and 7) and build the rule."""
    if target.tag is not None and source.digest is None:
        if source.pattern is not None:
            raise _Bad(
                "the target names a tag but the source names a tag regex: every matching tag "
                "is copied under its own name, so drop the target tag"
            )
        if not source.tags:
            raise _Bad(
                "the target names a tag but the source names none: a source without a tag "
                "copies every tag under its own name, so drop the target tag"
            )
        if len(source.tags) > 1:
            raise _Bad(
                "the target names a tag but the source names several: each tag is copied "
                "under its own name, so drop the target tag"
            )
    rule = Rule(
        origin=origin,
        source=Reference(source.registry, source.repository, source_tag, source.digest),
        tags=source.tags,
        tag_pattern=source.pattern,
        target=target,
    )
    if rule.source.name == rule.target.name:
        # Re-tagging inside one repository is fine; writing an image onto itself is not.
        onto_itself = rule.needs_tag_list or any(
            job.source.tag == job.target.tag
            and (job.source.digest is None or job.source.tag is None)
            for job in rule.jobs()
        )
        if onto_itself:
            raise _Bad("the target is the source itself")
    return rule


def _static_writes(rule: Rule) -> Iterator[tuple[str, str]]:
    """(source, target) of the jobs whose target tag is known now; like `jobs()`, but cheap."""
    if rule.source.digest is not None:
        tag = rule.target.tag or rule.source.tag
        if tag:
            yield str(rule.source), f"{rule.target.name}:{tag}"
        return
    for tag in rule.tags:
        yield f"{rule.source.name}:{tag}", f"{rule.target.name}:{rule.target.tag or tag}"


def _conflicts(rules: list[Rule], filename: str) -> list[str]:
    """Two rules writing the same target tag from different sources, when known statically."""
    writers: dict[str, tuple[Rule, str]] = {}
    reported: set[tuple[str, str]] = set()
    problems = []
    for rule in rules:
        for source, target in _static_writes(rule):
            if target not in writers:
                writers[target] = (rule, source)
                continue
            other, other_source = writers[target]
            pair = (other.origin, rule.origin)
            if other_source != source and pair not in reported and other.origin != rule.origin:
                reported.add(pair)
                other_key = other.origin[len(filename) + 2 :]
                problems.append(
                    f"{rule.origin}: writes {target} from {source}, but {other_key} writes it "
                    f"from {other_source}"
                )
    return problems


def _parse(
    data: object, *, filename: str, default_registry: str | None, default_namespace: str | None
) -> tuple[list[Rule], list[str]]:
    if data is None:
        return [], [f"{filename}: no rules: the file is empty"]
    if not isinstance(data, Mapping):
        return [], [
            f"{filename}: the top level must be a mapping of source image to target, "
            f"not {describe_type(data)}"
        ]
    if not data:
        return [], [f"{filename}: no rules: the mapping is empty"]
    problems = [duplicate_problem(filename, key, line) for key, line in duplicate_keys(data)]
    defaults = _Defaults(default_registry, default_namespace)
    rules: list[Rule] = []
    for key, value in data.items():
        origin = f"{filename}: {quote(key)}"
        if not isinstance(key, str):
            problems.append(f"{origin}: the source must be a string, not {describe_type(key)}")
            continue
        source: _Source | None = None
        source_tag: str | None = None
        try:
            source, source_tag = _parse_source(key)
        except _Bad as exc:
            problems.append(f"{origin}: {exc}")
        if isinstance(value, list):
            if not value:
                problems.append(f"{origin}: the list of targets is empty")
            targets = value
        elif value is None or isinstance(value, str):
            targets = [value]
        else:
            problems.append(
                f"{origin}: the target must be a string, null or a list of strings, "
                f"not {describe_type(value)}"
            )
            continue
        seen: set[str] = set()
        for item in targets:
            if item is not None and not isinstance(item, str):
                problems.append(
                    f"{origin}: each target in the list must be a string, not {describe_type(item)}"
                )
                continue
            text = (item or "").strip()
            if text in seen:
                continue  # the same target twice in a list: one copy is enough
            seen.add(text)
            try:
                if text:
                    target = _parse_target(text, source)
                elif source is None:
                    if defaults.problem is not None:
                        raise _Bad(defaults.problem)
                    continue
                else:
                    target = defaults.target(source)
                if source is not None:
                    rules.append(_make_rule(origin, source, source_tag, target))
            except _Bad as exc:
                problems.append(f"{origin}: target {quote(item or '')}: {exc}")
    problems.extend(_conflicts(rules, filename))
    return rules, problems


def parse_rules(
    data: object, *, filename: str, default_registry: str | None, default_namespace: str | None
) -> list[Rule]:
    """Validate already-loaded images data; raise one ConfigError listing every problem."""
    rules, problems = _parse(
        data,
        filename=filename,
        default_registry=default_registry,
        default_namespace=default_namespace,
    )
    if problems:
        raise ConfigError(problems)
    return rules


def load_rules(
    path: str | os.PathLike[str],
    *,
    default_registry: str | None,
    default_namespace: str | None,
    required: bool = True,
) -> list[Rule]:
    """Read and validate an images file (JSON or YAML). A missing optional file gives []."""
    document = load_document(path, required=required)
    if document.problems:
        raise ConfigError(document.problems)
    if not document.found:
        return []
    return parse_rules(
        document.data,
        filename=os.fspath(path),
        default_registry=default_registry,
        default_namespace=default_namespace,
    )
