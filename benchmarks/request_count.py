"""Requests that reach the registries during a first sync and a no-op re-sync.

    .venv/bin/python benchmarks/request_count.py [--images 20] [--workers 7]

Seeds a fresh source registry with N images in 5 repositories (three base layers shared by
all, one layer of their own, one multi-platform OCI index), runs `migrator sync` into a fresh
target twice, and prints the requests each registry logged, by method, for each run. Fewer
requests is what makes a copy fast on registries that spend a core per request.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.images import make_layer, push_image, push_index  # noqa: E402
from tests.support.registry import start_registry  # noqa: E402


def by_method(requests: list[tuple[str, str, int]]) -> dict[str, int]:
    counts = collections.Counter(method for method, _, _ in requests)
    return dict(sorted(counts.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--workers", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="migrator-requests-") as tmp:
        work = Path(tmp)
        source = start_registry(work / "source")
        target = start_registry(work / "target")
        try:
            base = [make_layer(256 * 1024, seed) for seed in (1, 2, 3)]
            for i in range(args.images - 1):
                push_image(source, f"bench/repo{i % 5}", f"v{i}",
                           layers=[*base, make_layer(128 * 1024, 100 + i)])
            push_index(source, "bench/multi", "1.0", media="oci", platforms=[
                ("linux", "amd64", [*base, make_layer(128 * 1024, 900)]),
                ("linux", "arm64", [make_layer(128 * 1024, 901)]),
            ])
            rules = {f"{source.host}/bench/repo{r}": f"{target.host}/copy/repo{r}"
                     for r in range(5)}
            rules[f"{source.host}/bench/multi:1.0"] = f"{target.host}/copy/multi"
            auth = {source.host: {"insecure": True}, target.host: {"insecure": True}}
            (work / "images.json").write_text(json.dumps(rules))
            (work / "auth.json").write_text(json.dumps(auth))
            report = {}
            for run in ("first", "second"):
                marks = source.mark(), target.mark()
                started = time.monotonic()
                done = subprocess.run(
                    [sys.executable, "-m", "migrator", "sync", "--images", "images.json",
                     "--auth", "auth.json", "-w", str(args.workers), "--log", "sync.log"],
                    cwd=work, capture_output=True, text=True)
                elapsed = time.monotonic() - started
                if done.returncode:
                    print(done.stdout, done.stderr, file=sys.stderr)
                    return done.returncode
                report[run] = {
                    "summary": done.stdout.strip().splitlines()[-1],
                    "seconds": round(elapsed, 2),
                    "source": by_method(source.requests(marks[0])),
                    "target": by_method(target.requests(marks[1])),
                }
            print(json.dumps({"images": args.images, **report}, indent=2))
            return 0
        finally:
            source.close()
            target.close()


if __name__ == "__main__":
    sys.exit(main())
