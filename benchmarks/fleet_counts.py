"""One seeded set synced by a fleet of 1 and of 2 worker processes: wall time, uploads and
mounts at the target, and the requests of the no-op re-run.

    .venv/bin/python benchmarks/fleet_counts.py [--repositories 6] [--tags 6] [--redis-db 10]

Seeds a source registry with repositories × tags images over three shared base layers plus one
two-platform index; for each fleet size, a fresh target registry, a flushed Redis database of
its own (never another), N `celery -A workers worker` processes, then `migrator enqueue
--wait` twice. Prints JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from tests.support.images import make_layer, push_image, push_index  # noqa: E402
from tests.support.registry import start_registry  # noqa: E402


def mounted_elsewhere(path: str) -> bool:
    """A mount from another repository (not the probe of a repository's own blobs)."""
    if "mount=" not in path:
        return False
    repository = path[len("/v2/"):].split("/blobs/uploads/", 1)[0]
    source = parse_qs(urlsplit(path).query).get("from", [""])[0]
    return source != repository


def start_workers(count: int, env: dict[str, str], logdir: Path) -> list[subprocess.Popen]:
    workers = []
    for index in range(count):
        log = logdir / f"worker{index}.log"
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers", "worker", "--pool", "threads",
             "--concurrency", "8", "--hostname", f"bench{index}@%h", "--without-gossip",
             "--without-mingle", "--loglevel", "WARNING"],
            cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True))
    time.sleep(3)  # workers connect and start consuming
    return workers


def stop(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        os.killpg(worker.pid, signal.SIGTERM)
    for worker in workers:
        worker.wait(timeout=30)


def enqueue(work: Path, env: dict[str, str]) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "migrator", "enqueue", "--images", "images.json", "--auth",
         "auth.json", "--wait", "--timeout", "600"],
        cwd=work, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stdout + done.stderr)
    return time.monotonic() - started, done.stdout.strip().splitlines()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repositories", type=int, default=6)
    parser.add_argument("--tags", type=int, default=6)
    parser.add_argument("--redis-db", type=int, default=10)
    args = parser.parse_args()
    report: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="migrator-fleet-") as tmp:
        work = Path(tmp)
        source = start_registry(work / "source")
        base = [make_layer(512 * 1024, seed) for seed in (1, 2, 3)]
        for r in range(args.repositories):
            for t in range(args.tags):
                push_image(source, f"bench/app{r}", f"v{t}",
                           layers=[*base, make_layer(256 * 1024, 100 + r * args.tags + t)])
        push_index(source, "bench/multi", "1.0", media="oci", platforms=[
            ("linux", "amd64", [base[0], make_layer(128 * 1024, 900)]),
            ("linux", "arm64", [make_layer(128 * 1024, 901)])])
        report["images"] = args.repositories * args.tags + 1
        try:
            for size in (1, 2):
                target = start_registry(work / f"target{size}")
                url = f"redis://127.0.0.1:6379/{args.redis_db}"
                redis.Redis.from_url(url).flushdb()
                env = {**os.environ, "MIGRATOR_REDIS_URL": url, "PYTHONPATH": str(ROOT)}
                rules = {f"{source.host}/bench/app{r}": f"{target.host}/copy/app{r}"
                         for r in range(args.repositories)}
                rules[f"{source.host}/bench/multi:1.0"] = f"{target.host}/copy/multi"
                (work / "images.json").write_text(json.dumps(rules))
                (work / "auth.json").write_text(json.dumps(
                    {source.host: {"insecure": True}, target.host: {"insecure": True}}))
                workers = start_workers(size, env, work)
                try:
                    seconds, summary = enqueue(work, env)
                    first = target.requests()
                    marks = source.mark(), target.mark()
                    again, _ = enqueue(work, env)
                    report[f"{size} worker{'s' * (size > 1)}"] = {
                        "summary": summary,
                        "seconds": round(seconds, 2),
                        "uploads": sum(1 for m, p, s in first
                                       if m == "PUT" and "/blobs/uploads/" in p and s == 201),
                        "mounts": sum(1 for m, p, s in first
                                      if m == "POST" and s == 201 and mounted_elsewhere(p)),
                        "target requests": dict(collections.Counter(m for m, _, _ in first)),
                        "no-op seconds": round(again, 2),
                        "no-op source requests": dict(collections.Counter(
                            m for m, _, _ in source.requests(marks[0]))),
                        "no-op target requests": len(target.requests(marks[1])),
                    }
                finally:
                    stop(workers)
                    target.close()
                    redis.Redis.from_url(url).flushdb()
        finally:
            source.close()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
