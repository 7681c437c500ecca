"""migrator: copy container images between registries, from one process or a Celery fleet."""

# The one place of the version: pyproject.toml reads it, and so does the User-Agent.
__version__ = "0.1.0"
