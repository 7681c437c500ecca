"""The `migrator` command's first home, kept so that `migrator.cli:main` and the names scripts
and tests import from it go on working. The command line lives in migrator/commands/."""

from migrator.commands.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
)
from migrator.commands.inputs import load_inputs
from migrator.commands.main import build_parser, compatible_argv, main
from migrator.commands.reports import write_report, write_success_images

__all__ = [
    "EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_UNAVAILABLE",
    "build_parser", "compatible_argv", "load_inputs", "main", "write_report",
    "write_success_images",
]
