"""The README's demo: two local registries, a few sample images, one `migrator sync`.

Starts Debian's `docker-registry` twice on free loopback ports, pushes sample images into the
first (two sharing base layers, one for two platforms), writes images.json / auth.json under
demo-work/, runs `migrator sync` between the registries, runs it again to show that nothing is
copied twice, and stops the registries.

With --fleet, the same rules go through the fleet instead: a Celery worker, `migrator enqueue
--wait`, and `migrator dashboard` showing the run until Ctrl-C. That needs Redis
($MIGRATOR_REDIS_URL, default redis://127.0.0.1:6379/0); the demo's tasks use a queue of their
own, so a fleet already running there takes none of them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.images import make_layer, push_image, push_index  # noqa: E402
from tests.support.registry import start_registry  # noqa: E402

DEMO_QUEUE = "migrator-demo"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", action="store_true",
                        help="copy through a Celery worker and show the run in the dashboard")
    parser.add_argument("--dashboard-port", type=int, default=8008,
                        help="the dashboard's port with --fleet (default 8008)")
    parser.add_argument("--work", type=Path, default=ROOT / "demo-work",
                        help="where the rules, the auth file and the logs are written "
                             "(default demo-work/; emptied first)")
    args = parser.parse_args(argv)
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    with tempfile.TemporaryDirectory(prefix="migrator-demo-") as tmp:
        source = start_registry(Path(tmp) / "source")
        target = start_registry(Path(tmp) / "target")
        try:
            base = [make_layer(512 * 1024, seed) for seed in (1, 2)]
            push_image(source, "library/alpine", "3.19", layers=base)
            push_image(source, "apps/web", "1.0", layers=[*base, make_layer(256 * 1024, 3)])
            push_image(source, "apps/web", "1.1", layers=[*base, make_layer(256 * 1024, 4)])
            push_index(source, "apps/agent", "2.0", platforms=[
                ("linux", "amd64", [make_layer(256 * 1024, 5)]),
                ("linux", "arm64", [make_layer(256 * 1024, 6)]),
            ], media="oci")
            images = {
                f"{source.host}/apps/web": f"{target.host}/prod/web",
                f"{source.host}/apps/agent:2.0": f"{target.host}/prod/agent",
                f"{source.host}/library/alpine:3.19": "",
            }
            auth = {source.host: {"insecure": True}, target.host: {"insecure": True}}
            (work / "images.json").write_text(json.dumps(images, indent=2) + "\n")
            (work / "auth.json").write_text(json.dumps(auth, indent=2) + "\n")
            print(f"source registry {source.url}, target registry {target.url}")
            print(f"rules in {work / 'images.json'}:\n{json.dumps(images, indent=2)}\n")
            if args.fleet:
                return fleet(work, target.host, args.dashboard_port)
            command = [sys.executable, "-m", "migrator", "sync", "--auth", "auth.json",
                       "--images", "images.json", "--registry", target.host,
                       "--namespace", "base", "--log", "migrator.log"]
            print("$ migrator sync --auth auth.json --images images.json "
                  f"--registry {target.host} --namespace base --log migrator.log")
            first = subprocess.run(command, cwd=work)
            writes = target.count("PUT") + target.count("POST") + target.count("PATCH")
            print(f"(target registry received {len(target.requests())} requests, "
                  f"{writes} of them writes)\n")
            mark = target.mark()
            print("$ migrator sync ...   # again: nothing changed, nothing is copied")
            second = subprocess.run(command, cwd=work)
            again = target.requests(since=mark)
            writes = sum(1 for method, _, _ in again if method in ("PUT", "POST", "PATCH"))
            print(f"(target registry received {len(again)} requests, {writes} of them writes)")
            print(f"log: {work / 'migrator.log'}")
            return first.returncode or second.returncode
        finally:
            source.close()
            target.close()


def fleet(work: Path, target_host: str, dashboard_port: int) -> int:
    """The rules through one worker, watched by `enqueue --wait` and by the dashboard."""
    import redis

    redis_url = os.environ.get("MIGRATOR_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(redis_url, socket_timeout=3).ping()
    except redis.RedisError as exc:
        print(f"the fleet demo needs Redis at {redis_url} ({exc}): start redis-server or set "
              "MIGRATOR_REDIS_URL", file=sys.stderr)
        return 3
    env = {**os.environ, "MIGRATOR_REDIS_URL": redis_url, "MIGRATOR_QUEUE": DEMO_QUEUE,
           "DEFAULT_REGISTRY": target_host, "DEFAULT_NAMESPACE": "base"}
    python = [sys.executable, "-m"]
    children: list[subprocess.Popen] = []
    try:
        print(f"$ export MIGRATOR_REDIS_URL={redis_url} MIGRATOR_QUEUE={DEMO_QUEUE} "
              f"DEFAULT_REGISTRY={target_host} DEFAULT_NAMESPACE=base")
        print("$ celery -A workers worker --pool threads --concurrency 4 &   "
              f"# its log: {work / 'worker.log'}")
        with open(work / "worker.log", "wb") as log:
            children.append(subprocess.Popen(
                [*python, "celery", "-A", "workers", "worker", "--pool", "threads",
                 "--concurrency", "4", "--hostname", "demo@%h", "--without-gossip",
                 "--without-mingle"], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT))
        print(f"$ migrator dashboard --port {dashboard_port} &")
        with open(work / "dashboard.log", "wb") as log:
            children.append(subprocess.Popen(
                [*python, "migrator", "dashboard", "--port", str(dashboard_port)], cwd=work,
                env=env, stdout=log, stderr=subprocess.STDOUT))
        print("$ migrator enqueue --auth auth.json --images images.json --wait")
        enqueued = subprocess.run([*python, "migrator", "enqueue", "--auth", "auth.json",
                                   "--images", "images.json", "--wait"], cwd=work, env=env)
        url = f"http://127.0.0.1:{dashboard_port}/"
        if not _serving(url, children[-1]):
            print(f"the dashboard did not start: {(work / 'dashboard.log').read_text()}",
                  file=sys.stderr)
            return 1
        print(f"\nthe dashboard shows the run at {url}; Ctrl-C stops the worker, the "
              "dashboard and the registries", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
        return enqueued.returncode
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()


def _serving(url: str, process: subprocess.Popen, wait: float = 15.0) -> bool:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            time.sleep(0.2)
    return False


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the children and registries are stopped on the way out
        sys.exit(130)
