"""One exception hierarchy for the whole product.

    MigratorError
    ├── ConfigError              bad input: rules, auth, flags (one or many problems)
    ├── AuthError                credentials refused, token endpoint failed
    ├── RegistryError            the registry answered with a status we cannot use
    │   ├── ManifestUnsupported  schema1 and other formats we refuse to copy
    │   └── BlobUnknownOnPush    manifest PUT refused because blobs are missing
    ├── DigestMismatch           bytes did not hash to the digest that named them
    ├── ClusterError             the Kubernetes API server could not be used (`migrator config`)
    │   ├── ClusterUnreachable   no HTTP answer: refused, timed out, TLS verification failed
    │   ├── ClusterUnauthorized  401: the credentials were not accepted
    │   └── ClusterForbidden     403 on some lists: `missing` names each verb and resource
    └── RetryableError           worth another try: the only branch retried automatically
        ├── TransportError       connection reset, refused, timed out, TLS handshake
        └── RetryableStatus      408, 429, 5xx (also a RegistryError)

Every message names what a user needs to act on and never carries a credential: URLs are
printed without userinfo or query string secrets, and no header is ever formatted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class MigratorError(Exception):
    """Root of every error this product raises on purpose."""


class ConfigError(MigratorError):
    """Bad input. Holds every problem found, one line each (file and entry included)."""

    def __init__(self, problems: str | Iterable[str]) -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class AuthError(MigratorError):
    """The registry or its token service refused our credentials."""


class RegistryError(MigratorError):
    """A registry answered with a status we cannot use.

    Carries the method, the URL (no credentials), the HTTP status and the OCI error code and
    message when the body had one, plus a hint written for a person.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        url: str = "",
        status: int | None = None,
        code: str = "",
        detail: str = "",
    ) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.code = code
        self.detail = detail
        self.message = message
        super().__init__(self._format())

    def _format(self) -> str:
        parts = [self.message]
        if self.method or self.url:
            parts.append(f"({self.method} {self.url}".rstrip() + ")")
        if self.status is not None:
            status = f"HTTP {self.status}"
            if self.code:
                status += f" {self.code}"
            if self.detail:
                status += f": {self.detail}"
            parts.append(status)
        return " ".join(parts)


class ManifestUnsupported(RegistryError):
    """A manifest type we refuse to copy (Docker schema1, unknown media types)."""


class BlobUnknownOnPush(RegistryError):
    """The target refused a manifest because it lacks some of its blobs."""


class DigestMismatch(MigratorError):
    """Bytes hashed to something else than the digest that named them."""

    def __init__(self, what: str, *, expected: str, got: str) -> None:
        self.what = what
        self.expected = expected
        self.got = got
        super().__init__(f"digest mismatch for {what}: expected {expected}, got {got}")


class RetryableError(MigratorError):
    """A failure that another attempt may cure. Only this branch is retried automatically."""


class TransportError(RetryableError):
    """The connection failed: reset, refused, timed out, TLS handshake, truncated body."""


class UploadSessionLost(RetryableError, RegistryError):
    """The registry no longer knows a chunked upload (expired, purged, or at another offset
    than recorded): the next try starts a fresh one."""


class RetryableStatus(RetryableError, RegistryError):
    """408, 429 or 5xx. `retry_after` is the server's hint in seconds, if it gave one."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs) -> None:
        self.retry_after = retry_after
        RegistryError.__init__(self, message, **kwargs)


class ClusterError(MigratorError):
    """The API server could not be used. `lines`: one line each, written for a person."""

    def __init__(self, lines: str | Iterable[str]) -> None:
        self.lines: list[str] = [lines] if isinstance(lines, str) else list(lines)
        super().__init__("\n".join(self.lines))


class ClusterUnreachable(ClusterError):
    """No HTTP answer: refused, timed out, name not resolved, TLS verification failed."""


class ClusterUnauthorized(ClusterError):
    """401: the API server did not accept the credentials."""


class ClusterForbidden(ClusterError):
    """403 on one or more lists: `missing` names each verb and resource refused."""

    def __init__(self, lines: Iterable[str], missing: Sequence[object]) -> None:
        self.missing = list(missing)
        super().__init__(lines)
