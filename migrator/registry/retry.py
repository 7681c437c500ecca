"""Tries of a request or a blob copy: transient faults (the `RetryableError` branch) tried
again with backoff, or the server's Retry-After; anything else raised at once.

Used as tenacity's `for attempt in retrying(...): with attempt: ...`. The first try runs
outside tenacity's loop: almost every request succeeds at once, and the loop costs 20-30 µs a
call (a few percent of the CPU of copying a small image), its import 20 ms of every start (it
loads asyncio). A first failure worth another try is replayed into the loop as its first
attempt, so that the waits, the stop and the log lines are tenacity's own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from migrator.errors import RetryableError, RetryableStatus
from migrator.settings import Settings

if TYPE_CHECKING:
    from tenacity import RetryCallState, Retrying

log = logging.getLogger(__name__)


def retrying(settings: Settings, attempts: int) -> Iterator[AbstractContextManager[None]]:
    """`attempts` tries in all; see the module's doc."""
    first = _FirstTry()
    yield first
    if first.error is None:
        return
    for attempt in _tenacity_loop(settings, attempts):
        if first.error is not None:
            error, first.error = first.error, None
            with attempt:
                raise error
            continue
        yield attempt


class _FirstTry(AbstractContextManager[None]):
    """Keeps a retryable error for the retry loop; lets anything else through."""

    error: RetryableError | None = None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: object) -> bool:
        if isinstance(error, RetryableError):
            self.error = error
            return True
        return False


def _tenacity_loop(settings: Settings, attempts: int) -> Retrying:
    from tenacity import (
        Retrying,
        retry_if_exception_type,
        stop_after_attempt,
        wait_exponential_jitter,
    )

    exponential = wait_exponential_jitter(multiplier=settings.backoff_initial,
                                          max=settings.backoff_max,
                                          jitter=settings.backoff_initial)

    def wait(state: RetryCallState) -> float:
        """Exponential backoff with jitter, or the server's Retry-After when it sent one."""
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, RetryableStatus) and error.retry_after is not None:
            return min(error.retry_after, settings.retry_after_max)
        return exponential(state)

    return Retrying(retry=retry_if_exception_type(RetryableError),
                    stop=stop_after_attempt(attempts), wait=wait, before_sleep=_log_retry,
                    reraise=True)


def _log_retry(state: RetryCallState) -> None:
    # tenacity calls `before_sleep` only after an attempt ended, so its outcome is set.
    assert state.outcome is not None
    log.debug("retrying after %s (attempt %d)", state.outcome.exception(), state.attempt_number)
