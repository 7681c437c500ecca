"""`migrator dashboard` with real parts: the local Redis (database 4 only, flushed before and
after, never FLUSHALL), the dashboard as its own process on a free loopback port, and Debian's
headless chromium driven by Playwright (never `playwright install`: no download here).

Runs are written the way the fleet writes them, through migrator.runs.RunStore.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
from playwright.sync_api import sync_playwright

from migrator.dashboard.causes import group, normalise
from migrator.runs import RunStore
from tests.support.redisdb import flushed_db

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DB = int(os.environ.get("MIGRATOR_TEST_DASHBOARD_REDIS_DB", "4"))
REDIS_URL = f"redis://127.0.0.1:6379/{DASHBOARD_DB}"
PREFIX = "migrator:"
CHROMIUM = os.environ.get("MIGRATOR_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
SRC, DST = "127.0.0.1:5000", "127.0.0.1:5001"


@pytest.fixture
def db() -> Iterator[redis.Redis]:
    with flushed_db(REDIS_URL) as client:
        yield client


class Dashboard:
    """A `migrator dashboard` process; `url` once it printed where it listens."""

    def __init__(self, workdir: Path, args: list[str], env: dict[str, str]) -> None:
        self.log_path = workdir / f"dashboard-{time.monotonic_ns()}.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "migrator", "dashboard", *args], cwd=ROOT, stdout=self.log,
            stderr=subprocess.STDOUT, env={**_base_env(), "MIGRATOR_REDIS_URL": REDIS_URL,
                                           **env})
        self.url = ""

    def output(self) -> str:
        return self.log_path.read_text()

    def wait_listening(self, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"at (http://\S+:\d+/)", self.output())
            if found:
                self.url = found.group(1)
                return self.url
            assert self.process.poll() is None, self.output()
            time.sleep(0.05)
        raise AssertionError(f"the dashboard did not start: {self.output()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode


def _base_env() -> dict[str, str]:
    """The environment without any MIGRATOR_* of the caller's (a password among them)."""
    return {key: value for key, value in os.environ.items() if not key.startswith("MIGRATOR_")}


@pytest.fixture
def dashboards(tmp_path: Path) -> Iterator[list[Dashboard]]:
    started: list[Dashboard] = []
    yield started
    for dashboard in started:
        dashboard.stop()


def start(dashboards: list[Dashboard], tmp_path: Path, *args: str,
          env: dict[str, str] | None = None) -> Dashboard:
    dashboard = Dashboard(tmp_path, list(args), env or {})
    dashboards.append(dashboard)
    return dashboard


def job(name: str) -> str:
    return f"{SRC}/ns/{name}:1 -> {DST}/copy/{name}:1"


def missing(name: str) -> str:
    """The reason a worker records when the source tag is gone (migrator.registry.client)."""
    return (f"{SRC}/ns/{name}:1 not found (HEAD http://{SRC}/v2/ns/{name}/manifests/1) "
            "HTTP 404 MANIFEST_UNKNOWN: manifest unknown")


def test_causes_group_the_same_refusal_on_many_images() -> None:
    failed = {job(name): missing(name) for name in ("a", "b", "c")}
    failed[job("d")] = (f"denied on target namespace 'copy' of {DST}: does it exist and may "
                        "this account push to it?")
    failed[job("e")] = (f"blob sha256:{'ab' * 32}: timed out after 1048576 bytes (no byte in "
                        "120.0 s)")
    failed[job("f")] = (f"blob sha256:{'cd' * 32}: timed out after 52 bytes (no byte in 120.0 s)")
    causes = group(failed)
    assert [(cause.count, cause.cause) for cause in causes] == [
        (3, f"<source> not found (HEAD http://{SRC}/v2/<repository>/manifests/<reference>) "
            "HTTP 404 MANIFEST_UNKNOWN: manifest unknown"),
        (2, "blob <digest>: timed out after <n> bytes (no byte in <n> s)"),
        (1, f"denied on target namespace 'copy' of {DST}: does it exist and may this account "
            "push to it?"),
    ]
    assert [name for name, _ in causes[0].items] == [job("a"), job("b"), job("c")]
    # What tells causes apart stays: another registry, another status, another namespace.
    assert normalise(missing("a").replace("404", "500"), job("a")) != causes[0].cause
    assert normalise(missing("a").replace(SRC, "127.0.0.1:5009"), job("a")) != causes[0].cause


def test_runs_appear_and_move_live_in_a_real_browser(tmp_path, db, dashboards) -> None:
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} missing: scripts/bootstrap.sh installs Debian's chromium")
    secret = "sealed-credentials-" + base64.b16encode(os.urandom(8)).decode()
    store = RunStore(db, prefix=PREFIX)
    names = ["a", "b", "c", "d", "e", "f", "g", "h"]
    run_id = store.create(name="images.json", retries=2, jobs=[job(name) for name in names],
                          expands=[], auth=secret)
    older = store.create(name="older.json", retries=0, jobs=[job("old")], expands=[])
    store.succeeded(older, job("old"), 10)
    db.zadd(f"{PREFIX}runs", {older: 1.0})  # older in the index, so listed second
    db.set(f"{PREFIX}schedule:nightly:run", run_id)  # as workers.tasks.start_scheduled_run
    store.succeeded(run_id, job("a"), 3 << 20)
    for name in ("b", "c", "d"):
        store.failed(run_id, job(name), missing(name))
    store.failed(run_id, job("e"), f"denied on target namespace 'copy' of {DST}: does it "
                 "exist and may this account push to it?")
    store.skipped(run_id, job("f"), "no platform matches linux/s390x")

    dashboard = start(dashboards, tmp_path, "--port", "0", "--interval", "0.5")
    url = dashboard.wait_listening()
    assert url.startswith("http://127.0.0.1:")

    with sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1200, "height": 900})
        try:
            page = context.new_page()
            page.goto(url)
            card = page.locator(f'[data-run="{run_id}"]')
            card.wait_for(timeout=10_000)
            assert card.get_attribute("data-done") == "6"
            assert card.get_attribute("data-total") == "8"
            assert page.locator("[data-run]").first.get_attribute("data-run") == run_id
            assert page.locator(f'[data-run="{older}"]').count() == 1
            # failures grouped: three images behind one cause, one behind another
            groups = card.locator("details.cause summary")
            assert groups.count() == 2
            assert groups.nth(0).locator(".count").inner_text() == "3"
            assert "MANIFEST_UNKNOWN" in groups.nth(0).inner_text()
            groups.nth(0).click()
            listed = card.locator("details.cause").nth(0).locator("li code").all_inner_texts()
            assert listed == [job("b"), job("c"), job("d")]
            assert page.locator('[data-schedule="nightly"]').inner_text().count(run_id) == 1
            ok_before = card.locator(".bar .ok").bounding_box()
            assert ok_before is not None
            page.evaluate("window.notReloaded = true")
            page.screenshot(path=str(tmp_path / "dashboard-before.png"), full_page=True)

            # the fleet moves on: the bar follows without a reload
            for number, name in enumerate(("g", "h"), start=1):
                store.succeeded(run_id, job(name), number * (5 << 20))
            page.locator(f'[data-run="{run_id}"][data-done="8"]').wait_for(timeout=10_000)
            ok_after = card.locator(".bar .ok").bounding_box()
            assert ok_after is not None and ok_after["width"] > ok_before["width"] * 2.5
            assert page.evaluate("window.notReloaded") is True
            assert card.get_attribute("data-status") == "failed"  # ended, with failures
            assert "Images(8) migration finished, 4 images tasks failed" in card.inner_text()
            # the group opened by the reader stays open across redraws
            assert card.locator("details.cause").nth(0).get_attribute("open") is not None
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            html = page.content()
        finally:
            context.close()

    document = requests.get(url + "api/runs", timeout=5)
    assert document.status_code == 200
    assert document.headers["Content-Type"].startswith("application/json")
    run = next(run for run in document.json()["runs"] if run["id"] == run_id)
    assert (run["total"], run["done"], run["succeeded"], run["failed"], run["skipped"]) == (
        8, 8, 3, 4, 1)
    assert run["bytes"] == 18 << 20
    assert any(rate > 0 for _, rate in run["throughput"])  # the sampler saw the bytes move
    assert [cause["count"] for cause in run["failures"]] == [3, 1]
    # no secret: the run's `:auth` value is read nowhere
    for text in (document.text, html):
        assert secret not in text
        assert ":auth" not in text
    assert "Content-Security-Policy" in document.headers
    # a page that rebinds its own name to 127.0.0.1 gets nothing
    rebound = requests.get(url + "api/runs", headers={"Host": "attacker.example"}, timeout=5)
    assert rebound.status_code == 403 and run_id not in rebound.text
    assert requests.post(url + "api/runs", timeout=5).status_code == 405  # read-only
    print(f"\nscreenshots: {tmp_path / 'dashboard-before.png'} {tmp_path / 'dashboard.png'}")
    assert dashboard.stop() == 0


def test_refuses_a_non_loopback_address_without_a_password(tmp_path, dashboards) -> None:
    dashboard = start(dashboards, tmp_path, "--host", "0.0.0.0", "--port", "0")
    assert dashboard.process.wait(20) == 2
    lines = dashboard.output().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("migrator dashboard: refusing to serve the dashboard on 0.0.0.0 "
                               "without a password"), lines
    assert "MIGRATOR_DASHBOARD_PASSWORD" in lines[0]


def test_with_a_password_every_request_needs_it(tmp_path, db, dashboards) -> None:
    password = "pw-" + base64.b16encode(os.urandom(12)).decode()
    run_id = RunStore(db, prefix=PREFIX).create(name="guarded", retries=0, jobs=[job("a")],
                                                expands=[])
    # Another address than loopback is allowed once there is a password.
    dashboard = start(dashboards, tmp_path, "--host", "0.0.0.0", "--port", "0",
                      "--password-env", "DASHBOARD_PW", env={"DASHBOARD_PW": password})
    port = dashboard.wait_listening().rsplit(":", 1)[1].rstrip("/")
    base = f"http://127.0.0.1:{port}/"
    for path in ("", "api/runs", "dashboard.js"):
        refused = requests.get(base + path, timeout=5)
        assert refused.status_code == 401, path
        assert refused.headers["WWW-Authenticate"].startswith("Basic ")
        assert run_id not in refused.text
    assert requests.get(base + "api/runs", auth=("ops", password + "x"),
                        timeout=5).status_code == 401
    allowed = requests.get(base + "api/runs", auth=("ops", password), timeout=5)
    assert allowed.status_code == 200
    assert [run["id"] for run in allowed.json()["runs"]] == [run_id]
    assert password not in dashboard.output()
    assert dashboard.stop() == 0
