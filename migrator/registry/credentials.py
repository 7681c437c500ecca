"""What the client needs to reach one registry: credentials and transport settings.

The auth file (migrator/auth.py) reads and validates these entries; the client only uses
them, so the type lives with the client and the auth file depends on it, not the reverse.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


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

    @property
    def anonymous(self) -> bool:
        return not self.username and not (self.password and self.password.get_secret_value())
