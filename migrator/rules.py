"""The images file: rules that map a source image to one or more targets.

The format is image-syncer's / image-migrator's `images.json` (or YAML): an object whose keys
are sources and whose values are targets. `docs/rules.md` describes it for users. Everything is
validated before any work starts: every problem of the file is collected, one line each naming
the file and the entry, and raised together as one `ConfigError`.

Beyond the peers: a value may be a mapping, the target plus tag filters (`migrator/filters.py`),
and a source `registry/namespace/*` (opted in with `--allow-catalog` or `catalog: true`) names
every repository the registry's catalog lists, each then copied like an all-tags rule.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from migrator.documents import (
    SCHEME,
    describe_type,
    duplicate_keys,
    duplicate_problem,
    load_document,
    quote,
)
from migrator.errors import ConfigError, InvalidReference
from migrator.filters import NO_FILTERS, TagFilters
from migrator.reference import (
    DOCKER_HUB,
    TAG,
    Reference,
    check_characters,
    check_digest,
    check_registry,
    check_repository,
    check_tag,
    check_userinfo,
    looks_like_host,
    parse_platforms,
    split,
    split_name,
)


@dataclass(frozen=True, slots=True)  # slots: one per tag, kept for the whole run
class Job:
    """One copy: a source image (tag, or digest when pinned) to a target image."""

    source: Reference
    # With a tag; with neither tag nor digest only when the source is pinned by digest and the
    # target names no tag: the manifest is then pushed by digest.
    target: Reference
    rule: str  # origin of the job, e.g. "images.json: 'quay.io/coreos/etcd'"
    platforms: frozenset[str] = frozenset()  # the rule's platform filter (empty: every one)
    # regex (full match) of the rule's tags that never change once synced
    immutable_tags: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.source} -> {self.target}"


@dataclass(frozen=True)
class Rule:
    """One (source, target) pair of the images file, validated."""

    origin: str  # "images.json: '<source key>'"
    # registry + repository; digest set when pinned. The tag is None, except for a source
    # written `repo:tag@digest`: the digest is copied and the tag is the default target tag.
    # For a catalog rule: registry + the namespace listed ("" for the whole registry).
    source: Reference
    tags: tuple[str, ...]  # explicit tags; () when all tags, a regex or a digest
    tag_pattern: str | None  # regex (full match) when the source is `repo:/regex/`
    target: Reference  # tag None: keep the source tag. Catalog rule: the target namespace.
    filters: TagFilters = NO_FILTERS  # include/exclude/semver/newest, on the tag list
    catalog: bool = False  # `registry/namespace/*`: every repository the registry lists
    platforms: frozenset[str] = frozenset()  # copy only these platforms of an index
    immutable_tags: str | None = None  # regex (full match) of tags that never change

    @property
    def needs_tag_list(self) -> bool:
        """True when the jobs depend on the source's tag list (all tags, or a regex)."""
        return not self.tags and self.source.digest is None

    @property
    def catalog_source(self) -> str:
        """A catalog rule's source as written: `registry/namespace/*` or `registry/*`."""
        return "/".join(part for part in (self.source.registry, self.source.repository, "*")
                        if part)

    def repositories(self, listed: Sequence[str]) -> list[Rule]:
        """A catalog rule as one all-tags rule per repository the registry listed below its
        namespace: `<target namespace>/<path below the source namespace>`."""
        if not self.catalog:
            raise ValueError(f"{self.origin}: not a catalog rule")
        prefix = f"{self.source.repository}/" if self.source.repository else ""
        rules: list[Rule] = []
        for repository in dict.fromkeys(listed):
            if not repository.startswith(prefix) or repository == prefix:
                continue
            target = f"{self.target.repository}/{repository[len(prefix):]}"
            try:  # a name outside the grammar (or too long below the target) cannot be copied
                check_repository(repository)
                check_repository(target)
            except InvalidReference:
                continue
            rules.append(replace(
                self, origin=f"{self.origin} ({self.source.registry}/{repository})",
                source=Reference(self.source.registry, repository),
                target=Reference(self.target.registry, target), catalog=False))
        return rules

    def jobs(self, available_tags: Sequence[str] | None = None) -> list[Job]:
        """The copies of this rule; `available_tags` (the source's tag list, in its order) is
        required when `needs_tag_list`, ignored otherwise."""
        if self.catalog:
            raise ValueError(f"{self.origin}: list the repositories first (`repositories`)")
        if self.source.digest is not None:
            target = self.target if self.target.tag else self.target.with_tag(self.source.tag)
            return [Job(self.source, target, self.origin, self.platforms, self.immutable_tags)]
        if self.tags:
            return [
                Job(
                    self.source.with_tag(tag),
                    self.target.with_tag(self.target.tag or tag),
                    self.origin,
                    self.platforms,
                    self.immutable_tags,
                )
                for tag in self.tags
            ]
        if available_tags is None:
            raise ValueError(f"{self.origin}: the rule needs the source's tag list")
        pattern = re.compile(self.tag_pattern) if self.tag_pattern is not None else None
        tags: list[str] = []
        seen: set[str] = set()
        for tag in available_tags:
            # A tag outside the grammar could not be pushed anywhere (and must not reach a URL).
            if tag in seen or not TAG.fullmatch(tag):
                continue
            if pattern is not None and not pattern.fullmatch(tag):
                continue
            seen.add(tag)
            tags.append(tag)
        if self.filters:
            tags = self.filters.select(tags)
        return [Job(self.source.with_tag(tag), self.target.with_tag(tag), self.origin,
                    self.platforms, self.immutable_tags)
                for tag in tags]


class _Bad(Exception):
    """One problem of one entry (the caller adds the file and entry)."""


@dataclass(frozen=True)
class _Source:
    registry: str
    repository: str
    tags: tuple[str, ...]
    digest: str | None
    pattern: str | None
    catalog: bool = False  # `registry/namespace/*`: `repository` is the namespace, maybe ""

    @property
    def last_component(self) -> str:
        return self.repository.rsplit("/", 1)[-1]


def _check_name(
    name: str, *, what: str, hint: str | None = None, catalog_hint: bool = False
) -> tuple[str, str]:
    """A name read as `docker pull` reads it → (registry, repository); rule 1's message for a
    name that is only a registry."""
    try:
        check_characters(name)  # first: a look-alike '／' would make the hints below wrong
    except InvalidReference as exc:
        raise _Bad(str(exc)) from None
    if "/" not in name and looks_like_host(name):
        # Docker would read `quay.io` as docker.io/library/quay.io; nobody means that.
        if what == "source":
            message = ("the source names a whole registry: a rule cannot copy a whole namespace "
                       "or registry, only one repository: write registry/repository")
            if catalog_hint:  # the user opted in to catalogs: show the form they need
                message += f", or {name}/* for every repository the registry lists"
        else:
            message = "the target names a whole registry, not a repository"
            message += f": write {hint}" if hint else ": write registry/repository"
        raise _Bad(message)
    try:
        return split_name(name)
    except InvalidReference as exc:
        raise _Bad(str(exc)) from None


def _check_userinfo(text: str) -> None:
    try:
        check_userinfo(text)
    except InvalidReference as exc:
        raise _Bad(str(exc)) from None


def _parse_tags(tagpart: str) -> tuple[str, ...]:
    items = [item.strip() for item in tagpart.split(",")]
    if any(not item for item in items):
        raise _Bad(f"empty tag in {quote(tagpart)}" if "," in tagpart else "empty tag after ':'")
    try:
        for item in items:
            check_tag(item)
    except InvalidReference as exc:
        raise _Bad(str(exc)) from None
    return tuple(dict.fromkeys(items))  # duplicates folded, order kept


def _check_catalog_name(name: str) -> tuple[str, str]:
    """`registry/ns/*` → (registry, "ns"); `registry/*` → (registry, ""); `ns/*` → (docker.io,
    "ns"), the first component read as `docker pull` reads it."""
    base = name[:-2] if name.endswith("/*") else name
    try:
        check_characters(name)
    except InvalidReference as exc:
        raise _Bad(str(exc)) from None
    if "*" in base or not name.endswith("/*"):
        raise _Bad("'*' stands for every repository only as the last path component: "
                   "registry/namespace/* or registry/*")
    parts = base.split("/")
    if any(not part for part in parts) or any(ch.isspace() for ch in base):
        raise _Bad(f"{quote(name)}: expected registry/namespace/* or registry/*")
    return _registry_and_path(parts)


def _registry_and_path(parts: list[str]) -> tuple[str, str]:
    """A namespace's components → (registry, namespace): the first is the registry when it
    looks like a host, else the namespace is on Docker Hub."""
    try:
        if looks_like_host(parts[0]):
            registry, path = check_registry(parts[0]), "/".join(parts[1:])
        else:
            registry, path = DOCKER_HUB, "/".join(parts)
        return registry, check_repository(path) if path else ""
    except InvalidReference as exc:
        raise _Bad(str(exc)) from None


def _parse_source(text: str, *, catalog_hint: bool = False) -> tuple[_Source, str | None]:
    """The source key → (source, tag written before a digest)."""
    text = text.strip()
    if not text:
        raise _Bad("the source is empty: every rule needs a source image")
    if SCHEME.match(text):
        raise _Bad("write the source without a scheme such as https://")
    _check_userinfo(text)
    start = text.find(":/")  # `:/` cannot occur in a name (a port is digits), so it opens a regex
    if start != -1:
        if not text.endswith("/") or len(text) < start + 3:
            raise _Bad("a tag regex is written between slashes: registry/ns/repository:/regex/")
        name, pattern = text[:start], text[start + 2 : -1]
        catalog = "*" in name
        if catalog:
            registry, repository = _check_catalog_name(name)
        else:
            registry, repository = _check_name(name, what="source", catalog_hint=catalog_hint)
        if not pattern:
            raise _Bad("the tag regex is empty")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise _Bad(f"invalid tag regex {quote(pattern)}: {exc}") from None
        return _Source(registry, repository, (), None, pattern, catalog), None
    name, tagpart, digest = split(text)
    if "*" in name:
        registry, repository = _check_catalog_name(name)
        if tagpart is not None or digest is not None:
            raise _Bad("a source with '*' copies every tag of each repository: it names no tag "
                       "or digest (choose tags with /regex/ or include, exclude, semver, newest)")
        return _Source(registry, repository, (), None, None, catalog=True), None
    registry, repository = _check_name(name, what="source", catalog_hint=catalog_hint)
    tags = _parse_tags(tagpart) if tagpart is not None else ()
    if digest is None:
        return _Source(registry, repository, tags, None, None), None
    try:
        check_digest(digest)
    except InvalidReference as exc:
        raise _Bad(str(exc)) from None
    if len(tags) > 1:
        raise _Bad("a source pinned by digest cannot name several tags")
    return _Source(registry, repository, (), digest, None), (tags[0] if tags else None)


def _parse_catalog_target(text: str) -> Reference:
    """The target of a catalog rule: a namespace, `registry/namespace[/*]`."""
    if SCHEME.match(text):
        raise _Bad("write the target without a scheme such as https://")
    _check_userinfo(text)
    name = text[:-2] if text.endswith("/*") else text
    base, tagpart, digest = split(name)
    parts = base.split("/")
    if tagpart is not None or digest is not None or "*" in base or (
            len(parts) < 2 and looks_like_host(base)):
        raise _Bad("the target of a source with '*' is a namespace, where each repository "
                   "found goes under its path below the source namespace: write "
                   "registry/namespace")
    try:
        check_characters(base)
    except InvalidReference as exc:
        raise _Bad(str(exc)) from None
    if any(not part for part in parts):
        raise _Bad(f"{quote(base)} has an empty path component: a '/' at the start or the "
                   "end, or two in a row")
    registry, namespace = _registry_and_path(parts)
    return Reference(registry, namespace)


def _parse_target(text: str, source: _Source | None) -> Reference:
    if SCHEME.match(text):
        raise _Bad("write the target without a scheme such as https://")
    _check_userinfo(text)
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
        except InvalidReference as exc:
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
        except InvalidReference as exc:
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
        except InvalidReference as exc:
            raise _Bad(f"the default target is invalid: {exc}") from None
        assert self.registry is not None
        return Reference(self.registry, repository)

    def namespace_target(self) -> Reference:
        """The empty target of a catalog rule: the default namespace itself."""
        if self.problem is not None:
            raise _Bad(self.problem)
        assert self.registry is not None and self.namespace is not None
        return Reference(self.registry, self.namespace)


def _make_catalog_rule(
    origin: str, source: _Source, target: Reference, filters: TagFilters
) -> Rule:
    """A `registry/namespace/*` rule; its target namespace may not lie within its source."""
    if target.registry == source.registry:
        if target.repository == source.repository:
            raise _Bad("the target is the source itself")
        if not source.repository or target.repository.startswith(source.repository + "/"):
            raise _Bad("the target namespace lies within the source namespace: every run "
                       "would find the copies and copy them again")
    return Rule(origin=origin, source=Reference(source.registry, source.repository), tags=(),
                tag_pattern=source.pattern, target=target, filters=filters, catalog=True)


def catalog_rule(
    origin: str, source: str, target: str, *, pattern: str | None = None,
    filters: TagFilters = NO_FILTERS,
) -> Rule:
    """A catalog rule from its source (`registry/ns/*`) and target namespace, as a fleet task
    carries them; raises ConfigError when they do not parse."""
    try:
        registry, namespace = _check_catalog_name(source)
        parsed = _Source(registry, namespace, (), None, pattern, catalog=True)
        return _make_catalog_rule(origin, parsed, _parse_catalog_target(target), filters)
    except _Bad as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def _make_rule(
    origin: str,
    source: _Source,
    source_tag: str | None,
    target: Reference,
    filters: TagFilters = NO_FILTERS,
) -> Rule:
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
        filters=filters,
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


OPTION_KEYS = ("target", "targets", "include", "exclude", "semver", "newest", "catalog",
               "platforms", "immutable_tags")


@dataclass(frozen=True)
class _Options:
    """A rule written as a mapping: its targets (what a plain value may be) and options."""

    targets: object = None
    filters: TagFilters = NO_FILTERS
    catalog: bool = False
    platforms: frozenset[str] = frozenset()
    immutable_tags: str | None = None


def _patterns(key: str, value: object) -> tuple[tuple[str, ...], list[str]]:
    """An include/exclude list: a string or a list of non-empty strings."""
    if value is None:
        return (), []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        return (), [f"{key}: must be a regex or a list of regexes (strings), "
                    f"not {describe_type(value)}"]
    if key == "include" and not items:
        return (), ["include: the list is empty, so no tag would be kept: drop the key to "
                    "keep every tag"]
    if any(not item for item in items):
        return (), [f"{key}: an empty regex matches every tag"]
    return tuple(items), []


def _read_options(value: Mapping, origin: str) -> tuple[_Options, list[str]]:
    """The keys of a rule written as a mapping; every problem, each naming its key."""
    problems = [duplicate_problem(origin, key, line) for key, line in duplicate_keys(value)]
    for key in value:
        if key not in OPTION_KEYS:
            message = f"{origin}: unknown key {quote(key)}"
            close = difflib.get_close_matches(str(key), OPTION_KEYS, n=1)
            problems.append(message + (f": did you mean {quote(close[0])}?" if close else
                                       f": the keys are {', '.join(OPTION_KEYS)}"))
    if "target" in value and "targets" in value:
        problems.append(f"{origin}: give target or targets, not both")
    targets = value.get("target", value.get("targets"))
    found: list[str] = []
    include, bad = _patterns("include", value.get("include"))
    found += bad
    exclude, bad = _patterns("exclude", value.get("exclude"))
    found += bad
    semver = value.get("semver")
    if semver is not None and not isinstance(semver, str):
        found.append(f"semver: must be a string (quote it), not {describe_type(semver)}")
        semver = None
    newest = value.get("newest")
    if newest is not None and (isinstance(newest, bool) or not isinstance(newest, int)):
        found.append(f"newest: must be a whole number, not {describe_type(newest)}")
        newest = None
    catalog = value.get("catalog", False)
    if not isinstance(catalog, bool):
        found.append(f"catalog: must be true or false, not {describe_type(catalog)}")
        catalog = False
    platforms: frozenset[str] = frozenset()
    if value.get("platforms") is not None:
        written = value["platforms"]
        if isinstance(written, str) or (isinstance(written, list)
                                        and all(isinstance(item, str) for item in written)):
            try:
                platforms = parse_platforms(written)
            except InvalidReference as exc:
                found.append(f"platforms: {exc}")
        else:
            found.append("platforms: must be a list of os/architecture[/variant] strings, "
                         f"not {describe_type(written)}")
    immutable = value.get("immutable_tags")
    if immutable is not None:
        problem = regex_problem("immutable_tags", immutable)
        if problem:
            found.append(problem)
            immutable = None
    filters = TagFilters(include, exclude, semver, newest)
    found += filters.problems()
    problems += [f"{origin}: {problem}" for problem in found]
    return _Options(targets, filters, catalog, platforms, immutable), problems


def regex_problem(key: str, value: object) -> str | None:
    """What is wrong with a regex option (None: nothing), in the words of a rule problem."""
    if not isinstance(value, str) or not value:
        return f"{key}: must be a regex (a non-empty string), not {describe_type(value)}"
    try:
        re.compile(value)
    except re.error as exc:
        return f"{key}: not a valid regex: {exc}"
    return None


def _parse(
    data: object,
    *,
    filename: str,
    default_registry: str | None,
    default_namespace: str | None,
    allow_catalog: bool = False,
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
        options = _Options(targets=value)
        if isinstance(value, Mapping):
            options, found = _read_options(value, origin)
            problems.extend(found)
            value = options.targets
        opted_in = allow_catalog or options.catalog
        source: _Source | None = None
        source_tag: str | None = None
        usable = True  # False: the source parsed, but its rules must not be built
        try:
            source, source_tag = _parse_source(key, catalog_hint=opted_in)
        except _Bad as exc:
            problems.append(f"{origin}: {exc}")
        if source is not None and source.catalog and not opted_in:
            unit = "namespace" if source.repository else "registry"
            problems.append(
                f"{origin}: the source names every repository of a {unit}: a rule cannot copy "
                "a whole namespace or registry unless asked to: pass --allow-catalog, or write "
                "the rule as a mapping with catalog: true (the registry must offer its catalog)")
            usable = False
        if source is not None and options.catalog and not source.catalog:
            problems.append(f"{origin}: catalog: true needs a source ending in '/*': "
                            "registry/namespace/* or registry/*")
            usable = False
        if source is not None and options.filters and (source.tags or source.digest):
            problems.append(
                f"{origin}: tag filters (include, exclude, semver, newest) choose among the "
                "source's tags: give them a source without tags (every tag, /regex/ or *)")
            usable = False
        as_catalog = source.catalog if source is not None else ("*" in key or options.catalog)
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
        first_rule = len(rules)
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
                if as_catalog:
                    target = _parse_catalog_target(text) if text else defaults.namespace_target()
                    if source is not None and usable:
                        rules.append(_make_catalog_rule(origin, source, target, options.filters))
                    continue
                if text:
                    target = _parse_target(text, source)
                elif source is None:
                    if defaults.problem is not None:
                        raise _Bad(defaults.problem)
                    continue
                else:
                    target = defaults.target(source)
                if source is not None and usable:
                    rules.append(_make_rule(origin, source, source_tag, target, options.filters))
            except _Bad as exc:
                problems.append(f"{origin}: target {quote(item or '')}: {exc}")
        if options.platforms or options.immutable_tags:
            rules[first_rule:] = [replace(rule, platforms=options.platforms,
                                          immutable_tags=options.immutable_tags)
                                  for rule in rules[first_rule:]]
    problems.extend(_conflicts(rules, filename))
    return rules, problems


def parse_rules(
    data: object,
    *,
    filename: str,
    default_registry: str | None,
    default_namespace: str | None,
    allow_catalog: bool = False,
) -> list[Rule]:
    """Validate already-loaded images data; raise one ConfigError listing every problem.

    `allow_catalog` (`--allow-catalog`) lets every `registry/namespace/*` source be listed
    through the registry's catalog; without it only rules that say `catalog: true` may.
    """
    rules, problems = _parse(
        data,
        filename=filename,
        default_registry=default_registry,
        default_namespace=default_namespace,
        allow_catalog=allow_catalog,
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
    allow_catalog: bool = False,
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
        allow_catalog=allow_catalog,
    )
