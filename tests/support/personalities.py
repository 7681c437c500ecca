"""Registry personalities: a real Distribution registry that answers the way another registry
does on the wire (Docker Hub, GHCR, Quay, Harbor, ECR, Artifact Registry, ACR, SWR, GitLab,
Nexus, zot).

Why: users copy from and into registries we cannot reach from the tests, and the peers'
trackers are full of copies that broke on exactly how those registries differ from
Distribution. Each difference is reproduced here as a small `Behaviour`, and a personality is
a table of them (`PERSONALITIES`), each citing its public source: adding a registry is a few
lines.

`PersonalityFront(name, upstream_url)` is an HTTP server on 127.0.0.1 in front of a plain-HTTP
Distribution registry. Every request goes through the personality's behaviours: `before` may
answer it without forwarding, `after` may rewrite the upstream's answer. Request and answer
bodies are held whole in memory (tests keep blobs at a few tens of MiB). Blob downloads that a
personality redirects go to a `SignedStore`, a second server (another host:port, as S3,
CloudFront, Azure Blob or R2 are other hosts) that serves them under a signed query string and
answers 400 to a request that also carries an Authorization header, as S3 does.

`front.log` holds (method, path, status) of every request the front answered;
`front.store.seen` every URL the store was asked for (signature included), so that a test can
look for the signature where it must not be.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import http.client
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

MiB = 1 << 20
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                        "transfer-encoding", "upgrade", "host", "content-length", "expect"})
# The repository is the longest prefix that leaves a known endpoint: `.../tags/manifests/x`
# is a manifest of the repository `.../tags`.
_PATH = re.compile(r"^/v2/(?P<repo>.+)/(?:(?P<kind>manifests|tags|blobs)/(?P<ref>[^/?]+)"
                   r"|(?P<upload>blobs/uploads)/?(?P<session>[^/?]*))(?:\?(?P<query>.*))?$")
DOCKER_TYPES = ("application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.distribution.manifest.list.v2+json")
OCI_TYPES = ("application/vnd.oci.image.manifest.v1+json",
             "application/vnd.oci.image.index.v1+json")
DROP = "drop"  # an answer that closes the connection without a status line


@dataclass
class Request:
    method: str
    path: str  # path and query, as sent
    headers: dict[str, str]  # names in lower case
    body: bytes
    chunked: bool = False  # sent with Transfer-Encoding: chunked (no Content-Length)

    def __post_init__(self) -> None:
        match = _PATH.match(self.path)
        self.repository = match["repo"] if match else ""
        self.kind = (match["kind"] or match["upload"]) if match else ""
        self.reference = (match["ref"] or match["session"] or "") if match else ""
        self.query = parse_qs(match["query"] or "") if match else {}

    @property
    def is_write(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH", "DELETE")


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None

    def set_header(self, name: str, value: str | None) -> None:
        for key in [key for key in self.headers if key.lower() == name.lower()]:
            del self.headers[key]
        if value is not None:
            self.headers[name] = value


def error(status: int, code: str, message: str, **headers: str) -> Answer:
    """An OCI error answer."""
    body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
    return Answer(status, {"Content-Type": "application/json", **headers}, body)


class Behaviour:
    """One difference from Distribution. `before` answers a request itself (or None to go on),
    `after` rewrites the answer that the upstream (or an earlier behaviour) gave."""

    def before(self, front: PersonalityFront, request: Request) -> Answer | str | None:
        return None

    def after(self, front: PersonalityFront, request: Request, answer: Answer) -> Answer:
        return answer


# -- blob downloads --------------------------------------------------------------------------


class RedirectBlobs(Behaviour):
    """Blob GET and HEAD answered 307 to a signed URL on another host (the front's store);
    a blob the repository lacks is a 404 from the registry itself."""

    def before(self, front: PersonalityFront, request: Request) -> Answer | None:
        if request.kind != "blobs" or request.method not in ("GET", "HEAD"):
            return None
        assert front.store is not None
        head = front.forward(Request("HEAD", request.path, {
            key: value for key, value in request.headers.items() if key == "authorization"},
            b""))
        if head.status != 200:
            return head
        return Answer(307, {"Location": front.store.sign(request.repository,
                                                         request.reference)})


class GzipBlobs(Behaviour):
    """A blob body gzipped on the wire when the client accepts gzip (requests does by
    default), as a CDN or a compressing front does: a client that hashes what arrives sees
    other bytes than the digest names."""

    def after(self, front: PersonalityFront | None, request: Request, answer: Answer) -> Answer:
        if (request.kind == "blobs" and request.method == "GET" and answer.status == 200
                and "gzip" in request.headers.get("accept-encoding", "")):
            answer.body = gzip.compress(answer.body, compresslevel=1)
            answer.set_header("Content-Encoding", "gzip")
            answer.set_header("Content-Length", None)
        return answer


# -- manifests -------------------------------------------------------------------------------


@dataclass
class NoDigestHeader(Behaviour):
    """No Docker-Content-Digest on the manifest answers of these methods."""

    methods: tuple[str, ...] = ("GET", "HEAD", "PUT")

    def after(self, front: PersonalityFront, request: Request, answer: Answer) -> Answer:
        if request.kind == "manifests" and request.method in self.methods:
            answer.set_header("Docker-Content-Digest", None)
        return answer


@dataclass
class ManifestPutNeedsLength(Behaviour):
    """A manifest PUT without Content-Length (chunked) refused with 411."""

    def before(self, front: PersonalityFront, request: Request) -> Answer | None:
        if request.kind == "manifests" and request.method == "PUT" and request.chunked:
            return error(411, "MANIFEST_INVALID", "manifest upload requires Content-Length")
        return None


@dataclass
class RefuseManifestTypes(Behaviour):
    """Manifests of these media types refused on PUT."""

    types: tuple[str, ...]
    status: int
    code: str
    message: str

    def before(self, front: PersonalityFront, request: Request) -> Answer | None:
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if request.kind == "manifests" and request.method == "PUT" and \
                content_type in self.types:
            return error(self.status, self.code, self.message.format(media_type=content_type))
        return None


@dataclass
class ImmutableTags(Behaviour):
    """A PUT to an existing tag that matches `pattern` refused with 412 DENIED."""

    pattern: str = r"v\d.*"

    def before(self, front: PersonalityFront, request: Request) -> Answer | None:
        tag = request.reference
        if (request.kind != "manifests" or request.method != "PUT" or ":" in tag
                or not re.fullmatch(self.pattern, tag)):
            return None
        if front.forward(Request("HEAD", request.path, {"accept": ", ".join(
                DOCKER_TYPES + OCI_TYPES)}, b"")).status != 200:
            return None
        return error(412, "DENIED", f"The tag:{request.repository}:{tag} is immutable, "
                                    "cannot be overwrite.")


# -- uploads ---------------------------------------------------------------------------------


class RelativeLocation(Behaviour):
    """Upload sessions handed out as a path (`/v2/.../blobs/uploads/<id>`), not a URL."""

    def after(self, front: PersonalityFront, request: Request, answer: Answer) -> Answer:
        location = answer.header("Location")
        if location and "://" in location:
            parts = urlsplit(location)
            answer.set_header("Location", parts.path + (f"?{parts.query}" if parts.query else ""))
        return answer


@dataclass
class PatchStatus(Behaviour):
    """A PATCH answered with another status than 202 (ECR: 201)."""

    status: int = 201

    def after(self, front: PersonalityFront, request: Request, answer: Answer) -> Answer:
        if request.method == "PATCH" and answer.status == 202:
            answer.status = self.status
        return answer


@dataclass
class StaleRange(Behaviour):
    """After a session's first PATCH, the `Range` of the later PATCH answers stays where the
    first one left it, although every chunk is stored (ECR, 2026)."""

    _first: dict[str, str] = field(default_factory=dict)

    def after(self, front: PersonalityFront, request: Request, answer: Answer) -> Answer:
        if request.method == "PATCH" and answer.status < 300 and answer.header("Range"):
            first = self._first.setdefault(request.reference, answer.header("Range") or "")
            answer.set_header("Range", first)
        return answer


@dataclass
class MinPart(Behaviour):
    """Every part but the last at least `size` bytes: after a shorter PATCH, the next PATCH
    (or a closing PUT that brings more bytes) is refused, as S3 multipart refuses it."""

    size: int = 5 * MiB
    _short: set[str] = field(default_factory=set)

    def before(self, front: PersonalityFront, request: Request) -> Answer | None:
        if request.kind == "blobs/uploads" and request.reference in self._short and (
                request.method == "PATCH" or (request.method == "PUT" and request.body)):
            return error(400, "UNSUPPORTED", "LayerPartTooSmallException: Layer part size "
                                             f"must be at least {self.size} bytes")
        return None

    def after(self, front: PersonalityFront, request: Request, answer: Answer) -> Answer:
        if (request.method == "PATCH" and answer.status < 300
                and len(request.body) < self.size):
            self._short.add(request.reference)
            location = answer.header("Location") or ""
            self._short.add(urlsplit(location).path.rsplit("/", 1)[-1])
        return answer


@dataclass
class MaxPatch(Behaviour):
    """A PATCH body larger than `size` refused with 416."""

    size: int = 4 * MiB

    def before(self, front: PersonalityFront, request: Request) -> Answer | None:
        if request.method == "PATCH" and len(request.body) > self.size:
            return error(416, "REQUESTED_RANGE_NOT_SATISFIABLE",
                         "the request body is too large and exceeds the maximum permissible "
                         f"limit of {self.size / MiB:.2f}MiB")
        return None


class NoChunkedUpload(Behaviour):
    """No PATCH at all: only a monolithic PUT (after the POST) uploads a blob."""

    def before(self, front: PersonalityFront, request: Request) -> Answer | None:
        if request.method == "PATCH":
            return error(405, "UNSUPPORTED", "chunked upload is not supported: upload the "
                                             "blob in a single PUT")
        return None


class PostNeedsLength(Behaviour):
    """An upload POST without Content-Length refused with 411."""

    def before(self, front: PersonalityFront, request: Request) -> Answer | None:
        if (request.method == "POST" and request.kind == "blobs/uploads"
                and "content-length" not in request.headers):
            return Answer(411, {"Content-Type": "text/html"}, b"<title>Error 411 (Length "
                                                              b"Required)!!1</title>")
        return None


@dataclass
class MountRefused(Behaviour):
    """A cross-repository mount refused with an error."""

    status: int
    code: str
    message: str  # `{source_namespace}` is filled in

    def before(self, front: PersonalityFront, request: Request) -> Answer | None:
        if request.method == "POST" and "mount" in request.query:
            source = request.query.get("from", [""])[0]
            return error(self.status, self.code, self.message.format(
                source_namespace=source.split("/", 1)[0]))
        return None


class MountIgnored(Behaviour):
    """A mount request answered as a plain upload POST: 202 with a fresh session, even when
    the blob is in the other repository."""

    def before(self, front: PersonalityFront, request: Request) -> Answer | None:
        if request.method == "POST" and "mount" in request.query:
            return front.forward(Request("POST", f"/v2/{request.repository}/blobs/uploads/",
                                         request.headers, b""))
        return None


@dataclass
class MustExist(Behaviour):
    """Pushes to a repository outside what the test created (`front.create`) refused.

    `depth`: how many leading path components name what must exist (1: a project or
    organisation, 2: Artifact Registry's project/repository, None: the repository itself,
    as ECR). `min_components`: fewer components in a name is NAME_INVALID. `reads`: how a
    read of a repository that neither the test created nor the upstream holds is answered
    (None: as the upstream answers it). `drop_uploads`: an upload POST into what is missing
    loses its connection without an answer, as ECR's does at times."""

    depth: int | None
    refusal: Callable[[str], Answer]
    min_components: int = 0
    reads: Callable[[str], Answer] | None = None
    drop_uploads: bool = False
    _upstream_has: set[str] = field(default_factory=set)

    def before(self, front: PersonalityFront, request: Request) -> Answer | str | None:
        if not request.repository or request.kind not in ("manifests", "tags", "blobs",
                                                          "blobs/uploads"):
            return None
        parts = request.repository.split("/")
        if len(parts) < self.min_components:
            return error(400, "NAME_INVALID", f"invalid repository name {request.repository!r}:"
                                              f" it needs at least {self.min_components} "
                                              "path components")
        needed = "/".join(parts[: self.depth]) if self.depth else request.repository
        if needed in front.created:
            return None
        if request.is_write:
            if self.drop_uploads and request.method == "POST":
                return DROP
            return self.refusal(needed)
        if self.reads is None or self._held_upstream(front, request):
            return None
        return self.reads(needed)

    def _held_upstream(self, front: PersonalityFront, request: Request) -> bool:
        """Whether the upstream has tags in the repository (a source's, say): it exists."""
        if request.repository in self._upstream_has:
            return True
        listed = front.forward(Request("GET", f"/v2/{request.repository}/tags/list?n=1",
                                       {key: value for key, value in request.headers.items()
                                        if key == "authorization"}, b""))
        if listed.status == 200 and json.loads(listed.body or b"{}").get("tags"):
            self._upstream_has.add(request.repository)
            return True
        return False


class HarborProjects(Behaviour):
    """Harbor's projects API as its swagger documents it (api/v2.0/swagger.yaml in
    goharbor/harbor): `GET /api/v2.0/ping` answers Pong without credentials; `HEAD
    /api/v2.0/projects?project_name=X` 200 or 404; `POST /api/v2.0/projects` with
    `{"project_name": X, ...}` and Basic credentials: 201 (Location of the new project), 409
    when it exists, 401 without valid credentials. Projects live in `front.created`; the
    credentials are checked against the upstream registry's own."""

    def before(self, front: PersonalityFront, request: Request) -> Answer | None:
        path = urlsplit(request.path)
        if not path.path.startswith("/api/v2.0/"):
            return None
        endpoint = path.path[len("/api/v2.0"):]
        if endpoint == "/ping" and request.method == "GET":
            return Answer(200, {"Content-Type": "text/plain"}, b"Pong")
        if endpoint == "/projects" and request.method == "HEAD":
            name = parse_qs(path.query).get("project_name", [""])[0]
            return Answer(200 if name in front.created else 404)
        if endpoint == "/projects" and request.method == "POST":
            login = front.forward(Request("GET", "/v2/", {
                key: value for key, value in request.headers.items() if key == "authorization"
            }, b""))
            if not request.headers.get("authorization", "").startswith("Basic ") or \
                    login.status != 200:
                return error(401, "UNAUTHORIZED", "UnAuthorized")
            name = json.loads(request.body or b"{}").get("project_name", "")
            if name in front.created:
                return error(409, "CONFLICT", f"The project named {name} already exists")
            front.create(name)
            front.projects_created.append(name)
            return Answer(201, {"Location": f"/api/v2.0/projects/{len(front.created)}"})
        return error(404, "NOT_FOUND", "not found")


# -- tag lists -------------------------------------------------------------------------------


@dataclass
class TagPages(Behaviour):
    """Tag lists in pages of `size`, the next page behind `Link` as a relative URL with an
    opaque token (`token_name=`); `max_n` refuses a larger `n` with 400 UNSUPPORTED;
    `insertion_order` lists tags in the order they were pushed through the front."""

    size: int = 50
    token_name: str = "next_page"
    max_n: int | None = None
    insertion_order: bool = False
    _tokens: dict[str, int] = field(default_factory=dict)

    def before(self, front: PersonalityFront, request: Request) -> Answer | None:
        if request.kind != "tags" or request.method != "GET":
            return None
        n = request.query.get("n", [""])[0]
        if self.max_n is not None and n.isdigit() and int(n) > self.max_n:
            return error(400, "UNSUPPORTED", "Invalid parameter at 'maxResults' failed to "
                                             "satisfy constraint: 'Member must have value "
                                             f"less than or equal to {self.max_n}'")
        upstream = front.forward(Request("GET", f"/v2/{request.repository}/tags/list?n=100000",
                                         {}, b""))
        if upstream.status != 200:
            return upstream
        tags = list(json.loads(upstream.body).get("tags") or [])
        if self.insertion_order:
            pushed = [tag for tag in front.pushed_tags.get(request.repository, []) if tag in tags]
            tags = pushed + sorted(set(tags) - set(pushed), reverse=True)
        else:
            tags.sort()
        start = self._tokens.pop(request.query.get(self.token_name, [""])[0], 0)
        size = min(self.size, int(n)) if n.isdigit() and int(n) > 0 else self.size
        page = tags[start:start + size]
        headers = {"Content-Type": "application/json"}
        if start + size < len(tags):
            token = secrets.token_urlsafe(24)
            self._tokens[token] = start + size
            query = urlencode({self.token_name: token, "n": size})
            headers["Link"] = f'</v2/{request.repository}/tags/list?{query}>; rel="next"'
        return Answer(200, headers, json.dumps({"name": request.repository,
                                                "tags": page}).encode())


class ManifestMapTags(Behaviour):
    """Every tag in one answer whatever `n` says, with a `manifest` map and `child` list next
    to `tags` (GCR's extension of the tag list)."""

    def before(self, front: PersonalityFront, request: Request) -> Answer | None:
        if request.kind != "tags" or request.method != "GET":
            return None
        upstream = front.forward(Request("GET", f"/v2/{request.repository}/tags/list?n=100000",
                                         {}, b""))
        if upstream.status != 200:
            return upstream
        tags = sorted(json.loads(upstream.body).get("tags") or [])
        manifests: dict[str, dict] = {}
        for tag in tags:
            head = front.forward(Request("HEAD", f"/v2/{request.repository}/manifests/{tag}",
                                         {"accept": ", ".join(DOCKER_TYPES + OCI_TYPES)}, b""))
            digest = head.header("Docker-Content-Digest") or ""
            entry = manifests.setdefault(digest, {
                "imageSizeBytes": "0", "layerId": "", "mediaType": head.header("Content-Type"),
                "tag": [], "timeCreatedMs": "0", "timeUploadedMs": "0"})
            entry["tag"].append(tag)
        return Answer(200, {"Content-Type": "application/json"}, json.dumps({
            "child": [], "manifest": manifests, "name": request.repository,
            "tags": tags}).encode())


class EmptyTagsNotFound(Behaviour):
    """A repository without tags answers its tag list with 404 NAME_UNKNOWN."""

    def after(self, front: PersonalityFront, request: Request, answer: Answer) -> Answer:
        if request.kind == "tags" and answer.status == 200 and \
                not json.loads(answer.body or b"{}").get("tags"):
            return error(404, "NAME_UNKNOWN", "repository name not known to registry")
        return answer


# -- rate limits -----------------------------------------------------------------------------


@dataclass
class PullQuota(Behaviour):
    """Manifest GETs count as pulls, HEADs do not; the quota shows in `ratelimit-*` headers
    (`N;w=21600`) and, once spent, a GET is refused with 429 TOOMANYREQUESTS."""

    limit: int = 100
    window: int = 21600
    pulls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def before(self, front: PersonalityFront, request: Request) -> Answer | None:
        if request.kind != "manifests" or request.method != "GET":
            return None
        with self._lock:
            if self.pulls >= self.limit:
                return error(429, "TOOMANYREQUESTS", "You have reached your pull rate limit. "
                             "You may increase the limit by authenticating and upgrading: "
                             "https://www.docker.com/increase-rate-limit",
                             **self._headers(0))
            self.pulls += 1
        return None

    def after(self, front: PersonalityFront, request: Request, answer: Answer) -> Answer:
        if request.kind == "manifests" and request.method in ("GET", "HEAD"):
            answer.headers.update(self._headers(max(0, self.limit - self.pulls)))
        return answer

    def _headers(self, remaining: int) -> dict[str, str]:
        return {"ratelimit-limit": f"{self.limit};w={self.window}",
                "ratelimit-remaining": f"{remaining};w={self.window}"}


@dataclass
class AbuseLimit(Behaviour):
    """The first `times` requests of a kind answered 429 with a bare-text body (no JSON, no
    Retry-After): the abuse limit in front of the registry, not the pull quota."""

    kind: str = "tags"
    times: int = 1

    def before(self, front: PersonalityFront, request: Request) -> Answer | None:
        if request.kind == self.kind and self.times > 0:
            self.times -= 1
            return Answer(429, {"Content-Type": "text/plain"}, b"Too Many Requests\n")
        return None


@dataclass
class PushRate(Behaviour):
    """More than `per_second` writes within a second refused with 503."""

    per_second: int = 20
    refused: int = 0
    _times: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def before(self, front: PersonalityFront, request: Request) -> Answer | None:
        if not request.is_write:
            return None
        now = time.monotonic()
        with self._lock:
            self._times = [at for at in self._times if now - at < 1.0]
            if len(self._times) >= self.per_second:
                self.refused += 1
                return error(503, "UNAVAILABLE", "push requests exceed the flow control limit")
            self._times.append(now)
        return None


# -- the personalities -----------------------------------------------------------------------


def _ecr_missing(repository: str) -> Answer:
    return error(404, "NAME_UNKNOWN", f"The repository with name '{repository}' does not exist "
                                      "in the registry with id '123456789012'")


def _denied(namespace: str) -> Answer:
    return error(403, "DENIED", "requested access to the resource is denied")


def _harbor_missing(project: str) -> Answer:
    return error(401, "UNAUTHORIZED", "unauthorized: authentication required")


def _artifact_registry_missing(repository: str) -> Answer:
    return error(404, "NAME_UNKNOWN", f'Repository "{repository}" not found')


@dataclass(frozen=True)
class Personality:
    """A registry's behaviours, the manifest format its scenarios use (the one it accepts),
    and whether its namespaces must be created before a push."""

    behaviours: Callable[[], tuple[Behaviour, ...]]
    media: str = "docker"
    namespace_depth: int | None = 1  # what `create` must be given for a repository (None: all)


PERSONALITIES: dict[str, Personality] = {
    "dockerhub": Personality(lambda: (
        # Blobs come from Cloudflare R2 / S3 under a signed URL, which refuses a second auth
        # mechanism: https://github.com/oras-project/oras-java/pull/334
        RedirectBlobs(),
        # Pull quota headers `ratelimit-remaining: 0;w=21600`; a HEAD is not a pull:
        # https://docs.docker.com/docker-hub/usage/pulls/ and
        # https://gist.github.com/jeversol/369009aaad4cd2cd8e2610fa68d4c4be
        PullQuota(limit=1000),
        # The bare-text 429 of the abuse limit, apart from the JSON TOOMANYREQUESTS (usage
        # and fair use: https://github.com/docker/docs/pull/22134; the body as issue 17 says)
        AbuseLimit(kind="tags", times=1),
        # A mount without pull rights on the source repository: 401 (400 for a bad `from`):
        # https://github.com/estesp/manifest-tool/issues/53
        MountRefused(401, "UNAUTHORIZED", "authentication required"),
        # A repository without tags: 404 NAME_UNKNOWN on its tag list, as Distribution
        # answers after its last tag is gone https://github.com/distribution/distribution/issues/4324
        EmptyTagsNotFound(),
    )),
    "ghcr": Personality(lambda: (
        # Blobs from pkg-containers.githubusercontent.com under a signed URL
        # https://github.com/oras-project/oras-java/pull/334
        RedirectBlobs(),
        # PATCH bodies above 4 MiB: 416 REQUESTED_RANGE_NOT_SATISFIABLE
        # https://github.com/oras-project/rust-oci-client/issues/35
        # https://github.com/wasmCloud/wash-archive/issues/268
        MaxPatch(4 * MiB),
        # Upload sessions as relative paths
        # https://github.com/opencontainers/distribution-spec/blob/main/spec.md#pushing-blobs
        RelativeLocation(),
    ), media="oci"),
    "quay": Personality(lambda: (
        # 50 tags per page, `Link: </v2/...?next_page=<opaque>&n=50>` relative:
        # https://github.com/deitch/docker_registry2/issues/56
        # https://github.com/ivanilves/lstags/issues/185
        TagPages(size=50, token_name="next_page"),
        # Blobs from S3 / CloudFront under a signed URL, compressed on the wire when the client
        # accepts gzip: https://github.com/renovatebot/renovate/issues/3877
        RedirectBlobs(),
        GzipBlobs(),
        RelativeLocation(),
    )),
    "harbor": Personality(lambda: (
        # A mount whose source project does not exist: 401 "project X not found"
        # https://github.com/goharbor/harbor/issues/17097
        MountRefused(401, "UNAUTHORIZED", "project {source_namespace} not found: project "
                                          "{source_namespace} not found"),
        # A push to a project that does not exist: 401 "authentication required"
        # https://github.com/goharbor/harbor/issues/22363
        MustExist(1, _harbor_missing),
        # The projects API: ping, project exists, create project (api/v2.0/swagger.yaml)
        HarborProjects(),
        # Tag immutability rules: 412 DENIED
        # https://github.com/goharbor/harbor/pull/9427
        ImmutableTags(r"v\d+(\.\d+)*"),
    )),
    "ecr": Personality(lambda: (
        # Blobs from S3 under a pre-signed URL; S3 refuses a second auth mechanism
        # https://github.com/open-policy-agent/opa/issues/6580
        RedirectBlobs(),
        # PATCH answered 201 https://github.com/openai/tart/issues/273
        PatchStatus(201),
        # Parts of at least 5 MiB but the last (S3 multipart: LayerPartTooSmallException)
        # https://github.com/openai/tart/issues/273 ("set to more than 5 due to S3")
        MinPart(5 * MiB),
        # The Range of every PATCH answer after the first stays at the first chunk's end,
        # though each chunk is stored: https://github.com/aws/containers-roadmap/issues/2831
        # (and https://github.com/crashappsec/chalk/pull/682)
        StaleRange(),
        # Repositories are created by the API, never on push: NAME_UNKNOWN
        # https://github.com/plexsystems/sinker/issues/55
        # (pulls alike: "The repository with name 'x' does not exist in the registry with id")
        MustExist(None, _ecr_missing, reads=_ecr_missing),
        # Mounts answered with a fresh session (202), as the spec allows a registry that will
        # not mount: https://github.com/opencontainers/distribution-spec/pull/206
        MountIgnored(),
        # `n` above 1000 refused, pages with a token, insertion order
        # https://github.com/google/go-containerregistry/issues/681
        # https://github.com/genuinetools/reg/issues/206
        TagPages(size=50, token_name="nextToken", max_n=1000, insertion_order=True),
        # No Docker-Content-Digest on manifest HEADs
        # https://github.com/distribution/distribution/issues/2475
        NoDigestHeader(("HEAD",)),
    ), namespace_depth=None),
    "artifact-registry": Personality(lambda: (
        # No chunked upload at all: monolithic PUT only
        # https://cloud.google.com/artifact-registry/docs/reference/docker-api
        # https://github.com/dotnet/sdk-container-builds/pull/287
        NoChunkedUpload(),
        # The upload POST needs a Content-Length
        # https://github.com/oras-project/rust-oci-client/pull/176
        PostNeedsLength(),
        # LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE: the repository must exist
        # https://cloud.google.com/artifact-registry/docs/docker/pushing-and-pulling
        # (pulls alike: `Repository "p/r" not found`)
        MustExist(2, _artifact_registry_missing, min_components=3,
                  reads=_artifact_registry_missing),
        # Tag lists unpaged, with GCR's `manifest` map
        # https://github.com/google/go-containerregistry/issues/681
        ManifestMapTags(),
    ), namespace_depth=2),
    "acr": Personality(lambda: (
        # Alibaba Cloud ACR (personal edition): a namespace must be created first, else
        # "denied: requested access to the resource is denied"
        # https://github.com/docker/cli/issues/4833, https://github.com/iCloudBot/DockerRescue/issues/2
        MustExist(1, _denied, reads=_denied),
        # Blobs from OSS under a signed URL (as S3: https://github.com/oras-project/oras-java/pull/334)
        RedirectBlobs(),
    )),
    "swr": Personality(lambda: (
        # Images go into an organisation created first (SWR user guide, "Organization
        # Management", support.huaweicloud.com); a push elsewhere: "denied: requested access to
        # the resource is denied" (as ACR above). The two behaviours below are as issue 17
        # reports them; no public page was found for them.
        MustExist(1, _denied, reads=_denied),
        # Flow control: 503 above 20 pushes per second
        PushRate(per_second=20),
        # The basic edition refuses OCI manifests
        RefuseManifestTypes(OCI_TYPES, 400, "MANIFEST_INVALID",
                            "manifest invalid: unsupported media type {media_type}"),
    )),
    "gitlab": Personality(lambda: (
        # Object storage with redirects (S3 / GCS signed URLs)
        # https://docs.gitlab.com/administration/packages/container_registry/
        RedirectBlobs(),
    )),
    "nexus": Personality(lambda: (
        # A manifest PUT without Content-Length: 411
        # https://github.com/sonatype/nexus-public/issues/1040
        ManifestPutNeedsLength(),
        # No Docker-Content-Digest on manifest answers
        # https://github.com/distribution/distribution/issues/2475
        NoDigestHeader(("GET", "HEAD", "PUT")),
    )),
    "zot": Personality(lambda: (
        # Docker media types refused without the docker2s2 compatibility setting
        # https://github.com/project-zot/zot/issues/724, https://github.com/project-zot/zot/pull/596
        RefuseManifestTypes(DOCKER_TYPES, 415, "MANIFEST_INVALID",
                            "manifest invalid: unsupported media type {media_type}: docker "
                            "manifests are not supported, use OCI"),
        RelativeLocation(),
    ), media="oci"),
}


# -- the servers -----------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # a busy client's connections are not dropped (1 s SYN retry)
    daemon_threads = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    serve: Callable[[Request], Answer | str]

    def _handle(self) -> None:
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        body = self._chunked_body() if chunked else self.rfile.read(
            int(self.headers.get("Content-Length") or 0))
        headers = {key.lower(): value for key, value in self.headers.items()}
        answer = type(self).serve(Request(self.command, self.path, headers, body, chunked))
        if answer == DROP or isinstance(answer, str):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(answer.status)
        length = answer.header("Content-Length")
        for key, value in answer.headers.items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(key, value)
        # A HEAD tells the length the GET would have; every other answer its own body's.
        self.send_header("Content-Length", length if self.command == "HEAD" and length
                         else str(len(answer.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)

    def _chunked_body(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


class _Upstream:
    """Keep-alive connections to one plain-HTTP registry, one per thread."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.host = urlsplit(self.url).netloc
        self._local = threading.local()

    def send(self, request: Request) -> Answer:
        for attempt in (1, 2):  # a kept-alive connection the registry closed: once more
            connection = getattr(self._local, "connection", None)
            if connection is None:
                connection = self._local.connection = http.client.HTTPConnection(
                    self.host, timeout=60)
            try:
                headers = {key: value for key, value in request.headers.items()
                           if key not in HOP_BY_HOP}
                if request.method in ("POST", "PUT", "PATCH") or request.body:
                    headers["Content-Length"] = str(len(request.body))
                connection.request(request.method, request.path, body=request.body or None,
                                   headers=headers)
                response = connection.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException):
                connection.close()
                self._local.connection = None
                if attempt == 2:
                    raise
                continue
            return Answer(response.status, {key: value for key, value in response.getheaders()
                                            if key.lower() not in HOP_BY_HOP - {"content-length"}},
                          body)
        raise AssertionError("unreachable")


class SignedStore:
    """Object storage on another host: serves a registry's blobs under signed URLs only, and
    answers 400 to a request that also carries an Authorization header (S3's "Only one auth
    mechanism allowed"). Range requests pass through."""

    def __init__(self, upstream: _Upstream, *, gzip_bodies: bool = False,
                 upstream_auth: str | None = None) -> None:
        self.upstream = upstream
        self.gzip_bodies = gzip_bodies  # as GzipBlobs, for a CDN that compresses
        self.upstream_auth = upstream_auth  # the store's own access to the registry's bytes
        self.key = secrets.token_bytes(16)
        self.seen: list[str] = []  # every path and query asked for, signatures included
        self.refused: list[tuple[int, str]] = []  # (status, reason)
        store = self

        class Handler(_Handler):
            pass

        Handler.serve = staticmethod(self._serve)
        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.store = store
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def signature(self, repository: str, digest: str, expires: str) -> str:
        return hmac.new(self.key, f"{repository}\n{digest}\n{expires}".encode(),
                        hashlib.sha256).hexdigest()

    def sign(self, repository: str, digest: str) -> str:
        expires = str(int(time.time()) + 1200)
        query = urlencode({"repository": repository, "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
                           "X-Amz-Expires": expires,
                           "X-Amz-Signature": self.signature(repository, digest, expires)})
        return f"{self.url}/blobs/{quote(digest)}?{query}"

    def _serve(self, request: Request) -> Answer:
        self.seen.append(request.path)
        parts = urlsplit(request.path)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        digest = unquote(parts.path.rsplit("/", 1)[-1])
        if "authorization" in request.headers:
            self.refused.append((400, "Authorization"))
            return Answer(400, {"Content-Type": "application/xml"}, (
                b"<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed; "
                b"only the X-Amz-Algorithm query parameter, Signature query string parameter or"
                b" the Authorization header should be specified</Message></Error>"))
        repository = query.get("repository", "")
        expected = self.signature(repository, digest, query.get("X-Amz-Expires", ""))
        if not hmac.compare_digest(expected, query.get("X-Amz-Signature", "")):
            self.refused.append((403, "signature"))
            return Answer(403, {"Content-Type": "application/xml"},
                          b"<Error><Code>SignatureDoesNotMatch</Code></Error>")
        headers = {key: value for key, value in request.headers.items() if key == "range"}
        if self.upstream_auth:
            headers["authorization"] = self.upstream_auth
        answer = self.upstream.send(Request(request.method, f"/v2/{repository}/blobs/{digest}",
                                            headers, b""))
        answer.set_header("Docker-Content-Digest", None)  # storage knows nothing of digests
        if self.gzip_bodies and request.method == "GET":
            answer = GzipBlobs().after(None, Request("GET", f"/v2/{repository}/blobs/{digest}",
                                                     request.headers, b""), answer)
        return answer

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class PersonalityFront:
    """A named personality in front of a plain-HTTP Distribution registry (module doc)."""

    def __init__(self, name: str, upstream_url: str,
                 behaviours: Iterable[Behaviour] | None = None,
                 upstream_auth: str | None = None) -> None:
        """`upstream_auth`: the Authorization the store sends the registry (a registry with
        credentials), never one of the client's."""
        self.name = name
        self.personality = PERSONALITIES[name]
        self.behaviours: list[Behaviour] = list(
            self.personality.behaviours() if behaviours is None else behaviours)
        self.upstream = _Upstream(upstream_url)
        self.created: set[str] = set()  # namespaces (or repositories) that exist
        self.projects_created: list[str] = []  # through Harbor's projects API
        self.pushed_tags: dict[str, list[str]] = {}  # repository → tags in push order
        self.log: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self.store = SignedStore(
            self.upstream, upstream_auth=upstream_auth,
            gzip_bodies=any(isinstance(behaviour, GzipBlobs) for behaviour in self.behaviours),
        ) if any(isinstance(behaviour, RedirectBlobs) for behaviour in self.behaviours) else None

        class Handler(_Handler):
            pass

        Handler.serve = staticmethod(self._serve)
        self.server = _Server(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.url = f"http://{self.host}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def media(self) -> str:
        return self.personality.media

    def create(self, *names: str) -> None:
        """Create namespaces (projects, organisations) or, for ECR, repositories."""
        self.created.update(names)

    def namespace_of(self, repository: str) -> str:
        depth = self.personality.namespace_depth
        return "/".join(repository.split("/")[:depth]) if depth else repository

    def behaviour(self, kind: type[Behaviour]) -> Behaviour:
        return next(behaviour for behaviour in self.behaviours if isinstance(behaviour, kind))

    def forward(self, request: Request) -> Answer:
        answer = self.upstream.send(request)
        location = answer.header("Location")
        if location and location.startswith(self.upstream.url):
            answer.set_header("Location", self.url + location[len(self.upstream.url):])
        return answer

    def _serve(self, request: Request) -> Answer | str:
        answer: Answer | str | None = None
        for behaviour in self.behaviours:
            answer = behaviour.before(self, request)
            if answer is not None:
                break
        if answer is None:
            answer = self.forward(request)
            for behaviour in self.behaviours:
                answer = behaviour.after(self, request, answer)
            if (request.kind == "manifests" and request.method == "PUT"
                    and answer.status == 201 and ":" not in request.reference):
                with self._lock:
                    tags = self.pushed_tags.setdefault(request.repository, [])
                    if request.reference not in tags:
                        tags.append(request.reference)
        with self._lock:
            self.log.append((request.method, request.path,
                             answer.status if isinstance(answer, Answer) else 0))
        return answer

    def count(self, method: str, contains: str = "", status: int | None = None) -> int:
        with self._lock:
            return sum(1 for m, path, s in self.log if m == method and contains in path
                       and (status is None or s == status))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.store is not None:
            self.store.close()
