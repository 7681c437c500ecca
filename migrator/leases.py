"""Worker leases: which workers of the fleet are alive, and which task messages each holds.

Each worker renews its lease every third of `MIGRATOR_WORKER_LEASE` from a thread of its own
(workers/reaper.py); a worker that stops renewing (killed, its node lost, paused, cut off from
Redis) is dead to the fleet once the lease expires, and the reaper hands the messages it held
back to the queue. Plain Redis, no Celery: `migrator status` reads these records too.

    {p}worker:{name}   STRING  the worker's holdings (JSON), expiring `worker_lease` seconds
                               after its last renewal: the key's existence is the worker's life
    {p}workers         HASH    name → the same holdings, with no expiry: what a dead worker
                               held, so that the reaper can say whose tasks it sent again
                               (removed by the reaper once it handled that worker)

A name is `celery hostname:pid`: two workers started with the same hostname on one machine
(Celery's default `celery@host`) must not renew each other's lease.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from migrator.ledger import text
from migrator.settings import default

if TYPE_CHECKING:
    from migrator.runs import RunState, RunStore


@dataclass(frozen=True)
class Holding:
    """One message a worker took from the queue and has not acknowledged."""

    tag: str  # the broker's delivery tag: the message's key among the unacknowledged
    task_id: str
    task: str
    run_id: str = ""
    job: str = ""  # `source -> target`, or the rule of an expansion


@dataclass
class Fleet:
    """The workers on record: the live ones and the dead ones not yet handled, with what
    each holds (as of its last renewal)."""

    live: dict[str, list[Holding]]
    dead: dict[str, list[Holding]]

    def held_by_live(self) -> set[str]:
        return {holding.tag for holdings in self.live.values() for holding in holdings}

    def waiting(self, store: RunStore, state: RunState) -> dict[str, str]:
        """The run's tasks that dead workers held, that the reaper has not sent again and
        that the run still waits for (job → worker): for about one reap interval. A lease
        lists what its worker held at its last renewal, some of which it finished since."""
        held = {holding.job: name for name, holdings in sorted(self.dead.items())
                for holding in holdings if holding.run_id == state.run_id and holding.job
                and (holding.job not in state.resent or state.resent[holding.job].by != name)}
        if not held or state.finished:
            return {}
        still = store.still_open(state.run_id, sorted(held))
        return {job: name for job, name in held.items() if job in still}

    def holder(self, tag: str) -> str | None:
        """The dead worker that held a message, if any said so."""
        return next((name for name, holdings in self.dead.items()
                     if any(holding.tag == tag for holding in holdings)), None)


class Leases:
    def __init__(self, client: Any, *, prefix: str = default("redis_prefix"),
                 ttl: float = default("worker_lease")) -> None:
        self.redis = client
        self.prefix = prefix
        self.ttl = ttl

    def key(self, name: str) -> str:
        return f"{self.prefix}worker:{name}"

    @property
    def index(self) -> str:
        return f"{self.prefix}workers"

    def renew(self, name: str, holdings: Iterable[Holding]) -> None:
        value = json.dumps([asdict(holding) for holding in holdings])
        with self.redis.pipeline() as pipe:
            pipe.set(self.key(name), value, px=int(self.ttl * 1000))
            pipe.hset(self.index, name, value)
            pipe.execute()

    def release(self, name: str) -> None:
        """A worker that ends cleanly has nothing left to hand back."""
        with self.redis.pipeline() as pipe:
            pipe.delete(self.key(name))
            pipe.hdel(self.index, name)
            pipe.execute()

    def read(self) -> Fleet:
        """Every worker on record, live or dead: two round trips, whatever the fleet's size."""
        recorded = {text(name): value for name, value in self.redis.hgetall(self.index).items()}
        names = sorted(recorded)
        current = self.redis.mget([self.key(name) for name in names]) if names else []
        live, dead = {}, {}
        for name, lease in zip(names, current, strict=True):
            if lease is not None:
                live[name] = _holdings(lease)
            else:
                dead[name] = _holdings(recorded[name])
        return Fleet(live, dead)

    def forget(self, names: Iterable[str]) -> None:
        """Drop dead workers from the record, unless one renewed meanwhile (a paused worker
        that woke up): its record is rewritten at its next renewal anyway."""
        names = list(names)
        if names:
            self.redis.hdel(self.index, *names)


def _holdings(value: bytes | str) -> list[Holding]:
    try:
        return [Holding(**item) for item in json.loads(value)]
    except (ValueError, TypeError):  # a record not written by this version
        return []
