"""What every command shares: the exit codes (each documented in the README) and the types
of flag values."""

from __future__ import annotations

import argparse

from migrator.reference import ReferenceError, parse_platforms
from migrator.rules import regex_problem

EXIT_OK = 0
EXIT_FAILED = 1  # the run ended, some images or rules failed
EXIT_BAD_INPUT = 2  # nothing ran: flags, rules or auth file are wrong
EXIT_UNAVAILABLE = 3  # nothing ran: Redis (broker, ledger, runs) could not be reached
EXIT_INTERRUPTED = 130


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def regex(text: str) -> str:
    problem = regex_problem("--immutable-tags", text)
    if problem:
        raise argparse.ArgumentTypeError(problem.split(": ", 1)[1])
    return text


def platform_list(text: str) -> frozenset[str]:
    try:
        return parse_platforms(text)
    except ReferenceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value
