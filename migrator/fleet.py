"""Fleet runs, the producer's side: turn validated rules into a run and its Celery tasks.

Shared by `migrator enqueue` and by scheduled runs fired from celery beat. It sends tasks
through a `send(name, args, kwargs)` callable, so this module needs no Celery import.

Task arguments are what a person reads in Flower: a run id, image references, a rule's origin,
a retry count. Credentials never travel in them: the run's auth rests in Redis sealed with the
key that producer and workers share (`MIGRATOR_SECRET_KEY`); without a key only its non-secret
part travels (plain-HTTP flags), and the workers use their own `MIGRATOR_AUTH_FILE`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from migrator.auth import AuthFile, seal, unseal
from migrator.copy.options import CopyOptions
from migrator.errors import ConfigError, RunVanished
from migrator.filters import TagFilters
from migrator.reference import parse
from migrator.registry.credentials import RegistryAuth
from migrator.rules import Job, Rule, catalog_rule
from migrator.runs import RunState, RunStore
from migrator.settings import Settings

SYNC_TASK = "migrator.sync_image"
EXPAND_TASK = "migrator.expand_rule"
COALESCE = 0.05  # seconds a watcher waits after a wake-up for the changes that follow it
SEALED, PLAIN = "sealed:", "plain:"

Send = Callable[[str, list, dict], Any]


def rule_key(rule: Rule) -> str:
    """A rule's name in the run: its origin plus target (a list of targets shares one origin)."""
    return f"{rule.origin} -> {rule.target}"


def expand_args(rule: Rule) -> dict[str, Any]:
    """A rule to expand, as plain JSON: a catalog rule's source is `registry/namespace/*`
    (plus `"catalog": true`); tag filters are present only when set."""
    source = rule.catalog_source if rule.catalog else rule.source.name
    args: dict[str, Any] = {"source": source, "pattern": rule.tag_pattern,
                            "target": rule.target.name, "rule": rule_key(rule)}
    if rule.catalog:
        args["catalog"] = True
    if rule.platforms:
        args["platforms"] = sorted(rule.platforms)
    if rule.immutable_tags:
        args["immutable_tags"] = rule.immutable_tags
    return {**args, **rule.filters.to_args()}


def rule_from_args(args: dict[str, Any]) -> Rule:
    filters = TagFilters.from_args(args)
    pattern = args.get("pattern")
    platforms = frozenset(args.get("platforms") or ())
    immutable = str(args["immutable_tags"]) if args.get("immutable_tags") else None
    if args.get("catalog"):
        rule = catalog_rule(str(args["rule"]), str(args["source"]), str(args["target"]),
                            pattern=pattern, filters=filters)
        return replace(rule, platforms=platforms, immutable_tags=immutable)
    source, target = parse(str(args["source"])), parse(str(args["target"]))
    return Rule(origin=str(args["rule"]), source=source, tags=(), tag_pattern=pattern,
                target=target, filters=filters, platforms=platforms, immutable_tags=immutable)


def run_options(options: CopyOptions | Mapping[str, Any] | None) -> CopyOptions:
    """A run's copy options, given as such or as the task kwargs that carry them."""
    if isinstance(options, CopyOptions):
        return options
    return CopyOptions.from_task_kwargs(options or {})


def job_kwargs(job: Job, retries: int, options: CopyOptions | Mapping[str, Any] | None = None
               ) -> dict[str, Any]:
    """A `sync_image` task's kwargs: the run's options, with the job's own (its rule's
    platforms and immutable tags) over them."""
    return {"rule": job.rule, "retries": retries,
            **run_options(options).for_job(job).to_task_kwargs()}


def job_from_args(source: str, target: str, rule: str = "") -> Job:
    return Job(parse(source), parse(target), rule)


PLAIN_FIELDS = {"insecure", "tls_verify", "requests_per_second", "concurrent_requests",
                "upload", "chunk_size", "create_namespace"}


def auth_for_transport(auth: AuthFile, settings: Settings) -> str:
    """What rests in Redis for the run's workers: the credentials sealed, or only the
    settings when no key is shared (then credentials are refused: they could not be used)."""
    if not auth.entries:
        return ""
    if settings.secret_key is not None:
        return SEALED + seal(auth, settings.secret_key.get_secret_value())
    # Settings, never secrets: a proxy URL may carry a password, so it stays here too.
    plain = {name: entry.model_dump(include=PLAIN_FIELDS, exclude_defaults=True)
             for name, entry in auth.entries.items()}
    with_credentials = [name for name, entry in auth.entries.items() if not entry.anonymous]
    if with_credentials:
        # The workers would go anonymous and fail later with a misleading 401: refuse now.
        raise ConfigError(
            f"{auth.path}: the credentials for {', '.join(with_credentials)} cannot reach the "
            "workers: set MIGRATOR_SECRET_KEY (the same for producer and workers) to hand them "
            "over sealed, or give the workers their own MIGRATOR_AUTH_FILE and leave the "
            "credentials out of this auth file")
    return PLAIN + json.dumps(plain)


def auth_from_transport(text: str | None, settings: Settings) -> AuthFile:
    if not text:
        return AuthFile("")
    if text.startswith(SEALED):
        key = settings.secret_key.get_secret_value() if settings.secret_key else ""
        return unseal(text[len(SEALED):], key, path="run credentials")
    plain = json.loads(text[len(PLAIN):])
    return AuthFile("run settings", {name: RegistryAuth(**entry) for name, entry in plain.items()})


@dataclass
class StartedRun:
    run_id: str
    tasks: int


def start_run(
    rules: Sequence[Rule],
    auth: AuthFile,
    settings: Settings,
    *,
    store: RunStore,
    send: Send,
    name: str,
    retries: int,
    options: CopyOptions | Mapping[str, Any] | None = None,
) -> StartedRun:
    """Record the run, then send one task per known image and one per rule to expand.

    `options` (or their task kwargs: platforms, referrers, immutable_tags, force) reach every
    copy of the run as task kwargs, and every expansion, which sends them on with the tasks it
    makes.
    """
    copy_options = run_options(options)
    jobs = list(dict.fromkeys(job for rule in rules if not rule.needs_tag_list
                              for job in rule.jobs()))
    expands = list({rule_key(rule): rule for rule in rules if rule.needs_tag_list}.values())
    transport = auth_for_transport(auth, settings)
    run_id = store.create(name=name, retries=retries, jobs=[str(job) for job in jobs],
                          expands=[rule_key(rule) for rule in expands], auth=transport)
    # name, args, kwargs: a copy's args are strings, an expansion's a run id and a dict
    tasks: dict[str, tuple[str, list[Any], dict[str, Any]]] = {
        str(job): (SYNC_TASK, [run_id, str(job.source), str(job.target)],
                   job_kwargs(job, retries, copy_options)) for job in jobs}
    tasks.update({rule_key(rule): (EXPAND_TASK, [run_id, expand_args(rule)],
                                   {"retries": retries, **copy_options.to_task_kwargs()})
                  for rule in expands})
    store.remember_tasks(run_id, tasks)
    for name, args, kwargs in tasks.values():
        send(name, args, kwargs)
    return StartedRun(run_id, len(jobs) + len(expands))


def watch(store: RunStore, run_id: str, *, interval: float = 1.0,
          on_state: Callable[[RunState], None] | None = None,
          timeout: float | None = None, resend: Send | None = None,
          stalled_after: float = 3600.0,
          on_resend: Callable[[int], None] | None = None,
          sweep: Callable[[], object] | None = None) -> RunState:
    """Follow a run until it is finished (or `timeout` seconds pass); returns its last state.

    Each job or rule that ends wakes the watcher; `interval` bounds the wait between looks
    (a second watcher of the same run, whose wake-up the first one took, looks that often).

    With `resend`: when nothing has ended for `stalled_after` seconds, the run's unfinished
    tasks are sent again. Celery's Redis transport loses a message whose worker is killed
    between taking it from the queue and recording it as unacknowledged; a task still running
    elsewhere is harmless to send twice (copies are idempotent, counted once). A last resort:
    `sweep`, called at each look (it decides itself how often to act), is the fleet's reaper
    (workers/reaper.py), which hands a dead worker's tasks back within seconds; the watcher
    is one more process that runs it, in case every worker is gone.

    Raises RunVanished when the run's record is gone from Redis.
    """

    deadline = None if timeout is None else time.monotonic() + timeout
    progress, moved = (-1, -1), time.monotonic()
    while True:
        if sweep is not None:
            sweep()
        state = store.state(run_id)
        if state is None:
            raise RunVanished(run_id)
        if on_state is not None:
            on_state(state)
        now = time.monotonic()
        if (state.done, state.expands_pending) != progress:
            progress, moved = (state.done, state.expands_pending), now
        elif resend is not None and not state.finished and now - moved > stalled_after:
            tasks = store.unfinished_tasks(run_id)
            for name, args, kwargs in tasks:
                resend(name, args, kwargs)
            if on_resend is not None:
                on_resend(len(tasks))
            moved = now
        if state.finished or (deadline is not None and time.monotonic() > deadline):
            return state
        if store.wait_for_change(run_id, interval):
            time.sleep(COALESCE)  # let a burst of endings land before the next look


def job_from_key(key: str) -> Job:
    """A run's name of an image task (`source -> target`) back into the job."""
    source, _, target = key.partition(" -> ")
    return job_from_args(source, target)
