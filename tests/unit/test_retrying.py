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
