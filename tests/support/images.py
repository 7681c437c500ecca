"""Build synthetic images and push/inspect them with plain ``requests``.

Why: this module is the tests' oracle. It never imports the product (``migrator``), so a
bug in the product cannot hide itself by being on both sides of an assertion. It speaks
the Distribution API directly: monolithic blob upload (POST + PUT ?digest=), manifest PUT,
manifest GET with every manifest media type in ``Accept``, and a minimal Basic / bearer
token handshake (401 -> WWW-Authenticate -> token endpoint -> retry).

Targets: a ``RunningRegistry``, any object with a ``url`` attribute (e.g. ``FaultProxy``)
or a base URL string. ``auth`` is a ``(user, password)`` tuple or None (anonymous: for a
token registry that still fetches an anonymous token). ``verify`` defaults to the
registry's test CA when it has one.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import random
import re
import tarfile
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urljoin

import requests
from requests.auth import AuthBase

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ALL_MANIFEST_TYPES = (DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX)
ACCEPT = ", ".join(ALL_MANIFEST_TYPES)

Media = Literal["docker", "oci"]
Auth = tuple[str, str] | None


class _HasUrl(Protocol):
    url: str


Target = _HasUrl | str


@dataclass
class PushedImage:
    """What was pushed. For an index, ``blobs`` is the union of the children's blobs."""

    repository: str
    tag: str | None
    digest: str
    media_type: str
    manifest: bytes
    blobs: list[str]
    children: list[PushedImage] = field(default_factory=list)
    platform: tuple[str, str] | None = None  # (os, arch) of a child of an index


def sha256_digest(data: bytes) -> str:
    """The registry's digest notation for ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- building ---------------------------------------------------------------------------


def make_layer(size: int, seed: int) -> bytes:
    """A real tar.gz with one file of ``size`` deterministic random bytes.

    Random bytes do not compress, so the blob is about ``size`` plus ~1 KiB of headers;
    fixed mtimes/owners make the result byte-identical for the same (size, seed).
    """
    generator = random.Random(seed)
    piece = 64 << 20  # randbytes overflows a C int past 256 MiB: draw the payload in pieces
    payload = b"".join(generator.randbytes(min(piece, size - offset))
                       for offset in range(0, size, piece))
    buf = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        info = tarfile.TarInfo(name=f"data/blob-{seed}-{size}.bin")
        info.size = size
        info.mtime = 0
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def diff_id(layer: bytes) -> str:
    """Digest of the uncompressed tar, as listed in the config's rootfs.diff_ids."""
    return sha256_digest(gzip.decompress(layer))


def make_config(
    os: str = "linux",  # noqa: A002 - mirrors the config field name
    arch: str = "amd64",
    diff_ids: list[str] | None = None,
    *,
    variant: str | None = None,
) -> bytes:
    """A valid image config JSON (compact, sorted keys, so deterministic)."""
    ids = list(diff_ids or [])
    config: dict[str, Any] = {
        "architecture": arch,
        "os": os,
        "created": "2024-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": ids},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "tests"} for _ in ids],
    }
    if variant:
        config["variant"] = variant
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def _split_arch(arch: str) -> tuple[str, str | None]:
    """ "arm/v7" -> ("arm", "v7")."""
    base, _, variant = arch.partition("/")
    return base, variant or None


# -- HTTP plumbing -----------------------------------------------------------------------

_REPO_RE = re.compile(r"/v2/(?P<name>.+?)/(?:blobs|manifests|tags)/")
_PARAM_RE = re.compile(r'(\w+)="([^"]*)"')


class RegistryAuth(AuthBase):
    """Minimal Basic + bearer handshake for requests (one retry per request)."""

    def __init__(self, creds: Auth, verify: str | bool = True) -> None:
        self.creds = creds
        self.verify = verify
        self.bearer = False
        self.tokens: dict[str, str] = {}  # repository ("" = registry-wide) -> token
        self.token_requests = 0
        self._http = requests.Session()
        self._http.trust_env = False

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if self.bearer:
            token = self.tokens.get(_repo_of(r.url or ""), self.tokens.get(""))
            if token:
                r.headers["Authorization"] = f"Bearer {token}"
        elif self.creds:
            r.headers["Authorization"] = _basic(self.creds)
        r.register_hook("response", self._handle_401)
        return r

    def _handle_401(self, r: requests.Response, **kwargs: Any) -> requests.Response:
        if r.status_code != 401 or getattr(r.request, "_auth_retried", False):
            return r
        challenge = r.headers.get("WWW-Authenticate", "")
        scheme, _, rest = challenge.partition(" ")
        params = dict(_PARAM_RE.findall(rest))
        retry = r.request.copy()
        if scheme.lower() == "bearer":
            self.bearer = True
            query = {"service": params.get("service", "")}
            if params.get("scope"):
                query["scope"] = params["scope"]
            self.token_requests += 1
            resp = self._http.get(
                params["realm"], params=query, verify=self.verify, timeout=30,
                headers={"Authorization": _basic(self.creds)} if self.creds else None,
            )
            if resp.status_code != 200:
                return r
            body = resp.json()
            token = body.get("token") or body.get("access_token")
            key = _repo_of_scope(params.get("scope", ""))
            self.tokens[key] = token
            retry.headers["Authorization"] = f"Bearer {token}"
        elif scheme.lower() == "basic" and self.creds:
            retry.headers["Authorization"] = _basic(self.creds)
        else:
            return r
        retry._auth_retried = True  # type: ignore[attr-defined]
        r.content  # noqa: B018 - drain so the connection can be reused
        r.close()
        new = r.connection.send(retry, **kwargs)  # type: ignore[attr-defined]
        new.history.append(r)
        new.request = retry
        return new


def _basic(creds: tuple[str, str]) -> str:
    """Basic credentials in UTF-8, as Docker sends them (requests' own helper is Latin-1)."""
    return "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()


def _repo_of(url: str) -> str:
    m = _REPO_RE.search(url)
    return m["name"] if m else ""


def _repo_of_scope(scope: str) -> str:
    parts = scope.split(" ")[0].split(":")
    return ":".join(parts[1:-1]) if len(parts) >= 3 and parts[0] == "repository" else ""


def _base(target: Target) -> str:
    url = target if isinstance(target, str) else target.url
    return url.rstrip("/")


def session_for(
    target: Target, auth: Auth = None, verify: str | bool | None = None
) -> requests.Session:
    """A Session with the handshake installed and ``verify`` defaulting to the test CA."""
    session = requests.Session()
    # requests lets $REQUESTS_CA_BUNDLE / $CURL_CA_BUNDLE (set on this machine) override
    # Session.verify; trust_env=False makes the test CA stick (and ignores proxy vars).
    session.trust_env = False
    if verify is None:
        verify = getattr(target, "verify", True)
    session.verify = verify
    session.auth = RegistryAuth(auth, verify)
    return session


def _check(resp: requests.Response, *ok: int) -> requests.Response:
    if resp.status_code not in ok:
        raise AssertionError(
            f"{resp.request.method} {resp.url} -> {resp.status_code} (wanted {ok}): "
            f"{resp.text[:500]}"
        )
    return resp


# -- pushing -----------------------------------------------------------------------------


def push_blob(session: requests.Session, url: str, repository: str, data: bytes) -> str:
    """Monolithic upload: POST an upload session, then PUT the whole body with ?digest=."""
    digest = sha256_digest(data)
    start = _check(session.post(f"{url}/v2/{repository}/blobs/uploads/", timeout=60), 202)
    location = urljoin(start.url, start.headers["Location"])
    sep = "&" if "?" in location else "?"
    _check(
        session.put(
            f"{location}{sep}digest={digest}",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            timeout=600,
        ),
        201,
    )
    return digest


def push_manifest(
    session: requests.Session, url: str, repository: str, ref: str, body: bytes, media_type: str
) -> str:
    """PUT a manifest by tag or digest; checks the registry agrees on the digest."""
    digest = sha256_digest(body)
    resp = _check(
        session.put(
            f"{url}/v2/{repository}/manifests/{ref}",
            data=body,
            headers={"Content-Type": media_type},
            timeout=60,
        ),
        201,
    )
    answered = resp.headers.get("Docker-Content-Digest")
    if answered and answered != digest:
        raise AssertionError(f"registry computed {answered}, we computed {digest}")
    return digest


def _push_image(
    session: requests.Session,
    url: str,
    repository: str,
    tag: str | None,
    layers: list[bytes],
    media: Media,
    os: str,  # noqa: A002
    arch: str,
) -> PushedImage:
    base_arch, variant = _split_arch(arch)
    config = make_config(os, base_arch, [diff_id(layer) for layer in layers], variant=variant)
    config_digest = push_blob(session, url, repository, config)
    layer_digests = [push_blob(session, url, repository, layer) for layer in layers]
    if media == "docker":
        mt, config_mt, layer_mt = DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER
    elif media == "oci":
        mt, config_mt, layer_mt = OCI_MANIFEST, OCI_CONFIG, OCI_LAYER
    else:
        raise ValueError(f"unknown media {media!r}")
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt,
        "config": {"mediaType": config_mt, "size": len(config), "digest": config_digest},
        "layers": [
            {"mediaType": layer_mt, "size": len(layer), "digest": d}
            for layer, d in zip(layers, layer_digests, strict=True)
        ],
    }
    body = json.dumps(manifest, indent=3).encode()
    digest = push_manifest(session, url, repository, tag or sha256_digest(body), body, mt)
    return PushedImage(
        repository=repository,
        tag=tag,
        digest=digest,
        media_type=mt,
        manifest=body,
        blobs=[config_digest, *layer_digests],
        platform=(os, arch),
    )


def push_image(
    registry: Target,
    repository: str,
    tag: str | None,
    *,
    layers: list[bytes],
    media: Media = "docker",
    os: str = "linux",  # noqa: A002
    arch: str = "amd64",
    auth: Auth = None,
    verify: str | bool | None = None,
) -> PushedImage:
    """Push config + layers + an image manifest; ``tag=None`` pushes by digest only."""
    with session_for(registry, auth, verify) as session:
        return _push_image(session, _base(registry), repository, tag, layers, media, os, arch)


def push_index(
    registry: Target,
    repository: str,
    tag: str,
    *,
    platforms: list[tuple[str, str, list[bytes]]],
    media: Media = "docker",
    auth: Auth = None,
    verify: str | bool | None = None,
) -> PushedImage:
    """Push one image per (os, arch, layers) by digest, then the list/index under ``tag``.

    ``arch`` may carry a variant, e.g. ``"arm/v7"``.
    """
    url = _base(registry)
    with session_for(registry, auth, verify) as session:
        children = [
            _push_image(session, url, repository, None, layers, media, os_, arch)
            for os_, arch, layers in platforms
        ]
        entries = []
        for child in children:
            assert child.platform is not None
            base_arch, variant = _split_arch(child.platform[1])
            platform = {"architecture": base_arch, "os": child.platform[0]}
            if variant:
                platform["variant"] = variant
            entries.append(
                {
                    "mediaType": child.media_type,
                    "size": len(child.manifest),
                    "digest": child.digest,
                    "platform": platform,
                }
            )
        mt = DOCKER_LIST if media == "docker" else OCI_INDEX
        body = json.dumps(
            {"schemaVersion": 2, "mediaType": mt, "manifests": entries}, indent=3
        ).encode()
        digest = push_manifest(session, url, repository, tag, body, mt)
    blobs = list(dict.fromkeys(b for c in children for b in c.blobs))
    return PushedImage(repository, tag, digest, mt, body, blobs, children)


# -- inspecting --------------------------------------------------------------------------


def get_manifest(
    registry: Target,
    repository: str,
    ref: str,
    *,
    auth: Auth = None,
    verify: str | bool | None = None,
) -> tuple[bytes, str, str]:
    """(raw bytes, media type, digest computed from the bytes); raises if not 200."""
    with session_for(registry, auth, verify) as session:
        resp = _check(
            session.get(
                f"{_base(registry)}/v2/{repository}/manifests/{ref}",
                headers={"Accept": ACCEPT},
                timeout=60,
            ),
            200,
        )
    media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
    return resp.content, media_type, sha256_digest(resp.content)


def manifest_exists(
    registry: Target,
    repository: str,
    ref: str,
    *,
    auth: Auth = None,
    verify: str | bool | None = None,
) -> bool:
    """HEAD the manifest (with every media type accepted)."""
    with session_for(registry, auth, verify) as session:
        resp = session.head(
            f"{_base(registry)}/v2/{repository}/manifests/{ref}",
            headers={"Accept": ACCEPT},
            timeout=60,
        )
    return _check(resp, 200, 404).status_code == 200


def list_tags(
    registry: Target,
    repository: str,
    *,
    auth: Auth = None,
    verify: str | bool | None = None,
) -> list[str]:
    """All tags (following ``Link`` pagination); [] when the repository is unknown."""
    tags: list[str] = []
    url: str | None = f"{_base(registry)}/v2/{repository}/tags/list"
    with session_for(registry, auth, verify) as session:
        while url:
            resp = _check(session.get(url, timeout=60), 200, 404)
            if resp.status_code == 404:
                return []
            tags.extend(resp.json().get("tags") or [])
            nxt = resp.links.get("next", {}).get("url")
            url = urljoin(resp.url, nxt) if nxt else None
    return tags


def blob_exists(
    registry: Target,
    repository: str,
    digest: str,
    *,
    auth: Auth = None,
    verify: str | bool | None = None,
) -> bool:
    """HEAD the blob in that repository."""
    with session_for(registry, auth, verify) as session:
        resp = session.head(f"{_base(registry)}/v2/{repository}/blobs/{digest}", timeout=60)
    return _check(resp, 200, 404).status_code == 200


def get_blob(
    registry: Target,
    repository: str,
    digest: str,
    *,
    auth: Auth = None,
    verify: str | bool | None = None,
) -> bytes:
    """Download a blob whole (no digest check: callers compare it themselves)."""
    with session_for(registry, auth, verify) as session:
        resp = session.get(f"{_base(registry)}/v2/{repository}/blobs/{digest}", timeout=600)
    return _check(resp, 200).content


def audit_copy(
    registry: Target,
    repository: str,
    reference: str,
    expected: PushedImage,
    *,
    auth: Auth = None,
    verify: str | bool | None = None,
) -> str | None:
    """How a copy of ``expected`` stands at ``repository:reference``.

    ``"absent"`` when the tag does not exist, None when it is byte-identical to ``expected``
    with every child manifest and every blob present and hashing to its digest, else what is
    wrong. A tag that points at a manifest whose blobs are missing or wrong is wrong: that is
    what the product must never write (manifest last, digests checked).
    """
    base = _base(registry)
    with session_for(registry, auth, verify) as session:

        def manifest(ref: str) -> bytes | None:
            resp = session.get(f"{base}/v2/{repository}/manifests/{ref}",
                               headers={"Accept": ACCEPT}, timeout=60)
            return None if resp.status_code == 404 else _check(resp, 200).content

        raw = manifest(reference)
        if raw is None:
            return "absent"
        if raw != expected.manifest:
            return f"tag points at {sha256_digest(raw)}, not {expected.digest}"
        images = expected.children or [expected]
        for child in expected.children:
            if manifest(child.digest) != child.manifest:
                return f"child {child.digest} missing or different"
        for image in images:
            for digest in image.blobs:
                resp = session.get(f"{base}/v2/{repository}/blobs/{digest}", timeout=600)
                if resp.status_code != 200:
                    return f"blob {digest} missing (HTTP {resp.status_code})"
                if sha256_digest(resp.content) != digest:
                    return f"blob {digest} holds other bytes"
    return None
