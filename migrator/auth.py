"""The auth file: credentials and transport settings per registry or registry/namespace.

The format is image-syncer's / image-migrator's `auth.json` (or YAML), extended with
`tls_verify`, `ca_file` and `${NAME}` / `$NAME` environment references. `docs/rules.md`
describes it for users. Like the images file it is validated completely before any work starts,
and no problem text ever carries a password.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from pydantic import SecretStr, ValidationError
from pydantic_core import ErrorDetails

from migrator.docker_config import DockerConfig
from migrator.documents import (
    SCHEME,
    describe_type,
    duplicate_keys,
    duplicate_problem,
    load_document,
    quote,
)
from migrator.errors import AuthError, ConfigError, InvalidReference
from migrator.reference import (
    DOCKER_HUB,
    DOCKER_HUB_ALIASES,
    check_characters,
    check_registry,
    check_repository,
)

# The type of an entry belongs to the registry client, which uses it; the auth file is made
# of them.
from migrator.registry.credentials import RegistryAuth

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
SECRET_FIELDS = ("username", "password")  # the fields that may name an environment variable


def _normalize_registry(registry: str) -> str:
    # Host names are case-insensitive; Docker Hub has several names.
    registry = registry.lower()
    return DOCKER_HUB if registry in DOCKER_HUB_ALIASES else registry


@dataclass(frozen=True)
class AuthFile:
    """The validated auth file. `entries` keys are normalised: `registry[/namespace...]`."""

    path: str
    entries: dict[str, RegistryAuth] = field(default_factory=dict)
    # Entries whose credentials name an environment variable that is unset or empty, with
    # their problems: an error only for a run that uses them, so one missing CI secret for a
    # registry this run does not touch blocks nothing.
    unresolved: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Credentials for a registry this file names without any (or not at all), found as
    # `docker pull` finds them: Docker's config file and credential helpers
    # (docker_config.py). The file's own credentials win; its settings always apply.
    fallback: Callable[[str], RegistryAuth | None] | None = field(
        default=None, compare=False, repr=False)

    def lookup(self, registry: str, repository: str) -> RegistryAuth:
        """The entry with the longest key that is a path prefix of registry/repository.

        `quay.io/coreos` beats `quay.io` for `quay.io/coreos/etcd`, but never matches
        `quay.io/coreos-extra/etcd` (whole components only). No entry → anonymous. An
        unresolved entry raises its ConfigError.
        """
        parts = [_normalize_registry(registry), *[p for p in repository.split("/") if p]]
        for length in range(len(parts), 0, -1):
            key = "/".join(parts[:length])
            entry = self.entries.get(key)
            if entry is not None:
                return self._completed(parts[0], entry)
            if key in self.unresolved:
                raise ConfigError(list(self.unresolved[key]))
        return self._completed(parts[0], RegistryAuth())

    def _completed(self, registry: str, entry: RegistryAuth) -> RegistryAuth:
        if self.fallback is None or not entry.anonymous:
            return entry
        found = self.fallback(registry)
        return entry if found is None else entry.with_credentials_of(found)

    def with_entry(self, registry: str, repository: str, entry: RegistryAuth) -> AuthFile:
        """This file with `entry` for registry/repository exactly (it wins over any entry of
        its registry or namespaces): how --src/--dst's own settings apply to their image."""
        key = "/".join([_normalize_registry(registry), *[p for p in repository.split("/") if p]])
        unresolved = {name: problems for name, problems in self.unresolved.items()
                      if name != key}
        return replace(self, entries={**self.entries, key: entry}, unresolved=unresolved)

    def unresolved_for(self, registry: str, repository: str) -> tuple[str, ...]:
        """The problems of the entry `lookup` would use for registry/repository, if it is
        unresolved; () when that entry is usable."""
        try:
            self.lookup(registry, repository)
        except ConfigError as exc:
            return tuple(exc.problems)
        return ()


def _normalize_key(key: str) -> str:
    """`registry[:port][/namespace/...]`, checked with the reference grammar."""
    if SCHEME.match(key):
        raise InvalidReference("write the registry without a scheme such as https://")
    if "@" in key:  # user:password@registry: the message must not repeat the key's text
        raise InvalidReference("a key names a registry, without user:password@: put the "
                                 "credentials in username and password")
    check_characters(key)
    parts = key.split("/")
    if any(not part for part in parts):
        raise InvalidReference("expected registry or registry/namespace, without empty components")
    registry = _normalize_registry(check_registry(parts[0]))
    if len(parts) > 1:
        check_repository("/".join(parts[1:]))
    return "/".join([registry, *parts[1:]])


def _expand_key(key: str, environ: Mapping[str, str]) -> str:
    """A key written `$REGISTRY` or `${REGISTRY}` (files filled in by CI) from the
    environment."""
    match = _ENV_REFERENCE.fullmatch(key)
    if match is None:
        return key
    variable = match.group(1) or match.group(2)
    value = environ.get(variable, "").strip()
    if not value:
        raise InvalidReference(f"environment variable {variable} is not set or empty")
    return value


def _field_problem(where: str, error: ErrorDetails) -> str:
    name = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        message = f"{where}: unknown key {quote(name)}"
        if name == "identityToken":
            return message + ": identity tokens are not supported, use username and password"
        close = difflib.get_close_matches(name, list(RegistryAuth.model_fields), n=1)
        return message + (f": did you mean {close[0]!r}?" if close else "")
    if error["type"] == "string_type":
        return f"{where}: {name}: must be a string (quote it)"
    if error["type"] == "bool_type":
        return f"{where}: {name}: must be true or false"
    return f"{where}: {name}: {error['msg']}"  # pydantic's text; inputs are hidden


def secret_problem(name: str, value: str | None) -> str | None:
    """What makes a username or password unusable in an Authorization header; never its text.

    A line break is the usual one: a YAML `password: |` block keeps the last one.
    """
    if not value:
        return None
    if any(0xD800 <= ord(char) <= 0xDFFF for char in value):
        return "holds an unpaired surrogate escape (\\ud800 to \\udfff), which is no text"
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        return "holds a control character (a line break, a tab, NUL...): remove it"
    if name == "username" and ":" in value:
        return "holds ':', which Basic authentication cannot carry in a user name"
    return None


def _parse_entry(
    where: str,
    value: Mapping,
    *,
    environ: Mapping[str, str],
    base_dir: str,
    problems: list[str],
    unset: list[str],
) -> RegistryAuth | None:
    """The entry of `value`; None when it has problems. Problems that are only an unset or
    empty environment variable go to `unset` (an error only where the entry is used)."""
    fields: dict[str, object] = {}
    refused: set[str] = set()  # secret fields already reported
    ok = True
    for name, item in value.items():
        if not isinstance(name, str):
            problems.append(f"{where}: unknown key {quote(name)}")
            ok = False
            continue
        if name in SECRET_FIELDS and isinstance(item, str):
            match = _ENV_REFERENCE.fullmatch(item)
            if item.startswith("$$"):
                item = item[1:]  # `$$oauthtoken` is the literal `$oauthtoken` (nvcr.io's user)
            elif match:
                variable = match.group(1) or match.group(2)
                item = environ.get(variable)
                if item is None:
                    # `$oauthtoken` (nvcr.io's user name) is meant literally more often than not
                    literal = ("" if match.group(1) else
                               f" (for a literal '$', write '$$': {quote('$' + match.group(0))})")
                    unset.append(f"{where}: {name}: environment variable {variable} is not "
                                 f"set{literal}")
                    refused.add(name)
                    ok = False
                    continue
                if not item:
                    # CI systems expand a missing secret to "": an empty variable is a mistake.
                    unset.append(f"{where}: {name}: environment variable {variable} is empty")
                    refused.add(name)
                    ok = False
                    continue
            elif not item:
                item = None  # image-syncer's files write "" for anonymous access
            problem = secret_problem(name, item)
            if problem is not None:
                problems.append(f"{where}: {name}: {problem}" + (
                    f" (from environment variable {variable})" if match else ""))
                refused.add(name)
                ok = False
                continue
        fields[name] = item
    try:
        auth = RegistryAuth.model_validate(fields)
    except ValidationError as exc:
        problems.extend(_field_problem(where, error) for error in exc.errors())
        return None
    # A user name already refused above is no missing one: say it once.
    if auth.password is not None and not auth.username and "username" not in refused:
        problems.append(f"{where}: password is set but username is not")
        ok = False
    if auth.ca_file is not None:
        # Relative to the auth file, so the result does not depend on the working directory.
        ca_file = os.path.join(base_dir, os.path.expanduser(auth.ca_file))
        if not os.path.isfile(ca_file):
            problems.append(f"{where}: ca_file: file not found: {auth.ca_file}")
            ok = False
        auth = auth.model_copy(update={"ca_file": ca_file})
    return auth if ok else None


def load_auth(
    path: str | os.PathLike[str] | None, *, environ: Mapping[str, str], required: bool
) -> AuthFile:
    """Read and validate an auth file (JSON or YAML); raise one ConfigError with every problem.

    `required`: the user named the file, so a missing file is an error; otherwise a missing
    file (or `path=None`) means anonymous access everywhere.
    """
    if path is None:
        return AuthFile("", fallback=DockerConfig.of(environ))
    name = os.fspath(path)
    document = load_document(name, required=required, raw_text_keys=frozenset(SECRET_FIELDS))
    if document.problems:
        raise ConfigError(document.problems)
    if not document.found or document.data is None:
        return AuthFile(name, fallback=DockerConfig.of(environ))
    auth = parse_auth(document.data, name=name, environ=environ,
                      base_dir=os.path.dirname(os.path.abspath(name)))
    # Credentials that expire (a password a job rewrites every few hours, a Kubernetes
    # Secret mounted as the file) are read again from the file when the registry refuses them.
    return replace(auth, entries={
        key: entry if entry.anonymous else entry.with_refresher(_ReadAgain(name, key, environ))
        for key, entry in auth.entries.items()})


@dataclass(frozen=True)
class _ReadAgain:
    """An auth file entry's refresher: the file read again (compared by file and key, so the
    entry stays one client's key)."""

    path: str
    key: str
    environ: Mapping[str, str] = field(compare=False, repr=False)

    def __call__(self) -> RegistryAuth | None:
        try:
            auth = load_auth(self.path, environ=self.environ, required=True)
        except ConfigError as exc:
            raise AuthError(f"{self.path}: read again for fresh credentials: "
                            f"{exc.problems[0]}") from None
        return auth.entries.get(self.key)


def parse_auth(data: object, *, name: str, environ: Mapping[str, str], base_dir: str) -> AuthFile:
    """Validate already-loaded auth data (an auth file's, or the `auth:` of a combined
    `--config` file); raise one ConfigError with every problem. `name` starts each problem;
    `base_dir` is where a relative `ca_file` is found."""
    if data is None:
        return AuthFile(name, fallback=DockerConfig.of(environ))
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{name}: the top level must be a mapping of registry to credentials, "
            f"not {describe_type(data)}"
        )
    problems = [duplicate_problem(name, key, line) for key, line in duplicate_keys(data)]
    entries: dict[str, RegistryAuth] = {}
    unresolved: dict[str, tuple[str, ...]] = {}
    written_as: dict[str, str] = {}
    for key, value in data.items():
        where = f"{name}: {quote(key)}"
        if not isinstance(key, str):
            problems.append(f"{where}: a key must be a string, not {describe_type(key)}")
            continue
        normalized = None
        try:
            normalized = _normalize_key(_expand_key(key, environ))
        except InvalidReference as exc:
            problems.append(f"{where}: invalid key: {exc}")
        if value is None:
            value = {}  # YAML `quay.io/coreos:` with nothing after it: anonymous
        if not isinstance(value, Mapping):
            problems.append(
                f"{where}: must be a mapping of username, password, insecure, tls_verify, "
                f"ca_file, not {describe_type(value)}"
            )
            continue
        problems.extend(
            duplicate_problem(where, inner, line) for inner, line in duplicate_keys(value)
        )
        unset: list[str] = []
        before = len(problems)
        auth = _parse_entry(where, value, environ=environ, base_dir=base_dir, problems=problems,
                            unset=unset)
        if unset and normalized is not None and len(problems) == before:
            unresolved[normalized] = tuple(unset)
            continue
        problems.extend(unset)
        if auth is None or normalized is None:
            continue
        if normalized in written_as:
            # Real files name Docker Hub under each of its names with the same credentials:
            # the same entry twice is harmless; two different ones leave no way to choose.
            if entries[normalized] != auth:
                problems.append(f"{where}: same registry as {quote(written_as[normalized])}, "
                                "with other settings: keep one of the two")
            continue
        written_as[normalized] = key
        entries[normalized] = auth
    if problems:
        raise ConfigError(problems)
    return AuthFile(name, entries, unresolved, fallback=DockerConfig.of(environ))


def seal(auth: AuthFile, key: str) -> str:
    """The credentials of `auth`, encrypted and authenticated with a Fernet key.

    This is how a producer hands its credentials to the fleet: the sealed text rests in Redis
    next to the run, tasks carry only the run id, and only holders of the key (the producer and
    the workers) can read it.
    """
    from cryptography.fernet import Fernet

    plain = {
        name: {field: value.get_secret_value() if isinstance(value, SecretStr) else value
               for field, value in entry.model_dump(exclude_none=True).items()}
        for name, entry in auth.entries.items()
    }
    return Fernet(key.encode()).encrypt(json.dumps(plain).encode()).decode()


def unseal(sealed: str, key: str, *, path: str = "<sealed>") -> AuthFile:
    """Inverse of `seal`; a wrong key or altered text is a ConfigError, never a partial read."""
    from cryptography.fernet import Fernet, InvalidToken

    try:
        plain = json.loads(Fernet(key.encode()).decrypt(sealed.encode()))
    except (InvalidToken, ValueError):
        raise ConfigError(
            f"{path}: cannot open the run's sealed credentials: producer and workers must "
            "share the same MIGRATOR_SECRET_KEY") from None
    return AuthFile(path, {name: RegistryAuth(**entry) for name, entry in plain.items()})


def merge(base: AuthFile, override: AuthFile) -> AuthFile:
    """`override`'s entries win over `base`'s (a run's credentials over a worker's own file).

    An override entry without credentials (a run handed over without its secrets: only
    `insecure`, limits...) keeps the base's credentials under its own settings."""
    entries = dict(base.entries)
    for name, entry in override.entries.items():
        own = base.entries.get(name)
        if own is not None and entry.anonymous:
            entry = own.model_copy(update=entry.model_dump(exclude_defaults=True))
        entries[name] = entry
    return AuthFile(override.path or base.path, entries,
                    fallback=base.fallback or override.fallback)
