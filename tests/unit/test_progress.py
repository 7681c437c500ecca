"""Progress output: a live bar on a terminal, plain lines elsewhere, the peers' phase lines."""

import io

from migrator import progress
from migrator.progress import ConsoleReporter, human_bytes


def test_plain_output_has_phase_lines_and_a_final_status(monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_INTERVAL", 0.0)
    stream = io.StringIO()
    reporter = ConsoleReporter(stream)
    assert not reporter.live  # a StringIO is no terminal
    reporter.phase("Start to handle images tasks, please wait ...")
    reporter.add_total(2)
    reporter.add_bytes(3 * 1024 * 1024)
    reporter.image_done("a", None, None)
    reporter.image_done("b", None, "boom")
    reporter.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "Start to handle images tasks, please wait ..."
    assert lines[-1].startswith("progress: 2/2 images, 1 failed, 3.0 MiB copied")


def test_a_retried_image_counts_once_with_its_last_outcome():
    reporter = ConsoleReporter(io.StringIO())
    reporter.add_total(2)
    for _ in range(3):  # three passes fail
        reporter.image_done("a", None, "boom")
    reporter.image_done("b", None, None)
    assert (reporter.done, reporter.failed) == (2, 1)
    reporter.image_done("a", None, None)  # the fourth pass succeeds
    assert (reporter.done, reporter.failed) == (2, 0)


def test_live_bar_draws_counts_on_a_terminal():
    stream = io.StringIO()
    reporter = ConsoleReporter(stream, live=True)
    reporter.phase("Start to generate images tasks, please wait ...")
    reporter.add_total(3)
    reporter.phase("Start to handle images tasks, please wait ...")
    for job in ("a", "b", "c"):
        reporter.image_done(job, None, None)
    reporter.add_bytes(2048)
    reporter._progress.refresh()
    drawn = stream.getvalue()
    reporter.close()
    assert "Start to generate images tasks, please wait ..." in drawn
    assert "3/3" in drawn and "2.0 KiB" in drawn


def test_human_bytes():
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(5 * 1024**3) == "5.0 GiB"


def test_skipped_images_are_counted_apart_and_shown(monkeypatch):
    from migrator.copy import CopyResult

    monkeypatch.setattr(progress, "PLAIN_INTERVAL", 0.0)
    stream = io.StringIO()
    reporter = ConsoleReporter(stream)
    reporter.add_total(3)
    reporter.image_done("a", CopyResult("a", outcome="skipped"), None)
    reporter.image_done("b", CopyResult("b"), None)
    reporter.image_done("c", None, "boom")
    assert (reporter.done, reporter.failed, reporter.skipped) == (3, 1, 1)
    assert reporter.status_line().startswith("progress: 3/3 images, 1 failed, 1 skipped, ")
    reporter.image_done("a", CopyResult("a", outcome="skipped"), None)  # counted once
    assert reporter.skipped == 1
    reporter.set_counts(total=5, done=4, failed=0, copied_bytes=0, skipped=2)
    assert "2 skipped" in reporter.status_line()


def test_the_live_bar_shows_skipped_images():
    from migrator.copy import CopyResult

    stream = io.StringIO()
    reporter = ConsoleReporter(stream, live=True)
    reporter.add_total(3)
    reporter.phase("Start to handle images tasks, please wait ...")
    for job in ("a", "b", "c"):
        reporter.image_done(job, CopyResult(job, outcome="skipped"), None)
    reporter._progress.refresh()
    drawn = stream.getvalue()
    reporter.close()
    assert "3/3" in drawn and "3 skipped" in drawn
