"""Progress for a person: a live bar on a terminal, periodic plain lines otherwise.

The phase lines and the summary are the peers' exact words (scripts grep for them). Details of
each image go to the log, not here.
"""

from __future__ import annotations

import threading
import time
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from migrator.copy import CopyResult
from migrator.rules import Job

PLAIN_INTERVAL = 5.0


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    raise AssertionError("unreachable")


class ConsoleReporter:
    def __init__(self, stream: TextIO, *, live: bool | None = None) -> None:
        self.stream = stream
        self.live = stream.isatty() if live is None else live
        self.total = self.done = self.failed = self.skipped = self.bytes = 0
        self.started = time.monotonic()
        self._last_line = self.started
        self._lock = threading.Lock()
        self._outcomes: dict[Job, str] = {}  # job → its last try: "ok", "failed", "skipped"
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if self.live:
            self._progress = Progress(
                TextColumn("images"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[failed]} failed"), TextColumn("{task.fields[skipped]}"),
                TextColumn("{task.fields[size]}"), TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                console=Console(file=stream, force_terminal=True), transient=True,
            )

    def phase(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
            if text.startswith("Start to handle") and self._task is None:
                self._task = self._progress.add_task("images", total=self.total, failed=0,
                                                     skipped="", size="", rate="")
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

    def image_done(self, job: Job, result: CopyResult | None, error: str | None) -> None:
        # Per job, its last outcome: a retry pass must not count an image twice.
        outcome = ("failed" if error is not None else
                   "skipped" if result is not None and result.outcome == "skipped" else "ok")
        with self._lock:
            before = self._outcomes.get(job)
            self._outcomes[job] = outcome
            self.done = len(self._outcomes)
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
        self._refresh()

    def rate(self) -> float:
        return self.bytes / max(time.monotonic() - self.started, 1e-6)

    def skipped_text(self) -> str:
        """The skipped images as shown ("3 skipped"); nothing in a run that skipped none, so a
        run without a platform filter keeps its usual line."""
        return f"{self.skipped} skipped" if self.skipped else ""

    def status_line(self) -> str:
        skipped = f"{self.skipped_text()}, " if self.skipped else ""
        return (f"progress: {self.done}/{self.total} images, {self.failed} failed, {skipped}"
                f"{human_bytes(self.bytes)} copied, {human_bytes(self.rate())}/s")

    def _refresh(self) -> None:
        if self._progress is not None:
            if self._task is not None:
                self._progress.update(
                    self._task, completed=self.done, total=self.total, failed=self.failed,
                    skipped=self.skipped_text(), size=human_bytes(self.bytes),
                    rate=f"{human_bytes(self.rate())}/s")
            return
        now = time.monotonic()
        if now - self._last_line >= PLAIN_INTERVAL:
            self._last_line = now
            print(self.status_line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        elif self.done:
            print(self.status_line(), file=self.stream, flush=True)
