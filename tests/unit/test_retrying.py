"""`retrying`: the first try outside tenacity's loop, and everything after it tenacity's own
(which errors are tried again, how many times, the waits between and their log lines)."""

from __future__ import annotations

import logging

import pytest

from migrator.errors import AuthError, RetryableStatus, TransportError
from migrator.registry.retry import retrying
from migrator.settings import load_settings

SETTINGS = load_settings({"MIGRATOR_BACKOFF_INITIAL": "0", "MIGRATOR_BACKOFF_MAX": "0"})


def run(outcomes: list[BaseException | str], attempts: int) -> tuple[str | None, int]:
    """Call a function answering `outcomes` in turn through `retrying`, as the client does:
    (its value, or None when the loop ended without one; calls made)."""
    calls = 0

    def call() -> str:
        nonlocal calls
        outcome = outcomes[calls]
        calls += 1
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    for attempt in retrying(SETTINGS, attempts):
        with attempt:
            return call(), calls
    return None, calls


def test_a_first_success_is_one_call():
    assert run(["ok"], attempts=5) == ("ok", 1)


def test_a_transient_fault_is_tried_again_and_logged(caplog):
    caplog.set_level(logging.DEBUG, logger="migrator.registry.retry")
    assert run([TransportError("reset"), RetryableStatus("503"), "ok"], attempts=5) == ("ok", 3)
    assert [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()] == [
        "retrying after reset (attempt 1)", "retrying after 503 (attempt 2)"]


def test_the_last_attempt_raises_the_fault_itself():
    first, last = TransportError("first"), TransportError("third")
    with pytest.raises(TransportError) as caught:
        run([first, TransportError("second"), last, "never"], attempts=3)
    assert caught.value is last
    with pytest.raises(TransportError) as caught:  # one attempt: the first fault, not retried
        run([first, "never"], attempts=1)
    assert caught.value is first


def test_a_permanent_error_is_not_tried_again():
    for outcomes in ([AuthError("denied"), "never"],
                     [TransportError("reset"), AuthError("denied"), "never"]):
        calls = []
        with pytest.raises(AuthError):
            for attempt in retrying(SETTINGS, 5):
                with attempt:
                    calls.append(1)
                    outcome = outcomes[len(calls) - 1]
                    if isinstance(outcome, BaseException):
                        raise outcome
        assert len(calls) == len(outcomes) - 1


def test_a_block_that_returns_nothing_ends_the_loop_after_its_success():
    calls = []
    for attempt in retrying(SETTINGS, 5):
        with attempt:
            calls.append(1)
            if len(calls) == 1:
                raise TransportError("reset")
    assert len(calls) == 2


def test_the_wait_is_the_servers_retry_after_capped_else_a_jittered_backoff():
    from tenacity import RetryCallState

    from migrator.registry.retry import _tenacity_loop

    settings = load_settings({"MIGRATOR_BACKOFF_INITIAL": "2", "MIGRATOR_BACKOFF_MAX": "30",
                              "MIGRATOR_RETRY_AFTER_MAX": "60"})
    loop = _tenacity_loop(settings, 5)

    def wait_after(error: BaseException, attempt: int) -> float:
        state = RetryCallState(loop, fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        state.set_exception((type(error), error, None))
        return loop.wait(state)

    assert wait_after(RetryableStatus("503", retry_after=7.0), 1) == 7.0
    assert wait_after(RetryableStatus("429", retry_after=3600.0), 1) == 60.0  # capped
    first = [wait_after(TransportError("reset"), 1) for _ in range(20)]
    third = [wait_after(RetryableStatus("503"), 3) for _ in range(20)]
    assert all(2 <= w <= 4 for w in first) and len(set(first)) > 1  # 2 s, plus up to 2 of jitter
    assert all(8 <= w <= 10 for w in third)
