"""A run of the fleet, as recorded in Redis: what it must copy, what is done, what failed.

Counters are sets and hashes keyed by the image task ("src -> dst"), not increments, so a task
that Celery delivers twice counts once (invariant 6), and progress and the summary line are
derived, never stored twice:

    {p}run:{id}            HASH  name, created, retries, bytes; cancelled (a time) once
                                 `migrator cancel` asked: workers drop its queued tasks
    {p}run:{id}:jobs       SET   every image task of the run (src -> dst)
    {p}run:{id}:ok         SET   the tasks that ended copied or up to date
    {p}run:{id}:skipped    HASH  task → why, for images the platform filter left out: done,
                                 not failed, and not among the successes (image-syncer does
                                 not list ignored images there either)
    {p}run:{id}:failed     HASH  task → reason, for tasks that gave up
    {p}run:{id}:expands    SET   rules whose tag list is still to be read
    {p}run:{id}:genfailed  HASH  rule → reason, for rules that could not be expanded
    {p}run:{id}:auth       the run's credentials, sealed (see migrator.auth.seal), or their
                           non-secret part (insecure flags) when no key is shared
    {p}run:{id}:tasks      HASH  task or rule → the message sent for it, to send it again
    {p}run:{id}:wake       LIST  one mark pushed by each ending, popped by a watcher
    {p}run:{id}:resent     HASH  task or rule → {by, at, times} (JSON): sent again by the
                                 reaper, because the worker `by` holding it died (`?`: one
                                 that died before its lease listed it), or (`by` empty)
                                 because its message was lost
    {p}runs                ZSET  run id by creation time, for `migrator status`; ids older
                                 than `run_ttl` are dropped when a run is created
    {p}runs:active         SET   runs not seen finished yet, for the reaper's look for lost
                                 messages (it removes those it finds finished)

Every key of a run expires `run_ttl` after it was written. Once the run is finished (the
ending that finishes it, a cancel, or the reaper's retire notices it, in the same atomic
step), what only served to send work again goes at once (`:jobs`, `:tasks`, `:expands`; the
run hash keeps `total` and `finished`), and the rest, which `migrator status` and its
reports read, expires `finished_run_ttl` after that (docs/fleet.md).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from migrator.ledger import text
from migrator.settings import default
from migrator.summary import summary_line

SUFFIXES = ("", ":jobs", ":ok", ":skipped", ":failed", ":expands", ":genfailed", ":auth",
            ":tasks", ":wake", ":resent")

# An ending (or a cancel, or a retire) is one Lua script: one round trip, and atomic, so that
# the step that finishes a run is the one that compacts it. KEYS are the run's keys in
# SUFFIXES order; ARGV[1..3] are run_ttl, finished_run_ttl and the time, then the op's own.
_PROLOGUE = """
local run, jobs, ok, skipped, failed = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local expands, genfailed, tasks, wake = KEYS[6], KEYS[7], KEYS[9], KEYS[10]
if redis.call('EXISTS', run) == 0 then return 0 end
local finished = redis.call('HEXISTS', run, 'finished') == 1
local ttl = tonumber(ARGV[1])
if finished then ttl = tonumber(ARGV[2]) end
"""
_EPILOGUE = """
if ARGV[4] ~= 'retire' then
  redis.call('LPUSH', wake, 1)
  redis.call('LTRIM', wake, 0, 0)
  redis.call('EXPIRE', wake, ttl)
end
if finished then return 1 end
local total = redis.call('SCARD', jobs)
local done = redis.call('SCARD', ok) + redis.call('HLEN', skipped) + redis.call('HLEN', failed)
if redis.call('HEXISTS', run, 'cancelled') == 0
    and (redis.call('SCARD', expands) > 0 or done < total) then
  return 1
end
redis.call('HSET', run, 'total', total, 'finished', ARGV[3])
redis.call('DEL', jobs, tasks, expands)
local keep = tonumber(ARGV[2])
for index, key in ipairs(KEYS) do
  local left = redis.call('TTL', key)
  if left == -1 or left > keep then redis.call('EXPIRE', key, keep) end
end
return 1
"""
_OPS = {
    # ARGV[5] job, ARGV[6] bytes copied
    "succeeded": """
redis.call('SADD', ok, ARGV[5])
redis.call('HDEL', failed, ARGV[5])
redis.call('HDEL', skipped, ARGV[5])
if tonumber(ARGV[6]) > 0 then redis.call('HINCRBY', run, 'bytes', ARGV[6]) end
redis.call('EXPIRE', ok, ttl)
""",
    # ARGV[5..] jobs, in slices that Lua's unpack takes
    "up_to_date": """
for first = 5, #ARGV, 1000 do
  local last = math.min(first + 999, #ARGV)
  redis.call('SADD', ok, unpack(ARGV, first, last))
  redis.call('HDEL', failed, unpack(ARGV, first, last))
  redis.call('HDEL', skipped, unpack(ARGV, first, last))
end
redis.call('EXPIRE', ok, ttl)
""",
    # ARGV[5] job, ARGV[6] why
    "skipped": """
redis.call('HSET', skipped, ARGV[5], ARGV[6])
redis.call('SREM', ok, ARGV[5])
redis.call('HDEL', failed, ARGV[5])
redis.call('EXPIRE', skipped, ttl)
""",
    # ARGV[5] job, ARGV[6] reason; a duplicate delivery that failed after the first one
    # ended leaves the first ending as it is
    "failed": """
if redis.call('SISMEMBER', ok, ARGV[5]) == 0 and redis.call('HEXISTS', skipped, ARGV[5]) == 0
    then
  redis.call('HSET', failed, ARGV[5], ARGV[6])
  redis.call('EXPIRE', failed, ttl)
end
""",
    # ARGV[5] rule, ARGV[6] "1" when it failed, ARGV[7] the reason
    "expanded": """
if ARGV[6] == '1' then
  redis.call('HSET', genfailed, ARGV[5], ARGV[7])
  redis.call('EXPIRE', genfailed, ttl)
else
  redis.call('HDEL', genfailed, ARGV[5])
end
redis.call('SREM', expands, ARGV[5])
""",
    "cancel": "redis.call('HSETNX', run, 'cancelled', ARGV[3])\n",
    "retire": "",
}
_SCRIPTS = {op: _PROLOGUE + body + _EPILOGUE for op, body in _OPS.items()}


LOST = ""  # Resent.by of a task whose message was lost (no worker held it)
UNLISTED = "?"  # Resent.by of a message whose dead holder had not listed it in its lease


def new_run_id() -> str:
    """Sortable and readable: `20261128-130501-3fa9c2`."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


@dataclass(frozen=True)
class Resent:
    """A task sent again by the reaper: `by` the dead worker that held it ("" when its
    message was lost with no worker holding it), last `at` (epoch seconds), `times` in all."""

    by: str
    at: float
    times: int = 1

    @property
    def reason(self) -> str:
        if self.by == LOST:
            return "its message was lost with no worker holding it"
        if self.by == UNLISTED:
            return "held by a worker that died before its lease listed the task"
        return f"held by {self.by}, which stopped renewing its lease"


@dataclass
class RunState:
    run_id: str
    name: str = ""
    created: float = 0.0
    total: int = 0
    succeeded: int = 0
    skipped: int = 0  # images the platform filter left out
    failed: dict[str, str] = field(default_factory=dict)
    generate_failed: dict[str, str] = field(default_factory=dict)
    expands_pending: int = 0
    bytes: int = 0
    cancelled: float = 0.0  # when `migrator cancel` stopped it (0: never)
    resent: dict[str, Resent] = field(default_factory=dict)  # tasks the reaper sent again

    @property
    def done(self) -> int:
        return self.succeeded + self.skipped + len(self.failed)

    @property
    def finished(self) -> bool:
        """Nothing more will happen: all done, or cancelled (copies already running finish
        on their own, and count when they end)."""
        return bool(self.cancelled) or (self.expands_pending == 0 and self.done >= self.total)

    @property
    def ok(self) -> bool:
        return (self.finished and not self.cancelled and not self.failed
                and not self.generate_failed)

    def line(self) -> str:
        """The summary line of image-syncer / image-migrator, also for fleet runs."""
        return summary_line(self.total, len(self.failed), len(self.generate_failed))


class RunStore:
    def __init__(self, client: Any, *, prefix: str = default("redis_prefix"),
                 ttl: int = default("run_ttl"),
                 finished_ttl: int = default("finished_run_ttl")) -> None:
        self.redis = client
        self.prefix = prefix
        self.ttl = ttl
        self.finished_ttl = min(finished_ttl, ttl)

    def _end(self, run_id: str, op: str, *args: object) -> bool:
        """Run one ending script (see _OPS); False when the run is no longer in Redis: an
        ending must not bring back a run that was flushed, as a run of nothing, finished."""
        keys = [self.key(run_id, suffix) for suffix in SUFFIXES]
        found = self.redis.eval(_SCRIPTS[op], len(keys), *keys, self.ttl, self.finished_ttl,
                                repr(time.time()), op, *args)
        return bool(found)

    def key(self, run_id: str, suffix: str = "") -> str:
        return f"{self.prefix}run:{run_id}{suffix}"

    def create(self, *, name: str, retries: int, jobs: Iterable[str], expands: Iterable[str],
               auth: str = "") -> str:
        """Record a run completely before any of its tasks is sent, so it cannot look done."""
        run_id = new_run_id()
        now = time.time()
        jobs, expands = list(jobs), list(expands)
        with self.redis.pipeline() as pipe:
            pipe.hset(self.key(run_id), mapping={
                "name": name, "created": now, "retries": retries, "bytes": 0})
            if jobs:
                pipe.sadd(self.key(run_id, ":jobs"), *jobs)
            if expands:
                pipe.sadd(self.key(run_id, ":expands"), *expands)
            if auth:
                pipe.set(self.key(run_id, ":auth"), auth)
            for suffix in SUFFIXES:
                pipe.expire(self.key(run_id, suffix), self.ttl)
            pipe.zadd(f"{self.prefix}runs", {run_id: now})
            # The index forgets the runs whose records have expired by now.
            pipe.zremrangebyscore(f"{self.prefix}runs", "-inf", now - self.ttl)
            pipe.sadd(self.active_key, run_id)
            pipe.execute()
        return run_id

    @property
    def active_key(self) -> str:
        return f"{self.prefix}runs:active"

    def active(self) -> list[str]:
        """The runs not seen finished yet (the reaper retires those that are)."""
        return sorted(text(run_id) for run_id in self.redis.smembers(self.active_key))

    def retire(self, run_id: str) -> None:
        """The run is finished (or gone): no longer active; compacted if not done yet."""
        self.redis.srem(self.active_key, run_id)
        self._end(run_id, "retire")

    def record_resent(self, run_id: str, keys: Iterable[str], by: str) -> None:
        """The tasks of these jobs or rules were sent again, because `by` died holding them
        ("" : their messages were lost). Written by the reaper only (one sweep at a time)."""
        keys = list(dict.fromkeys(keys))
        if not keys:
            return
        now = time.time()
        before = self.redis.hmget(self.key(run_id, ":resent"), keys)
        entries = {}
        for key, old in zip(keys, before, strict=True):
            times = _resent(old).times + 1 if old else 1
            entries[key] = json.dumps({"by": by, "at": now, "times": times})
        with self.redis.pipeline() as pipe:
            pipe.hset(self.key(run_id, ":resent"), mapping=entries)
            pipe.expire(self.key(run_id, ":resent"), self.ttl)
            pipe.execute()

    def cancel(self, run_id: str) -> bool:
        """Mark the run cancelled (False: no such run). Workers drop its tasks as they take
        them; watchers end."""
        return self._end(run_id, "cancel")

    def cancelled(self, run_id: str) -> bool:
        """One HEXISTS: what a worker asks before it starts a task of the run."""
        return bool(self.redis.hexists(self.key(run_id), "cancelled"))

    def auth(self, run_id: str) -> str | None:
        value = self.redis.get(self.key(run_id, ":auth"))
        return value.decode() if isinstance(value, bytes) else value

    def add_jobs(self, run_id: str, jobs: Iterable[str]) -> list[str]:
        """Add image tasks found by an expansion; returns those not already in the run."""
        jobs = list(jobs)
        if not jobs:
            return []
        with self.redis.pipeline() as pipe:
            for job in jobs:
                pipe.sadd(self.key(run_id, ":jobs"), job)
            pipe.expire(self.key(run_id, ":jobs"), self.ttl)
            added = pipe.execute()[:-1]
        return [job for job, new in zip(jobs, added, strict=True) if new]

    def succeeded_jobs(self, run_id: str) -> list[str]:
        """The images copied or up to date; not those skipped (see `skipped_jobs`)."""
        return sorted(text(job) for job in self.redis.smembers(self.key(run_id, ":ok")))

    def skipped_jobs(self, run_id: str) -> dict[str, str]:
        """The images the platform filter left out, each with why."""
        return _decoded(self.redis.hgetall(self.key(run_id, ":skipped")))

    def unfinished(self, run_id: str, jobs: list[str]) -> set[str]:
        """Those of `jobs` that have not ended yet: not succeeded, skipped or failed."""
        if not jobs:
            return set()
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.smismember(self.key(run_id, ":ok"), jobs)
            pipe.hmget(self.key(run_id, ":failed"), jobs)
            pipe.hmget(self.key(run_id, ":skipped"), jobs)
            ok, failed, skipped = pipe.execute()
        return {job for job, done, reason, why in zip(jobs, ok, failed, skipped, strict=True)
                if not done and reason is None and why is None}

    def still_open(self, run_id: str, keys: list[str]) -> set[str]:
        """Those of `keys` (image jobs or rules) the run still waits for: an image not ended
        yet, a rule whose tag list is still to be read. A dead worker's lease lists what it
        held at its last renewal, some of which it may have finished since."""
        if not keys:
            return set()
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.smismember(self.key(run_id, ":jobs"), keys)
            pipe.smismember(self.key(run_id, ":expands"), keys)
            images, rules = pipe.execute()
        jobs = [key for key, image in zip(keys, images, strict=True) if image]
        pending = {key for key, rule in zip(keys, rules, strict=True) if rule}
        return pending | self.unfinished(run_id, jobs)

    def succeeded(self, run_id: str, job: str, copied_bytes: int = 0) -> bool:
        """The image was copied or is up to date (False: the run is no longer in Redis)."""
        # An image ends in one place only, so that `done` counts it once.
        return self._end(run_id, "succeeded", job, copied_bytes)

    def remember_tasks(self, run_id: str, tasks: dict[str, tuple[str, list, dict]]) -> None:
        """The task (name, args, kwargs) sent for each job or rule, so that a watcher can send
        it again if its message is lost (a worker killed between taking it from the queue and
        recording it as unacknowledged). JSON: names, references and options, no secret."""
        if not tasks:
            return
        with self.redis.pipeline() as pipe:
            pipe.hset(self.key(run_id, ":tasks"), mapping={
                key: json.dumps(task) for key, task in tasks.items()})
            pipe.expire(self.key(run_id, ":tasks"), self.ttl)
            # How many task messages the run sent, kept when `:tasks` goes with the run's end.
            pipe.hincrby(self.key(run_id), "sent", len(tasks))
            pipe.execute()

    def unfinished_tasks(self, run_id: str) -> list[tuple[str, list, dict]]:
        """The remembered tasks of the run's jobs and rules that have not ended."""
        return list(self.unfinished_task_map(run_id).values())

    def unfinished_task_map(self, run_id: str) -> dict[str, tuple[str, list, dict]]:
        """The same, by job or rule."""
        jobs = [text(job) for job in self.redis.smembers(self.key(run_id, ":jobs"))]
        rules = [text(rule) for rule in self.redis.smembers(self.key(run_id, ":expands"))]
        keys = sorted(self.unfinished(run_id, jobs)) + sorted(rules)
        if not keys:
            return {}
        found = self.redis.hmget(self.key(run_id, ":tasks"), keys)
        return {key: tuple(json.loads(value))
                for key, value in zip(keys, found, strict=True) if value}

    def up_to_date(self, run_id: str, jobs: list[str]) -> None:
        """Many jobs done without a task (immutable tags on record): one round trip."""
        if jobs:
            self._end(run_id, "up_to_date", *jobs)

    def skipped(self, run_id: str, job: str, reason: str) -> bool:
        """The image was left out by the platform filter: done, neither failed nor copied."""
        return self._end(run_id, "skipped", job, reason)

    def failed(self, run_id: str, job: str, reason: str) -> None:
        self._end(run_id, "failed", job, reason)

    def expanded(self, run_id: str, rule: str, reason: str | None = None) -> None:
        """The rule's tag list was read (reason None) or could not be (reason given)."""
        self._end(run_id, "expanded", rule, "0" if reason is None else "1", reason or "")

    def wait_for_change(self, run_id: str, timeout: float) -> bool:
        """Block until a job or rule of the run ends, or `timeout` seconds pass: a watcher
        learns that a run finished at once instead of at its next poll."""
        return self.redis.blpop([self.key(run_id, ":wake")], timeout=timeout) is not None

    def state(self, run_id: str) -> RunState | None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.key(run_id))
            pipe.scard(self.key(run_id, ":jobs"))
            pipe.scard(self.key(run_id, ":ok"))
            pipe.hlen(self.key(run_id, ":skipped"))
            pipe.hgetall(self.key(run_id, ":failed"))
            pipe.hgetall(self.key(run_id, ":genfailed"))
            pipe.scard(self.key(run_id, ":expands"))
            pipe.hgetall(self.key(run_id, ":resent"))
            (info, total, succeeded, skipped, failed, genfailed, expands,
             resent) = pipe.execute()
        if not info:
            return None
        info = _decoded(info)
        return RunState(
            run_id=run_id, name=info.get("name", ""), created=float(info.get("created", 0)),
            # A finished run keeps its count; its list of jobs is gone.
            total=int(info["total"]) if "total" in info else total,
            succeeded=succeeded, skipped=skipped, failed=_decoded(failed),
            generate_failed=_decoded(genfailed), expands_pending=expands,
            bytes=int(info.get("bytes", 0)), cancelled=float(info.get("cancelled", 0)),
            resent={text(key): _resent(value) for key, value in resent.items()},
        )

    def recent(self, count: int = 20) -> list[RunState]:
        ids = self.redis.zrevrange(f"{self.prefix}runs", 0, count - 1)
        states = [self.state(text(run_id)) for run_id in ids]
        return [state for state in states if state is not None]


def _resent(value: bytes | str) -> Resent:
    try:
        found = json.loads(value)
        return Resent(str(found["by"]), float(found["at"]), int(found["times"]))
    except (ValueError, TypeError, KeyError):  # a record not written by this version
        return Resent("", 0.0, 1)


def _decoded(mapping: dict) -> dict[str, str]:
    return {text(key): text(value) for key, value in mapping.items()}
