"""What `migrator sync` writes to stdout and stderr, with no server: the real command and the
real runner, with `copy_image` replaced by a stand-in that logs, counts bytes and fails one
image as a real copy would.

Plain mode (streams that are no terminal, as in CI or `| tee`) keeps its plain lines; the
live mode's log handler is checked with streams that claim to be terminals.
(tests/integration/test_terminal.py reads the screen of a real one.)
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.file_proxy import FileProxy

from migrator import progress, runner
from migrator.cli import EXIT_FAILED, main
from migrator.commands.common import setup_logging
from migrator.copy import CopyResult
from migrator.errors import TransportError
from migrator.progress import ConsoleReporter
from migrator.rules import Job

SRC, DST = "127.0.0.1:1", "127.0.0.1:2"
SUMMARY = "Images(3) migration finished, 1 images tasks failed, 0 tasks generate failed"
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?:INFO|WARNING|ERROR) ")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def root_logger() -> Iterator[None]:
    """`setup_logging` replaces the root's handlers: give the next test back pytest's."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def fake_copy(job: Job, **kwargs: object) -> CopyResult:
    """A copy of 1 MiB that logs as the real one does; `ns/missing`'s source resets every
    connection (retryable: the retry pass tries it again, and it fails again)."""
    if "ns/missing" in str(job):
        raise TransportError(f"{job.source}: connection reset")
    kwargs["on_bytes"](1024 * 1024)
    logging.getLogger("migrator.copy.image").info("copied %s", job)
    return CopyResult(job, bytes_copied=1024 * 1024)


def run_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(runner, "copy_image", fake_copy)
    monkeypatch.setattr(progress, "PLAIN_INTERVAL", 0.0)
    rules = {f"{SRC}/ns/{name}:1": f"{DST}/t/{name}" for name in ("a", "b", "missing")}
    (tmp_path / "images.json").write_text(json.dumps(rules))
    (tmp_path / "auth.json").write_text(json.dumps({SRC: {"insecure": True},
                                                    DST: {"insecure": True}}))
    return main(["sync", "--images", str(tmp_path / "images.json"), "--auth",
                 str(tmp_path / "auth.json"), "--no-state", "-r", "1"],
                {"MIGRATOR_RETRY_PASS_DELAY": "0.01"})


def test_plain_mode_writes_plain_lines_and_each_failure_once(tmp_path, monkeypatch, capsys):
    assert run_sync(tmp_path, monkeypatch) == EXIT_FAILED
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err  # no terminal control: plain lines only
    # stdout: the phase lines, the periodic progress lines, the summary last (no stats line:
    # the last `progress:` line already tells images and bytes).
    lines = out.splitlines()
    phases = ["Start to generate images tasks, please wait ...",
              "Start to handle images tasks, please wait ..."]
    assert [line for line in lines if line in phases] == phases
    assert all(line.startswith("progress: ") for line in lines[:-1] if line not in phases)
    assert lines[-2].startswith("progress: 3/3 images, 1 failed, 2.0 MiB copied")
    assert lines[-1] == SUMMARY
    # stderr: log records as plain lines, and the failure once, as the line scripts read.
    records = [line for line in err.splitlines() if RECORD.match(line)]
    assert sorted(line.split(" ", 3)[3] for line in records if " copied " in line) == [
        f"copied {SRC}/ns/a:1 -> {DST}/t/a:1", f"copied {SRC}/ns/b:1 -> {DST}/t/b:1"]
    assert any("INFO retry pass 1 of 1 " in line for line in records)
    missing = [line for line in err.splitlines() if "ns/missing" in line]
    assert missing == [f"failed: {SRC}/ns/missing:1 -> {DST}/t/missing:1: "
                       f"{SRC}/ns/missing:1: connection reset"]
    assert SUMMARY not in err  # said once, on stdout


def test_records_go_above_the_bar_while_it_runs_and_to_stderr_otherwise():
    out, err = Terminal(), Terminal()
    reporter = ConsoleReporter(out, errors=err)
    setup_logging(None, debug=False, terminal=reporter.log_handler())
    log = logging.getLogger("migrator.test")
    log.info("before the bar")
    reporter.add_total(1)
    reporter.phase("Start to handle images tasks, please wait ...")
    try:
        log.info("during the bar")
    finally:
        reporter.close()
    log.info("after the bar")
    assert "during the bar" in out.getvalue() and "during the bar" not in err.getvalue()
    assert [line.split(" ", 3)[3] for line in err.getvalue().splitlines()] == [
        "before the bar", "after the bar"]


def test_a_redirected_stderr_keeps_its_plain_lines_under_a_live_bar():
    out, err = Terminal(), io.StringIO()  # `migrator sync 2>file` on a terminal
    reporter = ConsoleReporter(out, errors=err)
    setup_logging(None, debug=False, terminal=reporter.log_handler())
    reporter.add_total(1)
    reporter.phase("Start to handle images tasks, please wait ...")
    try:
        assert reporter.live
        assert not isinstance(sys.stderr, FileProxy)  # rich leaves stderr where it points
        logging.getLogger("migrator.test").warning("during the bar")
    finally:
        reporter.close()
    assert "during the bar" not in out.getvalue()
    assert RECORD.match(err.getvalue()) and err.getvalue().endswith("WARNING during the bar\n")


def test_the_runner_failure_records_stay_off_the_terminal_but_other_errors_show():
    out, err = Terminal(), Terminal()
    reporter = ConsoleReporter(out, errors=err)
    setup_logging(None, debug=False, terminal=reporter.log_handler())
    runner.log.error("failed %s: %s", "a -> b", "boom")
    runner.log.error("generate failed for %s: %s", "images.json", "boom")
    runner.log.error("unexpected error on %s", "a -> b")
    assert [line.split(" ", 2)[2] for line in err.getvalue().splitlines()] == [
        "ERROR unexpected error on a -> b"]


def test_the_bar_counts_copies_in_flight_and_the_end_keeps_its_figures():
    out = Terminal()
    reporter = ConsoleReporter(out, errors=Terminal())
    reporter.add_total(3)
    reporter.phase("Start to handle images tasks, please wait ...")
    for job in ("a", "b", "c"):
        reporter.image_started(job)
    reporter.image_done("a", CopyResult("a"), None)
    reporter.add_bytes(int(1.2 * 1024**3))
    assert reporter._progress is not None
    reporter._progress.refresh()
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # colours off
    reporter.started = time.monotonic() - 72
    reporter.close()
    assert re.search(r"1/3 2 running 0 failed 1\.2 GiB [\d.]+ \w+/s .* ETA ", drawn), drawn
    assert reporter.stats_line() == "1 image, 1.2 GiB in 1m12s (17.1 MiB/s)"


def test_human_duration():
    from migrator.progress import human_duration

    assert human_duration(4.24) == "4.2s"
    assert human_duration(72) == "1m12s"
    assert human_duration(2 * 3600 + 5 * 60 + 9) == "2h05m09s"
