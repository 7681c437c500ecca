"""The `migrator` command: its parser, image-syncer's and image-migrator's spellings, and the
errors every command ends with. Flags and output follow image-syncer / image-migrator.

`main(argv, environ)` takes its environment as arguments so tests can run it in-process.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from migrator import __version__
from migrator.commands.common import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_UNAVAILABLE,
    settings_from,
)
from migrator.errors import ConfigError

# Which module registers each command: a command's run imports its own module only (the
# `config` command's Kubernetes client and the fleet's Celery are not `sync`'s start-up).
_MODULES = {"sync": "sync", "plan": "sync", "verify": "sync", "check": "sync",
            "enqueue": "fleet", "status": "fleet", "cancel": "fleet",
            "config": "config", "dashboard": "dashboard"}
# Each module's function that adds its commands to the parser.
_REGISTER = {"sync": "add_parsers", "fleet": "add_parsers", "config": "add_config_parser",
             "dashboard": "add_dashboard_parser"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or, for a known `command`, one that knows only its module's
    commands (help and errors about the command line build the whole one)."""
    parser = argparse.ArgumentParser(
        prog="migrator",
        description="Copy container images between registries (image-syncer compatible).",
    )
    parser.add_argument("--version", action="version", version=f"migrator {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in [_MODULES[command]] if command in _MODULES else _REGISTER:
        register = getattr(importlib.import_module(f"migrator.commands.{module}"),
                           _REGISTER[module])
        register(commands)
    return parser


# Go's flag package reads `-workers=5` as `--workers=5`; image-migrator's users write both.
_SINGLE_DASH = re.compile(r"-(auth|images|config|log|workers|proc|retries|registry|namespace"
                          r"|os|arch|force|output-success-images|output-images-format)(=.*)?")


def compatible_argv(argv: Sequence[str]) -> list[str]:
    """image-syncer's and image-migrator's command lines as ours: no command means `sync`
    (both tools copy when run with flags alone), and `-flag` is `--flag`."""
    args = [f"-{arg}" if _SINGLE_DASH.fullmatch(arg) else arg for arg in argv]
    if args and args[0].startswith("-") and args[0] not in ("-h", "--help", "--version"):
        args.insert(0, "sync")
    return args


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if list(argv) == ["--version"]:  # before the parser, whose commands import the library
        print(f"migrator {__version__}")
        return 0
    argv = compatible_argv(argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    environ = os.environ if environ is None else environ
    try:
        return args.handler(args, environ)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        if args.command == "check":
            print(f"check failed: {len(exc.problems)} problems", file=sys.stderr)
        elif args.command in ("sync", "plan", "verify", "enqueue"):
            print("nothing was copied: fix the input above and run again", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if not _is_broker_error(exc):
            raise
        where = urlsplit(settings_from(environ).redis_url)
        print(f"error: Redis at {where.hostname}:{where.port or 6379} unavailable "
              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); check "
              "MIGRATOR_REDIS_URL and that Redis runs", file=sys.stderr)
        return EXIT_UNAVAILABLE


def _is_broker_error(exc: BaseException) -> bool:
    """Redis refused or unreachable, seen through redis-py or through Celery's kombu."""
    redis_module = sys.modules.get("redis")
    kombu_module = sys.modules.get("kombu.exceptions")
    kinds: tuple[type[BaseException], ...] = ()
    if redis_module is not None:
        kinds += (redis_module.exceptions.RedisError,)
    if kombu_module is not None:
        kinds += (kombu_module.OperationalError,)
    return bool(kinds) and isinstance(exc, kinds)
