"""`enqueue`, `status` and `cancel`: the commands that hand work to the fleet and follow it."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from migrator.commands.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, settings_from
from migrator.commands.inputs import add_input_flags, load_inputs
from migrator.commands.reports import add_report_flags, write_report, write_success_images
from migrator.errors import ConfigError, RunVanished
from migrator.failures import failure_lines
from migrator.settings import Settings

if TYPE_CHECKING:
    from migrator.runs import RunState, RunStore


def add_parsers(commands: argparse._SubParsersAction) -> None:
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

    cancel = commands.add_parser(
        "cancel", help="stop a fleet run: its queued tasks are dropped",
        description="Cancel a fleet run: workers drop its tasks still queued as they take "
                    "them, copies already running finish, and the run ends as cancelled.")
    cancel.add_argument("run_id", metavar="RUN_ID")
    enqueue.set_defaults(handler=run_enqueue)
    status.set_defaults(handler=run_status)
    cancel.set_defaults(handler=run_cancel)


def add_watch_flags(parser: argparse.ArgumentParser) -> None:
    add_report_flags(parser)
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="stop waiting after this long (exit code 1 if unfinished)")


def fleet_store(settings: Settings) -> RunStore:
    import redis

    from migrator.runs import RunStore

    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=10)
    return RunStore(client, prefix=settings.redis_prefix, ttl=settings.run_ttl,
                    finished_ttl=settings.finished_run_ttl)


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
                                            force=args.force,
                                            foreign_layers=args.foreign_layers))
    print(started.run_id, flush=True)
    if not args.wait:
        return EXIT_OK
    return watch_run(store, started.run_id, args, settings)


def run_status(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    import json

    settings = settings_from(environ)
    store = fleet_store(settings)
    if args.run_id is None:
        runs = store.recent()
        if not runs:
            print(f"no runs in {redis_place(settings)}: the fleet's runs are in the Redis "
                  "that MIGRATOR_REDIS_URL (and MIGRATOR_REDIS_PREFIX) name", file=sys.stderr)
        for run in runs:
            state_word = ("cancelled" if run.cancelled else "" if run.finished
                          else "running")
            resent = f", {len(run.resent)} re-sent" if run.resent else ""
            print(f"{run.run_id}  {run.name}  {run.done}/{run.total} images, "
                  f"{len(run.failed)} failed, {len(run.generate_failed)} generate failed"
                  f"{resent}{f'  ({state_word})' if state_word else ''}")
        return EXIT_OK
    # One read: a second one could find the record gone (expired, flushed) after this check.
    state = store.state(args.run_id)
    if state is None:
        raise RunNotFound(args.run_id, settings)
    if args.wait:
        return watch_run(store, args.run_id, args, settings)
    if args.json:
        from dataclasses import asdict

        print(json.dumps({**asdict(state), "done": state.done, "finished": state.finished,
                          "summary": state.line(), "held_by_dead_workers": held_by_dead(
                              store, state)}, indent=2))
    else:
        print_held_by_dead(held_by_dead(store, state))
        print_run(state)
    write_run_reports(store, state, args)
    if not state.finished:
        return EXIT_FAILED
    return EXIT_OK if state.ok else EXIT_FAILED


def held_by_dead(store: RunStore, state: RunState) -> dict[str, str]:
    """The run's tasks held by workers whose lease expired and that the reaper has not
    handed back yet (job → worker): for about one `MIGRATOR_REAP_INTERVAL`."""
    from migrator.leases import Leases

    return Leases(store.redis, prefix=store.prefix).read().waiting(store, state)


def print_held_by_dead(held: dict[str, str]) -> None:
    for job, worker in sorted(held.items()):
        print(f"held by a dead worker: {job}: {worker} stopped renewing its lease; the "
              "reaper sends it again at its next sweep", flush=True)


def redis_place(settings: Settings) -> str:
    """Which Redis a command read, for a person: host, port, database and prefix, never the
    URL's password."""
    from urllib.parse import urlsplit

    where = urlsplit(settings.redis_url)
    database = where.path.strip("/") or "0"
    return (f"Redis {where.hostname}:{where.port or 6379}/{database} "
            f"(prefix {settings.redis_prefix})")


class RunNotFound(ConfigError):
    def __init__(self, run_id: str, settings: Settings) -> None:
        super().__init__(f"no run {run_id!r} in {redis_place(settings)}: `migrator status` "
                         "lists the runs it holds")


def run_cancel(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    settings = settings_from(environ)
    store = fleet_store(settings)
    if not store.cancel(args.run_id):
        raise RunNotFound(args.run_id, settings)
    state = store.state(args.run_id)
    done = f"{state.done}/{state.total} images done" if state else "its images done so far"
    print(f"run {args.run_id} cancelled ({done}): workers drop its queued tasks as they take "
          "them; copies already running finish", flush=True)
    return EXIT_OK


NOBODY_AFTER = 10.0  # seconds without a task taken before the watcher says so


def watch_run(store: RunStore, run_id: str, args: argparse.Namespace,
              settings: Settings) -> int:
    from migrator.fleet import watch
    from migrator.progress import ConsoleReporter
    from migrator.throttle import RedisThrottle

    reporter = ConsoleReporter(sys.stdout)
    reporter.phase("Start to handle images tasks, please wait ...")

    throttle = RedisThrottle(store.redis, prefix=store.prefix)
    announced: dict[str, float] = {}
    started, first = time.monotonic(), None
    asked = False

    def show(state: RunState) -> None:
        nonlocal first, asked
        reporter.set_counts(total=state.total, done=state.done, failed=len(state.failed),
                            copied_bytes=state.bytes, skipped=state.skipped)
        first = first or (state.done, state.expands_pending)
        if (not asked and (state.done, state.expands_pending) == first
                and time.monotonic() - started > NOBODY_AFTER):
            asked = True  # one ping, once: it blocks for a second
            if not app.control.ping(timeout=1.0):
                reporter.phase(
                    f"no worker has taken a task for {NOBODY_AFTER:g} s and none answers on "
                    f"{redis_place(settings)} (queue {settings.queue!r}): start one with "
                    "`celery -A workers worker`, with the same MIGRATOR_REDIS_URL")
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
    from workers.reaper import Reaper

    reaper = Reaper(app, settings, store.redis)

    def sweep() -> None:
        """The watcher reaps too: with every worker gone, the dead ones' tasks are back in
        the queue for the next worker that starts."""
        try:
            swept = reaper.sweep()
        except Exception as exc:  # noqa: BLE001 (Redis away: the next look says so)
            reporter.phase(f"reaper: {type(exc).__name__}: {exc}")
            return
        if swept is not None and swept.restored:
            holders = sorted({who for _, who in swept.restored if who}) or ["no live worker"]
            reporter.phase(f"{len(swept.restored)} task(s) held by {', '.join(holders)} "
                           "(lease expired) sent back to the queue")

    try:
        state = watch(store, run_id, on_state=show, timeout=args.timeout, resend=resend,
                      stalled_after=stalled_after, on_resend=resent, sweep=sweep)
    except KeyboardInterrupt:
        reporter.close()
        print(f"stopped watching; run {run_id} goes on in the fleet: follow it with "
              f"`migrator status {run_id} --wait`, stop it with `migrator cancel {run_id}`",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except RunVanished:
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


RESENT_SHOWN = 20  # re-sent tasks listed one per line; the others counted


def print_run(state: RunState) -> None:
    for n, (job, resent) in enumerate(sorted(state.resent.items(),
                                             key=lambda item: (-item[1].at, item[0]))):
        if n == RESENT_SHOWN:
            print(f"re-sent: {len(state.resent) - RESENT_SHOWN} more tasks", flush=True)
            break
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(resent.at))
        times = f", {resent.times} times" if resent.times > 1 else ""
        print(f"re-sent: {job}: {resent.reason}; back in the queue at {when}{times}",
              flush=True)
    for line in failure_lines(dict(sorted(state.failed.items())),
                              lambda job: job.partition(" -> ")[2]):
        print(line, file=sys.stderr)  # a namespace's images on one line (migrator/failures.py)
    for rule, reason in sorted(state.generate_failed.items()):
        print(f"generate failed: {rule}: {reason}", file=sys.stderr)
    if state.cancelled:
        print(f"run {state.run_id} was cancelled: {state.done} of {state.total} images done, "
              "the others not copied (copies running then may still end)", file=sys.stderr)
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
