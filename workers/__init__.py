"""The Celery side of migrator: `celery -A workers worker|beat|flower`.

Every setting comes from `MIGRATOR_*` environment variables (migrator.settings).
"""

from workers.app import app

__all__ = ["app"]
