"""Tag filters of a rule: regular-expression allow and deny lists, a semver range, the newest N.

Versions are read with `packaging` rather than the `semver` package: container tags are seldom
strict SemVer 2.0 (`v1.2.3`, `1.10`, `3.19`, `1.2.3-rc.1` all occur). `semver` accepts only
`MAJOR.MINOR.PATCH` without a `v` and has no multi-clause ranges; `packaging` reads every one
of these (it normalises `-rc.1`, `-alpha.2`, `-beta` to pre-releases, PEP 440) and has
specifier sets for ranges. The forms npm users write (`^1.2`, `~1.2.3`, `1.2.x`, `||`, clauses
separated by spaces) are translated into specifiers here.

`docs/rules.md` describes the syntax for users.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from migrator.documents import quote
from migrator.errors import FilterError  # defined in the one tree; imported from here too

if TYPE_CHECKING:  # packaging loads only for a rule with a semver filter: start-up time
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version


def read_version(tag: str) -> Version | None:
    """The tag read as a version (`v1.2.3`, `1.10`, `2.0.0-rc.1`), or None (`latest`)."""
    from packaging.version import InvalidVersion, Version

    try:
        return Version(tag)
    except (InvalidVersion, ValueError):  # ValueError: a number of more than 4300 digits
        return None


_OPERATOR = r"==|!=|<=|>=|~=|<|>|=|\^|~"
_CLAUSE = re.compile(rf"({_OPERATOR})?([vV]?[0-9][0-9A-Za-z.*_-]*)")
_WILDCARD = re.compile(r"([0-9]+(?:\.[0-9]+)*)\.[xX*]")  # npm's 1.x / 1.2.x / 1.2.*


def _bump(release: tuple[int, ...], index: int) -> str:
    """`release` up to `index`, that component plus one: (1, 2, 3), 1 → "1.3"."""
    return ".".join(str(part) for part in (*release[:index], release[index] + 1))


def _clause(operator: str, version: str, whole: str) -> tuple[list[str], bool]:
    """One clause → PEP 440 specifiers, and whether it names a pre-release."""
    wildcard = _WILDCARD.fullmatch(version.lstrip("vV"))
    if wildcard and operator in ("", "=", "==", "!="):
        return [f"{'!=' if operator == '!=' else '=='}{wildcard.group(1)}.*"], False
    parsed = read_version(version)
    if parsed is None:
        raise FilterError(f"semver: {quote(whole)}: {quote(version)} is not a version")
    if operator == "^":  # npm: up to the next change of the first non-zero component given
        given = len(version.lstrip("vV").split("-")[0].split("."))
        release = parsed.release[:given]
        first = next((i for i, part in enumerate(release) if part), len(release) - 1)
        return [f">={parsed}", f"<{_bump(release, first)}"], parsed.is_prerelease
    if operator == "~":  # npm: patch changes when a minor is given, else minor changes
        given = len(version.lstrip("vV").split("-")[0].split("."))
        release = parsed.release + (0,)
        return [f">={parsed}", f"<{_bump(release, 1 if given >= 2 else 0)}"], parsed.is_prerelease
    operator = "==" if operator in ("", "=") else operator
    from packaging.specifiers import InvalidSpecifier, Specifier

    try:
        Specifier(f"{operator}{parsed}")
    except InvalidSpecifier:
        raise FilterError(f"semver: {quote(whole)}: cannot use {operator}{version}") from None
    return [f"{operator}{parsed}"], parsed.is_prerelease


@dataclass(frozen=True)
class _Alternative:
    specifiers: SpecifierSet
    prereleases: bool  # a clause names a pre-release: pre-release tags may match

    def contains(self, version: Version) -> bool:
        # `prereleases` is always given: packaging's default for it changed across versions.
        return self.specifiers.contains(version, prereleases=self.prereleases)


def parse_range(text: str) -> tuple[_Alternative, ...]:
    """`>=3.4, <4`, `^1.2 || ~2.0.1`, `1.2.x` → alternatives (a version matches one of them)."""
    from packaging.specifiers import SpecifierSet

    if not text.strip():
        raise FilterError("semver: the range is empty")
    alternatives = []
    for part in text.split("||"):
        # Commas and spaces both separate clauses; an operator may stand apart from its version.
        spaced = re.sub(rf"({_OPERATOR})\s+", r"\1", part.replace(",", " "))
        words = spaced.split()
        if not words:
            raise FilterError(f"semver: {quote(text.strip())}: an alternative of '||' is empty")
        specifiers: list[str] = []
        prereleases = False
        for word in words:
            match = _CLAUSE.fullmatch(word)
            if match is None:
                raise FilterError(
                    f"semver: {quote(text.strip())}: {quote(word)} is not a comparison such "
                    "as >=1.2, <2, ^1.2, ~1.2.3 or 1.2.x")
            found, pre = _clause(match.group(1) or "", match.group(2), text.strip())
            specifiers.extend(found)
            prereleases = prereleases or pre
        alternatives.append(_Alternative(SpecifierSet(",".join(specifiers)), prereleases))
    return tuple(alternatives)


def _compile(key: str, patterns: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise FilterError(f"{key}: invalid regex {quote(pattern)}: {exc}") from None
    return tuple(compiled)


@dataclass(frozen=True)
class TagFilters:
    """What a rule keeps of a source's tag list, applied in this order: `include` (kept if one
    regex is found in the tag), `exclude` (dropped if one is), `semver` (a range; tags that are
    not versions are dropped), `newest` (the N highest versions, or the last N in the
    registry's list order when some tags are not versions)."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    semver: str | None = None
    newest: int | None = None

    def __bool__(self) -> bool:
        return bool(self.include or self.exclude or self.semver is not None
                    or self.newest is not None)

    @cached_property
    def _include(self) -> tuple[re.Pattern[str], ...]:
        return _compile("include", self.include)

    @cached_property
    def _exclude(self) -> tuple[re.Pattern[str], ...]:
        return _compile("exclude", self.exclude)

    @cached_property
    def _range(self) -> tuple[_Alternative, ...] | None:
        return parse_range(self.semver) if self.semver is not None else None

    def problems(self) -> list[str]:
        """Every unusable filter, one line each (and everything compiled once, when fine)."""
        found = []
        for compiled in ("_include", "_exclude", "_range"):
            try:
                getattr(self, compiled)
            except FilterError as exc:
                found.append(str(exc))
        if self.newest is not None and self.newest < 1:
            found.append(f"newest: must be at least 1, not {self.newest}")
        return found

    def select(self, tags: Sequence[str]) -> list[str]:
        """The tags kept, in their list order."""
        kept = [tag for tag in tags
                if (not self._include or any(p.search(tag) for p in self._include))
                and not any(p.search(tag) for p in self._exclude)]
        if self._range is not None:
            in_range = []
            for tag in kept:
                version = read_version(tag)
                if version is not None and any(alt.contains(version) for alt in self._range):
                    in_range.append(tag)
            kept = in_range
        if self.newest is not None and len(kept) > self.newest:
            read = [read_version(tag) for tag in kept]
            versions = [version for version in read if version is not None]
            if len(versions) == len(read):  # every tag is a version: `versions[i]` is kept[i]'s
                # Stable sort: equal versions (`v1.2` and `1.2`) keep their list order.
                ranked = sorted(range(len(kept)), key=lambda i: versions[i], reverse=True)
                chosen = set(ranked[: self.newest])
            else:  # no order but the registry's: its last N (registries list oldest first)
                chosen = set(range(len(kept) - self.newest, len(kept)))
            kept = [tag for i, tag in enumerate(kept) if i in chosen]
        return kept

    def to_args(self) -> dict[str, object]:
        """Plain JSON for a task's arguments; only the filters that are set."""
        args: dict[str, object] = {}
        if self.include:
            args["include"] = list(self.include)
        if self.exclude:
            args["exclude"] = list(self.exclude)
        if self.semver is not None:
            args["semver"] = self.semver
        if self.newest is not None:
            args["newest"] = self.newest
        return args

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> TagFilters:
        semver, newest = args.get("semver"), args.get("newest")
        return cls(
            include=tuple(map(str, args.get("include") or ())),
            exclude=tuple(map(str, args.get("exclude") or ())),
            semver=None if semver is None else str(semver),
            newest=None if newest is None else int(newest),
        )


NO_FILTERS = TagFilters()
