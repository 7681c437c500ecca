"""The grammar of image references: parse, normalise, print. Knows nothing about HTTP.

References are read as `docker pull` reads them (and image-syncer v1.5, which uses Docker's
own parser): the first path component is a registry only when it holds a `.` or a `:` or is
`localhost` and more components follow; otherwise the registry is Docker Hub, where a
one-component name gets `library/` (`nginx` is `docker.io/library/nginx`). `parse()` keeps what
is written (no tag stays no tag); `normalize()` adds `latest` as `docker pull` does.

The grammar follows the distribution reference grammar: lowercase path components separated by
`.`, `_`, `__` or dashes; tags of at most 128 word characters, dots and dashes; digests as
`algorithm:hex`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, replace

from migrator.errors import InvalidReference

PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
DIGEST = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")
_HOST_LABEL = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
HOST = re.compile(
    rf"(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?"
)
MAX_NAME_LENGTH = 255  # of the whole name, registry included, as in distribution's grammar
MAX_PORT = 65535
_SHOWN = 80  # characters of a bad part repeated in a message
# Every character a name, tag or digest may hold ('*' and ',' for the rules' extensions).
_NAME_CHARACTERS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:@[]*,")

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = {"index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}


@dataclass(frozen=True, slots=True)  # slots: two per tag, kept for the whole run
class Reference:
    """`registry/repository[:tag][@digest]`; the repository may have any depth."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """`registry/repository`, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def manifest_ref(self) -> str:
        """What goes after `/manifests/` in a URL: the digest when pinned, else the tag."""
        if self.digest:
            return self.digest
        if self.tag:
            return self.tag
        raise ValueError(f"{self} names neither a tag nor a digest")

    def with_tag(self, tag: str | None) -> Reference:
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str | None) -> Reference:
        return replace(self, digest=digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def split(text: str) -> tuple[str, str | None, str | None]:
    """Split `name[:tagpart][@digest]` without judging the tag part (rules give it meaning).

    The tag part is everything after the last `:` that follows the last `/`, so a registry port
    (`host:5000/ns/repo`) is never mistaken for a tag.
    """
    digest = None
    if "@" in text:
        text, digest = text.rsplit("@", 1)
    tagpart = None
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        text, tagpart = text[:colon], text[colon + 1 :]
    return text, tagpart, digest


def _shown(text: str) -> str:
    """`text` quoted and escaped for a message, cut when long."""
    if len(text) > _SHOWN:
        return f"{text[:_SHOWN]!r}… ({len(text)} characters)"
    return repr(text)


_USERINFO_PROBLEM = (
    "'@' in the registry: a reference holds no user:password@ (credentials go in the auth "
    "file), and '@' only introduces a digest after the repository"
)


def check_userinfo(text: str) -> str:
    """Refuse `user:password@host/...` (and `host@evil/...`) before `split` would read the
    part after '@' as a digest; the message does not repeat the credentials."""
    first, slash, _ = text.partition("/")
    if slash and "@" in first:
        raise InvalidReference(_USERINFO_PROBLEM)
    return text


def check_characters(text: str) -> str:
    """Refuse what no name may hold, before its parts are read: a character outside printable
    ASCII (a look-alike such as Cyrillic 'а' or fullwidth '／' passes the eye but names
    another image), white space, and punctuation no name holds (`\\`, `%`, `?`, `#`...)."""
    for position, char in enumerate(text, 1):
        if char in _NAME_CHARACTERS:
            continue
        if char.isascii() and char.isprintable() and char != " ":
            raise InvalidReference(f"holds the character {char!r} at position {position}, which "
                                     "no image name holds")
        if char in " \t":
            raise InvalidReference(f"contains white space at position {position}")
        code = f"U+{ord(char):04X}"
        name = unicodedata.name(char, "")
        if char.isascii() or unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            kind = "a control character"
        else:
            kind = "the non-ASCII character"
        raise InvalidReference(
            f"holds {kind} {char!r} ({code}{' ' + name if name else ''}) at position "
            f"{position}: references are written in ASCII"
        )
    return text


def check_registry(registry: str, *, what: str = "registry") -> str:
    if "@" in registry:
        raise InvalidReference(_USERINFO_PROBLEM)
    if not registry or not HOST.fullmatch(registry):
        raise InvalidReference(
            f"invalid {what} {_shown(registry)}: expected a host name with optional port")
    host, _, port = registry.rpartition("]")[2].partition(":")
    if len(host) > 253 or any(len(label) > 63 for label in host.split(".")):
        raise InvalidReference(f"invalid {what} {_shown(registry)}: a host name has at most 253 "
                                 "characters, and 63 between dots")
    if port and not 0 < int(port) <= MAX_PORT:
        raise InvalidReference(f"invalid {what} {_shown(registry)}: port {port} is not "
                                 f"between 1 and {MAX_PORT}")
    if registry.lower() in DOCKER_HUB_ALIASES or registry.lower() == DOCKER_HUB:
        return DOCKER_HUB
    return registry


def check_repository(repository: str) -> str:
    # The length first: a name of a million characters must cost nothing more to refuse.
    if len(repository) > MAX_NAME_LENGTH:
        raise InvalidReference(f"repository name longer than {MAX_NAME_LENGTH} characters "
                                 f"({len(repository)})")
    components = repository.split("/")
    for component in components:
        if not PATH_COMPONENT.fullmatch(component):
            raise InvalidReference(
                f"invalid repository path component {_shown(component)} in "
                f"{_shown(repository)}: use lowercase letters, digits and single separators "
                "(. _ __ -)"
            )
    return repository


def check_tag(tag: str) -> str:
    if not TAG.fullmatch(tag):
        raise InvalidReference(
            f"invalid tag {_shown(tag)}: at most 128 letters, digits, '_', '.' and '-', "
            "not starting with '.' or '-'"
        )
    return tag


def check_digest(digest: str) -> str:
    if not DIGEST.fullmatch(digest):
        raise InvalidReference(
            f"invalid digest {_shown(digest)}: expected sha256:<64 lowercase hex>")
    return digest


def looks_like_host(component: str) -> bool:
    """Docker's test for a first path component that names a registry."""
    return "." in component or ":" in component or component == "localhost"


def split_name(name: str) -> tuple[str, str]:
    """`name` read as `docker pull` reads it → (registry, repository).

    `quay.io/coreos/etcd` → (`quay.io`, `coreos/etcd`); `registry.k8s.io/pause` →
    (`registry.k8s.io`, `pause`); `grafana/grafana` → (`docker.io`, `grafana/grafana`);
    `nginx` and `docker.io/nginx` → (`docker.io`, `library/nginx`).
    """
    check_characters(name)
    parts = name.split("/")
    if "" in parts:
        raise InvalidReference(
            f"{_shown(name)} has an empty path component: a '/' at the start or the end, or "
            "two in a row"
        )
    if len(parts) > 1 and looks_like_host(parts[0]):
        registry, repository = check_registry(parts[0]), "/".join(parts[1:])
    else:
        registry, repository = DOCKER_HUB, name
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    check_repository(repository)
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidReference(f"name longer than {MAX_NAME_LENGTH} characters, registry "
                                 f"included ({len(name)})")
    return registry, repository


def parse(text: str) -> Reference:
    """Parse a reference with at most one tag, `[registry/]repository[:tag][@digest]`, keeping
    what is written: no tag stays no tag."""
    name, tag, digest = split(check_characters(check_userinfo(text.strip())))
    registry, repository = split_name(name)
    return Reference(
        registry,
        repository,
        check_tag(tag) if tag is not None else None,
        check_digest(digest) if digest is not None else None,
    )


def normalize(text: str) -> Reference:
    """Read a reference as `docker pull` does and make every part explicit.

    `nginx` → `docker.io/library/nginx:latest`; `quay.io/x/y` → `quay.io/x/y:latest`; an image
    pinned by digest stays pinned (and gets no default tag).
    """
    reference = parse(text)
    if reference.tag is None and reference.digest is None:
        return reference.with_tag("latest")
    return reference


# `os/architecture[/variant]`; `*` stands for any os or any architecture (image-syncer's
# `--arch amd64` alone is `*/amd64`).
PLATFORM = re.compile(r"(?:[a-z0-9]+|\*)/(?:[a-z0-9_]+|\*)(?:/[a-z0-9]+)?")
_OS = re.compile(r"[a-z0-9]+")
_ARCH = re.compile(r"[a-z0-9_]+(?::[a-z0-9]+)?")


def parse_platforms(value: str | list[str]) -> frozenset[str]:
    """`linux/amd64,linux/arm64` (or a list of them) → the set of `os/arch[/variant]`."""
    items = value.split(",") if isinstance(value, str) else value
    platforms = frozenset(item.strip() for item in items if item.strip())
    for platform in sorted(platforms):
        if not PLATFORM.fullmatch(platform):
            raise InvalidReference(
                f"{platform!r} is not os/architecture[/variant], e.g. linux/arm64")
    if not platforms:
        raise InvalidReference("give at least one os/architecture, e.g. linux/amd64")
    return platforms


def os_arch_platforms(oses: Sequence[str], architectures: Sequence[str]) -> frozenset[str]:
    """image-syncer's `--os` and `--arch` (each repeatable, `arch:variant` allowed) as a
    platform set: `--os linux --arch amd64 --arch arm64:v8` → {linux/amd64, linux/arm64/v8}."""
    def items(values: Sequence[str]) -> list[str]:
        return [item.strip() for value in values for item in value.split(",") if item.strip()]

    os_items, arch_items = items(oses), items(architectures)
    for item in os_items:
        if ":" in item:
            raise InvalidReference(f"--os {item!r}: os versions are not supported: write the "
                                     "os alone, e.g. --os windows")
        if not _OS.fullmatch(item):
            raise InvalidReference(f"--os {item!r}: expected an os such as linux or windows")
    for item in arch_items:
        if not _ARCH.fullmatch(item):
            raise InvalidReference(f"--arch {item!r}: expected an architecture such as amd64, "
                                     "or architecture:variant such as arm64:v8")
    if not os_items and not arch_items:
        return frozenset()
    return frozenset(f"{os_name}/{arch.replace(':', '/')}"
                     for os_name in os_items or ["*"] for arch in arch_items or ["*"])


def _meet(first: str, second: str) -> str | None:
    """The platforms both patterns match, as one pattern; None when they share none."""
    one, two = first.split("/"), second.split("/")
    parts = []
    for index in range(3):
        a = one[index] if index < len(one) else "*"
        b = two[index] if index < len(two) else "*"
        if a != b and "*" not in (a, b):
            return None
        parts.append(b if a == "*" else a)
    return "/".join(parts[:2] + ([parts[2]] if parts[2] != "*" else []))


def combine_platforms(first: frozenset[str], second: frozenset[str]) -> frozenset[str]:
    """Platforms that satisfy both filters (an empty filter lets everything through)."""
    if not first or not second:
        return first or second
    both = frozenset(meet for a in first for b in second if (meet := _meet(a, b)))
    if not both:
        raise InvalidReference(f"no platform is both in {', '.join(sorted(first))} and in "
                                 f"{', '.join(sorted(second))}")
    return both
