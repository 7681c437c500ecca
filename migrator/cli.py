"""The `migrator` command. Flags and output follow image-syncer / image-migrator.

`main(argv, environ)` takes its environment as arguments so tests can run it in-process.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sqlite3
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pydantic import ValidationError

from migrator import __version__
from migrator.auth import SECRET_FIELDS, AuthFile, load_auth, parse_auth
from migrator.commands.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    non_negative_int,
    platform_list,
    positive_int,
    regex,
)
from migrator.errors import ClusterError, ConfigError
from migrator.ledger import Ledger, MemoryLedger, SQLiteLedger
from migrator.reference import ReferenceError, combine_platforms, os_arch_platforms
from migrator.rules import Job, Rule, load_rules, parse_rules, resolve_defaults
from migrator.settings import Settings, load_settings

if TYPE_CHECKING:
    from migrator.runner import Summary
    from migrator.runs import RunState, RunStore


log = logging.getLogger("migrator")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="migrator",
        description="Copy container images between registries (image-syncer compatible).",
    )
    parser.add_argument("--version", action="version", version=f"migrator {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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
    add_input_flags(verify)
    verify.add_argument("-w", "--workers", "-p", "--proc", type=positive_int, default=7,
                        metavar="N", help="images compared at once (default 7)")

    check = commands.add_parser(
        "check", help="validate the input files without any request; print each rule",
        description="Validate the rules and auth files (or --config, or --src/--dst) without "
                    "any network request, and print each rule as it is read: "
                    "SOURCE -> TARGET, both normalised. Exit code 0 when valid, 2 when not.")
    add_file_flags(check)

    enqueue = commands.add_parser(
        "enqueue", help="validate the rules and hand them to the fleet of workers",
        description="Validate the rules, record a run in Redis and send one Celery task per "
                    "image (or per rule whose tags must be listed). Prints the run id.")
    add_input_flags(enqueue)
    enqueue.add_argument("--wait", action="store_true",
                         help="follow the run until it ends, then print its summary")
    add_watch_flags(enqueue)

    status = commands.add_parser(
        "status", help="progress and outcome of fleet runs",
        description="Show a fleet run's progress and outcome; without RUN_ID, recent runs.")
    status.add_argument("run_id", nargs="?", metavar="RUN_ID")
    status.add_argument("--wait", action="store_true", help="follow the run until it ends")
    status.add_argument("--json", action="store_true", help="print the run as JSON")
    add_watch_flags(status)
    from migrator.commands.config import add_config_parser  # imports kube: only for `config`

    add_config_parser(commands)
    return parser


def add_file_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that name and complete the input files."""
    parser.add_argument("--auth", metavar="FILE",
                        help="credentials per registry, JSON or YAML (default ./auth.json)")
    parser.add_argument("--images", metavar="FILE",
                        help="sync rules, JSON or YAML (default ./images.json)")
    parser.add_argument("--config", metavar="FILE",
                        help="image-syncer's combined file: a mapping with `auth:` and "
                             "`images:`, instead of --auth and --images")
    parser.add_argument("--src", metavar="REF",
                        help="one source image instead of an images file (with --dst)")
    parser.add_argument("--dst", metavar="REF", default="",
                        help="its target (empty: --registry/--namespace, as in rule 8)")
    parser.add_argument("--registry", metavar="HOST",
                        help="default target registry for empty targets ($DEFAULT_REGISTRY)")
    parser.add_argument("--namespace", metavar="NS",
                        help="default target namespace for empty targets ($DEFAULT_NAMESPACE)")
    parser.add_argument("--allow-catalog", action="store_true",
                        help="let sources registry/namespace/* and registry/* copy every "
                             "repository the registry's catalog lists")


def add_input_flags(parser: argparse.ArgumentParser) -> None:
    """The input files' flags and what chooses the images of every command that copies or
    compares them."""
    add_file_flags(parser)
    parser.add_argument("-r", "--retries", type=non_negative_int, default=3, metavar="N",
                        help="times a failed task is retried after the pass (default 3)")
    parser.add_argument("--platform", type=platform_list, default=frozenset(),
                        metavar="OS/ARCH,...",
                        help="copy only these platforms of multi-platform images (the index "
                             "written then has a digest of its own)")
    parser.add_argument("--os", action="append", default=[], metavar="OS",
                        help="image-syncer's platform filter, repeatable: only these systems "
                             "(combines with --arch and --platform)")
    parser.add_argument("--arch", action="append", default=[], metavar="ARCH[:VARIANT]",
                        help="image-syncer's platform filter, repeatable: only these "
                             "architectures (e.g. --arch amd64 --arch arm64:v8); a "
                             "single-platform image of another one is skipped")
    parser.add_argument("--force", action="store_true",
                        help="write every manifest even when the target already has it "
                             "(blobs present are still skipped)")
    parser.add_argument("--no-referrers", dest="referrers", action="store_false",
                        help="do not copy the signatures, SBOMs and attestations of images")
    parser.add_argument("--immutable-tags", type=regex, metavar="REGEX",
                        help="tags (full match) that never change once synced: those the "
                             "record holds are skipped without a request (rules may set "
                             "their own immutable_tags)")


def add_report_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-success", metavar="FILE",
                        help="write the images copied or up to date as an images file")
    parser.add_argument("--output-failed", metavar="FILE",
                        help="write the failed images as an images file (reasons in "
                             "FILE.reasons.json) to run again")
    parser.add_argument("--output-success-images", metavar="FILE",
                        help="image-syncer's success file: each source with the list of its "
                             "targets copied or up to date")
    parser.add_argument("--output-images-format", choices=("yaml", "json"), default="yaml",
                        help="format of --output-success-images (default yaml)")


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


def add_watch_flags(parser: argparse.ArgumentParser) -> None:
    add_report_flags(parser)
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="stop waiting after this long (exit code 1 if unfinished)")


def settings_from(environ: Mapping[str, str]) -> Settings:
    try:
        return load_settings(environ)
    except ValidationError as exc:
        raise ConfigError([f"MIGRATOR_{str(error['loc'][0]).upper()}: {error['msg']}"
                           for error in exc.errors()]) from None


CONFIG_KEYS = ("auth", "images")


def load_inputs(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[Settings, AuthFile, list[Rule]]:
    """Validate settings and both files completely; every problem of all three at once."""
    problems: list[str] = []
    settings: Settings | None = None
    auth: AuthFile | None = None
    rules: list[Rule] = []
    try:
        settings = settings_from(environ)
    except ConfigError as exc:
        problems.extend(exc.problems)
    registry, namespace = resolve_defaults(args.registry, args.namespace, environ)
    if args.config and (args.auth or args.images or args.src):
        raise ConfigError("--config holds the auth and the images: give it alone, or --auth "
                          "with --images (or --src)")
    if args.config:
        auth_data, images_data, found = _read_config(args.config)
        problems.extend(found)
    try:
        if args.config:
            auth = parse_auth(auth_data, name=f"{args.config}: auth", environ=environ,
                              base_dir=os.path.dirname(os.path.abspath(args.config)))
        else:
            auth = load_auth(args.auth or "auth.json", environ=environ,
                             required=bool(args.auth))
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        if args.src and args.images:
            raise ConfigError("--src and --images: give one image or a rules file, not both")
        if args.config:
            if images_data is not None:
                rules = parse_rules(images_data, filename=f"{args.config}: images",
                                    default_registry=registry, default_namespace=namespace,
                                    allow_catalog=args.allow_catalog)
        elif args.src:
            rules = parse_rules({args.src: args.dst}, filename="--src/--dst",
                                default_registry=registry, default_namespace=namespace,
                                allow_catalog=args.allow_catalog)
        elif args.dst:
            raise ConfigError("--dst: give the source image with --src")
        else:
            rules = load_rules(args.images or "images.json", default_registry=registry,
                               default_namespace=namespace, allow_catalog=args.allow_catalog)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if hasattr(args, "platform"):
        try:
            args.platform = combine_platforms(args.platform,
                                              os_arch_platforms(args.os, args.arch))
        except ReferenceError as exc:
            problems.append(f"--platform/--os/--arch: {exc}")
    if problems:
        raise ConfigError(problems)
    assert settings is not None and auth is not None
    return settings, auth, rules


def _read_config(path: str) -> tuple[object, object, list[str]]:
    """image-syncer's combined file → (its `auth:`, its `images:`, problems)."""
    import difflib

    from migrator.documents import describe_type, load_document, quote

    document = load_document(path, required=True, raw_text_keys=frozenset(SECRET_FIELDS))
    if document.problems:
        return None, None, document.problems
    data = document.data
    if not isinstance(data, Mapping):
        return None, None, [f"{path}: the top level must be a mapping with auth and images, "
                            f"not {describe_type(data)}"]
    problems = []
    for key in data:
        if key not in CONFIG_KEYS:
            close = difflib.get_close_matches(str(key), CONFIG_KEYS, n=1)
            problems.append(f"{path}: unknown key {quote(key)}: " + (
                f"did you mean {quote(close[0])}?" if close else "the keys are auth and images"))
    if data.get("images") is None:
        problems.append(f"{path}: no images: the file needs an `images:` mapping of source "
                        "image to target")
    return data.get("auth"), data.get("images"), problems


def setup_logging(log_file: str | None, debug: bool) -> None:
    handler: logging.Handler
    handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:
        logging.getLogger("urllib3").setLevel(logging.WARNING)


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
    from migrator.progress import ConsoleReporter
    from migrator.registry.stream import limit_malloc_arenas
    from migrator.runner import EmbeddedRunner

    limit_malloc_arenas()  # before the copying threads start

    settings, auth, rules = load_inputs(args, environ)
    setup_logging(args.log, args.debug)
    try:
        ledger = open_ledger(args, settings)
    except OSError as exc:
        raise ConfigError(f"--state: cannot open the digest record: {exc}") from None
    reporter = ConsoleReporter(sys.stdout)
    options = CopyOptions(dry_run=args.dry_run, platforms=args.platform,
                          referrers=args.referrers, immutable_tags=args.immutable_tags,
                          force=args.force)
    runner = EmbeddedRunner(auth=auth, ledger=ledger, settings=settings, reporter=reporter,
                            workers=args.workers, retries=args.retries, options=options)
    try:
        summary = runner.run(rules)
    finally:
        reporter.close()
        ledger.close()
    for job, reason in summary.failed.items():
        print(f"failed: {job}: {reason}", file=sys.stderr)
    for rule, reason in summary.generate_failed.items():
        print(f"generate failed: {rule.origin}: {reason}", file=sys.stderr)
    for result in summary.results + summary.skipped:
        if result.note:
            print(f"note: {result.job}: {result.note}", file=sys.stderr)
    if args.dry_run:
        print_plan(summary)
    else:
        succeeded = [r.job for r in summary.results]
        write_report(args.output_success, dict.fromkeys(succeeded, ""))
        write_success_images(args.output_success_images, args.output_images_format, succeeded)
        write_report(args.output_failed, summary.failed)
        print(summary.line(), flush=True)
        log.info(summary.line())
    return EXIT_OK if summary.ok else EXIT_FAILED


def print_plan(summary: Summary) -> None:
    from migrator.progress import human_bytes

    new_blobs: dict[str, int] = {}
    to_copy = 0
    for result in sorted(summary.results, key=lambda r: str(r.job)):
        if result.outcome == "up-to-date":
            print(f"up to date: {result.job}")
            continue
        to_copy += 1
        new_blobs.update(result.new_blobs)
        print(f"would copy: {result.job}: {result.blobs_copied} blobs to upload "
              f"({human_bytes(result.bytes_copied)}), {result.blobs_mounted} to mount, "
              f"{result.blobs_skipped} already there")
    for result in sorted(summary.skipped, key=lambda r: str(r.job)):
        print(f"skipped: {result.job}: {result.note.removeprefix('skipped: ')}")
    skipped = f", {len(summary.skipped)} skipped" if summary.skipped else ""
    print(f"Plan: {to_copy} of {summary.images} images to copy{skipped}, {len(new_blobs)} "
          f"blobs new to the target ({human_bytes(sum(new_blobs.values()))}); nothing was "
          "written", flush=True)


def write_report(path: str | None, images: Mapping[Job, str]) -> None:
    """An images file of `images` (ready to run again) and, when any has a reason, a sidecar
    FILE.reasons.json with them. A source copied to several targets keeps them all, as a
    list."""
    if not path:
        return
    import json

    Path(path).write_text(json.dumps(_by_source(images), indent=2, sort_keys=True) + "\n")
    reasons = [{"source": str(job.source), "target": str(job.target), "reason": reason}
               for job, reason in images.items() if reason]
    if reasons:
        Path(f"{path}.reasons.json").write_text(json.dumps(reasons, indent=2) + "\n")


def _by_source(jobs: Iterable[Job]) -> dict[str, str | list[str]]:
    """Each source with its target, or the list of its targets when it has several."""
    targets: dict[str, list[str]] = {}
    for job in jobs:
        found = targets.setdefault(str(job.source), [])
        if str(job.target) not in found:
            found.append(str(job.target))
    return {source: found[0] if len(found) == 1 else sorted(found)
            for source, found in targets.items()}


def write_success_images(path: str | None, form: str, jobs: Iterable[Job]) -> None:
    """image-syncer's `--output-success-images`: every source with the list of its targets,
    in YAML or JSON, as image-syncer writes it."""
    if not path:
        return
    import json

    import yaml

    images = {source: found if isinstance(found, list) else [found]
              for source, found in sorted(_by_source(jobs).items())}
    if form == "json":
        Path(path).write_text(json.dumps(images) + "\n")
    else:
        Path(path).write_text(yaml.safe_dump(images, default_flow_style=False))


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


def run_config(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """`migrator config`: the images a Kubernetes cluster runs, as a rules file (kube.py)."""
    from migrator.commands.config import run_config as config

    try:
        complete = config(args, environ, sys.stderr)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print("nothing was written: fix the input above and run again", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ClusterError as exc:
        for line in exc.lines:
            print(f"error: {line}", file=sys.stderr)
        print("nothing was written", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK if complete else EXIT_FAILED


def fleet_store(settings: Settings) -> RunStore:
    import redis

    from migrator.runs import RunStore

    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=10)
    return RunStore(client, prefix=settings.redis_prefix, ttl=settings.run_ttl)


def run_enqueue(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from migrator.copy import CopyOptions
    from migrator.fleet import start_run

    settings, auth, rules = load_inputs(args, environ)
    from workers.app import make_app  # the producer needs Celery only to send

    app = make_app(settings)

    def send(name: str, task_args: list, kwargs: dict) -> None:
        app.send_task(name, args=task_args, kwargs=kwargs)

    store = fleet_store(settings)
    started = start_run(rules, auth, settings, store=store, send=send,
                        name=args.config or args.images or args.src or "images.json",
                        retries=args.retries,
                        options=CopyOptions(platforms=args.platform, referrers=args.referrers,
                                            immutable_tags=args.immutable_tags,
                                            force=args.force))
    for warning in started.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(started.run_id, flush=True)
    if not args.wait:
        return EXIT_OK
    return watch_run(store, started.run_id, args, settings)


def run_status(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    import json

    settings = settings_from(environ)
    store = fleet_store(settings)
    if args.run_id is None:
        for state in store.recent():
            print(f"{state.run_id}  {state.name}  {state.done}/{state.total} images, "
                  f"{len(state.failed)} failed, {len(state.generate_failed)} generate failed"
                  f"{'' if state.finished else '  (running)'}")
        return EXIT_OK
    if store.state(args.run_id) is None:
        raise ConfigError(f"run {args.run_id!r} not found in {settings.redis_prefix}runs")
    if args.wait:
        return watch_run(store, args.run_id, args, settings)
    state = store.state(args.run_id)
    assert state is not None
    if args.json:
        print(json.dumps({**state.__dict__, "done": state.done, "finished": state.finished,
                          "summary": state.line()}, indent=2))
    else:
        print_run(state)
    write_run_reports(store, state, args)
    if not state.finished:
        return EXIT_FAILED
    return EXIT_OK if state.ok else EXIT_FAILED


def watch_run(store: RunStore, run_id: str, args: argparse.Namespace,
              settings: Settings) -> int:
    from migrator.fleet import watch
    from migrator.progress import ConsoleReporter
    from migrator.throttle import RedisThrottle

    reporter = ConsoleReporter(sys.stdout)
    reporter.phase("Start to handle images tasks, please wait ...")

    throttle = RedisThrottle(store.redis, prefix=store.prefix)
    announced: dict[str, float] = {}

    def show(state: RunState) -> None:
        reporter.set_counts(total=state.total, done=state.done, failed=len(state.failed),
                            copied_bytes=state.bytes, skipped=state.skipped)
        for registry, pause in sorted(throttle.pauses().items()):
            if announced.get(registry) != pause.until:  # each pause said once
                announced[registry] = pause.until
                reporter.phase(f"{registry}: the fleet pauses its requests for "
                               f"{pause.remaining:.0f} s ({pause.reason})")

    from workers.app import make_app

    app = make_app(settings)

    def resend(name: str, task_args: list, kwargs: dict) -> None:
        app.send_task(name, args=task_args, kwargs=kwargs)

    def resent(count: int) -> None:
        reporter.phase(f"nothing ended for {stalled_after:.0f} s: sent the {count} unfinished "
                       "tasks again (a killed worker may have lost them)")

    stalled_after = (settings.resend_after if settings.resend_after is not None
                     else settings.visibility_timeout + 60)
    try:
        state = watch(store, run_id, on_state=show, timeout=args.timeout, resend=resend,
                      stalled_after=stalled_after, on_resend=resent)
    except KeyError:
        print(f"run {run_id} is no longer in Redis (flushed, or expired after "
              "MIGRATOR_RUN_TTL): its outcome is unknown; enqueue the rules again",
              file=sys.stderr)
        return EXIT_FAILED
    finally:
        reporter.close()
    print_run(state)
    write_run_reports(store, state, args)
    if not state.finished:
        print(f"run {run_id} is still running", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK if state.ok else EXIT_FAILED


def print_run(state: RunState) -> None:
    for job, reason in sorted(state.failed.items()):
        print(f"failed: {job}: {reason}", file=sys.stderr)
    for rule, reason in sorted(state.generate_failed.items()):
        print(f"generate failed: {rule}: {reason}", file=sys.stderr)
    if state.finished:
        print(state.line(), flush=True)
    else:
        print(f"run {state.run_id}: {state.done}/{state.total} images done, "
              f"{state.expands_pending} rules still to expand", flush=True)


def write_run_reports(store: RunStore, state: RunState, args: argparse.Namespace) -> None:
    """The reports of `sync`, for a fleet run: images files, reasons in a sidecar."""
    from migrator.fleet import job_from_key

    write_report(args.output_failed,
                 {job_from_key(key): reason for key, reason in state.failed.items()})
    if args.output_success or args.output_success_images:
        succeeded = [job_from_key(key) for key in store.succeeded_jobs(state.run_id)]
        write_report(args.output_success, dict.fromkeys(succeeded, ""))
        write_success_images(args.output_success_images, args.output_images_format, succeeded)


COMMANDS = {"sync": run_sync, "plan": run_sync, "verify": run_verify, "check": run_check,
            "config": run_config, "enqueue": run_enqueue, "status": run_status}
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
    parser = build_parser()
    args = parser.parse_args(compatible_argv(sys.argv[1:] if argv is None else argv))
    environ = os.environ if environ is None else environ
    try:
        return COMMANDS[args.command](args, environ)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        if args.command == "check":
            print(f"check failed: {len(exc.problems)} problems", file=sys.stderr)
        else:
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


if __name__ == "__main__":
    sys.exit(main())
