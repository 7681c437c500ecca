"""Crash recovery in seconds: worker leases, and a reaper that hands a dead worker's tasks back.

Celery's Redis transport keeps every message a worker took and has not acknowledged in the
`unacked` hash (delivery tag → message) and the `unacked_index` sorted set (delivery tag →
when it was taken); on its own it hands such a message to another worker only after the
visibility timeout (hours: it must exceed the longest copy). Here:

- **Leases.** A thread in each worker renews the worker's lease (migrator/leases.py) every
  third of `MIGRATOR_WORKER_LEASE`, with the delivery tags of every task it holds (running,
  reserved, or waiting for a retry's countdown). A thread, not the consumer's event loop: a
  loop busy for a moment must not look like a death, and a process that is killed, paused or
  cut off from Redis stops renewing at once.
- **The reaper.** Every `MIGRATOR_REAP_INTERVAL` seconds one sweep runs for the whole fleet,
  in whichever process takes the sweep's lock first: any worker, celery beat, or the watcher
  of `migrator enqueue --wait` / `migrator status --wait`. It sends back to the queue each
  unacknowledged message that is older than the lease and that no live worker holds, through
  kombu's own restore (one transaction per message: a message is restored once, whoever
  tries). Why "older than the lease" is safe: a live worker's lease was renewed less than a
  lease ago, with every message it held then, so a message it holds and did not list was
  taken after that renewal, hence less than a lease ago.
- **Lost messages.** The transport loses a message whose worker dies between taking it from
  the queue and recording it as unacknowledged (a few milliseconds; a paused worker keeps
  such a message, and a message it was publishing, for as long as it is paused). A run that
  did not move over two sweeps (`2 × MIGRATOR_REAP_INTERVAL`) while the queue was empty and
  no unacknowledged message belonged to it has lost its remaining messages: the reaper sends
  its unfinished tasks again, so the fleet heals with no producer watching. The watcher's own
  re-send (`MIGRATOR_RESEND_AFTER`) and the visibility timeout stay, as last resorts.

Redelivery is at least once and harmless: copies are idempotent and a run counts each image
once (migrator/runs.py). A worker that was only paused finishes its copy too when it wakes.
Each re-sent task is recorded in its run (`{p}run:{id}:resent`) for `migrator status`.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery, signals

from migrator.fleet import EXPAND_TASK, SYNC_TASK
from migrator.leases import Holding, Leases
from migrator.ledger import text
from migrator.runs import LOST, UNLISTED, RunStore
from migrator.settings import Settings

log = logging.getLogger(__name__)

CLOCK_SKEW = 2.0  # seconds of disagreement between machines' clocks that the age test allows
RENEW_AT_MOST = 0.25  # seconds between two renewals prompted by tasks taken
SETTLE = 0.1  # seconds after a task is received before the renewal it prompts (Celery files
              # the request in its state just after the signal)


def job_of(task: str, args: Sequence[Any]) -> tuple[str, str]:
    """(run id, job or rule) of a task of ours, from its arguments; ("", "") otherwise."""
    try:
        if task == SYNC_TASK:
            return str(args[0]), f"{args[1]} -> {args[2]}"
        if task == EXPAND_TASK:
            return str(args[0]), str(args[1]["rule"])
    except (IndexError, KeyError, TypeError):
        pass
    return "", ""


def message_task(raw: bytes | str) -> tuple[str, str, str] | None:
    """(task name, run id, job) of an unacknowledged message as the transport stores it
    (`[message, exchange, routing key]`, the body base64 JSON `[args, kwargs, embed]`)."""
    try:
        message = json.loads(raw)[0]
        name = str(message["headers"]["task"])
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
    except (ValueError, TypeError, KeyError, IndexError):
        return None  # not a task message of this app
    return (name, *job_of(name, args))


def current_holdings() -> list[Holding]:
    """The messages this worker process holds: every request Celery keeps (reserved,
    running, or scheduled for a retry's countdown)."""
    from celery.worker import state

    found = []
    for request in list(state.requests.values()):  # a copy: the consumer changes it
        message = getattr(request, "message", None)
        tag = getattr(message, "delivery_tag", None)
        if tag is None or getattr(request, "acknowledged", False):
            continue
        run_id, job = job_of(request.name, request.args or ())
        found.append(Holding(str(tag), request.id, request.name, run_id, job))
    return found


@dataclass
class Sweep:
    """What one sweep did: messages handed back (job, dead holder or "") and lost tasks sent
    again (run id → jobs)."""

    restored: list[tuple[str, str]] = field(default_factory=list)
    resent: dict[str, list[str]] = field(default_factory=dict)
    dead: list[str] = field(default_factory=list)


class Reaper:
    """One sweep per `reap_interval` for the whole fleet, in whichever process asks first."""

    def __init__(self, app: Celery, settings: Settings, client: Any | None = None) -> None:
        self.app = app
        self.settings = settings
        self.redis = client if client is not None else redis.Redis.from_url(settings.redis_url)
        self.leases = Leases(self.redis, prefix=settings.redis_prefix,
                             ttl=settings.worker_lease)
        self.runs = RunStore(self.redis, prefix=settings.redis_prefix, ttl=settings.run_ttl,
                             finished_ttl=settings.finished_run_ttl)
        options = app.conf.broker_transport_options or {}
        keyprefix = options.get("global_keyprefix", "")
        self.unacked = keyprefix + options.get("unacked_key", "unacked")
        self.unacked_index = keyprefix + options.get("unacked_index_key", "unacked_index")
        self.queue = keyprefix + settings.queue
        self.lock = f"{settings.redis_prefix}reaper:lock"
        self.idle = f"{settings.redis_prefix}reaper:idle"
        self.grace = settings.worker_lease + CLOCK_SKEW
        # A lost message is judged by two sweeps, not by the lease: what may hide a message
        # from both the queue and the unacknowledged (a reply in a socket, a publish under
        # way) lasts milliseconds, and a wrong judgement only sends a task twice.
        self.idle_after = 2 * settings.reap_interval + CLOCK_SKEW
        self._last = float("-inf")

    def sweep(self) -> Sweep | None:
        """Sweep if no process of the fleet did in the last `reap_interval` (None: not this
        time). Cheap when nothing is wrong: a lock, then one read of the leases and of the
        old unacknowledged messages."""
        now = time.monotonic()
        if now - self._last < self.settings.reap_interval:
            return None
        self._last = now
        if not self.redis.set(self.lock, secrets.token_hex(8), nx=True,
                              px=max(1, int(self.settings.reap_interval * 1000))):
            return None
        return self.sweep_now()

    def sweep_now(self) -> Sweep:
        done = Sweep()
        fleet = self.leases.read()
        held = fleet.held_by_live()
        ceiling = time.time() - self.grace
        found: Any = self.redis.zrangebyscore(self.unacked_index, "-inf", ceiling)
        old = [text(tag) for tag in found]
        orphans = [tag for tag in old if tag not in held]
        if orphans:
            self._hand_back(orphans, fleet.holder, done)
        done.dead = sorted(fleet.dead)
        self.leases.forget(self._handled(fleet.dead, held))
        self._heal_lost(done)
        return done

    def _handled(self, dead: dict[str, list[Holding]], held: set[str]) -> list[str]:
        """The dead workers none of whose messages is still unacknowledged and unheld: a
        message taken less than a lease before its worker died is handed back at a later
        sweep, and its holder must still be known then. (A message handed back keeps its
        delivery tag: the live worker that took it again lists it in its own lease.)"""
        tags = sorted({holding.tag for holdings in dead.values() for holding in holdings}
                      - held)
        pending = {tag for tag, raw in zip(tags, self.redis.hmget(self.unacked, tags) if tags
                                                 else [], strict=True) if raw is not None}
        return [name for name, holdings in dead.items()
                if not any(holding.tag in pending for holding in holdings)]

    def _hand_back(self, tags: list[str], holder: Any, done: Sweep) -> None:
        by_run: dict[tuple[str, str], list[str]] = {}
        with self.app.connection_for_write() as connection:
            channel = connection.default_channel
            for tag in tags:
                raw = self.redis.hget(self.unacked, tag)
                if raw is None:  # acknowledged meanwhile
                    continue
                # kombu's restore: in one transaction, out of the unacknowledged and back at
                # the head of its queue, marked redelivered; a second reaper finds it gone.
                channel.qos.restore_by_tag(tag, client=channel.client)
                who = holder(tag) or UNLISTED
                task = message_task(raw)
                run_id, job = (task[1], task[2]) if task else ("", "")
                done.restored.append((job or tag, who))
                if run_id and job:
                    by_run.setdefault((run_id, who), []).append(job)
                log.warning("reaper: %s handed back to the queue (held by %s)",
                            job or f"message {tag}", "no live worker" if who == UNLISTED
                            else f"{who}, which stopped renewing its lease")
        for (run_id, who), jobs in by_run.items():
            self.runs.record_resent(run_id, jobs, who)

    def _heal_lost(self, done: Sweep) -> None:
        """Send again the unfinished tasks of a run that lost its messages (see the module
        docstring). Judged only while the queue is empty: a run's task still waiting there
        is not lost, and with an empty queue every live task of a run is unacknowledged."""
        active = self.runs.active()
        if not active:
            return
        if self.redis.llen(self.queue):
            self.redis.delete(self.idle)  # cannot judge now: start over once it is empty
            return
        held_runs = set()
        for raw in self.redis.hvals(self.unacked):
            task = message_task(raw)
            if task is not None and task[1]:
                held_runs.add(task[1])
        marks = {text(key): value for key, value in self.redis.hgetall(self.idle).items()}
        now = time.time()
        for run_id in active:
            state = self.runs.state(run_id)
            if state is None or state.finished:
                self.runs.retire(run_id)
                self.redis.hdel(self.idle, run_id)
                continue
            progress = [state.done, state.expands_pending]
            if run_id in held_runs:
                if run_id in marks:
                    self.redis.hdel(self.idle, run_id)
                continue
            mark = _mark(marks.get(run_id))
            if mark is None or mark[1] != progress:
                self.redis.hset(self.idle, run_id, json.dumps([now, progress]))
                continue
            if now - mark[0] < self.idle_after:
                continue
            tasks = self.runs.unfinished_task_map(run_id)
            for name, args, kwargs in tasks.values():
                self.app.send_task(name, args=args, kwargs=kwargs)
            self.runs.record_resent(run_id, tasks, LOST)
            self.redis.hset(self.idle, run_id, json.dumps([now, progress]))
            done.resent[run_id] = sorted(tasks)
            log.warning("reaper: run %s did not move for %.0f s with none of its tasks queued "
                        "or held: sent its %d unfinished tasks again", run_id, now - mark[0],
                        len(tasks))


def _mark(value: bytes | str | None) -> tuple[float, list[int]] | None:
    """(since when, at which progress) a run was seen idle, as the sweep wrote it."""
    if not value:
        return None
    try:
        since, progress = json.loads(value)
        return float(since), [int(count) for count in progress]
    except (ValueError, TypeError):
        return None


class LeaseKeeper(threading.Thread):
    """A worker's (or beat's) thread: renew the lease with what the worker holds, and ask
    for a sweep every `reap_interval`. `name` None: sweep only (celery beat)."""

    def __init__(self, app: Celery, settings: Settings, worker: str | None) -> None:
        super().__init__(name="lease", daemon=True)
        self.worker = worker
        self.settings = settings
        self.reaper = Reaper(app, settings)
        self.stopping = threading.Event()
        self.changed = threading.Event()  # a task was taken since the last renewal
        self.wakeup = threading.Event()
        self.poked = 0.0
        self.failing = False

    def poke(self) -> None:
        """The worker took a task: renew soon, so that the record of what it holds is
        current (whose tasks the reaper sends again, what `migrator status` shows)."""
        self.poked = time.monotonic()
        self.changed.set()
        self.wakeup.set()

    def run(self) -> None:
        renew_every = self.settings.worker_lease / 3
        soonest = min(RENEW_AT_MOST, renew_every)
        next_renewal = next_sweep = time.monotonic()
        last_renewal = float("-inf")

        def renewal_due() -> float:
            due = next_renewal
            if self.changed.is_set():
                due = min(due, max(last_renewal + soonest, self.poked + SETTLE))
            return due

        while not self.stopping.is_set():
            now = time.monotonic()
            if self.worker is not None and now >= renewal_due():
                self.changed.clear()
                last_renewal, next_renewal = now, now + renew_every
                self._guarded(self._renew)
            if now >= next_sweep:
                next_sweep = now + self.settings.reap_interval
                self._guarded(self._sweep)
            wake = min(next_sweep, renewal_due()) if self.worker is not None else next_sweep
            self.wakeup.wait(max(0.05, wake - time.monotonic()))
            self.wakeup.clear()  # a poke lost here is still in `changed`

    def _renew(self) -> None:
        assert self.worker is not None
        self.reaper.leases.renew(self.worker, current_holdings())

    def _sweep(self) -> None:
        self.reaper.sweep()

    def _guarded(self, action: Any) -> None:
        try:
            action()
            self.failing = False
        except Exception as exc:  # Redis away: said once, tried again at the next turn
            if not self.failing:
                log.error("lease/reaper: %s: %s", type(exc).__name__, exc)
            self.failing = True

    def stop(self, release: bool) -> None:
        self.stopping.set()
        self.wakeup.set()
        self.join(timeout=5)
        if release and self.worker is not None:
            try:
                self.reaper.leases.release(self.worker)
            except redis.exceptions.RedisError as exc:
                log.warning("lease not released (it expires on its own): %s", exc)


_keeper: LeaseKeeper | None = None


def install(app: Celery, settings: Settings) -> None:
    """Start the lease and the reaper when a worker is ready (and in celery beat); release
    the lease when the worker has ended cleanly, its running tasks finished."""

    def start(worker: str | None) -> None:
        global _keeper
        if _keeper is None:
            _keeper = LeaseKeeper(app, settings, worker)
            _keeper.start()

    @signals.worker_ready.connect(weak=False)
    def _ready(sender: Any = None, **_: Any) -> None:
        hostname = getattr(sender, "hostname", None) or "celery"
        start(f"{hostname}:{os.getpid()}")

    @signals.worker_shutdown.connect(weak=False)
    def _shutdown(**_: Any) -> None:
        global _keeper
        if _keeper is not None:
            _keeper.stop(release=True)
            _keeper = None

    @signals.task_received.connect(weak=False)
    def _received(**_: Any) -> None:
        if _keeper is not None:
            _keeper.poke()

    @signals.beat_init.connect(weak=False)
    def _beat(**_: Any) -> None:
        start(None)
