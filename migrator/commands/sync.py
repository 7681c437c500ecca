"""`sync`, `plan`, `verify` and `check`: the commands that work in this process."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sqlite3
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from migrator.commands.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    positive_int,
    setup_logging,
)
from migrator.commands.inputs import add_file_flags, add_input_flags, load_inputs
from migrator.commands.reports import add_report_flags, write_report, write_success_images
from migrator.errors import ConfigError
from migrator.failures import failure_lines
from migrator.ledger import Ledger, MemoryLedger, SQLiteLedger
from migrator.rules import Rule
from migrator.settings import Settings

if TYPE_CHECKING:
    from migrator.progress import ConsoleReporter
    from migrator.runner import EmbeddedRunner, Summary

log = logging.getLogger("migrator")


def add_parsers(commands: argparse._SubParsersAction) -> None:
    sync = commands.add_parser(
        "sync", help="copy every image the rules name, in this process",
        description="Copy every image named by the rules file, in this process. Without a "
                    "command, `migrator --auth ... --images ...` runs this, as image-syncer "
                    "and image-migrator do.")
    add_input_flags(sync)
    add_embedded_flags(sync)
    sync.add_argument("--dry-run", action="store_true",
                      help="show what would be copied (tags, new blobs, bytes); write nothing")
    add_report_flags(sync)

    plan = commands.add_parser(
        "plan", help="what `sync` would copy, writing nothing (same as sync --dry-run)",
        description="Show what `migrator sync` would copy: the tags, the blobs new to the "
                    "target and their bytes. Only reads; writes nothing anywhere.")
    add_input_flags(plan)
    add_embedded_flags(plan)
    plan.set_defaults(dry_run=True, output_success=None, output_failed=None,
                      output_success_images=None, output_images_format="yaml")

    verify = commands.add_parser(
        "verify", help="compare source and target; list tags missing or different",
        description="Compare every image the rules name at the source and at the target. "
                    "Exit code 0 only when all agree.")
    add_file_flags(verify)  # it compares digests: copy options mean nothing to it
    verify.add_argument("-w", "--workers", "-p", "--proc", type=positive_int, default=7,
                        metavar="N", help="images compared at once (default 7)")

    check = commands.add_parser(
        "check", help="validate the input files without any request; print each rule",
        description="Validate the rules and auth files (or --config, or --src/--dst) without "
                    "any network request, and print each rule as it is read: "
                    "SOURCE -> TARGET, both normalised. Exit code 0 when valid, 2 when not.")
    add_file_flags(check)
    sync.set_defaults(handler=run_sync)
    plan.set_defaults(handler=run_sync)
    verify.set_defaults(handler=run_verify)
    check.set_defaults(handler=run_check)


def add_embedded_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-w", "--workers", "-p", "--proc", type=positive_int, default=7,
                        metavar="N",
                        help="images copied at once (default 7; -p/--proc are image-syncer's "
                             "names)")
    parser.add_argument("--log", metavar="FILE", help="write the log to FILE (default: stderr)")
    parser.add_argument("--state", metavar="DIR",
                        help="directory of the digest record that makes re-runs cheap "
                             "(default: $MIGRATOR_STATE_DIR or ./.migrator)")
    parser.add_argument("--no-state", action="store_true",
                        help="keep no digest record between runs")
    parser.add_argument("--debug", action="store_true", help="log every request")


def open_ledger(args: argparse.Namespace, settings: Settings) -> Ledger:
    if args.no_state:
        return MemoryLedger()
    path = (Path(args.state) if args.state else settings.state_dir) / "ledger.sqlite"
    if args.dry_run:  # read what is on record, create nothing
        try:
            return SQLiteLedger(path, read_only=True)
        except sqlite3.Error:  # absent or unreadable without writing: plan without it
            return MemoryLedger()
    return SQLiteLedger(path)


def run_sync(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from migrator.copy import CopyOptions
    from migrator.process import limit_malloc_arenas
    from migrator.progress import ConsoleReporter
    from migrator.runner import EmbeddedRunner

    limit_malloc_arenas()  # before the copying threads start

    settings, auth, rules = load_inputs(args, environ)
    reporter = ConsoleReporter(sys.stdout, errors=sys.stderr)
    setup_logging(args.log, args.debug, terminal=reporter.log_handler())
    try:
        ledger = open_ledger(args, settings)
    except OSError as exc:
        raise ConfigError(f"--state: cannot open the digest record: {exc}") from None
    options = CopyOptions(dry_run=args.dry_run, platforms=args.platform,
                          referrers=args.referrers, immutable_tags=args.immutable_tags,
                          force=args.force, foreign_layers=args.foreign_layers)
    runner = EmbeddedRunner(auth=auth, ledger=ledger, settings=settings, reporter=reporter,
                            workers=args.workers, retries=args.retries, options=options,
                            keep_each=bool(args.dry_run or args.output_success
                                           or args.output_success_images))
    try:
        with drained_on_interrupt(runner, reporter):
            summary = runner.run(rules)
    finally:
        reporter.close()
        ledger.close()
    for line in failure_lines({job: reason for job, reason in summary.failed.items()
                               if job not in summary.not_started}, lambda job: str(job.target)):
        print(line, file=sys.stderr)
    for rule, reason in summary.generate_failed.items():
        print(f"generate failed: {rule.origin}: {reason}", file=sys.stderr)
    for result in summary.results + summary.skipped:
        if result.note:
            print(f"note: {result.job}: {result.note}", file=sys.stderr)
    if summary.interrupted:  # one line for them all, above the summary that stays last
        listed = f" (listed in {args.output_failed})" if args.output_failed else ""
        print(f"interrupted: {len(summary.not_started)} images not started{listed}; the same "
              "command continues where this run stopped", file=sys.stderr, flush=True)
    if args.dry_run:
        print_plan(summary)
    else:
        succeeded = [r.job for r in summary.results]
        write_report(args.output_success, dict.fromkeys(succeeded, ""))
        write_success_images(args.output_success_images, args.output_images_format, succeeded)
        write_report(args.output_failed, summary.failed)
        if reporter.live:  # the bar is gone: its figures stay, above the summary
            print(reporter.stats_line())
        print(summary.line(), flush=True)
        if args.log:  # on the terminal, the printed line says it once
            log.info(summary.line())
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if summary.ok else EXIT_FAILED


@contextmanager
def drained_on_interrupt(runner: EmbeddedRunner, reporter: ConsoleReporter) -> Iterator[None]:
    """Ctrl-C while the runner runs: the first lets the copies in flight finish and starts
    nothing new (the run then ends as usual, its reports written); the second stops at once.
    A copy stopped half-way leaves nothing a later run would trust: its manifest is written
    last, and an unfinished upload is never used."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives signals
        return

    def on_interrupt(signum: int, frame: object) -> None:
        if runner.interrupted:
            reporter.close()  # the cursor and the bar's lines back to normal
            print("stopped: copies in flight abandoned; the same command copies them again",
                  file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(EXIT_INTERRUPTED)  # the copying threads cannot be stopped otherwise
        running = runner.interrupt()
        reporter.say(f"interrupted: finishing {running} "
                     f"cop{'y' if running == 1 else 'ies'} in flight; Ctrl-C again to stop now")

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def print_plan(summary: Summary) -> None:
    from migrator.progress import human_bytes

    new_blobs: dict[str, int] = {}
    to_copy = 0
    planned = {result.job: result for result in summary.planned}
    for ended in sorted(summary.results, key=lambda r: str(r.job)):
        if ended.outcome == "up-to-date":
            print(f"up to date: {ended.job}")
            continue
        to_copy += 1
        result = planned[ended.job]
        new_blobs.update(result.new_blobs)
        print(f"would copy: {result.job}: {result.blobs_copied} blobs to upload "
              f"({human_bytes(result.bytes_copied)}), {result.blobs_mounted} to mount, "
              f"{result.blobs_skipped} already there")
    for skipped_image in sorted(summary.skipped, key=lambda r: str(r.job)):
        print(f"skipped: {skipped_image.job}: {skipped_image.note.removeprefix('skipped: ')}")
    skipped = f", {len(summary.skipped)} skipped" if summary.skipped else ""
    print(f"Plan: {to_copy} of {summary.images} images to copy{skipped}, {len(new_blobs)} "
          f"blobs new to the target ({human_bytes(sum(new_blobs.values()))}); nothing was "
          "written", flush=True)


def run_check(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """`migrator check`: the inputs validated with no request, each rule as it is read."""
    _, auth, rules = load_inputs(args, environ)
    for rule in rules:
        print(describe_rule(rule))
    for key, entry in auth.entries.items():
        settings = [name for name, on in (("credentials", not entry.anonymous),
                                          ("insecure", entry.insecure)) if on]
        print(f"auth {key}: {', '.join(settings) or 'anonymous'}")
    where = args.config or args.images or ("--src/--dst" if args.src else "images.json")
    print(f"Rules({len(rules)}) valid in {where}, {len(auth.entries)} auth entries", flush=True)
    return EXIT_OK


def describe_rule(rule: Rule) -> str:
    """`SOURCE -> TARGET`, both normalised, the source's tags as written (a list, a regex, a
    digest, or nothing for every tag) and the options of a rule written as a mapping."""
    if rule.catalog:
        source = rule.catalog_source
    else:
        source = rule.source.name
        if rule.tags:
            source += ":" + ",".join(rule.tags)
        elif rule.source.tag:
            source += f":{rule.source.tag}"
    if rule.tag_pattern is not None:
        source += f":/{rule.tag_pattern}/"
    if rule.source.digest:
        source += f"@{rule.source.digest}"
    options = [f"{name}: {value}" for name, value in (
        ("include", ", ".join(rule.filters.include)), ("exclude", ", ".join(rule.filters.exclude)),
        ("semver", rule.filters.semver), ("newest", rule.filters.newest),
        ("platforms", ", ".join(sorted(rule.platforms))),
        ("immutable_tags", rule.immutable_tags)) if value]
    return f"{source} -> {rule.target}" + (f"  ({'; '.join(options)})" if options else "")


def run_verify(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from migrator.copy import ClientPool, Clients
    from migrator.verify import verify

    settings, auth, rules = load_inputs(args, environ)
    setup_logging(None, debug=False)
    report = verify(rules, Clients(auth, ClientPool(settings)), workers=args.workers)
    for job in sorted(report.missing, key=str):
        print(f"missing: {job}")
    for job, (source, target) in sorted(report.differ.items(), key=lambda item: str(item[0])):
        print(f"differs: {job}: source {source}, target {target}")
    for what, reason in sorted(report.errors.items()):
        print(f"error: {what}: {reason}", file=sys.stderr)
    total = len(report.agree) + len(report.missing) + len(report.differ)
    print(f"Verified {total} images: {len(report.agree)} agree, {len(report.missing)} missing, "
          f"{len(report.differ)} differ, {len(report.errors)} could not be checked", flush=True)
    return EXIT_OK if report.ok else EXIT_FAILED
