"""The contenders: `migrator sync`, the fleet (`migrator enqueue --wait` + N Celery workers),
skopeo (`skopeo sync --all`, one process per repository, four at a time) and a plain copier
(benchmarks/plain_copier.py, a short script on `requests`).

Each tool is prepared once per (scenario, repetition) with a fresh target registry, runs an
initial copy and then a no-op re-run into that same target, and is torn down afterwards. What a
tool keeps between its initial run and its re-run is its own state, as a user would have it:
`migrator sync` its ``--state`` directory, the fleet its Redis database, skopeo its blob-info
cache; the plain copier keeps nothing (its record lives in memory). Nothing is kept between
repetitions.
"""

from __future__ import annotations

import atexit
import compileall
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from benchmarks.scenarios import TARGET_NAMESPACE, Scenario, target_repository

ROOT = Path(__file__).resolve().parent.parent
SKOPEO_SYSTEM_CACHE = Path("/var/lib/containers/cache")  # c/image's cache dir for euid 0


def clean_env(code: Path = ROOT, **extra: str) -> dict[str, str]:
    """The process environment without MIGRATOR_* settings or proxies, with ``code`` (where
    `migrator` and `workers` are imported from) first on the path, plus ``extra``."""
    drop = ("MIGRATOR_", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(drop)}
    env["PYTHONPATH"] = str(code)
    env.update(extra)
    return env


_REDIS_SERVERS: list[subprocess.Popen[bytes]] = []


def private_redis(work: Path) -> str:
    """A Redis server of the benchmark's own, on a free port of 127.0.0.1, keeping nothing on
    disk, stopped when the benchmark ends; its URL. Its CPU and memory are then the fleet's
    alone, and no test or other run sharing the machine's Redis can empty it half-way."""
    import redis

    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server not found: apt-get install redis-server, or give "
                           "--redis-db to use the Redis on 127.0.0.1:6379")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    work.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _REDIS_SERVERS.append(proc)
    if len(_REDIS_SERVERS) == 1:
        atexit.register(_stop_redis_servers)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url, socket_connect_timeout=1).ping()
            return url
        except redis.exceptions.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {port} did not start") from None
            time.sleep(0.05)


def _stop_redis_servers() -> None:
    for proc in _REDIS_SERVERS:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def snapshot_code(into: Path) -> tuple[Path, str]:
    """Copy `migrator/` and `workers/` as they are now; returns the copy and its sha256.

    Every tool run imports from the copy, so edits made to the working tree while a long
    benchmark runs cannot change the code measured half-way (a path on PYTHONPATH comes
    before the editable install's finder).
    """
    into.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    for package in ("migrator", "workers"):
        shutil.copytree(ROOT / package, into / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for path in sorted((into / package).rglob("*.py")):
            digest.update(str(path.relative_to(into)).encode() + b"\0" + path.read_bytes())
        # Bytecode, as an installed package has it (pip compiles at install): otherwise every
        # run compiles the project's modules again, 60-80 ms of a start-up on this machine,
        # and more where PYTHONDONTWRITEBYTECODE keeps the interpreter from caching it.
        compileall.compile_dir(into / package, quiet=1)
    return into, digest.hexdigest()[:16]


@dataclass
class Endpoints:
    """How the tools reach the registries (through the latency proxies in the WAN scenario)."""

    source: str
    target: str


class Tool:
    """One contender. Subclasses fill in how to prepare, run and tear down."""

    name = ""
    label = ""
    code: Path = ROOT  # where migrator and workers are imported from (see snapshot_code)

    def prepare(self, work: Path, scenario: Scenario, endpoints: Endpoints) -> None:
        self.work = work
        self.scenario = scenario
        self.endpoints = endpoints
        work.mkdir(parents=True, exist_ok=True)

    def command(self, phase: str) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def extra_processes(self) -> list[tuple[str, psutil.Process]]:
        """Long-lived processes outside the command's tree that do the work (workers)."""
        return []

    def finish(self) -> None:
        """Tear down what prepare() started."""

    def diagnostics(self) -> str:
        """Log tail for error reports."""
        return _tail(*sorted(self.work.glob("*.log")))

    # -- shared by migrator's two executors ------------------------------------------------

    def write_inputs(self) -> tuple[Path, Path]:
        images = {f"{self.endpoints.source}/{repository}":
                  f"{self.endpoints.target}/{target_repository(repository)}"
                  for repository in self.scenario.source_repositories()}
        auth = {self.endpoints.source: {"insecure": True},
                self.endpoints.target: {"insecure": True}}
        images_file, auth_file = self.work / "images.json", self.work / "auth.json"
        images_file.write_text(json.dumps(images, indent=1))
        auth_file.write_text(json.dumps(auth, indent=1))
        return images_file, auth_file


def force_flag(phase: str) -> list[str]:
    """The "force" phase (benchmarks/scale.py's third run) writes every manifest again."""
    return ["--force"] if phase == "force" else []


class MigratorSync(Tool):
    """`migrator sync` in one process; a fresh --state per repetition, kept for the re-run."""

    name = "sync"
    label = "migrator sync"

    def __init__(self, workers: int = 7) -> None:
        self.workers = workers

    def command(self, phase: str) -> tuple[list[str], dict[str, str]]:
        images, auth = self.write_inputs()
        return ([sys.executable, "-m", "migrator", "sync", "--images", str(images),
                 "--auth", str(auth), "--state", str(self.work / "state"),
                 "--workers", str(self.workers), "--log", str(self.work / f"sync-{phase}.log"),
                 *force_flag(phase)],
                clean_env(self.code))


class Fleet(Tool):
    """`migrator enqueue --wait` with N worker processes (threads pool) on a private Redis DB.

    The workers are started before the measured command (a fleet is long-lived) and are part
    of what is measured: their CPU and memory count as the tool's.
    """

    def __init__(self, processes: int, *, redis_url: str, concurrency: int = 7,
                 timeout: float = 3600.0) -> None:
        self.processes = processes
        self.name = f"fleet-{processes}"
        self.label = f"fleet, {processes} worker{'s' if processes > 1 else ''}"
        self.redis_url = redis_url
        self.concurrency = concurrency
        self.timeout = timeout
        self.workers: list[subprocess.Popen[bytes]] = []

    def env(self) -> dict[str, str]:
        return clean_env(self.code, MIGRATOR_REDIS_URL=self.redis_url)

    def flush(self) -> None:
        import redis

        client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=5)
        client.flushdb()  # our own database only: never FLUSHALL
        client.close()

    def prepare(self, work: Path, scenario: Scenario, endpoints: Endpoints) -> None:
        super().prepare(work, scenario, endpoints)
        self.flush()
        for index in range(self.processes):
            log_path = work / f"worker{index}.log"
            with open(log_path, "ab") as log:
                self.workers.append(subprocess.Popen(
                    [sys.executable, "-m", "celery", "-A", "workers", "worker",
                     "--pool", "threads", "--concurrency", str(self.concurrency),
                     "--hostname", f"bench{index}-{os.getpid()}@%h", "--loglevel", "INFO",
                     "--without-gossip", "--without-mingle", "--without-heartbeat"],
                    cwd=self.code, env=self.env(), stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 60
        for index, worker in enumerate(self.workers):
            log_path = work / f"worker{index}.log"
            while b"ready." not in log_path.read_bytes():
                if worker.poll() is not None or time.monotonic() > deadline:
                    self.finish()
                    raise RuntimeError(f"worker {index} did not start:\n{_tail(log_path)}")
                time.sleep(0.05)

    def command(self, phase: str) -> tuple[list[str], dict[str, str]]:
        images, auth = self.write_inputs()
        return ([sys.executable, "-m", "migrator", "enqueue", "--wait",
                 "--timeout", str(self.timeout), "--images", str(images), "--auth", str(auth),
                 *force_flag(phase)],
                self.env())

    def extra_processes(self) -> list[tuple[str, psutil.Process]]:
        return [(f"worker{i}", psutil.Process(w.pid)) for i, w in enumerate(self.workers)]

    def finish(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        self.workers = []
        self.flush()


class PlainCopier(Tool):
    """benchmarks/plain_copier.py: threads, mounts, an in-memory record of blobs, digests
    checked, on `requests` and nothing else; as many image threads as `migrator sync`."""

    name = "plain"
    label = "plain copier"

    def __init__(self, threads: int = 7) -> None:
        self.threads = threads

    def command(self, phase: str) -> tuple[list[str], dict[str, str]]:
        return ([sys.executable, str(ROOT / "benchmarks" / "plain_copier.py"),
                 "--source", self.endpoints.source, "--target", self.endpoints.target,
                 "--namespace", TARGET_NAMESPACE, "--threads", str(self.threads),
                 *self.scenario.source_repositories()], clean_env(self.code))


SKOPEO_SCRIPT = """\
set -eu
if [ -n "${BENCH_BIND_CACHE:-}" ]; then
    mount --bind "$BENCH_BIND_CACHE" /var/lib/containers/cache
fi
exec xargs -P "$BENCH_PARALLEL" -I{} skopeo --policy "$BENCH_POLICY" sync --all \\
    --src docker --dest docker --src-tls-verify=false --dest-tls-verify=false \\
    "$BENCH_SOURCE/{}" "$BENCH_TARGET" < "$BENCH_REPOSITORIES"
"""


def skopeo_isolation() -> str:
    """How each repetition gets its own blob-info cache.

    "unshare": as root, a private mount namespace binds a fresh directory over
    /var/lib/containers/cache (c/image's fixed cache path for euid 0); "xdg": not root, the
    cache follows $XDG_DATA_HOME; "shared": neither works, the system cache is shared.
    """
    if os.geteuid() != 0:
        return "xdg"
    unshare = shutil.which("unshare")
    if unshare:
        probe = subprocess.run([unshare, "-m", "--propagation", "private", "true"],
                               capture_output=True)
        if probe.returncode == 0:
            return "unshare"
    return "shared"


def skopeo_version() -> str | None:
    path = shutil.which("skopeo")
    if not path:
        return None
    done = subprocess.run([path, "--version"], capture_output=True, text=True)
    return done.stdout.strip() or None


class Skopeo(Tool):
    """`skopeo sync --all` per repository, ``parallel`` processes at a time (xargs -P)."""

    name = "skopeo"
    label = "skopeo sync"

    def __init__(self, parallel: int = 4) -> None:
        self.parallel = parallel
        self.isolation = skopeo_isolation()

    def prepare(self, work: Path, scenario: Scenario, endpoints: Endpoints) -> None:
        super().prepare(work, scenario, endpoints)
        self.cache = work / "blob-info-cache"
        self.cache.mkdir()
        (work / "policy.json").write_text(
            json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        (work / "repositories.txt").write_text(
            "".join(f"{r}\n" for r in scenario.source_repositories()))
        (work / "skopeo.sh").write_text(SKOPEO_SCRIPT)
        if self.isolation == "unshare":
            SKOPEO_SYSTEM_CACHE.mkdir(parents=True, exist_ok=True)  # the mount point

    def command(self, phase: str) -> tuple[list[str], dict[str, str]]:
        env = clean_env(
            self.code, BENCH_PARALLEL=str(self.parallel),
            BENCH_POLICY=str(self.work / "policy.json"),
            BENCH_SOURCE=self.endpoints.source,
            BENCH_TARGET=f"{self.endpoints.target}/{TARGET_NAMESPACE}",
            BENCH_REPOSITORIES=str(self.work / "repositories.txt"))
        script = str(self.work / "skopeo.sh")
        if self.isolation == "unshare":
            env["BENCH_BIND_CACHE"] = str(self.cache)
            return ["unshare", "-m", "--propagation", "private", "sh", script], env
        if self.isolation == "xdg":
            env["XDG_DATA_HOME"] = str(self.cache)
        return ["sh", script], env


def _tail(*paths: Path, lines: int = 30) -> str:
    out = []
    for path in paths:
        try:
            text = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        out.append(f"--- {path.name}\n" + "\n".join(text))
    return "\n".join(out)
