"""Every tunable of the product, declared once with its type and default.

Each field can be overridden by an environment variable `MIGRATOR_<FIELD>` (for example
`MIGRATOR_CHUNK_SIZE=4194304`), the natural way to configure a container or a Deployment.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

ENV_PREFIX = "MIGRATOR_"


class Settings(BaseModel):
    # A plain model, read from the environment by `load_settings`: every field is a scalar that
    # pydantic's lax mode parses from its text, and pydantic-settings would cost a fifth of
    # the command's start-up (it imports asyncio). hide_input_in_errors: a bad
    # MIGRATOR_SECRET_KEY must not be printed back.
    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)

    # HTTP
    connect_timeout: float = Field(10.0, gt=0, description="seconds to open a connection")
    read_timeout: float = Field(120.0, gt=0, description="seconds without a byte before giving up")
    http_attempts: int = Field(5, ge=1, description="tries of one request on transient faults")
    backoff_initial: float = Field(0.5, ge=0, description="first backoff in seconds")
    backoff_max: float = Field(30.0, ge=0, description="longest backoff between two tries")
    retry_after_max: float = Field(120.0, ge=0, description="cap on a server's Retry-After")
    quota_reserve: int = Field(
        5, ge=0, description="requests of a registry's announced quota (RateLimit-Remaining) "
        "left unused: with this few left, the fleet pauses that registry")
    quota_pause_max: float = Field(
        3600.0, ge=0, description="longest pause for a quota about to run out")
    pool_connections: int = Field(32, ge=1, description="keep-alive connections per registry")
    ca_bundle: str | None = Field(None, description="CA bundle used for every TLS registry")

    # Copy
    chunk_size: int = Field(1 << 20, ge=4096, description="bytes per read of a blob stream")
    blob_parallelism: int = Field(4, ge=1, description="blobs of one image copied at once")
    blob_attempts: int = Field(3, ge=1, description="tries of one blob copy (fresh upload each)")
    chunked_upload_threshold: int = Field(
        64 << 20, ge=0, description="blobs larger than this go up in chunks whose session "
        "and confirmed offset are kept in the ledger, so that a broken upload resumes")
    upload_chunk_size: int = Field(
        128 << 20, ge=1 << 16, description="bytes per PATCH of a chunked upload (each PATCH "
        "costs the registry CPU of its own; a broken upload resends at most this much)")
    upload_session_ttl: int = Field(
        86400, ge=60, description="seconds the fleet keeps a chunked upload's session")
    max_manifest_bytes: int = Field(4 << 20, ge=1024, description="largest manifest accepted")
    max_tag_pages: int = Field(1000, ge=1, description="tag-list pages followed at most")
    tag_list_ttl: float = Field(
        60.0, ge=0, description="seconds a tag list may be reused to find an image's referrers")
    tag_page_size: int = Field(1000, ge=1, description="tags asked for per tag-list page")
    mount_probe: bool = Field(
        True, description="ask for a blob with a mount from the target repository itself "
        "(one request for HEAD + POST); a registry that refuses it gets a HEAD")
    target_tag_list: bool = Field(
        True, description="on a first copy, learn which tags a target repository has from "
        "one tag list per repository instead of a HEAD per tag")
    trust_ledger: bool | None = Field(
        None, description="skip the target HEAD when the ledger vouches for a tag; unset: "
        "trusted by the fleet (its record is shared), verified by `migrator sync`")
    verify_target_every: int = Field(
        4, ge=1, description="where the record is verified (`migrator sync`), a tag it "
        "vouches for is HEADed at the target on one run in this many (which tags on which "
        "run: a hash of the tag name and the record's run count), and otherwise trusted if "
        "the target repository's tag list, read once per run, still has it: a deleted tag is "
        "copied again at the next run, a tag changed in place within this many runs. 1: a "
        "HEAD per tag on every run (docs/reruns.md)")

    # Embedded runs
    state_dir: Path = Field(Path(".migrator"), description="where `migrator sync` keeps state")
    retry_pass_delay: float = Field(1.0, ge=0, description="pause before a retry pass, doubled")

    # Fleet
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="broker, ledger and runs")
    redis_prefix: str = Field("migrator:", description="prefix of every key of ours in Redis")
    queue: str = Field("migrator", description="the Celery queue of the copy tasks")
    auth_file: str | None = Field(None, description="the workers' own auth file")
    secret_key: SecretStr | None = Field(
        None, description="Fernet key shared by producer and workers to seal run credentials")
    visibility_timeout: int = Field(
        4 * 3600, ge=5, description="seconds before Redis hands an unacknowledged task to "
        "another worker; keep it above the longest copy")
    resend_after: float | None = Field(
        None, gt=0, description="seconds without an image ending before `--wait` sends a run's "
        "unfinished tasks again (a worker killed at the wrong moment loses its message); "
        "unset: the visibility timeout plus 60 s")
    worker_lease: float = Field(
        20.0, ge=1, description="seconds a worker's lease in Redis lasts unless renewed (every "
        "third of it, by a thread of each worker): a worker silent this long is dead to the "
        "fleet, and the tasks it held go back to the queue")
    reap_interval: float = Field(
        5.0, gt=0, description="seconds between two sweeps of the fleet for the tasks of "
        "dead workers and for lost messages (one sweep per interval, whoever makes it)")
    lock_ttl: float = Field(15.0, gt=0, description="seconds a crashed worker keeps a blob lock")
    lock_wait: float = Field(3600.0, gt=0, description="longest wait for another's blob upload")
    run_ttl: int = Field(
        30 * 86400, ge=60, description="seconds a run's record is kept while it is not "
        "finished (a longer wait since its last change means it was abandoned)")
    finished_run_ttl: int = Field(
        7 * 86400, ge=60, description="seconds a finished run's summary, failures and "
        "successes are kept for `migrator status` and its reports, from when it finished; "
        "the lists used only to send work again go at once")
    schedule_file: str | None = Field(None, description="YAML schedule read by celery beat")

    @field_validator("secret_key")
    @classmethod
    def _secret_key_is_fernet(cls, value: SecretStr | None) -> SecretStr | None:
        """An empty key is no key (`${KEY:-}` in compose files); any other must be a Fernet
        key, found out here rather than at the first run."""
        if value is None or not value.get_secret_value():
            return None
        from cryptography.fernet import Fernet

        try:
            Fernet(value.get_secret_value().encode())
        except ValueError:
            raise ValueError(
                "must be a Fernet key (make one with: python -c 'from cryptography.fernet "
                "import Fernet; print(Fernet.generate_key().decode())')") from None
        return value

    # Worker health, metrics and shutdown (workers/health.py)
    health_dir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "migrator-health",
        description="where each worker process keeps the heartbeat files that "
        "`python -m workers.health` (the liveness probe) reads")
    liveness_timeout: float = Field(
        60.0, gt=0, description="seconds a worker's consumer loop may go without a heartbeat "
        "before the liveness check fails")
    stall_timeout: float = Field(
        1800.0, gt=0, description="seconds a running task may move no byte before the "
        "liveness check fails; keep it above a legitimate silence (a slow request's retries, "
        "a wait for another worker's upload of a large blob)")
    metrics_port: int = Field(
        0, ge=0, le=65535, description="port of each worker's Prometheus /metrics; 0: off")
    # Loopback by default: /metrics is unauthenticated. A scraper on another host or pod
    # needs 0.0.0.0 (or ::), as deploy/kubernetes/worker.yaml sets.
    metrics_address: str = Field(
        "127.0.0.1", description="address the metrics server binds; 0.0.0.0 (or ::) to be "
        "scraped from other hosts")
    metrics_max_registries: int = Field(
        50, ge=1, description="distinct registries a worker process names in the "
        "source_registry/target_registry metric labels; later ones are counted as `other`")
    shutdown_timeout: float = Field(
        0.0, ge=0, description="seconds a SIGTERM'd worker lets running copies finish before "
        "it hands their tasks back to the queue and exits; 0: wait as long as they take. Keep "
        "it below the pod's terminationGracePeriodSeconds")


def default(name: str) -> Any:
    """The declared default of setting `name`, for a constructor that may be called without
    Settings (tests, library use): the number still lives here only."""
    return Settings.model_fields[name].get_default(call_default_factory=True)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from `environ` (default: the process environment), `MIGRATOR_*` variables."""
    environ = os.environ if environ is None else environ
    prefix = len(ENV_PREFIX)
    # Field names only, each value a string for pydantic to validate.
    values = {key[prefix:].lower(): value for key, value in environ.items()
              if key.startswith(ENV_PREFIX) and key[prefix:].lower() in Settings.model_fields}
    return Settings.model_validate(values)
