"""The deployment files (Dockerfile, .dockerignore, docker-compose.yml, Procfile) against the code.

No Docker engine runs here, so the image and compose are checked by reading them: every
command is one the code accepts, every MIGRATOR_* name is a real setting, no secret is written
down. The Procfile is then run for real with `honcho start` (worker, beat, flower on a private
Redis DB, two real registries), and compose's health checks are run against those processes:
compose and the Dockerfile must use the very same command lines, so this exercises them too.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
from functools import cache
from pathlib import Path

import pytest
import requests
import yaml

from migrator.settings import Settings
from tests.support.images import get_manifest, make_layer, push_image
from tests.support.redisdb import flushed_db

ROOT = Path(__file__).resolve().parents[2]
DB = 14  # our own Redis database: flushed before and after, never FLUSHALL
REDIS_URL = f"redis://127.0.0.1:6379/{DB}"
ROLES = ("worker", "beat", "flower")
CONFIG_MOUNT = "/etc/migrator"
SECRET_NAME = re.compile(r"SECRET|PASSW|TOKEN|KEY|BASIC_AUTH|CREDENTIAL", re.I)
# A secret may only be an interpolation from the environment, required or empty, no default.
FROM_ENVIRONMENT = re.compile(r"^\$\{[A-Z][A-Z0-9_]*(?::?\?[^}]*)?\}$")
TASKS = {"migrator.sync_image", "migrator.expand_rule", "migrator.start_run"}


# -- reading the files ----------------------------------------------------------------------


@cache
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def services() -> dict[str, dict]:
    return compose()["services"]


def tokens(value: str | list[str] | None) -> list[str]:
    """A compose command/entrypoint (string or list) as argv."""
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def argv_of(service: dict) -> list[str]:
    return tokens(service.get("entrypoint")) + tokens(service.get("command"))


def environment(service: dict) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict((item.split("=", 1) + [None])[:2] for item in env)
    return {name: None if value is None else str(value) for name, value in env.items()}


def our_services() -> dict[str, dict]:
    """Every service that runs migrator's code (all but third-party images)."""
    return {name: svc for name, svc in services().items() if "build" in svc
            or str(svc.get("image", "")).split(":")[0] == our_image_name()}


def our_image_name() -> str:
    return str(services()["worker"]["image"]).split(":")[0]


@cache
def procfile() -> dict[str, list[str]]:
    from honcho.environ import parse_procfile

    processes = parse_procfile((ROOT / "Procfile").read_text()).processes
    return {name: shlex.split(command) for name, command in processes.items()}


@cache
def dockerfile_stages() -> list[dict]:
    """[{"from": image, "name": alias, "steps": [(INSTRUCTION, text), ...]}, ...]"""
    logical, current = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue  # comments (and the syntax directive) only where an instruction starts
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    stages: list[dict] = []
    for instruction in logical:
        keyword, _, text = instruction.partition(" ")
        keyword, text = keyword.upper(), text.strip()
        if keyword == "FROM":
            parts = text.split()
            parts = [part for part in parts if not part.startswith("--platform")]
            name = parts[2] if len(parts) >= 3 and parts[1].lower() == "as" else None
            stages.append({"from": parts[0], "name": name, "steps": []})
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1]["steps"].append((keyword, text))
    return stages


def exec_form(text: str) -> list[str]:
    return json.loads(text) if text.startswith("[") else ["/bin/sh", "-c", text]


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    candidates = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in candidates):
            excluded = not negated
    return excluded


def hermetic_env(**extra: str) -> dict[str, str]:
    """This interpreter's environment without MIGRATOR_*/FLOWER_* leaking in from outside;
    its scripts (celery, migrator, honcho) first on PATH, the checkout importable."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("MIGRATOR_", "FLOWER_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env["MIGRATOR_REDIS_URL"] = REDIS_URL
    env.update(extra)
    return env


def celery_argv(argv: list[str]) -> list[str]:
    assert argv[0] == "celery"
    return [sys.executable, "-m", "celery", *argv[1:]]


@pytest.fixture
def redis14():
    with flushed_db(REDIS_URL) as client:
        yield client


# -- docker-compose.yml ---------------------------------------------------------------------


def test_every_service_of_ours_is_built_from_the_root_dockerfile():
    ours = our_services()
    assert set(ROLES) <= set(ours)
    assert "build" not in services()["redis"]
    images = set()
    for name, svc in ours.items():
        build = svc.get("build")
        assert build is not None, f"{name}: not built here, so it may run other code"
        build = {"context": build} if isinstance(build, str) else build
        context = (ROOT / build.get("context", ".")).resolve()
        assert context == ROOT, name
        assert (context / build.get("dockerfile", "Dockerfile")).resolve() == ROOT / "Dockerfile"
        images.add(svc.get("image"))
    assert len(images) == 1 and None not in images  # one image, tagged once, for every role


def test_compose_commands_are_the_procfile_lines_and_the_image_default_is_the_worker():
    for role in ROLES:
        argv = argv_of(services()[role])
        assert argv == procfile()[role], role  # one truth: the live test below runs these
        assert argv[:4] == ["celery", "-A", "workers", role], role
    final = dockerfile_stages()[-1]
    cmds = [text for keyword, text in final["steps"] if keyword == "CMD"]
    assert not [text for keyword, text in final["steps"] if keyword == "ENTRYPOINT"], (
        "no ENTRYPOINT: the command alone picks the role (worker, beat, flower, migrator)")
    assert exec_form(cmds[-1]) == procfile()["worker"]


def test_the_commands_are_entry_points_the_code_and_its_tools_accept():
    import celery

    import workers
    import workers.tasks  # noqa: F401  (registers the tasks on the app)

    assert isinstance(workers.app, celery.Celery)  # what `celery -A workers` finds
    assert set(workers.app.tasks) >= TASKS
    # `--help` after the real flags: click rejects an unknown flag (exit 2) before printing
    # help. The live test runs the same lines, which checks the flags' values.
    checks = {role: subprocess.Popen(celery_argv([*procfile()[role], "--help"]),
                                     cwd=ROOT, env=hermetic_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
              for role in ("worker", "beat")}
    for role, process in checks.items():
        out = process.communicate(timeout=60)[0].decode(errors="replace")
        assert process.returncode == 0, f"{role}: {out[-2000:]}"
    # Flower drops any flag it does not know, silently, and reads only `--name=value`.
    from flower.options import default_options

    for arg in procfile()["flower"][4:]:
        name, equals, _ = arg.lstrip("-").partition("=")
        assert arg.startswith("--") and name in default_options, arg
        assert equals or default_options._options[name.replace("_", "-")].type is bool, arg
    for name, value in environment(services()["flower"]).items():
        if name.startswith("FLOWER_"):
            key = name[len("FLOWER_"):].lower()
            assert key in default_options, f"{name}: Flower ignores unknown variables"
            option = default_options._options[key.replace("_", "-")]
            if value and not value.startswith("${") and option.type is not bool:
                option.type(value)  # raises on a value Flower could not read
    # The producer's service: the project's console script and a subcommand it has.
    from migrator.cli import build_parser

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, svc in our_services().items():
        argv = argv_of(svc)
        if argv[0] == "migrator":
            assert "migrator" in scripts, name
            build_parser().parse_args(argv[1:])  # SystemExit on an unknown subcommand
        else:
            assert argv[:3] == ["celery", "-A", "workers"], name


def test_every_migrator_variable_is_a_real_setting_and_no_secret_is_written_down():
    text = "\n".join((ROOT / name).read_text()
                     for name in ("docker-compose.yml", "Procfile", "Dockerfile"))
    names = set(re.findall(r"\bMIGRATOR_([A-Z0-9_]+)", text))
    assert {"REDIS_URL", "SECRET_KEY", "SCHEDULE_FILE"} <= names
    unknown = {name for name in names if name.lower() not in Settings.model_fields}
    assert not unknown, f"not settings of migrator.settings.Settings: {sorted(unknown)}"
    assert not re.search(r"://[^/\s@:]*:[^/\s@]+@", text), "a URL with a password in it"
    for service_name, svc in services().items():
        for name, value in environment(svc).items():
            if SECRET_NAME.search(name):
                assert value is None or FROM_ENVIRONMENT.match(value), (
                    f"{service_name}: {name} is written in the file, or has a default")
    # The key seals run credentials: the producer and the workers need it, and only they.
    holders = {name for name, svc in services().items()
               if "MIGRATOR_SECRET_KEY" in environment(svc)}
    assert {"worker"} <= holders and not holders & {"beat", "flower", "redis"}
    assert "FLOWER_BASIC_AUTH" in environment(services()["flower"])


def test_redis_never_evicts_beat_runs_once_workers_scale_and_flower_serves_5555():
    redis_svc = services()["redis"]
    assert str(redis_svc["image"]).startswith("redis:7")
    argv = tokens(redis_svc["command"])
    flags = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert flags.get("--maxmemory-policy") == "noeviction"
    assert flags.get("--save") == "" and flags.get("--appendonly") == "no"

    beat = services()["beat"]
    assert beat.get("scale", 1) == 1
    assert (beat.get("deploy") or {}).get("replicas", 1) == 1
    worker = services()["worker"]
    # A fixed container name or host port would make `--scale worker=5` fail.
    assert "container_name" not in worker and not worker.get("ports")
    # The worker hands its unfinished tasks back before compose's SIGKILL, not after.
    grace = worker.get("stop_grace_period", "10s")
    grace_seconds = sum(int(number) * {"h": 3600, "m": 60, "s": 1}[unit]
                        for number, unit in re.findall(r"(\d+)([hms])", grace))
    shutdown = float(environment(worker).get("MIGRATOR_SHUTDOWN_TIMEOUT") or 0)
    assert 0 < shutdown < grace_seconds

    flower = services()["flower"]
    targets = []
    for port in flower.get("ports", []):
        targets.append(int(port["target"]) if isinstance(port, dict)
                       else int(str(port).rsplit(":", 1)[-1].split("/")[0]))
    assert targets == [int(environment(flower).get("FLOWER_PORT") or 5555)] == [5555]


def test_config_is_mounted_read_only_where_the_schedule_says():
    from workers.schedule import START_TASK, beat_schedule, load_schedules

    for role in ("worker", "beat"):
        mounts = [str(volume).split(":") for volume in services()[role].get("volumes", [])]
        assert ["./config", CONFIG_MOUNT, "ro"] in mounts, role
    schedule_file = environment(services()["beat"])["MIGRATOR_SCHEDULE_FILE"]
    assert schedule_file.startswith(CONFIG_MOUNT + "/")
    example = ROOT / "config" / "schedule.example.yaml"
    schedules = load_schedules(str(example))
    assert schedules
    for schedule in schedules:  # a worker opens these files: they must be in its mount
        for path in filter(None, (schedule.images, schedule.auth)):
            assert path.startswith(CONFIG_MOUNT + "/"), (schedule.name, path)
    entries = beat_schedule(Settings(schedule_file=str(example)))
    assert {entry["task"] for entry in entries.values()} == {START_TASK}
    # beat writes its state (celerybeat-schedule) in its working directory: on a read-only
    # root filesystem that directory must be a volume.
    workdirs = [text for keyword, text in dockerfile_stages()[-1]["steps"] if keyword == "WORKDIR"]
    beat = services()["beat"]
    if beat.get("read_only"):
        targets = [str(volume).split(":")[1] for volume in beat.get("volumes", [])]
        assert workdirs and workdirs[-1] in targets


# -- Dockerfile and .dockerignore -----------------------------------------------------------


def test_dockerfile_final_stage_is_slim_non_root_and_installs_the_built_wheel():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: the wheel is built in a stage of its own"
    build, final = stages[0], stages[-1]
    assert final["from"] == "python:3.11-slim"
    assert build["name"], "the build stage is named so the final stage can take from it"
    users = [text for keyword, text in final["steps"] if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    runs = [text for keyword, text in final["steps"] if keyword == "RUN"]
    installs = [run for run in runs if "pip install" in run]
    assert installs, "the final stage installs the wheel"
    assert all("--no-index" in run and re.search(rf"from={build['name']}\b", run)
               for run in installs), "wheels from the build stage only, nothing downloaded"
    assert not any(re.search(r"\bapt-get\b|\bgcc\b|build-essential", run) for run in runs)
    # The sources reach the final stage only as the wheel.
    assert not [text for keyword, text in final["steps"]
                if keyword in ("COPY", "ADD") and "--from=" not in text]
    for stage in stages:
        for keyword, text in stage["steps"]:
            if keyword == "ARG":
                assert not SECRET_NAME.search(text.split("=")[0]), text
            if keyword == "ENV":
                pairs = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", text) or [text.split()[0]]
                assert not [name for name in pairs if SECRET_NAME.search(name)], text


def test_build_stage_copies_what_the_wheel_needs_and_the_context_holds_nothing_secret():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    find = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {path.name for path in ROOT.iterdir() if path.is_dir() and (
        path / "__init__.py").exists() and any(fnmatch.fnmatch(path.name, p) for p in find)}
    assert {"migrator", "workers"} <= packages
    needed = {"pyproject.toml", pyproject["project"]["readme"], *packages}
    copied = set()
    for keyword, text in dockerfile_stages()[0]["steps"]:
        if keyword == "COPY" and "--from=" not in text:
            copied.update(source.rstrip("/") for source in shlex.split(text)[:-1]
                          if not source.startswith("--"))
    assert needed <= copied, f"setuptools needs {sorted(needed - copied)} in the build stage"
    for source in copied:
        assert not dockerignore_excludes(source), f".dockerignore drops {source}"
        assert not dockerignore_excludes(f"{source}/x.py") or not (ROOT / source).is_dir()
    for private in (".env", "credentials.env", "config/auth.json", ".git/config",
                    ".venv/bin/python", "tests/integration/conftest.py",
                    "migrator/__pycache__/cli.cpython-311.pyc"):
        assert dockerignore_excludes(private), private


# -- the in-flight rule of scheduled runs ---------------------------------------------------


def test_a_schedule_whose_last_run_is_in_flight_is_not_started_again(redis14, tmp_path,
                                                                     monkeypatch):
    """`migrator.start_run` called directly as beat would: in flight → skipped, never doubled."""
    import workers.tasks as tasks
    from migrator.runs import RunStore
    from workers.schedule import Schedule

    images = tmp_path / "images.json"
    images.write_text(json.dumps({"127.0.0.1:9/ns/app:1": "127.0.0.1:9/copy/app"}))
    for name in [name for name in os.environ if name.startswith("MIGRATOR_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MIGRATOR_REDIS_URL", REDIS_URL)
    monkeypatch.setattr(tasks, "_context", None)  # rebuilt from the environment above
    sent: list[tuple[str, list]] = []
    # Captured instead of sent: the module's app may point at another broker.
    monkeypatch.setattr(tasks, "send", lambda name, args, kwargs: sent.append((name, args)))
    schedule = Schedule(name="nightly", images=str(images), interval=1.0).model_dump(
        exclude_none=True)
    store = RunStore(redis14)
    try:
        first = tasks.start_scheduled_run(schedule)
        assert first and [name for name, _ in sent] == ["migrator.sync_image"]
        assert not store.state(first).finished

        assert tasks.start_scheduled_run(schedule) is None  # the first is still in flight
        assert len(sent) == 1 and [state.run_id for state in store.recent()] == [first]
        assert not redis14.exists("migrator:schedule:nightly:run:lock")  # not left behind

        for job in redis14.smembers(store.key(first, ":jobs")):
            store.succeeded(first, job.decode())
        assert store.state(first).finished
        second = tasks.start_scheduled_run(schedule)
        assert second not in (None, first) and len(sent) == 2
    finally:
        if tasks._context is not None:
            tasks._context.blob_pool.shutdown(wait=False)
            tasks._context.redis.close()


# -- the Procfile, run for real -------------------------------------------------------------


LINE = re.compile(r"^\S+ (?P<name>[\w-]+?)(?:\.\d+)?\s*\| (?P<text>.*)$")


class Honcho:
    """`honcho start` of the repository's Procfile, in its own session, output in a file."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.log_path = workdir / "honcho.log"
        with open(self.log_path, "wb") as log:
            # cwd is the test's directory: beat's state file lands there, and no .env of the
            # checkout is read (honcho reads ./.env of its app root).
            self.process = subprocess.Popen(
                [sys.executable, "-m", "honcho", "start", "--no-colour",
                 "-f", str(ROOT / "Procfile")],
                cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def lines(self, name: str) -> list[str]:
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = LINE.match(line)
            if match and match["name"] == name:
                found.append(match["text"])
        return found

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, name: str, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines(name)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{name}: no {text!r}:\n{self.output()[-5000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        # Honcho starts every process in a session of its own: note them before stopping it.
        children = [int(pid) for pid in re.findall(r"started \(pid=(\d+)\)", self.output())]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)  # honcho passes it on, then waits
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=15)
        for pid in [self.process.pid, *children]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        self.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, what: str, interval: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def healthcheck_argv(service: dict) -> list[str]:
    test = service["healthcheck"]["test"]
    if test[0] == "CMD-SHELL":  # compose turns $$ into $, then a shell runs it
        return ["/bin/sh", "-c", test[1].replace("$$", "$")]
    assert test[0] == "CMD"
    return test[1:]


def test_procfile_runs_worker_beat_and_flower(redis14, tmp_path, capsys, source_registry,
                                              tls_registry, fault_proxy):
    from cryptography.fernet import Fernet

    from migrator.cli import main

    image = push_image(source_registry, "ns/app", "1", layers=[make_layer(8192, 31)])
    slow_source = fault_proxy(source_registry)
    # Every manifest read of this source takes 3 s: a run of the `slow` schedule outlives
    # the 1 s interval, so beat fires it again while it is in flight.
    slow_source.delay(3.0, path="/manifests/", times=None)
    password, key = tls_registry.password, Fernet.generate_key().decode()
    src, dst = source_registry.host, tls_registry.host
    # The producer's file holds the password itself; the schedules' file names a variable
    # that the workers expand from their own environment.
    for name, secret in (("producer", password), ("schedule", "${TARGET_PW}")):
        (tmp_path / f"auth-{name}.json").write_text(json.dumps({
            src: {"insecure": True}, slow_source.host: {"insecure": True},
            dst: {"username": tls_registry.username, "password": secret,
                  "ca_file": str(tls_registry.ca_file)}}))
    rules = {"enqueued": {f"{src}/ns/app:1": f"{dst}/enqueued/app"},
             "tick": {f"{src}/ns/app:1": f"{dst}/scheduled/app"},
             "slow": {f"{slow_source.host}/ns/app:1": f"{dst}/slow/app"}}
    for name, images in rules.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(images))
    (tmp_path / "schedule.yaml").write_text(yaml.safe_dump({"schedules": [
        {"name": name, "images": str(tmp_path / f"{name}.json"),
         "auth": str(tmp_path / "auth-schedule.json"), "interval": 1.0, "retries": 0}
        for name in ("tick", "slow")]}))
    flower_port, flower_user = free_port(), f"ops:{secrets.token_urlsafe(12)}"
    env = hermetic_env(
        MIGRATOR_SECRET_KEY=key, MIGRATOR_SCHEDULE_FILE=str(tmp_path / "schedule.yaml"),
        MIGRATOR_BACKOFF_INITIAL="0.05", MIGRATOR_HEALTH_DIR=str(tmp_path / "health"),
        TARGET_PW=password,
        FLOWER_PORT=str(flower_port), FLOWER_ADDRESS="127.0.0.1", FLOWER_BASIC_AUTH=flower_user)
    flower_url = f"http://127.0.0.1:{flower_port}"
    basic = tuple(flower_user.split(":", 1))

    def flower_get(path: str) -> requests.Response:
        response = requests.get(flower_url + path, auth=basic, timeout=10)
        assert response.status_code == 200, (path, response.status_code, response.text[:500])
        return response

    def status_lines() -> list[str]:
        assert main(["status"], env) == 0
        return capsys.readouterr().out.splitlines()

    probes: dict[str, subprocess.Popen] = {}
    honcho = Honcho(tmp_path, env)
    try:
        honcho.wait_for("worker", "ready.")
        honcho.wait_for("beat", "beat: Starting...")
        wait_until(lambda: _answers(f"{flower_url}/healthcheck"), 30, "flower to listen")
        # compose's health checks, against these processes; the worker's also where no
        # worker runs (an empty heartbeat directory), where it must fail.
        for name, extra in (("worker", {}), ("flower", {}),
                            ("worker:none", {"MIGRATOR_HEALTH_DIR": str(tmp_path / "nobody")})):
            probes[name] = subprocess.Popen(
                healthcheck_argv(services()[name.split(":")[0]]), cwd=tmp_path,
                env={**env, **extra}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

        # Flower reaches the worker and lists our tasks as registered there.
        def registered() -> set[str]:
            workers = flower_get("/api/workers?refresh=1").json()
            return {task for info in workers.values() for task in info.get("registered", [])}

        wait_until(lambda: registered() >= TASKS, 20, "flower to list the worker's tasks")
        assert requests.get(f"{flower_url}/api/tasks", timeout=10).status_code == 401

        # The worker line: a producer run with credentials, sealed, to the TLS registry.
        migrator = Path(sys.executable).parent / "migrator"
        producer = [str(migrator)] if migrator.exists() else [sys.executable, "-m", "migrator"]
        enqueued = subprocess.run(
            [*producer, "enqueue", "--images", str(tmp_path / "enqueued.json"),
             "--auth", str(tmp_path / "auth-producer.json"), "--wait", "--timeout", "30"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert enqueued.returncode == 0, enqueued.stderr + honcho.output()[-5000:]
        assert enqueued.stdout.splitlines()[-1] == (
            "Images(1) migration finished, 0 images tasks failed, 0 tasks generate failed")
        assert get_manifest(tls_registry, "enqueued/app", "1", auth=tls_registry.auth)[2] == (
            image.digest)

        # The beat line: `tick` runs show in `migrator status` and complete.
        done = "  schedule tick  1/1 images, 0 failed, 0 generate failed"
        wait_until(lambda: sum(line.endswith(done) for line in status_lines()) >= 2, 20,
                   "two finished runs of the tick schedule")
        assert get_manifest(tls_registry, "scheduled/app", "1", auth=tls_registry.auth)[2] == (
            image.digest)

        # `slow` fires every second but its run takes 3 s: the firings while it is in flight
        # are skipped (the worker says so), and no two of its runs are ever in flight at once.
        running_at_once = []

        def two_firings_skipped() -> bool:
            running_at_once.append(sum("  schedule slow  " in line and line.endswith(
                "(running)") for line in status_lines()))
            skips = sum("schedule slow: run" in line and "still in flight" in line
                        for line in honcho.lines("worker"))
            return skips >= 2 and max(running_at_once) >= 1  # seen in flight, at least once

        wait_until(two_firings_skipped, 20, "skipped firings of the slow schedule")
        assert max(running_at_once) == 1, running_at_once

        # Flower shows every task with its arguments: they must hold no secret.
        tasks = flower_get("/api/tasks").json()
        names = {task["name"] for task in tasks.values()}
        assert {"migrator.sync_image", "migrator.start_run"} <= names
        shown = json.dumps(tasks)
        assert f"{dst}/enqueued/app:1" in shown  # arguments are shown, so a secret would be
        for text in (shown, flower_get("/api/workers?refresh=1").text, honcho.output()):
            assert password not in text and key not in text

        for name, probe in probes.items():
            out = probe.communicate(timeout=30)[0].decode(errors="replace")
            assert (probe.returncode == 0) == (name != "worker:none"), f"{name}: {out[-2000:]}"
    finally:
        for probe in probes.values():
            if probe.poll() is None:
                probe.kill()
            probe.communicate()
        honcho.stop()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.ConnectionError:
        return False
