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
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import SecretStr, ValidationError
from pydantic_core import ErrorDetails

from migrator.documents import (
    SCHEME,
    describe_type,
    duplicate_keys,
    duplicate_problem,
    load_document,
    quote,
)
from migrator.errors import ConfigError, InvalidReference
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

    def lookup(self, registry: str, repository: str) -> RegistryAuth:
        """The entry with the longest key that is a path prefix of registry/repository.

        `quay.io/coreos` beats `quay.io` for `quay.io/coreos/etcd`, but never matches
        `quay.io/coreos-extra/etcd` (whole components only). No entry → anonymous.
        """
        parts = [_normalize_registry(registry), *[p for p in repository.split("/") if p]]
        for length in range(len(parts), 0, -1):
            entry = self.entries.get("/".join(parts[:length]))
            if entry is not None:
                return entry
        return RegistryAuth()


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


def _secret_problem(name: str, value: str | None) -> str | None:
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
) -> RegistryAuth | None:
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
                    problems.append(f"{where}: {name}: environment variable {variable} is not "
                                    f"set{literal}")
                    refused.add(name)
                    ok = False
                    continue
                if not item:
                    # CI systems expand a missing secret to "": an empty variable is a mistake.
                    problems.append(f"{where}: {name}: environment variable {variable} is empty")
                    refused.add(name)
                    ok = False
                    continue
            elif not item:
                item = None  # image-syncer's files write "" for anonymous access
            problem = _secret_problem(name, item)
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
        return AuthFile("")
    name = os.fspath(path)
    document = load_document(name, required=required, raw_text_keys=frozenset(SECRET_FIELDS))
    if document.problems:
        raise ConfigError(document.problems)
    if not document.found or document.data is None:
        return AuthFile(name)
    return parse_auth(document.data, name=name, environ=environ,
                      base_dir=os.path.dirname(os.path.abspath(name)))


def parse_auth(data: object, *, name: str, environ: Mapping[str, str], base_dir: str) -> AuthFile:
    """Validate already-loaded auth data (an auth file's, or the `auth:` of a combined
    `--config` file); raise one ConfigError with every problem. `name` starts each problem;
    `base_dir` is where a relative `ca_file` is found."""
    if data is None:
        return AuthFile(name)
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{name}: the top level must be a mapping of registry to credentials, "
            f"not {describe_type(data)}"
        )
    problems = [duplicate_problem(name, key, line) for key, line in duplicate_keys(data)]
    entries: dict[str, RegistryAuth] = {}
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
        auth = _parse_entry(where, value, environ=environ, base_dir=base_dir, problems=problems)
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
    return AuthFile(name, entries)


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
    return AuthFile(override.path or base.path, entries)
