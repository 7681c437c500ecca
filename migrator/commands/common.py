"""What every command shares: the exit codes (each documented in the README) and the types
of flag values."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from migrator.errors import ConfigError, InvalidReference

if TYPE_CHECKING:  # the library loads when a command runs, not to build the parser
    from migrator.settings import Settings

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
    from migrator.rules import regex_problem

    problem = regex_problem("--immutable-tags", text)
    if problem:
        raise argparse.ArgumentTypeError(problem.split(": ", 1)[1])
    return text


def platform_list(text: str) -> frozenset[str]:
    from migrator.reference import parse_platforms

    try:
        return parse_platforms(text)
    except InvalidReference as exc:
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


def settings_from(environ: Mapping[str, str]) -> Settings:
    from pydantic import ValidationError

    from migrator.settings import load_settings

    try:
        return load_settings(environ)
    except ValidationError as exc:
        raise ConfigError([f"MIGRATOR_{str(error['loc'][0]).upper()}: {error['msg']}"
                           for error in exc.errors()]) from None


LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
# The runner's record of an image or rule that failed, on each pass. `sync` prints each final
# failure once on stderr (`failed: ...`, the line scripts read), so on the terminal these
# records would only say it again; a --log file keeps them, with the failures that a later pass
# healed. Matched by template, so that a new error record of the runner still shows.
RUNNER_LOG = "migrator.runner"
PRINTED_FAILURES = frozenset({"failed %s: %s", "generate failed for %s: %s"})


def not_printed(record: logging.LogRecord) -> bool:
    """False for a record the command prints itself (see PRINTED_FAILURES)."""
    return not (record.name == RUNNER_LOG and record.msg in PRINTED_FAILURES)


def setup_logging(log_file: str | None, debug: bool,
                  terminal: logging.Handler | None = None) -> None:
    """Every record to `log_file` when given. Otherwise to `terminal` (a live display's
    handler, which keeps its bar whole) or to stderr, less what the command prints itself."""
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(log_file)
    else:
        handler = terminal if terminal is not None else logging.StreamHandler(sys.stderr)
        handler.addFilter(not_printed)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:
        logging.getLogger("urllib3").setLevel(logging.WARNING)
