"""Read-only access to what the dashboard shows, over the keys migrator.runs and
workers.tasks document. Nothing here writes, and nothing reads a run's `:auth` or `:tasks`.

Two reads runs.py lacks live here until its owner takes them in (see docs/dashboard.md):
  - `newest_run_ids`: the ids of `{p}runs`, newest first (RunStore.recent reads them too but
    also every state, and one unreadable run would then hide all of them);
  - `schedule_names` / `schedule_runs`: `{p}schedule:{name}:run`, the run id that a schedule's
    last firing started (set by workers.tasks.start_scheduled_run).
"""

from __future__ import annotations

from typing import Any

from migrator.ledger import text

_RUN_SUFFIX = ":run"


def newest_run_ids(client: Any, prefix: str, count: int) -> list[str]:
    """The ids of the `count` newest runs, newest first."""
    return [text(run_id) for run_id in client.zrevrange(f"{prefix}runs", 0, count - 1)]


def schedule_names(client: Any, prefix: str) -> list[str]:
    """The schedules that fired at least once (their record has not expired).

    SCAN walks the whole key space (the ledger's blob keys included), so callers do it
    rarely; `{p}schedule:{name}:run:lock` (the firing lock) does not match the pattern."""
    head = f"{prefix}schedule:"
    names = set()
    for key in client.scan_iter(match=_glob_escape(head) + "*" + _RUN_SUFFIX, count=1000):
        names.add(text(key)[len(head):-len(_RUN_SUFFIX)])
    return sorted(names)


def schedule_runs(client: Any, prefix: str, names: list[str]) -> dict[str, str | None]:
    """Each schedule's last run id (None once its record expired), in one round trip."""
    if not names:
        return {}
    values = client.mget([f"{prefix}schedule:{name}{_RUN_SUFFIX}" for name in names])
    return {name: (text(value) if value is not None else None)
            for name, value in zip(names, values, strict=True)}


def _glob_escape(value: str) -> str:
    """A prefix that may hold glob characters, matched literally by SCAN MATCH."""
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in value)
