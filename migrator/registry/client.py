"""The Docker Registry HTTP API v2 / OCI Distribution client, written on `requests`.

Why our own: the Python registry libraries either buffer blobs in memory or on disk, hide the
upload protocol (no cross-repository mount, no control over Content-Length framing), or retry
blindly. A copy tool needs exactly those controls, and the protocol is small.

One `RegistryClient` per registry and credential: one keep-alive pool shared by all threads,
one `/v2/` ping per process, tokens cached per scope.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Protocol, Required, TypedDict, Unpack
from urllib.parse import parse_qs, quote, urljoin, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

from migrator import __version__
from migrator.errors import (
    AuthError,
    BlobUnknownOnPush,
    DigestMismatch,
    ErrorContext,
    FormatRefused,
    MigratorError,
    NamespaceMissing,
    RegistryError,
    RegistryUnreachable,
    RetryableError,
    RetryableStatus,
    TagImmutable,
    TransportError,
    UploadChunkRefused,
    UploadSessionLost,
)
from migrator.registry import harbor
from migrator.registry.auth import (
    Authenticator,
    GuardedSession,
    parse_challenge,
    repository_scope,
)
from migrator.registry.connection import Cause, cause_of, plain_http
from migrator.registry.credentials import RegistryAuth
from migrator.registry.manifest import (
    ACCEPT,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    SCHEMA1,
    Descriptor,
    Manifest,
    parse_descriptors,
    parse_manifest,
)
from migrator.registry.retry import retrying
from migrator.registry.stream import preload, read_capped
from migrator.registry.upload import UploadPolicy, UploadSession
from migrator.settings import Settings
from migrator.throttle import (
    Limits,
    LocalThrottle,
    Throttle,
    backoff_delay,
    parse_rate_limit,
)

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
REDIRECTS = (301, 302, 303, 307, 308)
# What a push target may answer a read it will not serve (a HEAD's 400 has no body to say
# why: Artifact Registry's NAME_INVALID): no reason to stop before the push, which says why.
REFUSED_READS = (400, 401, 403)
# Docker Hub's references say docker.io; its API lives elsewhere.
API_HOSTS = {"docker.io": "registry-1.docker.io"}
USER_AGENT = f"migrator/{__version__}"
# How long a registry whose ping could not connect fails its work without a request. Short:
# a registry back from a restart is used again soon, and a failed ping costs milliseconds.
UNREACHABLE_FOR = 10.0
# Tags of the referrers tag schema: `<algorithm>-<hex>`, with cosign's suffixes after it.
SCHEMA_TAG_PREFIXES = ("sha256-", "sha512-")
PAGE_PROGRESS_EVERY = 1.0  # seconds between two lines of a long tag list's progress
# Tries of a schema1 manifest PUT (see `put_manifest`).
SCHEMA1_ATTEMPTS = 2
# Blobs are asked for as stored: a server (or CDN) that gzips a body for a client accepting
# gzip (requests does by default) sends bytes that no longer hash to the blob's digest.
BLOB_HEADERS = {"Accept-Encoding": "identity"}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(MiB|MB|KiB|KB|bytes)", re.IGNORECASE)
_UNITS = {"mib": 1 << 20, "mb": 1 << 20, "kib": 1 << 10, "kb": 1 << 10, "bytes": 1}
_QUOTED = re.compile(r"""['"]([^'"\s]+)['"]""")


class _NoQueryInLogs(logging.Filter):
    """urllib3 logs every request's path with its query at DEBUG (`--debug`): a signed
    storage URL (S3, CloudFront, Azure, R2) is a credential for its blob, so the query goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(arg.split("?", 1)[0] + "?…" if isinstance(arg, str) and "?" in arg
                                else arg for arg in record.args)
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_NoQueryInLogs())


class BodyReader(Protocol):
    """A streamed request body (chunked.py's `_Chunk`, stream.py's `VerifyingReader`):
    requests reads it in blocks."""

    def read(self, amount: int = -1, /) -> bytes: ...


class SendOptions(TypedDict, total=False):
    """The keyword arguments of `RegistryClient._send`, which `request` passes on."""

    scopes: Required[tuple[str, ...]]
    expect: Iterable[int]
    headers: dict[str, str] | None
    data: bytes | BodyReader | None
    stream: bool
    allow_redirects: bool
    learn_on_401: bool


def redact(url: str) -> str:
    """A URL fit for messages: no userinfo, no query (upload state, signed redirect URLs)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After is either delay-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _oci_error(response: requests.Response) -> tuple[str, str]:
    """The first OCI error code and message of a response body, if any."""
    try:
        errors = response.json().get("errors") or []
        first = errors[0]
        return str(first.get("code", "")), str(first.get("message", ""))[:300]
    except (ValueError, AttributeError, IndexError, TypeError):
        return "", ""


class _Adapter(HTTPAdapter):
    """requests' adapter with urllib3 sending request bodies in `blocksize` pieces.

    urllib3 reads an upload's body 16 KiB at a time by default: for a large blob that is one
    Python-level read and hash update per 16 KiB, most of the client's CPU. The chunk size
    keeps the same bounded memory with far fewer calls.
    """

    def __init__(self, blocksize: int, **kwargs: Any) -> None:
        self.blocksize = blocksize
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, blocksize=self.blocksize, **kwargs)


@dataclass
class TagListing:
    """A repository's tags as last listed, with those this client pushed since: the names,
    and apart the few of the referrers tag schema, so that no copy scans the whole list."""

    when: float  # time.monotonic() of the listing
    names: set[str]
    schema_tags: list[str]

    @classmethod
    def of(cls, when: float, tags: list[str]) -> TagListing:
        return cls(when, set(tags), [tag for tag in tags if tag.startswith(SCHEMA_TAG_PREFIXES)])

    def add(self, tag: str) -> None:
        if tag not in self.names:
            self.names.add(tag)
            if tag.startswith(SCHEMA_TAG_PREFIXES):
                self.schema_tags.append(tag)


class RegistryClient:
    """Speaks the v2 API to one registry with one set of credentials. Thread safe."""

    def __init__(self, registry: str, credentials: RegistryAuth, settings: Settings,
                 throttle: Throttle | None = None) -> None:
        self.registry = registry
        self.api_host = API_HOSTS.get(registry, registry)
        self.credentials = credentials
        self.settings = settings
        self.throttle: Throttle = throttle or LocalThrottle()
        self.limits = Limits(credentials.requests_per_second, credentials.concurrent_requests)
        self._backing_off = False
        self.session = GuardedSession(allow_plain_http=credentials.allow_plain_http)
        self.session.headers["User-Agent"] = USER_AGENT
        # The environment (proxies, CA bundle) is read once here: requests would read it
        # again on every request, a measurable share of a small request's CPU.
        self.session.trust_env = False
        proxy = credentials.proxy.get_secret_value() if credentials.proxy else None
        self.session.proxies = ({"http": proxy, "https": proxy} if proxy else
                                requests.utils.get_environ_proxies(f"https://{self.api_host}/"))
        adapter = _Adapter(settings.chunk_size, pool_connections=1,
                           pool_maxsize=settings.pool_connections, max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        verify = credentials.verify
        if verify is True:
            verify = (settings.ca_bundle or os.environ.get("REQUESTS_CA_BUNDLE")
                      or os.environ.get("CURL_CA_BUNDLE") or True)
        self.verify = verify
        self.timeout = (settings.connect_timeout, settings.read_timeout)
        self.auth = Authenticator(registry, credentials, self.session, verify=verify,
                                  timeout=self.timeout)
        self.base_url: str | None = None
        self._ping_lock = threading.Lock()
        # (until when, the message): a ping that could not connect, failing work at once
        self._unreachable: tuple[float, str] | None = None
        # Set by the first answer that was not a 401 to a request with credentials: a later
        # 401 then says "not allowed", not "wrong password".
        self._credentials_accepted = False
        self._tags: dict[str, TagListing] = {}  # repository → its last listing
        self.referrers_api: bool | None = None  # learnt on the first referrers request
        self._tags_lock = threading.Lock()
        self._listing: dict[str, threading.RLock] = {}  # one tag listing per repository at once
        self._listed_empty: dict[str, float] = {}  # repository → when a listing found no tag
        # How blobs go up here: set by the auth file, else learnt from refused PATCHes.
        self.uploads = UploadPolicy(registry, mode=credentials.upload or "auto",
                                    chunk_size=credentials.chunk_size)
        # Set by an answer that carries a pull quota (Docker Hub's RateLimit headers): a GET of
        # a manifest then costs a pull and a HEAD does not, so HEADs come first.
        self.counts_pulls = False
        # Namespaces found missing on push: their other repositories fail without a request.
        self._missing: dict[str, NamespaceMissing] = {}
        # Read-only probes of push targets (`target_missing`), per repository.
        self._probed: dict[str, NamespaceMissing | None] = {}
        self._probing: dict[str, threading.Lock] = {}
        # Harbor or not (its ping), and the projects made sure of (`create_namespace`).
        self._harbor: bool | None = None
        self._ensured: dict[str, RegistryError | None] = {}
        self._namespace_lock = threading.Lock()

    # -- plumbing -------------------------------------------------------------------------

    def ping(self) -> None:
        """Find the scheme and the auth method once; every later call reuses them.

        A ping that could not connect for a reason another try would meet again (refused, no
        such host, TLS handshake) is not retried, and for UNREACHABLE_FOR seconds every call
        fails at once with its one line: an image per request to a mistyped port used to cost
        seconds of backoff each. A timeout or a 5xx is retried as before: those can pass."""
        if self.base_url:
            return
        with self._ping_lock:
            if self.base_url:
                return
            if self._unreachable is not None:
                until, message = self._unreachable
                if time.monotonic() < until:
                    raise RegistryUnreachable(message)  # a new one: each thread its traceback
            try:
                self._ping()
            except RegistryUnreachable as exc:
                self._unreachable = (time.monotonic() + UNREACHABLE_FOR, str(exc))
                raise
            self._unreachable = None

    def _ping(self) -> None:
        # Like the peers, an `insecure` registry is tried over TLS first, then plain HTTP.
        schemes = ["https", "http"] if self.credentials.allow_plain_http else ["https"]
        for scheme in schemes:
            url = f"{scheme}://{self.api_host}/v2/"
            try:
                for attempt in retrying(self.settings, self._ping_attempts(scheme, schemes)):
                    with attempt:
                        try:
                            response = self._send("GET", url, scopes=(), expect=(200, 401),
                                                  learn_on_401=False)
                        except TransportError as exc:
                            if exc.unreachable:  # not retried: the answer would be the same
                                raise RegistryUnreachable(
                                    f"cannot connect to {self.api_host}: {exc.unreachable}"
                                ) from None
                            raise
            except (TransportError, RegistryError) as exc:
                if scheme != schemes[-1]:
                    log.debug("%s: %s failed (%s), trying %s", self.registry, scheme, exc,
                              schemes[-1])
                    continue
                raise
            if response.status_code == 401:
                self.auth.learn(response, ())
            response.close()
            self.base_url = f"{scheme}://{self.api_host}"
            return

    def _ping_attempts(self, scheme: str, schemes: list[str]) -> int:
        # An https probe that plain HTTP may replace gets one try: a refusal there is normal.
        return 1 if scheme != schemes[-1] else self.settings.http_attempts

    def url(self, path: str) -> str:
        self.ping()
        return f"{self.base_url}{path}"

    def _send(
        self,
        method: str,
        url: str,
        *,
        scopes: tuple[str, ...],
        expect: Iterable[int] = (200,),
        headers: dict[str, str] | None = None,
        data: bytes | BodyReader | None = None,
        stream: bool = False,
        allow_redirects: bool = True,
        learn_on_401: bool = True,
    ) -> requests.Response:
        """One request (plus one re-authentication); maps every failure into our errors."""
        expect = tuple(expect)
        replayable = data is None or isinstance(data, bytes)
        authenticated_again = False
        while True:
            request_headers = dict(headers or {})
            # Credentials go to the registry's own host only, never to a session URL elsewhere.
            authorization = self.auth.header(scopes) if self._own_host(url) else None
            if authorization:
                request_headers["Authorization"] = authorization
            try:
                # Always streamed: no answer is read whole unless asked; `preload` below reads
                # the others capped (an evil registry's 100 MiB tag list or error body).
                with self.throttle.request(self.registry, self.limits):
                    response = self.session.request(
                        method, url, headers=request_headers, data=data, stream=True,
                        timeout=self.timeout, verify=self.verify,
                        allow_redirects=allow_redirects,
                    )
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                cause = cause_of(exc)
                if cause.tls:  # a certificate, or TLS spoken to a plain port: every try alike
                    raise RegistryUnreachable(self._tls_failed(url, cause)) from None
                text = f"through its proxy: {cause.text}" if cause.proxy else cause.text
                raise TransportError(f"{method} {redact(url)}: {type(exc).__name__}: {text}",
                                     unreachable=text if cause.unreachable else "") from None
            except requests.RequestException as exc:
                # Too many redirects, a URL requests cannot use: permanent, and the text of
                # such errors may carry a signed URL, so only its type is shown.
                raise RegistryError(f"{self.registry}: {type(exc).__name__} (redirect loop or "
                                    "unusable URL)", method=method, url=redact(url)) from None
            self._observe(response)
            if (response.status_code == 401 and learn_on_401 and not authenticated_again
                    and replayable and self.auth.learn(response, scopes)):
                authenticated_again = True
                preload(response, 64 << 10, self.timeout[1], f"{self.registry}: 401 answer",
                        truncate=True)  # read (capped) so that the connection is reused
                response.close()
                continue
            if (response.status_code == 401 and not replayable and authorization
                    and self.auth.renewed(response)):
                response.close()  # expired credentials, renewed: the caller sends it again
                raise TransportError(f"{method} {redact(url)}: credentials expired and were "
                                     "renewed from their source")
            if authorization and response.status_code != 401:
                self._credentials_accepted = True
            if response.status_code in expect:
                if not stream:
                    preload(response, self.settings.max_manifest_bytes, self.timeout[1],
                            f"{self.registry}: answer to {method} {redact(url)}")
                return response
            preload(response, 64 << 10, self.timeout[1], f"{self.registry}: error answer",
                    truncate=True)
            raise self._error(method, url, response, scopes)

    def _tls_failed(self, url: str, cause: Cause) -> str:
        """`cannot connect to host: TLS handshake failed: <reason>; <the fix>`."""
        parts = urlsplit(url)
        host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname or ""
        if plain_http(cause):
            fix = ("the port does not speak TLS (plain HTTP?): set insecure: true on its entry "
                   "in the auth file (--src-insecure/--dst-insecure with --src/--dst)")
        elif "certificate" in cause.text:
            fix = ("give the registry's CA in the auth file (ca_file) or, if you accept the "
                   "risk, set insecure: true")
        else:
            fix = "check the registry's TLS setup (and the proxy's, if there is one)"
        proxy = " through its proxy" if cause.proxy else ""
        return f"cannot connect to {host}{proxy}: {cause.text}; {fix}"

    def _observe(self, response: requests.Response) -> None:
        """What an answer says about the registry's patience, acted on for the whole fleet:
        a 429 pauses every request to it (for its Retry-After, else for an exponential backoff
        with jitter), and a pull quota about to run out (Docker Hub's `RateLimit-Remaining`)
        pauses it before the registry has to refuse."""
        # A 503 to a push is flow control too (SWR answers it above ~20 pushes per second):
        # the registry's other requests wait with it, or they would keep the rate up.
        pushed_too_fast = response.status_code == 503 and response.request.method in (
            "POST", "PUT", "PATCH")
        if response.status_code == 429 or pushed_too_fast:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            status = response.status_code
            if retry_after is None:
                self._backing_off = True
                retry_after = backoff_delay(self.throttle.backoff(self.registry),
                                            self.settings.backoff_initial,
                                            self.settings.backoff_max)
                reason = f"HTTP {status} without Retry-After: backing off"
            else:
                reason = f"HTTP {status} Retry-After"
            self.throttle.pause(self.registry, min(retry_after, self.settings.retry_after_max),
                                reason)
            return
        if self._backing_off:
            self._backing_off = False
            self.throttle.reset_backoff(self.registry)
        remaining = parse_rate_limit(response.headers.get("RateLimit-Remaining"))
        if remaining is not None:
            self.counts_pulls = True
        if remaining is None or remaining[0] > self.settings.quota_reserve:
            return
        limit = parse_rate_limit(response.headers.get("RateLimit-Limit"))
        window = remaining[1] or (limit[1] if limit else None) or 3600.0
        per_request = window / max(1, limit[0] if limit else 100)
        wait = per_request * (self.settings.quota_reserve - remaining[0] + 1)
        self.throttle.pause(
            self.registry, min(wait, self.settings.quota_pause_max),
            f"quota: {remaining[0]} of {limit[0] if limit else '?'} requests left per "
            f"{window:.0f} s")

    def _unknown(self, repository: str, detail: str, where: ErrorContext) -> NamespaceMissing:
        """A push refused because the repository is unknown. The registry's words name what
        is missing when they quote it (ECR: the repository itself; Artifact Registry: the
        PROJECT/REPOSITORY that holds images), else the namespace is the question."""
        namespace = repository.rsplit("/", 1)[0] if "/" in repository else repository
        missing = _named(detail, repository)
        if missing == repository:
            text = (f"{self.registry} knows no repository {repository!r} and will not create it "
                    f"on push: create {missing!r} on the registry first")
        elif missing:
            text = (f"{self.registry} knows no {missing!r} (which would hold {repository!r}) "
                    f"and will not create it on push: create {missing!r} on the registry first")
        else:
            missing = namespace
            text = (f"{self.registry} knows no repository {repository!r} and will not create it "
                    f"on push: does the namespace {namespace!r} exist, and may this account "
                    f"push to it? (create {missing!r} on the registry first)")
        return NamespaceMissing(text, namespace=missing, **where)

    def _remember_missing(self, error: NamespaceMissing) -> NamespaceMissing:
        self._missing.setdefault(error.namespace, error)
        return error

    def _check_namespace(self, repository: str) -> None:
        """Fail at once a push into a namespace (or repository) already found missing."""
        for namespace, error in self._missing.items():
            if repository == namespace or repository.startswith(namespace + "/"):
                raise NamespaceMissing(error.message, namespace=namespace, method=error.method,
                                       url=error.url, status=error.status, code=error.code,
                                       detail=error.detail)

    @property
    def mounts_across(self) -> bool:
        """Whether a mount from another repository can be granted here: not by a token service
        found to grant one scope per token (old GitLab, Harbor 1.1), which cannot put the
        source's pull and the target's push in one token. Then blobs are uploaded without
        asking, for the rest of the run."""
        return self.auth.scope_form != "single"

    def _before_push(self, repository: str) -> None:
        """Fail at once a push into a namespace found missing; create the namespace first
        where the auth file asks for it (`create_namespace`)."""
        self._check_namespace(repository)
        if self.credentials.create_namespace:
            self._ensure_namespace(repository)

    def is_harbor(self) -> bool:
        """Whether the registry is Harbor (its API's ping), asked once."""
        with self._namespace_lock:
            if self._harbor is None:
                self._harbor = harbor.is_harbor(self)
            return self._harbor

    def _namespace_unsupported(self, project: str) -> NamespaceMissing:
        return NamespaceMissing(
            f"{self.registry}: create_namespace is set in the auth file, but the registry does "
            f"not answer as Harbor (GET {harbor.API}/ping), the one namespace API migrator "
            f"speaks: create {project!r} on the registry first and drop the setting",
            namespace=project)

    def _ensure_namespace(self, repository: str) -> None:
        """Harbor's project of `repository` created unless it exists, once per process
        however many copies push into it at once."""
        project = repository.split("/", 1)[0]
        with self._namespace_lock:
            ensuring = self._probing.setdefault(f"project:{project}", threading.Lock())
        with ensuring:
            if project not in self._ensured:
                try:
                    if not self.is_harbor():
                        raise self._namespace_unsupported(project)
                    harbor.ensure_project(self, project)
                    self._ensured[project] = None
                except RetryableError:
                    raise  # asked again by the next push
                except RegistryError as exc:
                    self._ensured[project] = exc
            error = self._ensured[project]
        if error is not None:
            raise error

    def target_missing(self, repository: str) -> NamespaceMissing | None:
        """Read-only: why a push into `repository` would be refused because the repository,
        or the project or namespace it belongs to, does not exist; None when it exists or
        a push creates it (or the registry will not say). `migrator plan` asks before it
        plans a copy; a dropped upload POST asks to tell a missing repository (ECR) from a
        reset. One request per repository (docs/registries.md lists what each registry lets
        a reader tell):

        - the repository's tag list with `n=1`: 200 → it exists;
        - 404 whose words quote the repository or its leading part as not existing (ECR:
          "The repository with name 'x' does not exist in the registry with id ...",
          Artifact Registry: `Repository "p/r" not found`) → missing;
        - 400 NAME_INVALID → a name the registry refuses (Artifact Registry, fewer than three
          components);
        - on Harbor (its ping answers), a 404 or a refusal → its projects API says whether
          the project exists (a push never creates one);
        - elsewhere, a bare 404 → a push creates it (Distribution, Docker Hub, GHCR, Quay);
          a DENIED → the namespace question (SWR, ACR personal deny reads and pushes alike
          in an organisation or namespace that does not exist)."""
        try:
            self._check_namespace(repository)
        except NamespaceMissing as exc:
            return exc
        with self._namespace_lock:
            # one probe per repository however many copies ask at once
            probing = self._probing.setdefault(repository, threading.Lock())
        with probing:
            if repository in self._probed:
                return self._probed[repository]
            found = self._probe_target(repository)
            self._probed[repository] = found
        if found is not None and not self.credentials.create_namespace:
            self._remember_missing(found)
        return found

    def _probe_target(self, repository: str) -> NamespaceMissing | None:
        project = repository.split("/", 1)[0]
        if self.credentials.create_namespace:
            # A missing project would be created: only a registry that cannot is a problem.
            return None if self.is_harbor() else self._namespace_unsupported(project)
        response = self.request("GET", f"/v2/{repository}/tags/list?n=1",
                                expect=(200, 400, 401, 403, 404),
                                scopes=(repository_scope(repository, "pull"),))
        status = response.status_code
        if status == 200:
            response.close()
            return None
        code, detail = _oci_error(response)
        response.close()
        where = ErrorContext(method="GET", url=redact(response.url), status=status, code=code,
                             detail=detail)
        namespace = repository.rsplit("/", 1)[0] if "/" in repository else repository
        if code == "NAME_INVALID":
            return self._name_invalid(repository, where)
        words = detail.lower()
        if status == 404 and _named(detail, repository) and (
                "does not exist" in words or "not found" in words):
            return self._unknown(repository, detail, where)
        if self.is_harbor():
            if harbor.project_exists(self, project) is False:
                return NamespaceMissing(
                    f"{self.registry}: Harbor has no project {project!r}, and a push does not "
                    f"create one: create {project!r} on the registry first (or set "
                    "create_namespace: true on the registry's auth file entry)",
                    namespace=project, **where)
            return None
        if status == 404:
            return None  # a push creates it
        if status == 403 or code == "DENIED":
            who = (f"user {self.credentials.username!r}" if self.credentials.username
                   else "anonymous access")
            return NamespaceMissing(
                f"{self.registry}: {who} is denied even reading {repository!r}: does the "
                f"namespace {namespace!r} exist, and may this account push to it? (create "
                f"{namespace!r} on the registry first)", namespace=namespace, **where)
        return None

    def _name_invalid(self, repository: str, where: ErrorContext) -> NamespaceMissing:
        # Artifact Registry: PROJECT/REPOSITORY/IMAGE, fewer components are no name
        return NamespaceMissing(
            f"{self.registry} refuses the repository name {repository!r}: it needs more "
            "path components here (Artifact Registry: PROJECT/REPOSITORY/IMAGE); name it "
            "accordingly", namespace=repository, **where)

    def _push_post(self, repository: str, path: str, scopes: tuple[str, ...],
                   expect: tuple[int, ...] = (201, 202)) -> requests.Response:
        """An upload (or mount) POST. A connection dropped without an answer is what ECR does
        to a POST into a repository that does not exist: the read-only probe then tells a
        missing repository (one line that says so) from a reset (retried as usual)."""
        url = self.url(path)
        try:
            return self._send("POST", url, expect=expect, data=b"", scopes=scopes)
        except TransportError:
            missing = self.target_missing(repository)
            if missing is not None:
                raise missing from None
        return self.request("POST", url, expect=expect, data=b"", scopes=scopes)

    def _own_host(self, url: str) -> bool:
        return urlsplit(url).netloc == self.api_host

    def request(self, method: str, path_or_url: str, *, attempts: int = 0,
                **kwargs: Unpack[SendOptions]) -> requests.Response:
        """`_send` with transient faults retried (only for requests whose body can be replayed),
        `attempts` times in all (default: the settings')."""
        url = path_or_url if "://" in path_or_url else self.url(path_or_url)
        for attempt in retrying(self.settings, attempts or self.settings.http_attempts):
            with attempt:
                return self._send(method, url, **kwargs)
        raise AssertionError("unreachable")

    def _error(
        self, method: str, url: str, response: requests.Response, scopes: tuple[str, ...]
    ) -> MigratorError:
        status = response.status_code
        code, detail = _oci_error(response)
        response.close()
        where = ErrorContext(method=method, url=redact(url), status=status, code=code,
                             detail=detail)
        path = urlsplit(url).path
        repository = _repository_of(path)
        pushing = any(scope.endswith("push") for scope in scopes)
        if status in RETRYABLE_STATUSES:
            return RetryableStatus(
                f"{self.registry}: transient failure",
                # After a 429 the throttle's pause is the wait: the next try blocks there.
                retry_after=0.0 if status == 429 else
                parse_retry_after(response.headers.get("Retry-After")), **where)
        who = (f"user {self.credentials.username!r}" if self.credentials.username
               else "anonymous access")
        namespace = repository.rsplit("/", 1)[0] if "/" in repository else repository
        ask = f"does the namespace {namespace!r} exist, and may this account push to it?"
        if status in (401, 403) or code == "DENIED":
            challenge = parse_challenge(response.headers.get("WWW-Authenticate"))
            scope_error = challenge.params.get("error", "") if challenge else ""
            scope_note = f" (the token grants no {'push' if pushing else 'pull'}: " \
                         "insufficient_scope)" if scope_error == "insufficient_scope" else ""
            # A 401 means "wrong credentials" unless they were accepted already: a token was
            # issued for them (the token service refuses wrong ones itself), or an earlier
            # request with them was answered; or the answer names a missing scope or a denial.
            # (A token the registry calls invalid, expired say, is no answer about rights.)
            tokens = (self.auth.challenge is not None and self.auth.challenge.scheme == "bearer"
                      and scope_error != "invalid_token")
            refused = (status != 401 or bool(scope_note) or code == "DENIED"
                       or self._credentials_accepted or tokens)
            mount_from = _mount_source(url)
            if refused and mount_from:
                # Not about pushing: the registry would not lend the blob from the other
                # repository (Harbor: its project unknown; Docker Hub: no pull on it). The
                # caller uploads the blob instead.
                why = (": its token service puts one scope in a token, and a mount needs the "
                       "source's pull with the target's push in one" if not self.mounts_across
                       else scope_note)
                return RegistryError(
                    f"{self.registry}: mount into {repository!r} from {mount_from!r} refused"
                    f"{why}; the blob is uploaded instead", **where)
            if refused and pushing and self.credentials.anonymous:
                return RegistryError(
                    f"{self.registry}: anonymous access may not push to {repository!r}"
                    f"{scope_note}: give this registry's credentials in the auth file", **where)
            if refused and pushing:
                return RegistryError(
                    f"{self.registry}: {who} may not push to {repository!r}{scope_note}: {ask}",
                    **where)
            if refused:
                return RegistryError(
                    f"{self.registry}: {who} may not pull {repository!r}{scope_note}: does it "
                    "exist, and may this account pull it?", **where)
            return AuthError(
                f"{self.registry}: authentication failed for {who} on {repository!r} "
                f"({method} {redact(url)}, HTTP 401 {code}); check the auth file")
        if code in ("BLOB_UNKNOWN", "MANIFEST_BLOB_UNKNOWN") and "/manifests/" in path:
            return BlobUnknownOnPush(
                f"{self.registry}: manifest refused because the target lacks a blob", **where)
        if code == "NAME_INVALID":
            return self._name_invalid(repository, where)
        if pushing and (code == "NAME_UNKNOWN" or (
                status == 404 and method == "POST" and path.endswith("/blobs/uploads/"))):
            # Distribution, ECR, Artifact Registry: a repository the account may not create,
            # or whose namespace does not exist, is unknown to the upload.
            return self._remember_missing(self._unknown(repository, detail, where))
        if code == "NAME_UNKNOWN":
            return RegistryError(f"repository {repository!r} not found on {self.registry}",
                                 **where)
        if code == "MANIFEST_UNKNOWN" or (status == 404 and "/manifests/" in path):
            return RegistryError(
                f"{self.registry}/{repository}:{path.rsplit('/', 1)[-1]} not found", **where)
        return RegistryError(f"{self.registry}: request failed", **where)

    # -- the API ----------------------------------------------------------------------------

    def list_tags(self, repository: str) -> list[str]:
        """All tags, following `Link: <...>; rel="next"` pages (`?n=` asks for big pages),
        read afresh (expanding a rule), and remembered for `known_tags`/`referrer_tags`."""
        now = time.monotonic()
        tags = self._list_tags(repository)
        self._remember_listing(repository, TagListing.of(now, tags))
        return tags

    def _recent_listing(self, repository: str, max_age: float) -> TagListing:
        """The repository's listing if at most `max_age` seconds old, else a new one: read
        once for the copies that ask at the same time."""
        with self._listing_lock(repository):
            with self._tags_lock:
                cached = self._tags.get(repository)
            if cached is not None and time.monotonic() - cached.when < max_age:
                return cached
            self.list_tags(repository)
            with self._tags_lock:
                return self._tags[repository]

    def _remember_listing(self, repository: str, listing: TagListing) -> None:
        with self._tags_lock:
            # Oldest first: the listings no caller may use any more (older than any
            # `max_age` asked, `tag_list_ttl`) go, so a 20 000-tag run keeps a few of them.
            self._tags.pop(repository, None)
            self._tags[repository] = listing
            horizon = listing.when - self.settings.tag_list_ttl
            while True:  # ends at the listing just kept, at the latest
                oldest = next(iter(self._tags))
                if self._tags[oldest].when >= horizon:
                    break
                del self._tags[oldest]
            if listing.names:
                self._listed_empty.pop(repository, None)
            else:
                self._listed_empty[repository] = listing.when

    def referrer_tags(self, repository: str, *, max_age: float) -> list[str]:
        """The tags of the referrers tag schema (`sha256-<hex>`, and cosign's `.sig`, `.att`,
        `.sbom` after it) from a listing at most `max_age` seconds old: each image's lookup
        reads these few, not a 5 000-tag list."""
        return list(self._recent_listing(repository, max_age).schema_tags)

    def known_tags(self, repository: str, *, max_age: float) -> AbstractSet[str] | None:
        """The repository's tags from a listing at most `max_age` seconds old (with those this
        client pushed since), read once per repository however many copies ask at the same
        time; a repository that does not exist yet has none. None where the registry will not
        list them (ask per tag then). Read it, never change it."""
        with self._listing_lock(repository):  # held until the absence is remembered too
            try:
                return self._recent_listing(repository, max_age).names
            except (RegistryError, AuthError) as exc:
                if isinstance(exc, RetryableError | RegistryUnreachable):
                    raise
                if getattr(exc, "status", None) != 404:
                    return None  # not allowed to list, say: a HEAD per tag it is
            # Remember the absence too, or each copy would ask again.
            listing = TagListing.of(time.monotonic(), [])
            self._remember_listing(repository, listing)
            return listing.names

    def _listing_lock(self, repository: str) -> threading.RLock:
        with self._tags_lock:
            return self._listing.setdefault(repository, threading.RLock())

    def listed_empty(self, repository: str, *, max_age: float) -> bool:
        """Whether a listing at most `max_age` seconds old found the repository without any
        tag (new, most likely), whatever this client pushed there since."""
        with self._tags_lock:
            listed = self._listed_empty.get(repository)
        return listed is not None and time.monotonic() - listed < max_age

    def _list_tags(self, repository: str) -> list[str]:
        try:
            return self._pages(f"/v2/{repository}/tags/list", "tags",
                               f"tag list of {repository!r}",
                               scopes=(repository_scope(repository, "pull"),))
        except RegistryError as exc:
            if exc.status != 404 or isinstance(exc, RetryableError):
                raise
            # Docker Hub (and Distribution once the last tag is gone) answers 404 for a
            # repository without tags: nobody can tell that from one that does not exist.
            raise RegistryError(
                f"{self.registry}/{repository} has no tags, or does not exist (its tag list "
                "answers 404): nothing to copy from it", method=exc.method, url=exc.url,
                status=exc.status, code=exc.code, detail=exc.detail) from None

    def _pages(self, path: str, field: str, what: str, *, scopes: tuple[str, ...],
               refused: Callable[[str, requests.Response], RegistryError] | None = None
               ) -> list[str]:
        """Every item of a paged list (`?n=` asks for big pages, `Link: <...>; rel="next"`
        leads to the next), with a bounded number of pages on the registry's own host."""
        url = self.url(f"{path}?n={self.settings.tag_page_size}")
        items: list[str] = []
        said = time.monotonic()
        for page_number in range(self.settings.max_tag_pages):
            try:
                response = self.request("GET", url, scopes=scopes,
                                        expect=(200, 401, 403, 404, 405) if refused else (200,))
            except RegistryError as exc:
                if page_number or exc.status != 400 or "?n=" not in url:
                    raise
                # ECR refuses `n` above 1000 (400 UNSUPPORTED): its own page size then.
                log.debug("%s: %s refused ?n= (%s); listing with the registry's pages",
                          self.registry, what, exc.code)
                url = self.url(path)
                response = self.request("GET", url, scopes=scopes,
                                        expect=(200, 401, 403, 404, 405) if refused else (200,))
            if response.status_code != 200 and refused is not None:
                raise refused(url, response)
            try:
                page = response.json().get(field) or []
            except (ValueError, AttributeError):
                raise RegistryError(f"{self.registry}: {what} is not JSON",
                                    method="GET", url=redact(url)) from None
            items.extend(str(item) for item in page)
            next_link = response.links.get("next", {}).get("url")
            if not next_link:
                return items
            if time.monotonic() - said >= PAGE_PROGRESS_EVERY:  # a long list: show it moves
                said = time.monotonic()
                log.info("%s: reading the %s: %d so far, page %d", self.registry, what,
                         len(items), page_number + 1)
            url = urljoin(url, next_link)
            if urlsplit(url).netloc != urlsplit(self.base_url or "").netloc:
                raise RegistryError(f"{self.registry}: {what}: pagination leads to another host",
                                    method="GET", url=redact(url))
        raise RegistryError(
            f"{self.registry}: {what} has more than {self.settings.max_tag_pages} pages",
            method="GET", url=redact(url))

    def referrers(self, repository: str, digest: str) -> list[Descriptor] | None:
        """The manifests that refer to `digest` (OCI 1.1 referrers API), or None when the
        registry does not offer the API (asked once per registry: a 404 on the endpoint)."""
        if self.referrers_api is False:
            return None
        response = self.request(
            "GET", f"/v2/{repository}/referrers/{digest}", expect=(200, 400, 404, 405),
            scopes=(repository_scope(repository, "pull"),), headers={"Accept": OCI_INDEX})
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if response.status_code != 200 or content_type != OCI_INDEX:
            response.close()
            self.referrers_api = False
            return None
        self.referrers_api = True
        raw = response.content[: self.settings.max_manifest_bytes + 1]
        if len(raw) > self.settings.max_manifest_bytes:
            raise RegistryError(f"{self.registry}: referrers of {digest} too large")
        return parse_descriptors(raw, f"{self.registry}: referrers of {digest}")

    def head_manifest(self, repository: str, reference: str, *,
                      target: bool = False) -> tuple[str, str] | None:
        """(digest, media type) of a tag or digest, or None when it does not exist. On a
        push `target`, a refused read (401, 403: Harbor's project or SWR's organisation that
        does not exist, an account that may push but not pull) is None too: the push that
        follows gets the answer that says why (see REFUSED_READS)."""
        refused = REFUSED_READS if target else ()
        response = self.request(
            "HEAD", f"/v2/{repository}/manifests/{reference}", expect=(200, 404, *refused),
            scopes=(repository_scope(repository, "pull"),), headers={"Accept": ACCEPT})
        if response.status_code != 200:
            return None
        digest = response.headers.get("Docker-Content-Digest", "")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if not digest:
            # Some registries omit the header on HEAD; the GET's bytes are then the truth.
            return self.get_manifest(repository, reference).digest, media_type
        return digest, media_type

    def get_manifest(self, repository: str, reference: str) -> Manifest:
        """The manifest's raw bytes; when `reference` is a digest the bytes must hash to it."""
        response = self.request(
            "GET", f"/v2/{repository}/manifests/{reference}", stream=True,
            scopes=(repository_scope(repository, "pull"),), headers={"Accept": ACCEPT})
        with response:
            raw = read_capped(response, self.settings.max_manifest_bytes, self.timeout[1],
                              f"manifest {redact(response.url)}")
        # By tag, the registry's Docker-Content-Digest names the bytes it sent: bytes hashing
        # to another digest were damaged on the way, a digest mismatch (not "invalid JSON").
        expected = reference if reference.startswith("sha") else (
            response.headers.get("Docker-Content-Digest") or None)
        return parse_manifest(raw, response.headers.get("Content-Type", ""), expected)

    def put_manifest(self, repository: str, reference: str, manifest: Manifest) -> str:
        """PUT the manifest's bytes (always with a Content-Length: Nexus refuses a manifest
        without one); the digest the registry names, else the bytes' own."""
        self._before_push(repository)
        try:
            response = self.request(
                "PUT", f"/v2/{repository}/manifests/{reference}", expect=(200, 201),
                scopes=(repository_scope(repository, "pull,push"),),
                headers={"Content-Type": manifest.media_type}, data=manifest.raw,
                # Distribution without schema1 support refuses one with a 500 every time:
                # a second try tells that from a passing fault without five backoffs.
                attempts=SCHEMA1_ATTEMPTS if manifest.media_type in SCHEMA1 else 0)
        except RegistryError as exc:
            raise self._manifest_refused(exc, repository, reference, manifest) from None
        response.close()
        if ":" not in reference:  # a tag: a listing remembered from before now lacks it
            with self._tags_lock:
                cached = self._tags.get(repository)
                if cached is not None:
                    cached.add(reference)
        return response.headers.get("Docker-Content-Digest") or manifest.digest

    def _manifest_refused(self, exc: RegistryError, repository: str, reference: str,
                          manifest: Manifest) -> RegistryError:
        """A refused manifest PUT that says why in words a person acts on: an immutable tag,
        or a format the target does not take."""
        where = ErrorContext(method=exc.method, url=exc.url, status=exc.status, code=exc.code,
                             detail=exc.detail)
        if manifest.media_type in SCHEMA1 and _schema1_refusal(exc):
            return FormatRefused(
                f"{self.registry} refused the Docker schema1 manifest ({manifest.media_type}) "
                f"of {repository}:{reference}. It is copied unchanged or not at all (a "
                "conversion to schema2 changes its digest): enable schema1 on the target if it "
                "can (Distribution: compatibility.schema1.enabled), or re-push the image at the "
                "source with a current Docker client or crane so that it becomes schema2",
                **where)
        if isinstance(exc, RetryableError | BlobUnknownOnPush):
            return exc
        text = f"{exc.detail} {exc.message}".lower()
        if exc.status == 412 or "immutable" in text:
            return TagImmutable(
                f"{self.registry}: tag {repository}:{reference} is immutable on the target (a "
                "tag immutability rule) and was not overwritten: lift the rule for it or copy "
                "to another tag", **where)
        if exc.status == 415 or (exc.code in ("MANIFEST_INVALID", "UNSUPPORTED") and any(
                word in text for word in ("media type", "mediatype", "unsupported"))):
            docker = manifest.media_type in (DOCKER_MANIFEST, DOCKER_LIST)
            oci = manifest.media_type in (OCI_MANIFEST, OCI_INDEX)
            if docker or oci:
                refused, wanted = ("Docker", "OCI") if docker else ("OCI", "Docker")
                return FormatRefused(
                    f"{self.registry} refused the {refused} manifest format "
                    f"({manifest.media_type}) of {repository}:{reference}: it takes {wanted} "
                    "manifests only. Manifests are copied unchanged (a conversion changes every "
                    f"digest): allow {refused} media types on the target"
                    f"{' (zot: docker2s2 compatibility)' if docker else ''} or copy to another "
                    "registry", **where)
        return exc

    def blob_exists(self, repository: str, digest: str, *, target: bool = False) -> bool:
        """Whether the repository holds the blob; on a push `target` a refused read is "no"
        (see `head_manifest`)."""
        refused = REFUSED_READS if target else ()
        response = self.request(
            "HEAD", f"/v2/{repository}/blobs/{digest}", expect=(200, 404, *REDIRECTS, *refused),
            scopes=(repository_scope(repository, "pull"),), allow_redirects=False)
        # 200 here, or a redirect to storage, both mean "present"; HEAD with no redirect
        # following keeps the registry's Authorization from going to another host.
        return response.status_code not in (404, *refused)

    def blob_size(self, repository: str, digest: str) -> int | None:
        """The blob's size from a HEAD's Content-Length, or None when the answer has none (a
        redirect to storage, which is not followed: the registry's Authorization stays home).
        For the blobs a manifest lists without sizes (Docker schema1)."""
        response = self.request(
            "HEAD", f"/v2/{repository}/blobs/{digest}", expect=(200, *REDIRECTS),
            scopes=(repository_scope(repository, "pull"),), allow_redirects=False,
            headers=BLOB_HEADERS)
        length = response.headers.get("Content-Length", "")
        return int(length) if response.status_code == 200 and length.isdigit() else None

    def open_blob(self, repository: str, digest: str, offset: int = 0) -> requests.Response:
        """A streamed GET, from `offset` on with a Range request (206; a registry that ignores
        Range answers 200 with the whole blob). requests drops Authorization on redirects to
        another host."""
        headers = {**BLOB_HEADERS, "Range": f"bytes={offset}-"} if offset else BLOB_HEADERS
        return self.request("GET", f"/v2/{repository}/blobs/{digest}", stream=True,
                            headers=headers, expect=(200, 206) if offset else (200,),
                            scopes=(repository_scope(repository, "pull"),))

    def read_blob(self, repository: str, digest: str, limit: int) -> bytes:
        """A small blob (an image config) whole, at most `limit` bytes, its digest checked:
        the engine reads what it decides on, so the bytes must be the ones the digest names."""
        algorithm = digest.partition(":")[0]
        if algorithm not in ("sha256", "sha512"):
            raise DigestMismatch(f"blob {digest}", expected=digest, got="unsupported algorithm")
        response = self.open_blob(repository, digest)
        with response:
            raw = read_capped(response, limit, self.timeout[1], f"blob {digest}", decode=False)
        got = f"{algorithm}:{hashlib.new(algorithm, raw).hexdigest()}"
        if got != digest:
            raise DigestMismatch(f"blob {digest}", expected=digest, got=got)
        return raw

    def mount_blob(self, repository: str, digest: str, from_repository: str) -> str | None:
        """Cross-repository mount: None when mounted (201), else the upload URL it opened."""
        self._before_push(repository)
        response = self._push_post(
            repository,
            f"/v2/{repository}/blobs/uploads/?mount={quote(digest)}&from={quote(from_repository)}",
            scopes=(repository_scope(repository, "pull,push"),
                    repository_scope(from_repository, "pull")))
        response.close()
        if response.status_code == 201:
            return None
        return self._location(response)

    def start_upload(self, repository: str) -> str:
        self._before_push(repository)
        response = self._push_post(repository, f"/v2/{repository}/blobs/uploads/",
                                   scopes=(repository_scope(repository, "pull,push"),),
                                   expect=(202,))
        response.close()
        return self._location(response)

    def finish_upload(self, repository: str, upload_url: str, digest: str,
                      body: bytes | BodyReader) -> None:
        """Monolithic PUT of a streamed body; not retried here (a stream cannot be replayed)."""
        separator = "&" if "?" in upload_url else "?"
        try:
            response = self._send(
                "PUT", f"{upload_url}{separator}digest={quote(digest)}", expect=(201, 204),
                scopes=(repository_scope(repository, "pull,push"),), data=body,
                headers={"Content-Type": "application/octet-stream"})
        except RegistryError as exc:
            # ECR refuses the closing PUT when a PATCH before it was a too small part.
            refused = _chunk_refusal(exc, offset=-1, sent=len(body) if isinstance(body, bytes)
                                     else 0)
            if refused is not None and refused.reason == "too-small":
                raise refused from None
            raise
        response.close()

    def upload_chunk(self, repository: str, session: UploadSession, body: BodyReader,
                     length: int) -> UploadSession:
        """PATCH `length` bytes at the session's offset; the registry's `Range` answer, not our
        own count, says how far the upload now goes. Not retried here (a stream)."""
        end = session.offset + length - 1
        try:
            response = self._send(
                "PATCH", session.url, expect=(201, 202), data=body,  # ECR answers 201
                scopes=(repository_scope(repository, "pull,push"),),
                headers={"Content-Type": "application/octet-stream",
                         "Content-Range": f"{session.offset}-{end}"})
        except RegistryError as exc:
            raise (_chunk_refusal(exc, session.offset, length) or self._lost(exc, session)) \
                from None
        response.close()
        confirmed = _range_end(response.headers.get("Range"))
        url = self._location(response)
        if confirmed is None:
            return self.upload_status(repository, url) or UploadSession(url, end + 1)
        return UploadSession(url, self.uploads.confirmed(session.offset, end + 1, confirmed))

    def upload_status(self, repository: str, url: str) -> UploadSession | None:
        """Where a chunked upload stands by the registry (GET on the session: `Range`), or
        None when the registry does not know it (any more)."""
        response = self.request("GET", url, expect=(200, 204, 400, 404, 416),
                                scopes=(repository_scope(repository, "pull,push"),))
        response.close()
        confirmed = _range_end(response.headers.get("Range"))
        if response.status_code not in (200, 204) or confirmed is None:
            return None
        location = response.headers.get("Location")
        return UploadSession(urljoin(response.url, location) if location else url, confirmed)

    def _lost(self, exc: RegistryError, session: UploadSession) -> RegistryError:
        """A refused PATCH whose cause is the session itself: unknown, invalid, or at another
        offset (416). Distribution cancels a session whose recorded offset is behind the bytes
        it holds, e.g. after a PATCH cut mid-body."""
        if isinstance(exc, RetryableError) or not (
                exc.status in (404, 416) or exc.code in ("BLOB_UPLOAD_UNKNOWN",
                                                         "BLOB_UPLOAD_INVALID")):
            return exc
        return UploadSessionLost(
            f"{self.registry}: upload session at offset {session.offset} lost "
            f"({exc.status} {exc.code}); starting a fresh one",
            method="PATCH", url=redact(session.url), status=exc.status, code=exc.code)

    def cancel_upload(self, repository: str, upload_url: str) -> None:
        """Best effort: a stale session is harmless, the registry purges it eventually."""
        try:
            self._send("DELETE", upload_url, expect=(202, 204, 404),
                       scopes=(repository_scope(repository, "pull,push"),)).close()
        except MigratorError as exc:
            log.debug("could not cancel upload session %s: %s", redact(upload_url), exc)

    def _location(self, response: requests.Response) -> str:
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.registry}: upload answered without a Location",
                                method=response.request.method or "", url=redact(response.url))
        return urljoin(response.url, location)

    # -- the catalog (issue "choosing what to copy": sources `registry/namespace/*`) -----------

    def list_repositories(self, prefix: str = "") -> list[str]:
        """The repositories the catalog (`GET /v2/_catalog`) lists below the namespace
        `prefix` ("" for all), following `Link` pages like `list_tags`.

        The catalog is optional in the Distribution spec and many registries refuse it (Docker
        Hub, GHCR) or hide it from some accounts; both are permanent errors that say so.
        """
        below = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        listed = self._pages("/v2/_catalog", "repositories", "the catalog",
                             scopes=("registry:catalog:*",), refused=self._catalog_refused)
        return [name for name in listed if name.startswith(below)]

    def _catalog_refused(self, url: str, response: requests.Response) -> RegistryError:
        status = response.status_code
        code, detail = _oci_error(response)
        response.close()
        where = ErrorContext(method="GET", url=redact(url), status=status, code=code,
                             detail=detail)
        if status in (401, 403) or code in ("DENIED", "UNAUTHORIZED"):
            who = (f"user {self.credentials.username!r}" if self.credentials.username
                   else "anonymous access")
            return RegistryError(
                f"{self.registry} refuses its catalog (the list of its repositories) to {who}: "
                "give an account with catalog rights (registry:catalog:*), or write one rule "
                "per repository", **where)
        return RegistryError(
            f"{self.registry} does not offer its catalog (the list of its repositories): "
            "write one rule per repository", **where)


def _schema1_refusal(exc: RegistryError) -> bool:
    """Whether a schema1 manifest PUT's refusal is the target's "no schema1 here": a 4xx about
    the manifest or its media type (zot, Distribution 3, GHCR), or the 500 UNKNOWN that
    Distribution 2.8 without schema1 support answers every time (measured: its log says
    "manifest schema v1 unsupported", its answer only "unknown error")."""
    if exc.status == 500 and exc.code in ("", "UNKNOWN"):
        return True
    return exc.status in (400, 415) and exc.code in ("", "MANIFEST_INVALID", "UNSUPPORTED")


def _chunk_refusal(exc: RegistryError, offset: int, sent: int) -> UploadChunkRefused | None:
    """A refused PATCH (at `offset`, `sent` bytes; -1: the closing PUT) whose cause is the
    chunk, not the session: too large (GHCR's 416 "exceeds the maximum permissible limit of
    4.00MiB", or any 416 on a fresh session, whose offset cannot be wrong), too small (ECR's
    LayerPartTooSmallException), or PATCH not offered at all (Artifact Registry)."""
    if isinstance(exc, RetryableError) or exc.status in (401, 403):
        return None
    text = f"{exc.detail} {exc.message}"
    lowered = text.lower()
    sizes = [float(number) * _UNITS[unit.lower()] for number, unit in _SIZE.findall(text)]
    limit = int(sizes[-1]) if sizes else None
    where = ErrorContext(method=exc.method, url=exc.url, status=exc.status, code=exc.code,
                         detail=exc.detail)
    if "toosmall" in lowered.replace(" ", "") or "at least" in lowered:
        reason = "too-small"
    elif "too large" in lowered or "exceeds" in lowered or (exc.status == 416 and offset == 0):
        reason = "too-large"
    elif offset >= 0 and (exc.status in (405, 501) or exc.code == "UNSUPPORTED"):
        reason = "unsupported"
    else:
        return None
    return UploadChunkRefused(f"chunk of {sent} bytes refused ({reason})", reason=reason,
                              limit=limit, sent=sent, **where)


def _named(detail: str, repository: str) -> str:
    """The repository or namespace an error message quotes, when it is `repository` or one
    of its leading parts (ECR: "The repository with name 'x' does not exist...")."""
    for name in _QUOTED.findall(detail):
        if repository == name or repository.startswith(name + "/"):
            return name
    return ""


def _mount_source(url: str) -> str:
    """The `from=` repository of a cross-repository mount's URL, "" for any other URL."""
    query = parse_qs(urlsplit(url).query)
    return query.get("from", [""])[0] if "mount" in query else ""


def _range_end(value: str | None) -> int | None:
    """`Range: 0-1023` (an upload's extent) → 1024 bytes held. Distribution answers `0-0`
    for an empty session too, which reads as 0 here: we record sessions only after a chunk."""
    if not value:
        return None
    start, _, end = value.removeprefix("bytes=").partition("-")
    if not start.strip().isdigit() or not end.strip().isdigit():
        return None
    end_value = int(end)
    return 0 if end_value == 0 else end_value + 1


def _repository_of(path: str) -> str:
    """`/v2/ns/repo/manifests/x` → `ns/repo`."""
    inner = path[len("/v2/"):] if path.startswith("/v2/") else path
    for marker in ("/manifests/", "/blobs/", "/tags/"):
        if marker in inner:
            return inner.split(marker, 1)[0]
    return inner.strip("/")
