"""What the client needs to reach one registry: credentials and transport settings.

The auth file (migrator/auth.py) reads and validates these entries; the client only uses
them, so the type lives with the client and the auth file depends on it, not the reverse.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator

# Docker's credential stores mark an identity token (an OAuth2 refresh token) with this user
# name; the secret is then the token, exchanged at the token service (registry/auth.py).
IDENTITY_TOKEN_USER = "<token>"

# Asks the credentials' source again (a credential helper, the auth file, Docker's config
# file): the fresh entry, or None when the source no longer names the registry.
Refresher = Callable[[], "RegistryAuth | None"]


class RegistryAuth(BaseModel):
    """Credentials and transport settings for one registry (or one namespace of it)."""

    # strict: `"insecure": "false"` must be an error, not True. hide_input_in_errors: a
    # ValidationError printed anywhere must not show a password.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, hide_input_in_errors=True)

    username: str | None = None
    password: SecretStr | None = None
    # Plain HTTP is allowed; like the peers, an unverifiable TLS certificate is then accepted
    # too, unless `tls_verify` or `ca_file` says otherwise.
    insecure: bool = False
    tls_verify: bool | None = None  # explicit override of certificate verification
    ca_file: str | None = None  # CA bundle to verify this registry's certificate
    # Politeness, enforced across the whole fleet (migrator/throttle.py).
    requests_per_second: float | None = Field(None, gt=0)
    concurrent_requests: int | None = Field(None, gt=0)
    # HTTP(S) proxy for this registry; without it, the standard *_PROXY variables apply.
    # Secret: a proxy URL may carry a user and password.
    proxy: SecretStr | None = None
    # How blobs go up (docs/registries.md): without these the client learns it from the
    # registry's answers.
    upload: Literal["monolithic", "chunked"] | None = None
    chunk_size: int | None = Field(None, ge=1 << 16)
    # Create a missing project before the first push into it, through the registry's own API
    # (Harbor's projects API: migrator/registry/harbor.py); another registry refuses the
    # setting at its first use.
    create_namespace: bool = False
    # Where the credentials came from, to ask again when the registry refuses credentials
    # that worked before (short-lived passwords: ECR 12 h, GCR 1 h, SWR 6 h). Private: never
    # serialised (sealed for the fleet, dumped, printed); set with `with_refresher`.
    _refresher: Refresher | None = PrivateAttr(default=None)

    @field_validator("proxy")
    @classmethod
    def _proxy_is_a_proxy_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("http", "https", "socks5", "socks5h") or not parts.hostname \
                or parts.path not in ("", "/") or parts.query:
            raise ValueError("must be a proxy URL such as http://proxy.example:3128")
        return value

    @property
    def allow_plain_http(self) -> bool:
        return self.insecure

    @property
    def verify(self) -> bool | str:
        """The value for requests' `verify=`: False, True, or the CA bundle path."""
        if self.tls_verify is False:
            return False
        # A CA bundle given explicitly asks for verification, even on an `insecure` registry.
        if self.tls_verify is None and self.insecure and self.ca_file is None:
            return False
        return self.ca_file or True

    def __eq__(self, other: object) -> bool:
        # Fields only: the same credentials and settings are one client, wherever they came from.
        if not isinstance(other, RegistryAuth):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash(tuple(self.__dict__.values()))

    def model_copy(self, *, update: Mapping[str, Any] | None = None,
                   deep: bool = False) -> RegistryAuth:
        copy = super().model_copy(update=update, deep=deep)
        if update and ("username" in update or "password" in update):
            copy._refresher = None  # other credentials: their source is not this one's
        return copy

    @property
    def refresher(self) -> Refresher | None:
        return self._refresher

    def with_refresher(self, refresher: Refresher | None) -> RegistryAuth:
        """This entry, asked again through `refresher` when its credentials expire."""
        entry = self.model_copy()
        entry._refresher = refresher
        return entry

    def with_credentials_of(self, other: RegistryAuth) -> RegistryAuth:
        """This entry's settings with `other`'s user, password and refresher."""
        entry = self.model_copy(update={"username": other.username, "password": other.password})
        entry._refresher = other.refresher  # after model_copy, which drops this entry's own
        return entry

    @property
    def identity_token(self) -> bool:
        """The password is an identity token (Docker's `identitytoken`), not a password."""
        return self.username == IDENTITY_TOKEN_USER

    @property
    def anonymous(self) -> bool:
        return not self.username and not (self.password and self.password.get_secret_value())
