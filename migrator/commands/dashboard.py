"""`migrator dashboard`: a read-only web page of the fleet's runs. The work is
migrator.dashboard's; here are the flags, where the password comes from, and the one-line
errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import IO, Any

from pydantic import ValidationError

from migrator.commands.common import EXIT_BAD_INPUT, EXIT_OK, positive_float, positive_int
from migrator.errors import ConfigError
from migrator.settings import load_settings

PASSWORD_ENV = "MIGRATOR_DASHBOARD_PASSWORD"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8008


def port_number(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 to 65535, got {value}")
    return value


def add_dashboard_parser(commands: Any) -> argparse.ArgumentParser:
    """The `dashboard` subcommand."""
    parser = commands.add_parser(
        "dashboard", help="serve a read-only web page of the fleet's runs",
        description="Serve a read-only web page of the fleet's runs, read from Redis "
                    "(MIGRATOR_REDIS_URL, MIGRATOR_REDIS_PREFIX): progress, bytes and "
                    "throughput, ETA, failures grouped by cause, schedules' last firings. "
                    "It listens on 127.0.0.1 unless given --host, and any other address needs "
                    f"a password (${PASSWORD_ENV} or --password-env; HTTP Basic).")
    parser.add_argument("--host", default=DEFAULT_HOST, metavar="ADDRESS",
                        help=f"address to listen on (default {DEFAULT_HOST}; an address that "
                             "is not loopback needs a password)")
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT, metavar="PORT",
                        help=f"port to listen on (default {DEFAULT_PORT}; 0: any free one, "
                             "printed at start)")
    parser.add_argument("--password-env", metavar="NAME",
                        help="environment variable holding the password that HTTP Basic asks "
                             f"for (default: ${PASSWORD_ENV} when set; never on the command "
                             "line, where `ps` would show it)")
    parser.add_argument("--interval", type=positive_float, default=2.0, metavar="SECONDS",
                        help="seconds between two reads of Redis, and so between two "
                             "throughput samples (default 2)")
    parser.add_argument("--runs", type=positive_int, default=20, metavar="N",
                        help="newest runs shown (default 20)")
    parser.set_defaults(handler=run_dashboard)
    return parser


def dashboard_password(name: str | None, environ: Mapping[str, str]) -> str | None:
    """The password from the variable --password-env names (which must then be set and not
    empty), else from $MIGRATOR_DASHBOARD_PASSWORD, else None."""
    if name is not None:
        value = environ.get(name, "")
        if not value:
            raise ConfigError(f"--password-env {name}: the variable is not set or empty")
        return value
    return environ.get(PASSWORD_ENV) or None


def run_dashboard(args: argparse.Namespace, environ: Mapping[str, str],
                  err: IO[str] | None = None) -> int:
    """`migrator dashboard`: serves until interrupted. A problem with the flags, the settings
    or the address is one line on `err` and EXIT_BAD_INPUT."""
    from migrator.dashboard import Options, serve  # tornado: only for this command

    err = sys.stderr if err is None else err
    try:
        settings = load_settings(environ)
        options = Options(host=args.host, port=args.port,
                          password=dashboard_password(args.password_env, environ),
                          redis_url=settings.redis_url, prefix=settings.redis_prefix,
                          interval=args.interval, runs=args.runs)
        serve(options, err=err)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"migrator dashboard: {problem}", file=err)
        return EXIT_BAD_INPUT
    except ValidationError as exc:  # a MIGRATOR_* variable of the wrong type
        for error in exc.errors():
            print(f"migrator dashboard: MIGRATOR_{str(error['loc'][0]).upper()}: "
                  f"{error['msg']}", file=err)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        pass
    print("dashboard stopped", file=err)
    return EXIT_OK
