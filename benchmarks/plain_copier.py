"""A plain copier: the contender a user could write in an afternoon on `requests`.

    python benchmarks/plain_copier.py --source HOST:PORT --target HOST:PORT
                                      [--namespace copy] [--threads 7] [--blob-threads 28]
                                      REPOSITORY...

Copies every tag of each source repository to ``TARGET/<namespace>/<last component>``, over
plain HTTP, anonymously. Images in parallel (``--threads``), the blobs of an image in
parallel (``--blob-threads``, shared), an in-memory record of the blobs already at the target
(a blob is uploaded once, then mounted into other repositories; one thread per blob at a time,
the others wait and mount), every blob hashed while it streams and every manifest checked
against its digest, manifests written after their blobs, children of an index before it.
A tag the target already holds with the same digest (one HEAD, asked only for tags the
target lists) is left alone. Nothing else: no retries beyond one more try per image, no
progress, no state on disk. It exists to measure what `migrator sync`'s extras cost.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from urllib.parse import urljoin

import requests

MANIFESTS = ("application/vnd.docker.distribution.manifest.v2+json",
             "application/vnd.docker.distribution.manifest.list.v2+json",
             "application/vnd.oci.image.manifest.v1+json",
             "application/vnd.oci.image.index.v1+json")
ACCEPT = ", ".join(MANIFESTS)
CHUNK = 1 << 20  # bytes per read of a streamed blob
SMALL = 4 << 20  # blobs up to this size are read whole and PUT with a length


class CopyError(RuntimeError):
    pass


def check(resp: requests.Response, *ok: int) -> requests.Response:
    if resp.status_code not in ok:
        raise CopyError(f"{resp.request.method} {resp.url} -> {resp.status_code}: "
                        f"{resp.text[:200]}")
    return resp


class Copier:
    def __init__(self, source: str, target: str, namespace: str, blob_threads: int) -> None:
        self.src, self.dst, self.namespace = f"http://{source}", f"http://{target}", namespace
        self.local = threading.local()
        self.known: dict[str, set[str]] = {}  # digest -> target repositories holding it
        self.flights: dict[str, threading.Lock] = {}
        self.guard = threading.Lock()
        self.blobs = ThreadPoolExecutor(blob_threads, thread_name_prefix="blob")

    @property
    def http(self) -> requests.Session:
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
            self.local.session.trust_env = False
        return self.local.session

    def tags(self, base: str, repository: str) -> list[str]:
        tags: list[str] = []
        url: str | None = f"{base}/v2/{repository}/tags/list?n=1000"
        while url:
            resp = check(self.http.get(url, timeout=60), 200, 404)
            if resp.status_code == 404:
                return []
            tags += resp.json().get("tags") or []
            nxt = resp.links.get("next", {}).get("url")
            url = urljoin(resp.url, nxt) if nxt else None
        return tags

    def manifest(self, repository: str, ref: str) -> tuple[bytes, str, str]:
        resp = check(self.http.get(f"{self.src}/v2/{repository}/manifests/{ref}",
                                   headers={"Accept": ACCEPT}, timeout=60), 200)
        digest = "sha256:" + hashlib.sha256(resp.content).hexdigest()
        expected = ref if ref.startswith("sha256:") else resp.headers.get(
            "Docker-Content-Digest", digest)
        if digest != expected:
            raise CopyError(f"{repository}@{ref}: manifest digest {digest} != {expected}")
        return resp.content, resp.headers["Content-Type"].split(";")[0], digest

    @contextmanager
    def flight(self, digest: str) -> Iterator[None]:
        with self.guard:
            lock = self.flights.setdefault(digest, threading.Lock())
        with lock:
            yield

    def copy_blob(self, source: str, target: str, digest: str, size: int) -> None:
        with self.flight(digest):
            with self.guard:
                holders = set(self.known.get(digest, ()))
            if target in holders:
                return
            uploads = f"{self.dst}/v2/{target}/blobs/uploads/"
            if holders:
                resp = check(self.http.post(uploads, params={"mount": digest,
                                                             "from": sorted(holders)[0]},
                                            timeout=60), 201, 202)
            else:
                resp = check(self.http.post(uploads, timeout=60), 202)
            if resp.status_code == 202:  # not mounted: upload into the session it opened
                self.upload(source, digest, size, urljoin(resp.url, resp.headers["Location"]))
            with self.guard:
                self.known.setdefault(digest, set()).add(target)

    def upload(self, source: str, digest: str, size: int, location: str) -> None:
        got = check(self.http.get(f"{self.src}/v2/{source}/blobs/{digest}", stream=True,
                                  timeout=60), 200)
        hasher = hashlib.sha256()

        def hashed() -> Iterator[bytes]:
            for piece in got.iter_content(CHUNK):
                hasher.update(piece)
                yield piece
            if "sha256:" + hasher.hexdigest() != digest:  # aborts the PUT: nothing is stored
                raise CopyError(f"blob {digest}: the source sent other bytes")

        body: bytes | Iterator[bytes] = hashed()
        if size <= SMALL:
            body = b"".join(body)
        sep = "&" if "?" in location else "?"
        check(self.http.put(f"{location}{sep}digest={digest}", data=body, timeout=600,
                            headers={"Content-Type": "application/octet-stream"}), 201)

    def put_manifest(self, target: str, ref: str, raw: bytes, media: str) -> None:
        check(self.http.put(f"{self.dst}/v2/{target}/manifests/{ref}", data=raw,
                            headers={"Content-Type": media}, timeout=60), 201)

    def copy_manifest_blobs(self, source: str, target: str, manifest: dict) -> None:
        wanted = [manifest["config"], *manifest.get("layers", [])]
        futures = [self.blobs.submit(self.copy_blob, source, target, d["digest"], d["size"])
                   for d in wanted]
        for future in futures:
            future.result()

    def copy_image(self, source: str, target: str, tag: str, present: bool) -> str:
        raw, media, digest = self.manifest(source, tag)
        if present:
            head = self.http.head(f"{self.dst}/v2/{target}/manifests/{tag}",
                                  headers={"Accept": ACCEPT}, timeout=60)
            if head.status_code == 200 and head.headers.get("Docker-Content-Digest") == digest:
                return "up to date"
        document = json.loads(raw)
        if "manifests" in document:  # an index: every child first, by digest
            for child in document["manifests"]:
                c_raw, c_media, c_digest = self.manifest(source, child["digest"])
                self.copy_manifest_blobs(source, target, json.loads(c_raw))
                self.put_manifest(target, c_digest, c_raw, c_media)
        else:
            self.copy_manifest_blobs(source, target, document)
        self.put_manifest(target, tag, raw, media)
        return "copied"

    def copy_tag(self, job: tuple[str, str, str, bool]) -> tuple[str, str]:
        source, target, tag, present = job
        try:
            return f"{source}:{tag}", self.copy_image(source, target, tag, present)
        except (requests.RequestException, CopyError):
            try:  # one more try, then give up
                return f"{source}:{tag}", self.copy_image(source, target, tag, present)
            except (requests.RequestException, CopyError) as exc:
                return f"{source}:{tag}", f"failed: {exc}"

    def run(self, repositories: list[str], threads: int) -> dict[str, str]:
        def listed(repository: str) -> list[tuple[str, str, str, bool]]:
            target = f"{self.namespace}/{repository.rsplit('/', 1)[-1]}"
            there = set(self.tags(self.dst, target))
            return [(repository, target, tag, tag in there)
                    for tag in self.tags(self.src, repository)]

        with ThreadPoolExecutor(threads, thread_name_prefix="image") as images:
            jobs = [job for found in images.map(listed, repositories) for job in found]
            results = dict(images.map(self.copy_tag, jobs))
        self.blobs.shutdown()
        return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="source registry HOST:PORT (HTTP)")
    parser.add_argument("--target", required=True, help="target registry HOST:PORT (HTTP)")
    parser.add_argument("--namespace", default="copy")
    parser.add_argument("--threads", type=int, default=7, help="images at once")
    parser.add_argument("--blob-threads", type=int, default=28, help="blobs at once, in all")
    parser.add_argument("repositories", nargs="+")
    args = parser.parse_args(argv)
    copier = Copier(args.source, args.target, args.namespace, args.blob_threads)
    results = copier.run(args.repositories, args.threads)
    failed = {k: v for k, v in results.items() if v.startswith("failed")}
    for image, reason in sorted(failed.items()):
        print(f"{image}: {reason}", file=sys.stderr)
    copied = sum(1 for v in results.values() if v == "copied")
    print(f"{len(results)} images: {copied} copied, {len(results) - copied - len(failed)} up to "
          f"date, {len(failed)} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
