"""One exception hierarchy for the whole product.

    MigratorError
    ├── ProblemError             told as `problems`, one line each, written for a person
    │   ├── ConfigError          bad input: rules, auth, flags (file and entry in each line)
    │   │   ├── InvalidReference an image reference or platform that breaks the grammar
    │   │   └── FilterError      a tag filter that cannot be used (regex, semver range)
    │   └── ClusterError         the Kubernetes API server could not be used (`migrator config`)
    │       ├── ClusterUnreachable   no HTTP answer: refused, timed out, TLS verification failed
    │       ├── ClusterUnauthorized  401: the credentials were not accepted
    │       └── ClusterForbidden     403 on some lists: `missing` names each verb and resource
    ├── AuthError                credentials refused, token endpoint failed
    ├── RegistryError            the registry answered with a status we cannot use
    │   ├── ManifestUnsupported  formats we cannot copy (unknown types, no schema1 layers)
    │   ├── BlobUnknownOnPush    manifest PUT refused because blobs are missing
    │   ├── NamespaceMissing     the target's project, namespace or repository does not exist
    │   │                        and the registry does not create it on push
    │   ├── FormatRefused        the target refused a manifest's format (Docker, OCI, schema1)
    │   ├── TagImmutable         the target refused to overwrite an immutable tag
    │   ├── UploadChunkRefused   a PATCH refused for its size, or PATCH refused altogether:
    │   │                        the upload goes on with other chunks or a monolithic PUT
    │   └── RegistryUnreachable  its `/v2/` ping could not connect: refused, no such host,
    │                            TLS handshake failed (its remaining work fails at once)
    ├── DigestMismatch           bytes did not hash to the digest that named them
    ├── RunVanished              a fleet run's record is gone from Redis
    └── RetryableError           worth another try: the only branch retried, by both
        │                        executors (`migrator sync`'s retry passes, the fleet's tasks)
        ├── TransportError       connection reset, refused, timed out, cut short
        ├── UploadSessionLost    the registry forgot a chunked upload (also a RegistryError)
        └── RetryableStatus      408, 429, 5xx (also a RegistryError)

Every message names what a user needs to act on and never carries a credential: URLs are
printed without userinfo or query string secrets, and no header is ever formatted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypedDict, Unpack


class MigratorError(Exception):
    """Root of every error this product raises on purpose."""


class ProblemError(MigratorError):
    """An error told as one or more problems, one line each, written for a person: the CLI
    prints `problems` line by line, whatever the branch."""

    def __init__(self, problems: str | Iterable[str]) -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class ConfigError(ProblemError):
    """Bad input. Holds every problem found, one line each (file and entry included)."""


class InvalidReference(ConfigError):
    """A reference (or platform) that does not follow the grammar (migrator/reference.py)."""


class FilterError(ConfigError):
    """A filter that cannot be used; the message names the key (the caller adds the entry)."""


class AuthError(MigratorError):
    """The registry or its token service refused our credentials."""


class ErrorContext(TypedDict, total=False):
    """Where a registry error happened: the keyword arguments of `RegistryError`."""

    method: str
    url: str
    status: int | None
    code: str
    detail: str


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
    """A manifest we cannot copy: an unknown media type, a schema1 manifest without layers."""


class BlobUnknownOnPush(RegistryError):
    """The target refused a manifest because it lacks some of its blobs."""


class NamespaceMissing(RegistryError):
    """The target's project, namespace or repository (`namespace`) does not exist and the
    registry does not create it on push (ECR, Artifact Registry, Harbor, SWR, ACR)."""

    def __init__(self, message: str, *, namespace: str, **context: Unpack[ErrorContext]) -> None:
        self.namespace = namespace
        super().__init__(message, **context)


class FormatRefused(RegistryError):
    """The target refused a manifest's media type (Docker types on zot without docker2s2,
    OCI types on a registry that only takes Docker's, Docker schema1 on a registry that
    no longer takes it). Manifests are copied unchanged, so
    converting is not an option the copy takes by itself."""


class TagImmutable(RegistryError):
    """The target refused to overwrite a tag an immutability rule protects (Harbor: 412)."""


class UploadChunkRefused(RegistryError):
    """A PATCH of a chunked upload refused: `reason` is "too-large" (GHCR: above 4 MiB),
    "too-small" (ECR: parts under 5 MiB but the last) or "unsupported" (Artifact Registry:
    no PATCH at all); `limit` is the size the registry named, if it named one."""

    def __init__(self, message: str, *, reason: str, limit: int | None = None,
                 sent: int = 0, **context: Unpack[ErrorContext]) -> None:
        self.reason = reason
        self.limit = limit
        self.sent = sent
        super().__init__(message, **context)


class RegistryUnreachable(RegistryError):
    """A registry's `/v2/` ping could not connect for a reason another try would meet again:
    connection refused, no such host, TLS handshake failed. Not retried: the client fails
    that registry's remaining work at once (`RegistryClient.ping`)."""


class DigestMismatch(MigratorError):
    """Bytes hashed to something else than the digest that named them."""

    def __init__(self, what: str, *, expected: str, got: str) -> None:
        self.what = what
        self.expected = expected
        self.got = got
        super().__init__(f"digest mismatch for {what}: expected {expected}, got {got}")


class RunVanished(MigratorError):
    """A fleet run's record is no longer in Redis (flushed, or expired after its TTL)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(run_id)

    def __str__(self) -> str:
        return f"run {self.run_id} is no longer in Redis (flushed, or expired)"


class Interrupted(MigratorError):
    """Work not started because the user interrupted the run (Ctrl-C)."""

    def __init__(self) -> None:
        super().__init__("not started: the run was interrupted")


class RetryableError(MigratorError):
    """A failure that another attempt may cure. Only this branch is retried automatically."""


class TransportError(RetryableError):
    """The connection failed: reset, refused, timed out, truncated body.

    `unreachable` is the short cause when no connection could be opened at all (connection
    refused, no such host): mid-run that is worth another try (a registry restarting), on a
    registry's first contact it is not (`RegistryUnreachable`)."""

    def __init__(self, message: str, *, unreachable: str = "") -> None:
        self.unreachable = unreachable
        super().__init__(message)


class UploadSessionLost(RetryableError, RegistryError):
    """The registry no longer knows a chunked upload (expired, purged, or at another offset
    than recorded): the next try starts a fresh one."""


class RetryableStatus(RetryableError, RegistryError):
    """408, 429 or 5xx. `retry_after` is the server's hint in seconds, if it gave one."""

    def __init__(self, message: str, *, retry_after: float | None = None,
                 **context: Unpack[ErrorContext]) -> None:
        self.retry_after = retry_after
        RegistryError.__init__(self, message, **context)


class ClusterError(ProblemError):
    """The API server could not be used. Not a ConfigError: the input was fine (the CLI exits
    with another code)."""


class ClusterUnreachable(ClusterError):
    """No HTTP answer: refused, timed out, name not resolved, TLS verification failed."""


class ClusterUnauthorized(ClusterError):
    """401: the API server did not accept the credentials."""


class ClusterForbidden(ClusterError):
    """403 on one or more lists: `missing` names each verb and resource refused."""

    def __init__(self, problems: Iterable[str], missing: Sequence[object]) -> None:
        self.missing = list(missing)
        super().__init__(problems)
