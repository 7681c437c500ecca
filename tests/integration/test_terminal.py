"""`migrator sync` on a real terminal: tmux runs the console script in a pane of a fixed size,
and the test reads the screen as a person would see it (`tmux capture-pane -p`).

Why tmux and not a captured stream: the faults shown here (a log line glued onto the bar, a
stale bar left above a log line) exist only once a terminal has interpreted rich's cursor
movements; the bytes on a pipe would not show them.

The source sits behind a proxy that trickles blobs, so the bar lives for seconds while the
copies log their `copied ...` lines and two missing tags fail (once: a 404 gets no retry pass).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from tests.support.images import make_layer, push_image
from tests.support.proxy import BLOB

ROOT = Path(__file__).resolve().parents[2]
WIDTH, HEIGHT = 120, 40
IMAGES = 6
MISSING = ("ns/missing:1", "ns/gone:2")
UNITS = r"(?:B|KiB|MiB|GiB|TiB)"
# The whole bar: label, bar, done/total, images in flight, failed, bytes, rate, elapsed, ETA.
BAR = re.compile(rf"^images [━╸╺\- ]+ \d+/{IMAGES + len(MISSING)} +\d+ running +\d+ failed "
                 rf"[\d.]+ {UNITS} +[\d.]+ {UNITS}/s +\d+:\d\d:\d\d +"
                 r"ETA +(?:-:--:--|\d+:\d\d:\d\d)$")
BAR_PIECE = re.compile(r"━|\d+/\d+ .*failed")  # something of a bar, whole or not
LOG_RECORD = re.compile(r"\b(?:DEBUG|INFO|WARNING|ERROR)\b")
WHOLE_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?:DEBUG|INFO|WARNING|ERROR) ")
STATS = re.compile(rf"^{IMAGES + len(MISSING)} images, [\d.]+ {UNITS} in \S+ "
                   rf"\([\d.]+ {UNITS}/s\)$")
SUMMARY = (f"Images({IMAGES + len(MISSING)}) migration finished, {len(MISSING)} images tasks "
           "failed, 0 tasks generate failed")

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None,
                                reason="tmux is missing: scripts/bootstrap.sh installs it")


class Pane:
    """One tmux server of our own (its own socket), one pane of WIDTH x HEIGHT."""

    def __init__(self, name: str) -> None:
        self.socket = name

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args],
                              check=True, capture_output=True, text=True, timeout=10).stdout

    def start(self, command: list[str], cwd: Path, exit_file: Path) -> None:
        # The pane outlives the command (sleep), so the last screen can still be read.
        shell = (f"cd {shlex.quote(str(cwd))} && {shlex.join(command)}; "
                 f"echo $? > {shlex.quote(str(exit_file))}; exec sleep 600")
        self.tmux("new-session", "-d", "-s", "run", "-x", str(WIDTH), "-y", str(HEIGHT),
                  "sh", "-c", shell)

    def screen(self) -> list[str]:
        """The visible rows, wrapped rows joined (-J), trailing blanks dropped."""
        rows = [row.rstrip() for row in self.tmux("capture-pane", "-p", "-J", "-t", "run")
                .splitlines()]
        while rows and not rows[-1]:
            rows.pop()
        return rows

    def everything(self) -> list[str]:
        """Scroll-back and screen: every line the run ever showed."""
        rows = [row.rstrip() for row in self.tmux("capture-pane", "-p", "-J", "-S", "-",
                                                  "-t", "run").splitlines()]
        while rows and not rows[-1]:
            rows.pop()
        return rows

    def stop(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True,
                       timeout=10)


@pytest.fixture
def pane(tmp_path: Path) -> Iterator[Pane]:
    pane = Pane(f"migrator-test-{os.getpid()}-{tmp_path.name}")
    yield pane
    pane.stop()


def run_in_pane(pane: Pane, tmp_path: Path, source_host: str, target_host: str,
                *flags: str) -> tuple[int, list[list[str]], list[str]]:
    """`migrator sync` in the pane; (exit code, every screen seen while it ran, last screen
    with its scroll-back)."""
    rules = {f"{source_host}/ns/img{i}:1": f"{target_host}/t/img{i}" for i in range(IMAGES)}
    rules.update({f"{source_host}/{ref}": f"{target_host}/t/missing" for ref in MISSING})
    (tmp_path / "images.json").write_text(json.dumps(rules))
    (tmp_path / "auth.json").write_text(json.dumps(
        {host: {"insecure": True} for host in (source_host, target_host)}))
    migrator = Path(sys.executable).parent / "migrator"
    # No COLUMNS/LINES: the terminal's own size must decide the bar's width.
    command = ["env", "-u", "COLUMNS", "-u", "LINES", f"PYTHONPATH={ROOT}", "LC_ALL=C.UTF-8",
               "MIGRATOR_RETRY_PASS_DELAY=0.2", str(migrator), "sync", "--images",
               "images.json", "--auth", "auth.json", "--no-state", "-w", "2", "-r", "1",
               *flags]
    exit_file = tmp_path / "exit"
    pane.start(command, tmp_path, exit_file)
    screens: list[list[str]] = []
    deadline = time.monotonic() + 120
    while not (exit_file.exists() and exit_file.read_text().strip()):
        assert time.monotonic() < deadline, "\n".join(pane.screen())
        screens.append(pane.screen())
        time.sleep(0.05)
    return int(exit_file.read_text()), screens, pane.everything()


@pytest.fixture
def slow_source(source_registry, fault_proxy):
    """The source behind a proxy that sends blobs 64 KiB every 50 ms: ~1 s per image."""
    for i in range(IMAGES):
        push_image(source_registry, f"ns/img{i}", "1",
                   layers=[make_layer(768 * 1024, 900 + i)])
    proxy = fault_proxy(source_registry)
    proxy.trickle(step_bytes=64 * 1024, interval=0.05, method="GET", path=BLOB, times=None)
    return proxy


def test_the_bar_stays_whole_and_the_end_keeps_the_figures(pane, tmp_path, slow_source,
                                                           target_registry):
    code, screens, final = run_in_pane(pane, tmp_path, slow_source.host, target_registry.host)
    assert code == 1, "\n".join(final)  # the two missing tags fail

    with_bar = [screen for screen in screens if any(BAR_PIECE.search(row) for row in screen)]
    assert len(with_bar) >= 10, "the bar was hardly ever on screen:\n" + "\n".join(final)
    for screen in with_bar:
        shown = "\n".join(screen)
        # One bar, on the last row: no stale copy of it left above a log line.
        assert [row for row in screen if BAR_PIECE.search(row)] == [screen[-1]], shown
        for row in screen:
            if LOG_RECORD.search(row):
                assert WHOLE_RECORD.match(row), shown  # a log line has its row to itself
    for screen in with_bar:  # and that bar is whole, every column of it
        assert BAR.match(screen[-1]), "\n".join(screen)
    # The copies in flight show: two workers, two images at once.
    assert any(re.search(r" 2 running ", screen[-1]) for screen in with_bar)

    shown = "\n".join(final)
    # The log lines were shown (above the bar), whole.
    assert any(WHOLE_RECORD.match(row) and " copied " in row for row in final), shown
    assert not any(" retry pass " in row for row in final), shown  # a 404 is not retried
    for ref in MISSING:  # each failure once, as the printed line scripts read
        assert [row for row in final if ref in row] == [
            next(row for row in final if row.startswith(f"failed: {slow_source.host}/{ref} -> "))
        ], shown
    assert final.count(SUMMARY) == 1, shown
    assert STATS.match(final[-2]) and final[-1] == SUMMARY, shown
    assert not any(BAR_PIECE.search(row) for row in final), shown  # the bar left no trace


def test_with_a_log_file_the_terminal_shows_no_records(pane, tmp_path, slow_source,
                                                       target_registry):
    code, screens, final = run_in_pane(pane, tmp_path, slow_source.host, target_registry.host,
                                       "--log", "run.log")
    assert code == 1
    shown = "\n".join(final)
    assert not any(LOG_RECORD.search(row) for row in final), shown
    assert STATS.match(final[-2]) and final[-1] == SUMMARY, shown
    log = (tmp_path / "run.log").read_text()
    # The file keeps every record: each failure (one pass: a 404 is not retried), the summary.
    for ref in MISSING:
        assert log.count(f"ERROR failed {slow_source.host}/{ref} -> ") == 1, log
    assert log.count(f"INFO {SUMMARY}") == 1, log


INTERRUPTED = re.compile(r"^interrupted: finishing (\d) cop(?:y|ies) in flight; Ctrl-C again "
                         r"to stop now$")


def interrupt_when_copying(pane: Pane, tmp_path: Path, source_host: str, target_host: str,
                           presses: int) -> float:
    """Start `sync` (trapping INT in the pane's shell, so only migrator reacts), press Ctrl-C
    `presses` times once two copies run; the seconds from the first press to the exit."""
    exit_file = tmp_path / "exit"
    rules = {f"{source_host}/ns/img{i}:1": f"{target_host}/t/img{i}" for i in range(IMAGES)}
    (tmp_path / "images.json").write_text(json.dumps(rules))
    (tmp_path / "auth.json").write_text(json.dumps(
        {host: {"insecure": True} for host in (source_host, target_host)}))
    migrator = Path(sys.executable).parent / "migrator"
    command = (f"trap : INT; cd {shlex.quote(str(tmp_path))} && env PYTHONPATH={ROOT} "
               f"LC_ALL=C.UTF-8 {shlex.quote(str(migrator))} sync --images images.json --auth "
               f"auth.json --no-state -w 2 --output-failed failed.yaml; "
               f"echo $? > {shlex.quote(str(exit_file))}; exec sleep 600")
    pane.tmux("new-session", "-d", "-s", "run", "-x", str(WIDTH), "-y", str(HEIGHT),
              "sh", "-c", command)
    deadline = time.monotonic() + 60
    while not any(re.search(r" 2 running ", row) for row in pane.screen()):
        assert time.monotonic() < deadline, "\n".join(pane.screen())
        time.sleep(0.05)
    pressed = time.monotonic()
    for _ in range(presses):
        pane.tmux("send-keys", "-t", "run", "C-c")
        while not any(INTERRUPTED.match(row) for row in pane.everything()):
            assert time.monotonic() < pressed + 5, "\n".join(pane.screen())
            time.sleep(0.05)
    while not (exit_file.exists() and exit_file.read_text().strip()):
        assert time.monotonic() < deadline, "\n".join(pane.screen())
        time.sleep(0.05)
    assert int(exit_file.read_text()) == 130
    return time.monotonic() - pressed


def test_ctrl_c_finishes_the_copies_in_flight_and_starts_nothing(pane, tmp_path, slow_source,
                                                                 target_registry):
    interrupt_when_copying(pane, tmp_path, slow_source.host,
                                        target_registry.host, presses=1)
    final = pane.everything()
    shown = "\n".join(final)
    (said,) = [row for row in final if INTERRUPTED.match(row)]
    assert INTERRUPTED.match(said).group(1) == "2", shown
    # The two copies in flight ended at the target; nothing started after the press.
    copied = [i for i in range(IMAGES) if requests.get(
        f"{target_registry.url}/v2/t/img{i}/manifests/1",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        timeout=10).status_code == 200]
    not_started = IMAGES - len(copied)
    assert 2 <= len(copied) < IMAGES, shown
    assert f"interrupted: {not_started} images not started (listed in failed.yaml); the same " \
           "command continues where this run stopped" in final, shown
    assert final[-1] == (f"Images({IMAGES}) migration finished, {not_started} images tasks "
                         "failed, 0 tasks generate failed"), shown
    assert not any(row.startswith("failed: ") for row in final), shown  # one line, not each
    failed = yaml.safe_load((tmp_path / "failed.yaml").read_text())
    assert len(failed) == not_started  # nothing lost: the failed file names them for a re-run
    assert not any(BAR_PIECE.search(row) for row in final), shown


def test_a_second_ctrl_c_stops_at_once(pane, tmp_path, source_registry, fault_proxy,
                                       target_registry):
    for i in range(IMAGES):
        push_image(source_registry, f"ns/img{i}", "1", layers=[make_layer(768 * 1024, 950 + i)])
    slow = fault_proxy(source_registry)  # ~30 s a blob: only a hard stop ends this run soon
    slow.trickle(step_bytes=4 * 1024, interval=0.15, method="GET", path=BLOB, times=None)
    took = interrupt_when_copying(pane, tmp_path, slow.host, target_registry.host,
                                     presses=2)
    final = pane.everything()
    assert took < 5, "\n".join(final)
    assert final[-1] == ("stopped: copies in flight abandoned; the same command copies them "
                         "again"), "\n".join(final)
    assert not any(BAR_PIECE.search(row) for row in final), "\n".join(final)
