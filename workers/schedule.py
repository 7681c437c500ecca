"""Recurring syncs: the YAML schedule file that `celery -A workers beat` reads.

    schedules:
      - name: nightly-harbor
        images: /etc/migrator/images.json
        auth: /etc/migrator/auth.json      # optional
        registry: registry.example.com     # optional, for empty targets
        namespace: test                    # optional
        retries: 3                         # optional
        crontab: "0 2 * * *"               # or: interval: 3600 (seconds)

Each firing sends one `migrator.start_run` task; a worker validates the files (workers must see
the same paths, e.g. a mounted ConfigMap) and starts a run exactly as `migrator enqueue` does.
A schedule whose previous run is still in flight is skipped, so a slow run is never doubled.
"""

from __future__ import annotations

from typing import Any

from celery.beat import PersistentScheduler
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, model_validator

from migrator.documents import load_document
from migrator.errors import ConfigError
from migrator.settings import Settings, load_settings

START_TASK = "migrator.start_run"


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    images: str
    auth: str | None = None
    registry: str | None = None
    namespace: str | None = None
    retries: int = Field(3, ge=0)
    interval: PositiveFloat | None = None
    crontab: str | None = None

    @model_validator(mode="after")
    def one_timing(self) -> Schedule:
        if (self.interval is None) == (self.crontab is None):
            raise ValueError("give exactly one of interval (seconds) or crontab")
        if self.crontab is not None and len(self.crontab.split()) != 5:
            raise ValueError("crontab needs five fields: minute hour day month weekday")
        return self


class ScheduleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schedules: list[Schedule]


def load_schedules(path: str) -> list[Schedule]:
    document = load_document(path, required=True)
    if document.problems:
        raise ConfigError(document.problems)
    try:
        schedules = ScheduleFile.model_validate(document.data).schedules
    except ValidationError as exc:
        raise ConfigError([
            f"{path}: {'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()]) from None
    names = [schedule.name for schedule in schedules]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError([f"{path}: schedule name {name!r} used twice" for name in duplicates])
    return schedules


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Celery's `beat_schedule` from the schedule file (empty without one)."""
    if not settings.schedule_file:
        return {}
    from celery.schedules import crontab

    entries: dict[str, dict[str, Any]] = {}
    for schedule in load_schedules(settings.schedule_file):
        if schedule.crontab is not None:
            minute, hour, day, month, weekday = schedule.crontab.split()
            timing: Any = crontab(minute=minute, hour=hour, day_of_month=day,
                                  month_of_year=month, day_of_week=weekday)
        else:
            timing = schedule.interval
        entries[schedule.name] = {"task": START_TASK, "schedule": timing,
                                  "args": [schedule.model_dump(exclude_none=True)]}
    return entries


class FileScheduler(PersistentScheduler):
    """celery beat's scheduler with the entries of `MIGRATOR_SCHEDULE_FILE` added.

    Read here, when beat sets up its schedule, and not when `workers.app` is imported: a
    worker, Flower or the producer never read the schedule file, so a bad one stops beat only.
    """

    def setup_schedule(self) -> None:
        self.app.conf.beat_schedule = {**self.app.conf.beat_schedule,
                                       **beat_schedule(load_settings())}
        super().setup_schedule()
