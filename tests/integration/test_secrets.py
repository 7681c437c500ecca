"""Credentials never leave the process in plaintext (DESIGN invariant 7), and go only where
they belong: TLS verified by default, a bearer token only to the registry that asked for it,
task messages JSON only.

The scan runs real things and then reads everything they left: `migrator sync` with DEBUG
logging of every logger (urllib3 included) and its reports, a failing run's exception texts,
a fleet run with sealed credentials and one where workers use their own auth file (real
`celery -A workers worker` processes at DEBUG), Flower's API, and every key and value of the
Redis database. Each distinctive password, the Fernet key and the base64 of every
`user:password` (how a Basic Authorization header would leak) must appear nowhere.

Redis: database 8 only, flushed before and after (never FLUSHALL).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
import redis
import requests
from cryptography.fernet import Fernet

from migrator.cli import EXIT_FAILED, EXIT_OK, main
from migrator.settings import load_settings
from tests.support.images import get_manifest, make_layer, push_image
from tests.support.redisdb import flushed_db
from tests.support.tokens import TokenIssuer

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/8"
USER = "tester"


@pytest.fixture
def db() -> Iterator[redis.Redis]:
    with flushed_db(REDIS_URL) as client:
        yield client


class Processes:
    """Worker and Flower processes of one test, each with its own log file."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str], ready: bytes) -> None:
        with open(self.dir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "workers", *argv], cwd=ROOT,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(ROOT), **env})
        self.running[name] = process
        deadline = time.monotonic() + 30
        while ready not in self.log(name).encode():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{name} did not start:\n{self.log(name)[-3000:]}")
            time.sleep(0.1)

    def worker(self, name: str, env: dict[str, str]) -> None:
        self.start(name, ["worker", "--pool", "threads", "--concurrency", "2", "--hostname",
                          f"{name}@%h", "--loglevel", "DEBUG", "--without-gossip",
                          "--without-mingle"], env, b"ready.")

    def log(self, name: str) -> str:
        return (self.dir / f"{name}.log").read_text(errors="replace")

    def stop(self, name: str) -> None:
        process = self.running.pop(name)
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    started.stop_all()


class Scan:
    """Looks for every secret, and its Basic-header form, in each place it is given."""

    def __init__(self, passwords: dict[str, str], others: dict[str, str]) -> None:
        self.needles: dict[str, bytes] = {}
        for name, password in passwords.items():
            self.needles[name] = password.encode()
            self.needles[f"base64 {USER}:{name}"] = base64.b64encode(
                f"{USER}:{password}".encode())
        self.needles.update({name: value.encode() for name, value in others.items()})
        self.places = 0
        self.found: list[tuple[str, str]] = []

    def text(self, place: str, data: str | bytes) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self.places += 1
        self.found += [(place, name) for name, needle in self.needles.items() if needle in raw]

    def redis(self, client: redis.Redis) -> int:
        keys = 0
        for key in client.scan_iter("*"):
            kind = client.type(key).decode()
            value = {"string": lambda k: client.get(k) or b"",
                     "hash": lambda k: repr(client.hgetall(k)),
                     "set": lambda k: repr(client.smembers(k)),
                     "zset": lambda k: repr(client.zrange(k, 0, -1, withscores=True)),
                     "list": lambda k: repr(client.lrange(k, 0, -1))}[kind](key)
            self.text(f"redis {key!r}", key + b" " + (value if isinstance(value, bytes)
                                                      else value.encode()))
            keys += 1
        return keys


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_no_secret_anywhere(tmp_path, capsys, db, processes, source_registry,
                            registry_factory, token_issuer):
    pw_tls, pw_token = (f"pw-tls-{secrets.token_hex(6)}", f"pw-token-{secrets.token_hex(6)}")
    pw_wrong = f"pw-wrong-{secrets.token_hex(6)}"
    key = Fernet.generate_key().decode()
    tls = registry_factory(auth="htpasswd", tls=True, password=pw_tls)
    token = registry_factory(auth="token", token_issuer=token_issuer, password=pw_token)
    image = push_image(source_registry, "ns/app", "1", layers=[make_layer(8192, 3)])
    scan = Scan({"tls password": pw_tls, "token password": pw_token,
                 "wrong password": pw_wrong}, {"fernet key": key})

    def auth(tls_pw: str, token_pw: str) -> dict:
        return {source_registry.host: {"insecure": True},
                tls.host: {"username": USER, "password": tls_pw, "ca_file": str(tls.ca_file)},
                token.host: {"username": USER, "password": token_pw, "insecure": True}}

    def files(name: str, tag: str, auth_entries: dict) -> list[str]:
        images = {f"{source_registry.host}/ns/app:1": [f"{tls.host}/copy/app:{tag}",
                                                     f"{token.host}/copy/app:{tag}"]}
        (tmp_path / f"{name}-images.json").write_text(json.dumps(images))
        (tmp_path / f"{name}-auth.json").write_text(json.dumps(auth_entries))
        return ["--images", str(tmp_path / f"{name}-images.json"),
                "--auth", str(tmp_path / f"{name}-auth.json"),
                "--output-success", str(tmp_path / f"{name}-ok.json"),
                "--output-failed", str(tmp_path / f"{name}-failed.json")]

    def run(argv: list[str], env: dict[str, str]) -> int:
        code = main(argv, env)
        out, err = capsys.readouterr()
        scan.text(f"output of {argv[0]}", out + err)
        return code

    # 1. migrator sync, DEBUG logs of every logger, both reports
    fast = {"MIGRATOR_BACKOFF_INITIAL": "0.01", "MIGRATOR_RETRY_PASS_DELAY": "0"}
    # An earlier in-process run without --debug left urllib3 at WARNING (setup_logging only
    # ever raises it); a fresh `migrator --debug` process starts from NOTSET.
    logging.getLogger("urllib3").setLevel(logging.NOTSET)
    code = run(["sync", *files("sync", "1", auth(pw_tls, pw_token)), "--debug", "--log",
                str(tmp_path / "sync.log"), "--no-state"], fast)
    assert code == EXIT_OK, (tmp_path / "sync.log").read_text()[-3000:]
    assert "Authorization" not in (tmp_path / "sync.log").read_text()
    assert "urllib3.connectionpool" in (tmp_path / "sync.log").read_text() or \
        "HTTP/1.1" in (tmp_path / "sync.log").read_text()  # urllib3's DEBUG lines are there

    # 2. a failing run: wrong passwords, so exception texts and reasons are written
    code = run(["sync", *files("fail", "2", auth(pw_wrong, pw_wrong)), "--debug", "--log",
                str(tmp_path / "fail.log"), "--no-state", "--retries", "0"], fast)
    assert code == EXIT_FAILED
    reasons = (tmp_path / "fail-failed.json.reasons.json").read_text()
    assert "authentication failed" in reasons or "refused" in reasons, reasons

    # 3. the fleet, with Flower watching: sealed credentials, then the workers' own file
    fleet = {"MIGRATOR_REDIS_URL": REDIS_URL, "MIGRATOR_BACKOFF_INITIAL": "0.05"}
    flower_port = free_port()
    processes.start("flower", ["flower", f"--port={flower_port}", "--address=127.0.0.1"],
                    {**fleet, "FLOWER_UNAUTHENTICATED_API": "true"}, b"Visit me at")
    processes.worker("sealed", {**fleet, "MIGRATOR_SECRET_KEY": key})
    code = run(["enqueue", *files("sealed", "3", auth(pw_tls, pw_token)), "--wait",
                "--timeout", "60"], {**fleet, "MIGRATOR_SECRET_KEY": key})
    assert code == EXIT_OK, processes.log("sealed")[-3000:]
    processes.stop("sealed")

    (tmp_path / "worker-auth.json").write_text(json.dumps(auth(pw_tls, pw_token)))
    processes.worker("own-file", {**fleet, "MIGRATOR_AUTH_FILE": str(tmp_path /
                                                                     "worker-auth.json")})
    # The producer names only the source: a run's entry for a registry (here it would carry
    # only the non-secret flags) replaces the worker's own entry for it.
    code = run(["enqueue", *files("own", "4", {source_registry.host: {"insecure": True}}),
                "--wait", "--timeout", "60"], fleet)
    assert code == EXIT_OK, processes.log("own-file")[-3000:]
    for tag in ("1", "3", "4"):
        assert get_manifest(tls, "copy/app", tag, auth=tls.auth)[2] == image.digest
        assert get_manifest(token, "copy/app", tag, auth=token.auth)[2] == image.digest

    # 4. read everything back
    deadline = time.monotonic() + 10
    while True:  # Flower learns of tasks from events: wait until it has seen them all
        tasks = requests.get(f"http://127.0.0.1:{flower_port}/api/tasks", timeout=5)
        if len(tasks.json()) >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert tasks.status_code == 200 and len(tasks.json()) >= 4, tasks.text[:500]
    assert any("copy/app:3" in json.dumps(task) for task in tasks.json().values())
    scan.text("flower /api/tasks", tasks.content)
    scan.text("flower /api/workers", requests.get(
        f"http://127.0.0.1:{flower_port}/api/workers", timeout=5).content)
    keys = scan.redis(db)
    assert keys >= 5  # queues, kombu bindings, runs, ledger: the scan saw the fleet's data
    processes.stop_all()
    for name in ("sealed", "own-file", "flower"):
        scan.text(f"{name} log", processes.log(name))
    written = sorted(path for path in tmp_path.iterdir()
                     if path.suffix in (".json", ".log") and "auth" not in path.name)
    for path in written:
        scan.text(path.name, path.read_bytes())
    assert {"sync-ok.json", "fail-failed.json.reasons.json", "sealed-ok.json",
            "own-ok.json", "sync.log", "fail.log"} <= {path.name for path in written}
    probe = Scan({"tls password": pw_tls}, {})  # the scan does find what is there
    probe.text("auth file", (tmp_path / "sync-auth.json").read_bytes())
    probe.text("a Basic header", requests.auth._basic_auth_str(USER, pw_tls))
    assert [name for _, name in probe.found] == ["tls password", f"base64 {USER}:tls password"]
    print(f"\nsecrets scan: {len(scan.found)} found in {scan.places} places "
          f"({keys} Redis keys, {len(scan.needles)} needles)")
    assert scan.found == []


def test_tls_is_verified_by_default_and_insecure_concerns_its_own_entry(
        tmp_path, capsys, source_registry, registry_factory):
    push_image(source_registry, "ns/app", "1", layers=[make_layer(4096, 5)])
    strict = registry_factory(auth="htpasswd", tls=True)
    lax = registry_factory(auth="htpasswd", tls=True)
    (tmp_path / "images.json").write_text(json.dumps({f"{source_registry.host}/ns/app:1": [
        f"{strict.host}/copy/app:1", f"{lax.host}/copy/app:1"]}))
    (tmp_path / "auth.json").write_text(json.dumps({
        source_registry.host: {"insecure": True},
        strict.host: {"username": USER, "password": strict.password},  # no ca_file
        lax.host: {"username": USER, "password": lax.password, "insecure": True}}))
    code = main(["sync", "--images", str(tmp_path / "images.json"), "--auth",
                 str(tmp_path / "auth.json"), "--no-state", "--retries", "0"],
                {"MIGRATOR_HTTP_ATTEMPTS": "1"})
    out, err = capsys.readouterr()
    assert code == EXIT_FAILED
    assert "1 images tasks failed" in out
    assert f"cannot connect to {strict.host}: TLS handshake failed: certificate verify " \
        "failed" in err and "ca_file" in err
    assert get_manifest(lax, "copy/app", "1", auth=lax.auth)  # accepted unverified
    assert strict.count("PUT") == 0 and strict.count("POST") == 0


class Recorder:
    """Forwards to a registry, keeping the Host header (so upload Locations point back here),
    and records the Authorization header of every request."""

    def __init__(self, upstream: str) -> None:
        self.authorizations: list[str] = []
        recorder = self
        upstream_host = upstream.split("://", 1)[1]

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                if "Authorization" in self.headers:
                    recorder.authorizations.append(self.headers["Authorization"])
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Transfer-Encoding") == "chunked":
                    while size := int(self.rfile.readline().strip() or b"0", 16):
                        body += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("transfer-encoding", "content-length")}
                connection = http.client.HTTPConnection(upstream_host, timeout=30)
                connection.request(self.command, self.path, body=body or None, headers=headers)
                answer = connection.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def tokens(self) -> list[dict]:
        return [jwt.decode(value.split(" ", 1)[1], options={"verify_signature": False})
                for value in self.authorizations if value.startswith("Bearer ")]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_bearer_token_reaches_only_the_registry_it_was_issued_for(
        tmp_path, capsys, registry_factory):
    issuers = [TokenIssuer(tmp_path / name, service=name) for name in ("source-svc",
                                                                        "target-svc")]
    recorders: list[Recorder] = []
    try:
        source = registry_factory(auth="token", token_issuer=issuers[0])
        target = registry_factory(auth="token", token_issuer=issuers[1])
        push_image(source, "ns/app", "1", layers=[make_layer(4096, 6)], auth=source.auth)
        recorders = [Recorder(source.url), Recorder(target.url)]
        src, dst = recorders
        (tmp_path / "images.json").write_text(json.dumps({f"{src.host}/ns/app:1":
                                                          f"{dst.host}/copy/app:1"}))
        (tmp_path / "auth.json").write_text(json.dumps({
            src.host: {"username": USER, "password": source.password, "insecure": True},
            dst.host: {"username": USER, "password": target.password, "insecure": True}}))
        code = main(["sync", "--images", str(tmp_path / "images.json"), "--auth",
                     str(tmp_path / "auth.json"), "--no-state"], {})
        out, err = capsys.readouterr()
        assert code == EXIT_OK, err
        assert src.tokens() and dst.tokens()
        assert {claims["aud"] for claims in src.tokens()} == {"source-svc"}
        assert {claims["aud"] for claims in dst.tokens()} == {"target-svc"}
        assert not set(src.authorizations) & set(dst.authorizations)
        assert all(value.startswith("Bearer ") for value in src.authorizations +
                   dst.authorizations)  # the passwords went to the issuers only
    finally:
        for recorder in recorders:
            recorder.close()
        for issuer in issuers:
            issuer.stop()


def test_workers_accept_json_only_and_refuse_a_pickle(tmp_path, db, processes):
    from workers.app import make_app

    app = make_app(load_settings({"MIGRATOR_REDIS_URL": REDIS_URL}))
    assert app.conf.accept_content == ["json"] and app.conf.task_serializer == "json"
    assert app.conf.result_accept_content == ["json"]
    processes.worker("w1", {"MIGRATOR_REDIS_URL": REDIS_URL})
    marker = tmp_path / "pwned"

    class Payload:  # what a Redis writer would send: code that runs when unpickled
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    app.conf.accept_content = ["json", "pickle"]  # the sending side only
    app.send_task("migrator.sync_image", args=[Payload(), "a", "b"], serializer="pickle")
    deadline = time.monotonic() + 15
    while "untrusted content" not in processes.log("w1") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "Refusing to deserialize untrusted content of type pickle" in processes.log("w1")
    assert not marker.exists()
    assert "migrator.sync_image[" not in processes.log("w1")  # the task never started
