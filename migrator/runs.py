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
    {p}runs                ZSET  run id by creation time, for `migrator status`
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
            ":tasks", ":wake")


def new_run_id() -> str:
    """Sortable and readable: `20261128-130501-3fa9c2`."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


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
                 ttl: int = default("run_ttl")) -> None:
        self.redis = client
        self.prefix = prefix
        self.ttl = ttl

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
            pipe.execute()
        return run_id

    def cancel(self, run_id: str) -> bool:
        """Mark the run cancelled (False: no such run). Workers drop its tasks as they take
        them; watchers end."""
        if not self.redis.exists(self.key(run_id)):
            return False
        with self.redis.pipeline() as pipe:
            pipe.hsetnx(self.key(run_id), "cancelled", time.time())
            self._wake(pipe, run_id)
            pipe.execute()
        return True

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

    def succeeded(self, run_id: str, job: str, copied_bytes: int = 0) -> None:
        with self.redis.pipeline() as pipe:
            pipe.sadd(self.key(run_id, ":ok"), job)
            # An image ends in one place only, so that `done` counts it once.
            pipe.hdel(self.key(run_id, ":failed"), job)
            pipe.hdel(self.key(run_id, ":skipped"), job)
            if copied_bytes:
                pipe.hincrby(self.key(run_id), "bytes", copied_bytes)
            pipe.expire(self.key(run_id, ":ok"), self.ttl)
            self._wake(pipe, run_id)
            pipe.execute()

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
            pipe.execute()

    def unfinished_tasks(self, run_id: str) -> list[tuple[str, list, dict]]:
        """The remembered tasks of the run's jobs and rules that have not ended."""
        jobs = [text(job) for job in self.redis.smembers(self.key(run_id, ":jobs"))]
        rules = [text(rule) for rule in self.redis.smembers(self.key(run_id, ":expands"))]
        keys = sorted(self.unfinished(run_id, jobs)) + sorted(rules)
        if not keys:
            return []
        found = self.redis.hmget(self.key(run_id, ":tasks"), keys)
        return [tuple(json.loads(value)) for value in found if value]

    def up_to_date(self, run_id: str, jobs: list[str]) -> None:
        """Many jobs done without a task (immutable tags on record): one round trip."""
        if not jobs:
            return
        with self.redis.pipeline() as pipe:
            pipe.sadd(self.key(run_id, ":ok"), *jobs)
            pipe.hdel(self.key(run_id, ":failed"), *jobs)
            pipe.hdel(self.key(run_id, ":skipped"), *jobs)
            pipe.expire(self.key(run_id, ":ok"), self.ttl)
            self._wake(pipe, run_id)
            pipe.execute()

    def skipped(self, run_id: str, job: str, reason: str) -> None:
        """The image was left out by the platform filter: done, neither failed nor copied."""
        with self.redis.pipeline() as pipe:
            pipe.hset(self.key(run_id, ":skipped"), job, reason)
            pipe.srem(self.key(run_id, ":ok"), job)
            pipe.hdel(self.key(run_id, ":failed"), job)
            pipe.expire(self.key(run_id, ":skipped"), self.ttl)
            self._wake(pipe, run_id)
            pipe.execute()

    def failed(self, run_id: str, job: str, reason: str) -> None:
        if (self.redis.sismember(self.key(run_id, ":ok"), job)
                or self.redis.hexists(self.key(run_id, ":skipped"), job)):
            return  # a duplicate delivery failed after the first one ended
        with self.redis.pipeline() as pipe:
            pipe.hset(self.key(run_id, ":failed"), job, reason)
            pipe.expire(self.key(run_id, ":failed"), self.ttl)
            self._wake(pipe, run_id)
            pipe.execute()

    def expanded(self, run_id: str, rule: str, reason: str | None = None) -> None:
        """The rule's tag list was read (reason None) or could not be (reason given)."""
        with self.redis.pipeline() as pipe:
            if reason is None:
                pipe.hdel(self.key(run_id, ":genfailed"), rule)
            else:
                pipe.hset(self.key(run_id, ":genfailed"), rule, reason)
                pipe.expire(self.key(run_id, ":genfailed"), self.ttl)
            pipe.srem(self.key(run_id, ":expands"), rule)
            self._wake(pipe, run_id)
            pipe.execute()

    def _wake(self, pipe: Any, run_id: str) -> None:
        """Tell a watcher blocked in `wait_for_change` that the run moved (one mark, kept
        however many changes land before it looks)."""
        key = self.key(run_id, ":wake")
        pipe.lpush(key, 1)
        pipe.ltrim(key, 0, 0)
        pipe.expire(key, self.ttl)

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
            info, total, succeeded, skipped, failed, genfailed, expands = pipe.execute()
        if not info:
            return None
        info = _decoded(info)
        return RunState(
            run_id=run_id, name=info.get("name", ""), created=float(info.get("created", 0)),
            total=total, succeeded=succeeded, skipped=skipped, failed=_decoded(failed),
            generate_failed=_decoded(genfailed), expands_pending=expands,
            bytes=int(info.get("bytes", 0)), cancelled=float(info.get("cancelled", 0)),
        )

    def recent(self, count: int = 20) -> list[RunState]:
        ids = self.redis.zrevrange(f"{self.prefix}runs", 0, count - 1)
        states = [self.state(text(run_id)) for run_id in ids]
        return [state for state in states if state is not None]


def _decoded(mapping: dict) -> dict[str, str]:
    return {text(key): text(value) for key, value in mapping.items()}
