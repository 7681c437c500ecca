"""Progress for a person: a live bar on a terminal, periodic plain lines otherwise.

The phase lines and the summary are the peers' exact words (scripts grep for them). Details of
each image go to the log, not here. While the bar is drawn, the log's records are printed
above it (`log_handler`): a line written to the terminal behind rich's back would be glued
onto the bar and leave a stale copy of it on the screen.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TYPE_CHECKING, TextIO, TypedDict

if TYPE_CHECKING:  # rich loads only for a live bar: its import is a tenth of the start-up
    from rich.progress import Progress, TaskID

    from migrator.copy import CopyResult
    from migrator.rules import Job

PLAIN_INTERVAL = 5.0


class BarFields(TypedDict):
    """The bar's own columns, beside rich's (bar, count, elapsed, ETA)."""

    running: str
    failed: int
    skipped: str
    size: str
    rate: str


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """`4.2s`, `1m12s`, `2h05m09s`."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class ConsoleReporter:
    def __init__(self, stream: TextIO, *, live: bool | None = None,
                 errors: TextIO | None = None) -> None:
        """`stream` takes the progress (stdout); `errors` is where plain log lines go
        (default: stderr)."""
        self.stream = stream
        self.errors = sys.stderr if errors is None else errors
        self.live = stream.isatty() if live is None else live
        # Records go above the bar only when they would reach the terminal anyway: a
        # redirected stderr (`2>file`) keeps its plain lines, and nothing of it is sent to
        # the terminal instead (rich's redirection of sys.stderr would do that).
        self.logs_above_bar = self.live and self.errors.isatty()
        self.total = self.done = self.failed = self.skipped = self.bytes = 0
        self.started = time.monotonic()
        self._ended: float | None = None
        self._last_line = self.started
        self._lock = threading.Lock()
        self._outcomes: dict[Job, str] = {}  # job → its last try, when "failed" or "skipped"
        self._running: set[Job] = set()  # copies started and not yet done
        self._in_flight_known = True  # False once the figures come from elsewhere (fleet)
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if self.live:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("images"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[running]}"),
                TextColumn("{task.fields[failed]} failed{task.fields[skipped]}"),
                TextColumn("{task.fields[size]}"), TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=Console(file=stream, force_terminal=True), transient=True,
                redirect_stderr=self.logs_above_bar,
            )

    def log_handler(self) -> logging.Handler:
        """The handler for a log that goes to the terminal: one plain line per record on
        `errors`, printed above the bar while the bar is drawn."""
        if self.logs_above_bar:
            return _AboveTheBar(self)
        return logging.StreamHandler(self.errors)

    def say(self, text: str) -> None:
        """A line for the person at once, on `errors`: above the bar while it is drawn."""
        progress = self._progress
        if progress is not None and progress.live.is_started and self.logs_above_bar:
            progress.console.print(text, markup=False, highlight=False, emoji=False,
                                   soft_wrap=True)
        else:
            print(text, file=self.errors, flush=True)

    def phase(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
            if text.startswith("Start to handle") and self._task is None:
                self._task = self._progress.add_task("images", total=self.total,
                                                     **self._fields())
                self._progress.start()
        else:
            print(text, file=self.stream, flush=True)

    def add_total(self, images: int) -> None:
        with self._lock:
            self.total += images
        self._refresh()

    def add_bytes(self, count: int) -> None:
        with self._lock:
            self.bytes += count
        if self.live:
            self._refresh()

    def image_started(self, job: Job) -> None:
        """A copy begins: the bar counts the copies in flight."""
        with self._lock:
            self._running.add(job)
        self._refresh()

    def image_done(self, job: Job, result: CopyResult | None, error: str | None) -> None:
        # Per job, its last outcome: a retry pass must not count an image twice.
        outcome = ("failed" if error is not None else
                   "skipped" if result is not None and result.outcome == "skipped" else "ok")
        with self._lock:
            self._running.discard(job)
            # Only the images that may be tried again are kept: one that succeeded never is,
            # and a 20 000-tag run need not hold a record of each.
            before = self._outcomes.pop(job, None)
            if outcome != "ok":
                self._outcomes[job] = outcome
            self.done += before is None
            # counted, not re-summed per image
            self.failed += (outcome == "failed") - (before == "failed")
            self.skipped += (outcome == "skipped") - (before == "skipped")
        self._refresh()

    def set_counts(self, *, total: int, done: int, failed: int, copied_bytes: int,
                   skipped: int = 0) -> None:
        """Absolute figures, for a run whose work happens elsewhere (the fleet)."""
        with self._lock:
            self.total, self.done, self.failed, self.bytes = total, done, failed, copied_bytes
            self.skipped = skipped
            self._in_flight_known = False  # the fleet's queue does not tell what runs
        self._refresh()

    def elapsed(self) -> float:
        """Seconds since the reporter was made, until `close`."""
        return (time.monotonic() if self._ended is None else self._ended) - self.started

    def rate(self) -> float:
        return self.bytes / max(self.elapsed(), 1e-6)

    def skipped_text(self) -> str:
        """The skipped images as shown ("3 skipped"); nothing in a run that skipped none, so a
        run without a platform filter keeps its usual line."""
        return f"{self.skipped} skipped" if self.skipped else ""

    def status_line(self) -> str:
        skipped = f"{self.skipped_text()}, " if self.skipped else ""
        return (f"progress: {self.done}/{self.total} images, {self.failed} failed, {skipped}"
                f"{human_bytes(self.bytes)} copied, {human_bytes(self.rate())}/s")

    def stats_line(self) -> str:
        """`40 images, 1.2 GiB in 1m12s (17.1 MiB/s)`: the bar's last figures, kept on the
        screen once the bar is gone."""
        images = f"{self.done} image{'' if self.done == 1 else 's'}"
        return (f"{images}, {human_bytes(self.bytes)} in {human_duration(self.elapsed())} "
                f"({human_bytes(self.rate())}/s)")

    def _fields(self) -> BarFields:
        # No byte total: the engine learns the sizes image by image, as it copies; none is
        # made up.
        running = f"{len(self._running)} running" if self._in_flight_known else ""
        skipped = f", {self.skipped_text()}" if self.skipped else ""
        return BarFields(running=running, failed=self.failed, skipped=skipped,
                         size=human_bytes(self.bytes), rate=f"{human_bytes(self.rate())}/s")

    def _refresh(self) -> None:
        if self._progress is not None:
            if self._task is not None:
                self._progress.update(self._task, completed=self.done, total=self.total,
                                      **self._fields())
            return
        now = time.monotonic()
        if now - self._last_line >= PLAIN_INTERVAL:
            self._last_line = now
            print(self.status_line(), file=self.stream, flush=True)

    def close(self) -> None:
        self._ended = time.monotonic()
        if self._progress is not None:
            self._progress.stop()
        elif self.done:
            print(self.status_line(), file=self.stream, flush=True)


class _AboveTheBar(logging.StreamHandler[TextIO]):
    """Plain log lines on the reporter's `errors`; while the bar is drawn, printed through
    its console instead, which puts each line above the bar and draws the bar again below."""

    def __init__(self, reporter: ConsoleReporter) -> None:
        super().__init__(reporter.errors)
        self.reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        progress = self.reporter._progress
        if progress is None or not progress.live.is_started:
            super().emit(record)
            return
        try:
            progress.console.print(self.format(record), markup=False, highlight=False,
                                   emoji=False, soft_wrap=True)
        except Exception:  # as logging does: a broken display must not break the copy
            self.handleError(record)
