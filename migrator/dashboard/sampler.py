"""The dashboard's view of Redis, read every few seconds into one JSON document.

Runs keep only a byte total (`bytes` in `{p}run:{id}`), not its history, so throughput over
time is the sampler's own: each sample appends (time, bytes, images done) to a short series
per run, in memory only (`window` seconds; a restarted dashboard starts a fresh series). Every
browser gets the same prepared document, so ten open tabs cost Redis nothing more than one.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis

from migrator.dashboard.causes import group
from migrator.dashboard.reading import newest_run_ids, schedule_names, schedule_runs
from migrator.leases import Fleet, Leases
from migrator.runs import Resent, RunState, RunStore

RATE_WINDOW = 30.0  # seconds of samples behind "now" in the current throughput
ETA_WINDOW = 300.0  # seconds of samples behind the image rate that gives the ETA
STALLED_AFTER = 60.0  # seconds of watching with no image ended before the ETA is withdrawn
SCHEDULE_SCAN_EVERY = 60.0  # seconds between two SCANs for schedule names (see reading.py)
RESENT_SHOWN = 100  # re-sent tasks listed per run (newest first); the others counted


@dataclass(frozen=True)
class Point:
    at: float
    bytes: int
    done: int


def redis_label(url: str) -> str:
    """host:port/db of a Redis URL, never its password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    database = parts.path.lstrip("/") or "0"
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}/{database}"


class Sampler:
    """Reads the newest runs and the schedules; `sample()` blocks on Redis (run it in a
    thread), `document` is the last JSON made, ready to send."""

    def __init__(self, client: Any, *, prefix: str, redis_url: str, interval: float,
                 runs: int = 20, window: float = 900.0, per_cause: int = 100) -> None:
        self.client = client
        self.store = RunStore(client, prefix=prefix)  # its read methods only
        self.leases = Leases(client, prefix=prefix)  # read only
        self.fleet = Fleet({}, {})  # the workers on record at the last sample
        self.prefix = prefix
        self.interval = interval
        self.count = runs
        self.per_cause = per_cause
        self.points = max(2, int(window / interval) + 1)
        self.series: dict[str, deque[Point]] = {}
        self.grouped: dict[tuple[bool, int], list[dict[str, Any]]] = {}
        self.in_use: set[tuple[bool, int]] = set()
        self.schedules: list[str] = []
        self.schedules_read = float("-inf")
        self.header = {"redis": redis_label(redis_url), "prefix": prefix,
                       "interval": interval, "window": window}
        self.last: dict[str, Any] = {**self.header, "generated": None, "error": None,
                                     "runs": [], "schedules": []}
        self.document = json.dumps(self.last).encode()

    def sample(self) -> bytes:
        now = time.time()
        try:
            runs, schedules = self._read(now)
        except redis.exceptions.RedisError as exc:
            # Keep showing the last good picture, marked stale, until Redis answers again.
            message = str(exc).splitlines()[0][:300] if str(exc) else ""
            self.last = {**self.last, "error": f"Redis at {self.header['redis']} cannot be "
                         f"read ({type(exc).__name__}: {message}); showing the last data read"}
        else:
            self.last = {**self.header, "generated": now, "error": None, "runs": runs,
                         "schedules": schedules}
        self.document = json.dumps(self.last).encode()
        return self.document

    def _read(self, now: float) -> tuple[list[dict], list[dict]]:
        states: dict[str, RunState | None] = {}
        self.in_use = set()
        listed = newest_run_ids(self.client, self.prefix, self.count)
        self.fleet = self.leases.read()
        runs = []
        for run_id in listed:
            try:
                states[run_id] = state = self.store.state(run_id)
            except (ValueError, UnicodeDecodeError) as exc:  # a record not written by us
                runs.append({"id": run_id, "unreadable": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            if state is not None:  # expired while still listed
                runs.append(self._run(state, now))
        for gone in set(self.series) - set(listed):
            del self.series[gone]
        for unused in set(self.grouped) - self.in_use:
            del self.grouped[unused]
        return runs, self._schedules(states, now)

    def _run(self, state: RunState, now: float) -> dict[str, Any]:
        series = self.series.setdefault(state.run_id, deque(maxlen=self.points))
        series.append(Point(now, state.bytes, state.done))
        pending = max(0, state.total - state.done)
        return {
            "id": state.run_id, "name": state.name, "created": state.created,
            "status": _status(state), "finished": state.finished,
            "total": state.total, "done": state.done, "succeeded": state.succeeded,
            "skipped": state.skipped, "failed": len(state.failed),
            "generate_failed": len(state.generate_failed),
            "expands_pending": state.expands_pending, "pending": pending,
            "bytes": state.bytes,
            "rate": _rate(series, now - RATE_WINDOW, "bytes"),
            "throughput": _throughput(series),
            "eta": None if state.finished else _eta(series, state, now),
            "summary": state.line() if state.finished else "",
            "failures": self._causes(state.failed, jobs=True),
            "generate_failures": self._causes(state.generate_failed, jobs=False),
            "resent": len(state.resent),
            "recovery": _recovery(state.resent, self.fleet.waiting(self.store, state)),
        }

    def _causes(self, failed: dict[str, str], *, jobs: bool) -> list[dict[str, Any]]:
        # Grouping 20 000 reasons takes a good part of a second; a run's failures seldom
        # change between two samples, so the grouping of the same failures is reused.
        fingerprint = (jobs, hash(frozenset(failed.items())))
        if fingerprint not in self.grouped:
            self.grouped[fingerprint] = [
                {"cause": cause.cause, "count": cause.count,
                 "items": [{"name": name, "reason": reason} for name, reason in cause.items],
                 "more": cause.count - len(cause.items)}
                for cause in group(failed, per_cause=self.per_cause, jobs=jobs)]
        self.in_use.add(fingerprint)
        return self.grouped[fingerprint]

    def _schedules(self, states: dict[str, RunState | None], now: float) -> list[dict]:
        if now - self.schedules_read >= SCHEDULE_SCAN_EVERY:
            self.schedules = schedule_names(self.client, self.prefix)
            self.schedules_read = now
        found = []
        for name, run_id in schedule_runs(self.client, self.prefix, self.schedules).items():
            state = None
            if run_id is not None:
                if run_id not in states:
                    try:
                        states[run_id] = self.store.state(run_id)
                    except (ValueError, UnicodeDecodeError):
                        states[run_id] = None
                state = states[run_id]
            found.append({
                "name": name, "run_id": run_id,
                # The firing's time is its run's creation: the schedule key holds only the id.
                "fired": state.created if state else None,
                "status": _status(state) if state else None,
                "done": state.done if state else None, "total": state.total if state else None,
            })
        return found


def _recovery(resent: dict[str, Resent], held: dict[str, str]) -> list[dict[str, Any]]:
    """The run's tasks held by dead workers and those sent again, grouped like failures:
    by worker (newest re-send first), each task with when it went back to the queue."""
    groups: dict[str, list[dict[str, str]]] = {}
    for job, worker in sorted(held.items()):
        cause = f"held by {worker}, whose lease expired: sent again at the reaper's next sweep"
        groups.setdefault(cause, []).append({"name": job, "reason": "not back in the queue yet"})
    newest = sorted(resent.items(), key=lambda item: (-item[1].at, item[0]))
    for job, entry in newest:
        cause = f"sent again: {entry.reason}"
        at = time.strftime("%H:%M:%S UTC", time.gmtime(entry.at))
        times = f" ({entry.times} times)" if entry.times > 1 else ""
        groups.setdefault(cause, []).append({"name": job, "reason": f"back in the queue at "
                                                                   f"{at}{times}"})
    return [{"cause": cause, "count": len(items), "items": items[:RESENT_SHOWN],
             "more": max(0, len(items) - RESENT_SHOWN)} for cause, items in groups.items()]


def _status(state: RunState) -> str:
    if not state.finished:
        return "running"
    return "succeeded" if state.ok else "failed"


def _rate(series: deque[Point], since: float, what: str) -> float | None:
    """Change per second of `what` between the oldest sample after `since` and the newest."""
    if len(series) < 2:
        return None
    newest = series[-1]
    oldest = next((point for point in series if point.at >= since), series[0])
    if oldest is newest:
        oldest = series[-2]
    elapsed = newest.at - oldest.at
    if elapsed <= 0:
        return None
    return max(0.0, (getattr(newest, what) - getattr(oldest, what)) / elapsed)


def _throughput(series: deque[Point]) -> list[list[float]]:
    """Bytes per second between consecutive samples, as [time, rate] points."""
    points = list(series)
    return [[round(after.at, 3), round(max(0, after.bytes - before.bytes)
                                       / max(after.at - before.at, 1e-6))]
            for before, after in zip(points, points[1:], strict=False)]


def _eta(series: deque[Point], state: RunState, now: float) -> dict[str, Any] | None:
    """Seconds until the images known now are done, at the image rate of the last minutes;
    while the dashboard has watched too briefly to know one, at the rate since the run was
    created. A run that ended no image for a minute gets no ETA (`seconds` None) rather than
    a hopeful one. `partial`: rules are still being listed, more images may come."""
    remaining = max(0, state.total - state.done)
    rate = _rate(series, now - ETA_WINDOW, "done")
    watched = series[-1].at - series[0].at
    basis = "recent"
    if rate is None or (rate == 0 and watched < STALLED_AFTER):
        rate, basis = None, "since start"
        if state.done and state.created:
            rate = state.done / max(now - state.created, 1e-6)
    if rate is None:
        return None
    return {"seconds": round(remaining / rate, 1) if rate else None,
            "images_per_second": round(rate, 3), "basis": basis,
            "partial": state.expands_pending > 0}
