"""The README's demo, as a new user runs it: `scripts/demo.py` (what `scripts/demo.sh` runs after
installing), and its --fleet form that the README's "The fleet" section starts with: a real
worker, `migrator enqueue --wait`, and the dashboard showing the run until Ctrl-C."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.redisdb import flushed_db

ROOT = Path(__file__).resolve().parents[2]
DEMO_DB = 14  # shared with test_deploy_files: each flushes it before and after
SUMMARY = "Images(4) migration finished, 0 images tasks failed, 0 tasks generate failed"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_demo_copies_once_and_then_writes_nothing(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--work",
                           str(tmp_path / "demo")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines.count(SUMMARY) == 2, done.stdout
    first, second = re.findall(r"target registry received (\d+) requests, (\d+) of them writes",
                               done.stdout)
    assert int(first[1]) > 0 and second[1] == "0", done.stdout
    assert (tmp_path / "demo" / "migrator.log").stat().st_size > 0


def test_the_fleet_demo_runs_and_the_dashboard_shows_the_run(tmp_path):
    port = free_port()
    url = f"redis://127.0.0.1:6379/{DEMO_DB}"
    with flushed_db(url):
        demo = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "demo.py"), "--fleet", "--dashboard-port",
             str(port), "--work", str(tmp_path / "demo")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MIGRATOR_REDIS_URL": url})
        try:
            seen = []
            assert demo.stdout is not None
            for line in demo.stdout:
                seen.append(line.rstrip("\n"))
                if line.startswith("the dashboard shows the run at"):
                    break
            output = "\n".join(seen)
            assert SUMMARY in seen, output
            assert f"http://127.0.0.1:{port}/" in seen[-1], output
            deadline = time.monotonic() + 20  # the dashboard reads Redis every 2 s
            while True:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/runs",
                                            timeout=10) as page:
                    runs = json.load(page)["runs"]
                if runs or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            (run,) = runs
            assert (run["status"], run["done"], run["failed"]) == ("succeeded", 4, 0), run
            assert run["summary"] == SUMMARY
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
                assert page.status == 200
            demo.send_signal(signal.SIGINT)  # the README's Ctrl-C
            assert demo.wait(timeout=60) == 0, demo.stdout.read()
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait()
        # The worker and the dashboard went with it: the port is free again.
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) != 0:
                    break
            assert time.monotonic() < deadline, "the dashboard outlived the demo"
            time.sleep(0.2)
