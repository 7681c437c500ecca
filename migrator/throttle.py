"""Politeness towards registries: request rates, concurrent requests and pauses per registry.

Registries throttle (HTTP 429, Docker Hub's pull quota); a fleet that only backs off per
process keeps hammering from its other workers. So the limits and the pauses are kept where
every worker sees them: in Redis for the fleet (`RedisThrottle`), in memory for one
`migrator sync` process (`LocalThrottle`). One interface, `Throttle`:

    limits    requests per second (a token bucket) and concurrent requests (a semaphore),
              from the registry's auth-file entry (`requests_per_second`,
              `concurrent_requests`)
    pauses    "no request to this registry before T": set after a 429 (its Retry-After,
              else exponential backoff with jitter) and before a pull quota runs out
              (`RateLimit-Remaining`); honoured by every request of every worker
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from migrator.ledger import text
from migrator.settings import default

log = logging.getLogger(__name__)

# A worker reads a registry's fleet-wide pause at most this often: a 429 seen by one worker
# reaches the others within this delay, at one Redis round trip per period instead of one per
# request.
PAUSE_REFRESH = 0.25
SLOT_POLL = 0.05


@dataclass(frozen=True)
class Limits:
    requests_per_second: float | None = None
    concurrent_requests: int | None = None

    @property
    def any(self) -> bool:
        return bool(self.requests_per_second or self.concurrent_requests)


@dataclass(frozen=True)
class Pause:
    until: float  # time.time()
    reason: str

    @property
    def remaining(self) -> float:
        return max(0.0, self.until - time.time())


class Throttle(Protocol):
    def request(self, registry: str, limits: Limits) -> Any:
        """A context manager around one request: waits for pauses, a token and a slot."""

    def pause(self, registry: str, seconds: float, reason: str) -> None: ...

    def backoff(self, registry: str) -> int:
        """Count one more 429 without Retry-After in a row; the count so far."""

    def reset_backoff(self, registry: str) -> None: ...

    def pauses(self) -> dict[str, Pause]: ...


def backoff_delay(strikes: int, initial: float, maximum: float) -> float:
    """Exponential in the 429s in a row, with full jitter so that workers do not return
    together."""
    return random.uniform(0.5, 1.0) * min(maximum, initial * (2 ** max(0, strikes - 1)))


class LocalThrottle:
    """The limits and pauses of one process (`migrator sync`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pauses: dict[str, Pause] = {}
        self._next_slot: dict[str, float] = {}  # monotonic time the next token is due
        self._semaphores: dict[str, threading.BoundedSemaphore] = {}
        self._strikes: dict[str, int] = {}

    @contextmanager
    def request(self, registry: str, limits: Limits) -> Iterator[None]:
        _sleep_through(self._pause_of, registry)
        if limits.requests_per_second:
            interval = 1.0 / limits.requests_per_second
            with self._lock:
                now = time.monotonic()
                due = max(now, self._next_slot.get(registry, now))
                self._next_slot[registry] = due + interval
            time.sleep(max(0.0, due - now))
        if not limits.concurrent_requests:
            yield
            return
        with self._lock:
            semaphore = self._semaphores.setdefault(
                registry, threading.BoundedSemaphore(limits.concurrent_requests))
        with semaphore:
            yield

    def _pause_of(self, registry: str) -> Pause | None:
        with self._lock:
            return self._pauses.get(registry)

    def pause(self, registry: str, seconds: float, reason: str) -> None:
        until = time.time() + seconds
        with self._lock:
            current = self._pauses.get(registry)
            if current is None or current.until < until:
                self._pauses[registry] = Pause(until, reason)
        log.warning("%s: pausing requests for %.1f s (%s)", registry, seconds, reason)

    def backoff(self, registry: str) -> int:
        with self._lock:
            self._strikes[registry] = self._strikes.get(registry, 0) + 1
            return self._strikes[registry]

    def reset_backoff(self, registry: str) -> None:
        with self._lock:
            self._strikes.pop(registry, None)

    def pauses(self) -> dict[str, Pause]:
        with self._lock:
            return {registry: pause for registry, pause in self._pauses.items()
                    if pause.remaining > 0}


# Token bucket in Redis with the server's clock, so that workers' clocks need not agree.
# Reserving: the tokens may go negative, and the caller sleeps the returned milliseconds.
_TOKEN_BUCKET = """
local now_parts = redis.call('TIME')
local now = now_parts[1] * 1000 + math.floor(now_parts[2] / 1000)
local rate = tonumber(ARGV[1]) / 1000
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - ts) * rate)
tokens = tokens - 1
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate) + 1000)
if tokens >= 0 then return 0 end
return math.ceil(-tokens / rate)
"""

# A slot among `limit`, held until released or until its lease runs out (a dead holder).
_ACQUIRE_SLOT = """
local now_parts = redis.call('TIME')
local now = now_parts[1] * 1000 + math.floor(now_parts[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 1
end
return 0
"""


class RedisThrottle:
    """The fleet's limits and pauses, shared by every worker through Redis.

        {prefix}pause:{registry}    JSON {until, reason}, expiring with the pause
        {prefix}paused              ZSET registry → until: the registries that were paused, so
                                    that a watcher lists pauses without scanning the key space
        {prefix}bucket:{registry}   HASH tokens, ts: the token bucket
        {prefix}slots:{registry}    ZSET of request leases: the concurrency semaphore
        {prefix}strikes:{registry}  429s without Retry-After in a row (expires after a minute)
    """

    def __init__(self, client: Any, *, prefix: str | None = None, lease: float = 300.0) -> None:
        self.redis = client
        self.prefix = default("redis_prefix") if prefix is None else prefix
        self.lease_ms = int(lease * 1000)
        self._bucket = client.register_script(_TOKEN_BUCKET)
        self._slot = client.register_script(_ACQUIRE_SLOT)
        self._cache: dict[str, tuple[float, Pause | None]] = {}
        self._lock = threading.Lock()

    def _key(self, kind: str, registry: str) -> str:
        return f"{self.prefix}{kind}:{registry}"

    @contextmanager
    def request(self, registry: str, limits: Limits) -> Iterator[None]:
        _sleep_through(self._pause_of, registry)
        if limits.requests_per_second:
            rate = limits.requests_per_second
            wait_ms = self._bucket(keys=[self._key("bucket", registry)],
                                   args=[rate, max(1.0, rate / 10)])
            if wait_ms:
                time.sleep(int(wait_ms) / 1000)
        if not limits.concurrent_requests:
            yield
            return
        key, lease = self._key("slots", registry), uuid.uuid4().hex
        while not self._slot(keys=[key], args=[limits.concurrent_requests, self.lease_ms, lease]):
            time.sleep(SLOT_POLL)
        try:
            yield
        finally:
            self.redis.zrem(key, lease)

    def _pause_of(self, registry: str) -> Pause | None:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(registry)
        if cached and now - cached[0] < PAUSE_REFRESH:
            return cached[1]
        raw = self.redis.get(self._key("pause", registry))
        pause = _decode_pause(raw)
        with self._lock:
            self._cache[registry] = (now, pause)
        return pause

    def pause(self, registry: str, seconds: float, reason: str) -> None:
        until = time.time() + seconds
        key = self._key("pause", registry)
        current = _decode_pause(self.redis.get(key))
        if current is None or current.until < until:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(key, json.dumps({"until": until, "reason": reason}),
                         px=max(1, int(seconds * 1000)))
                pipe.zadd(self._paused_key, {registry: until})
                pipe.execute()
        with self._lock:
            self._cache.pop(registry, None)
        log.warning("%s: pausing the fleet's requests for %.1f s (%s)", registry, seconds,
                    reason)

    def backoff(self, registry: str) -> int:
        key = self._key("strikes", registry)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, 60)
            strikes, _ = pipe.execute()
        return int(strikes)

    def reset_backoff(self, registry: str) -> None:
        self.redis.delete(self._key("strikes", registry))

    @property
    def _paused_key(self) -> str:
        return f"{self.prefix}paused"

    def pauses(self) -> dict[str, Pause]:
        """The pauses in force. Read from the index of paused registries, not by a SCAN: a
        watcher asks at every look, and a SCAN walks the whole key space (the ledger's keys
        too), which made a large run's watching cost grow with the square of its tags."""
        self.redis.zremrangebyscore(self._paused_key, "-inf", time.time())
        registries = [text(name) for name in self.redis.zrange(self._paused_key, 0, -1)]
        if not registries:
            return {}
        found: dict[str, Pause] = {}
        raw = self.redis.mget([self._key("pause", registry) for registry in registries])
        for registry, value in zip(registries, raw, strict=True):
            pause = _decode_pause(value)
            if pause is not None and pause.remaining > 0:
                found[registry] = pause
        return found


def _decode_pause(raw: bytes | str | None) -> Pause | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
        return Pause(float(value["until"]), str(value.get("reason", "")))
    except (ValueError, KeyError, TypeError):
        return None  # not ours: ignore rather than stall


def _sleep_through(pause_of: Any, registry: str) -> None:
    """Wait while the registry is paused (re-reading: a pause may be extended meanwhile)."""
    while True:
        pause = pause_of(registry)
        if pause is None or pause.remaining <= 0:
            return
        time.sleep(min(pause.remaining, 1.0))


def parse_rate_limit(value: str | None) -> tuple[int, float | None] | None:
    """Docker Hub's `RateLimit-Remaining: 76;w=21600` → (76, 21600.0)."""
    if not value:
        return None
    count, _, rest = value.partition(";")
    if not count.strip().isdigit():
        return None
    window = None
    for part in rest.split(";"):
        name, _, number = part.strip().partition("=")
        if name == "w":
            try:
                window = float(number)
            except ValueError:
                window = None
    return int(count), window
