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
    reporter.image_done(None, None, None)
    reporter.image_done(None, None, "boom")
    reporter.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "Start to handle images tasks, please wait ..."
    assert lines[-1].startswith("progress: 2/2 images, 1 failed, 3.0 MiB copied")


def test_live_bar_draws_counts_on_a_terminal():
    stream = io.StringIO()
    reporter = ConsoleReporter(stream, live=True)
    reporter.phase("Start to generate images tasks, please wait ...")
    reporter.add_total(3)
    reporter.phase("Start to handle images tasks, please wait ...")
    for _ in range(3):
        reporter.image_done(None, None, None)
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
