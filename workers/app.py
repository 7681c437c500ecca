"""The Celery application of the fleet, configured once from the product's settings.

Why these settings:
- acks_late + reject_on_worker_lost + prefetch 1: a task is acknowledged only when it ended,
  so a killed worker's task goes back to the queue instead of being lost; each worker holds at
  most one task it has not started.
- visibility_timeout: the Redis transport hands an unacknowledged task to another worker after
  this long; it must exceed the longest copy (a redelivered copy is harmless, but wasteful).
- JSON only: task arguments are references a person can read in Flower, never pickles.
- No results: the run's own record in Redis tells progress and outcome.
- Events on: Flower shows the fleet without extra flags.
"""

from __future__ import annotations

import ssl

from celery import Celery

from migrator.process import limit_malloc_arenas
from migrator.settings import Settings, load_settings


def make_app(settings: Settings) -> Celery:
    """The app for these settings: the workers' (below) and the producer's are the same."""
    app = Celery("migrator", broker=settings.redis_url, include=["workers.tasks"])
    app.conf.update(
        # JSON in every direction: a message in another format (pickle can run code when it
        # is read) is refused by the worker before it is decoded.
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_accept_content=["json"],
        event_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # Sweep for the tasks of dead workers a few times per visibility timeout.
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 4)),
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        timezone="UTC",
    )
    if settings.redis_url.startswith("rediss://") and "ssl_cert_reqs" not in settings.redis_url:
        app.conf.broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    return app


limit_malloc_arenas()  # before the worker's pool threads start
settings = load_settings()
app = make_app(settings)
app.conf.beat_scheduler = "workers.schedule:FileScheduler"  # reads MIGRATOR_SCHEDULE_FILE
