"""The README's demo: two local registries, a few sample images, one `migrator sync`.

Starts Debian's `docker-registry` twice on free loopback ports, pushes sample images into the
first (two sharing base layers, one for two platforms), writes images.json / auth.json under
demo-work/, runs `migrator sync` between the registries, runs it again to show that nothing is
copied twice, and stops the registries.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.images import make_layer, push_image, push_index  # noqa: E402
from tests.support.registry import start_registry  # noqa: E402


def main() -> int:
    work = ROOT / "demo-work"
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


if __name__ == "__main__":
    sys.exit(main())
