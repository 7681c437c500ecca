"""migrator: copy container images between registries, from one process or a Celery fleet."""

__version__ = "0.1.0"
