"""Credentials the Docker ecosystem already has: Docker's config file and credential helpers.

Where the auth file gives no credentials for a registry, they are looked up as `docker pull`
looks them up, in `$DOCKER_CONFIG/config.json` (else `$HOME/.docker/config.json`):

- `credHelpers` names a helper per registry; else `credsStore` names one for every registry;
  the helper is the program `docker-credential-<name>` on PATH, run as `get` with the server
  address on stdin, answering `{"Username": ..., "Secret": ...}` on stdout. Its answer
  "credentials not found" means anonymous. The user name `<token>` marks the secret as an
  identity token.
- `auths` holds the rest: `auth` (base64 of `user:password`), or `username` and `password`,
  and `identitytoken` (an OAuth2 refresh token, exchanged at the registry's token service).

Keys are normalised as Docker normalises them: the scheme and any path are dropped
(`https://registry.example.com/v1/` is `registry.example.com`), and Docker Hub's key is
`https://index.docker.io/v1/` (any of Docker Hub's names matches it). The server address a
helper receives is Docker's too: `https://index.docker.io/v1/` for Docker Hub, `host[:port]`
for any other registry.

Answers are kept for the life of the process; `fresh()` asks again, for credentials that
expired (migrator/registry/auth.py calls it through the entry's refresher). Secrets are never
logged, and a failing helper is one line: which helper, which registry, the first line it
wrote to stderr.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from migrator.errors import AuthError
from migrator.reference import DOCKER_HUB, DOCKER_HUB_ALIASES
from migrator.registry.credentials import IDENTITY_TOKEN_USER, RegistryAuth

DOCKER_HUB_SERVER = "https://index.docker.io/v1/"  # Docker Hub's key, and its helper address
HELPER_PREFIX = "docker-credential-"
HELPER_TIMEOUT = 60.0  # seconds: a helper may ask a cloud API (ECR, GCR) for a token
NOT_FOUND = "credentials not found"  # the helpers' protocol for "no credentials: anonymous"
MAX_CONFIG_BYTES = 4 << 20


def config_path(environ: Mapping[str, str]) -> str | None:
    """Where Docker reads its config: `$DOCKER_CONFIG/config.json`, else `~/.docker/`."""
    directory = environ.get("DOCKER_CONFIG")
    if directory:
        return os.path.join(directory, "config.json")
    home = environ.get("HOME")
    return os.path.join(home, ".docker", "config.json") if home else None


def normalize_server(key: str) -> str:
    """A config key or server address as the registry name the rules use: scheme and path
    dropped, lower case, Docker Hub's names (and its `https://index.docker.io/v1/`) as
    `docker.io`."""
    host = key.strip()
    for scheme in ("https://", "http://"):
        if host.lower().startswith(scheme):
            host = host[len(scheme):]
    host = host.split("/", 1)[0].lower()
    return DOCKER_HUB if host in DOCKER_HUB_ALIASES or host == DOCKER_HUB else host


def server_address(registry: str) -> str:
    """What Docker hands a helper for `registry`."""
    return DOCKER_HUB_SERVER if registry == DOCKER_HUB else registry


@dataclass(frozen=True)
class _AskAgain:
    """An entry's refresher: the config file read again, its helper asked again. Compared by
    file and registry, so that the same entry found twice is the same client's key."""

    path: str
    registry: str
    owner: DockerConfig = field(compare=False, repr=False)

    def __call__(self) -> RegistryAuth | None:
        return self.owner.fresh(self.registry)


class DockerConfig:
    """Docker's config file of one environment, read on first use. Thread safe."""

    def __init__(self, path: str, environ: Mapping[str, str]) -> None:
        self.path = path
        self.environ = dict(environ)
        self._found: dict[str, RegistryAuth | None] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    @classmethod
    def of(cls, environ: Mapping[str, str]) -> DockerConfig | None:
        path = config_path(environ)
        return cls(path, environ) if path else None

    def credentials(self, registry: str) -> RegistryAuth | None:
        """The credentials Docker would use for `registry` (None: anonymous); each registry's
        helper runs once per process, however many threads ask at once."""
        with self._lock:
            if registry in self._found:
                return self._found[registry]
            lock = self._locks.setdefault(registry, threading.Lock())
        with lock:
            with self._lock:
                if registry in self._found:
                    return self._found[registry]
            found = self.fresh(registry)
            with self._lock:
                self._found[registry] = found
            return found

    def __call__(self, registry: str) -> RegistryAuth | None:
        return self.credentials(registry)

    def fresh(self, registry: str) -> RegistryAuth | None:
        """The file read again and the helper asked again (nothing kept)."""
        config = self._read()
        if config is None:
            return None
        helper, named_by = _helper_for(config, registry)
        secret: tuple[str, str] | None = None
        if helper:
            secret = self._ask(helper, named_by, registry)
        if secret is None:
            secret = _from_auths(config, registry, self.path)
        if secret is None:
            return None
        username, password = secret
        return RegistryAuth(username=username, password=SecretStr(password)).with_refresher(
            _AskAgain(self.path, registry, self))

    def _read(self) -> dict[str, Any] | None:
        try:
            with open(self.path, "rb") as file:
                text = file.read(MAX_CONFIG_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AuthError(f"{self.path}: cannot read Docker's config file: "
                            f"{exc.strerror or type(exc).__name__}") from None
        if len(text) > MAX_CONFIG_BYTES:
            raise AuthError(f"{self.path}: Docker's config file is larger than 4 MiB")
        try:
            config = json.loads(text) if text.strip() else {}
        except ValueError as exc:  # the message quotes no content, only where it broke
            where = f"line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else "text"
            raise AuthError(f"{self.path}: Docker's config file is not JSON ({where})") from None
        if not isinstance(config, dict):
            raise AuthError(f"{self.path}: Docker's config file is not a JSON object")
        return config

    def _ask(self, helper: str, named_by: str, registry: str) -> tuple[str, str] | None:
        """Run `docker-credential-<helper> get`; None when it has no credentials."""
        program = HELPER_PREFIX + helper
        where = f"{registry}: credential helper {program} (from {named_by} in {self.path})"
        path = shutil.which(program, path=self.environ.get("PATH", os.defpath))
        if path is None:
            raise AuthError(f"{where} is not on PATH: install it, or give this registry's "
                            "credentials in the auth file")
        try:
            done = subprocess.run(
                [path, "get"], input=server_address(registry).encode(), capture_output=True,
                timeout=HELPER_TIMEOUT, env=self.environ, check=False)
        except subprocess.TimeoutExpired:
            raise AuthError(f"{where} did not answer within {HELPER_TIMEOUT:.0f} s") from None
        except OSError as exc:
            raise AuthError(f"{where} could not be run: "
                            f"{exc.strerror or type(exc).__name__}") from None
        out = done.stdout.decode("utf-8", "replace").strip()
        err = done.stderr.decode("utf-8", "replace").strip()
        if done.returncode != 0:
            if NOT_FOUND in out.lower() or NOT_FOUND in err.lower():
                return None
            # The helpers write their errors to stdout, which holds a secret only on success.
            said = (err or ("" if out.startswith("{") else out)).splitlines()
            raise _failed(where, f"exit status {done.returncode}", said[0] if said else "")
        try:
            answer = json.loads(out)
            username, secret = answer.get("Username") or "", answer.get("Secret") or ""
        except (ValueError, AttributeError):
            raise _failed(where, "answer is not JSON", "") from None
        if not isinstance(username, str) or not isinstance(secret, str):
            raise _failed(where, "answer holds no Username and Secret strings", "")
        if not secret:
            return None
        return username, secret


def _failed(where: str, why: str, said: str) -> AuthError:
    return AuthError(f"{where} failed ({why})" + (f": {said[:300]}" if said else ""))


def _helper_for(config: Mapping[str, Any], registry: str) -> tuple[str, str]:
    """(helper name, the key that named it): `credHelpers` for the registry, else
    `credsStore`; ("", "") when neither."""
    helpers = config.get("credHelpers")
    if isinstance(helpers, dict):
        for key, name in helpers.items():
            if isinstance(name, str) and name and normalize_server(str(key)) == registry:
                return name, f"credHelpers {key!r}"
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        return store, "credsStore"
    return "", ""


def _from_auths(config: Mapping[str, Any], registry: str, path: str) -> tuple[str, str] | None:
    """(user, secret) from `auths`: the exact key Docker writes first, then any key that
    normalises to the registry."""
    auths = config.get("auths")
    if not isinstance(auths, dict):
        return None
    exact = server_address(registry)
    keys = sorted((key for key in auths if normalize_server(str(key)) == registry),
                  key=lambda key: key != exact)
    for key in keys:
        entry = auths[key]
        if isinstance(entry, dict):
            found = _decode_entry(entry, f"{path}: auths {key!r}")
            if found is not None:
                return found
    return None


def _decode_entry(entry: Mapping[str, Any], where: str) -> tuple[str, str] | None:
    token = entry.get("identitytoken")
    if isinstance(token, str) and token:
        return IDENTITY_TOKEN_USER, token
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthError(f"{where}: auth is not base64 of user:password") from None
        username, colon, password = decoded.partition(":")
        if not colon or not username:
            raise AuthError(f"{where}: auth is not base64 of user:password")
        return username, password
    user, secret = entry.get("username"), entry.get("password")
    if isinstance(user, str) and user and isinstance(secret, str):
        return user, secret
    return None  # an empty entry: `docker login` wrote the secret to a credsStore
