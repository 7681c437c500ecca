"""Start and stop real CNCF Distribution registries (Debian's ``docker-registry``).

Why real ones: the migrator's correctness depends on how a real registry answers
(upload sessions, Location headers, auth challenges, digests), which a mock would only
guess at.

Measured on Distribution 2.8.2:

* ``http.addr: 127.0.0.1:0`` works; the registry logs ``listening on 127.0.0.1:PORT``
  (``..., tls`` with TLS), which is how the free port is learned without a race. The port
  is then written into the config so ``restart()`` keeps the same address.
* The access log (``log.accesslog.disabled: false``) is Apache *combined* format on
  stdout, e.g. ``127.0.0.1 - - [28/Nov/2026:12:45:21 +0000] "GET /v2/ HTTP/1.1" 200 2 ""
  "curl/7.88.1"``; the logrus lines (``time=... msg="response completed" ...``) go to
  stderr. Both land in ``log_path``; only the combined lines are counted. The line is
  written synchronously when the handler returns (normally before the last bytes of the
  response are flushed), but a request whose client went away may log later, hence the
  short settle-poll in ``requests()``.
* htpasswd needs bcrypt hashes (Go accepts ``$2b$``); it works over plain HTTP too.

Needs ``PyYAML``, ``cryptography`` and ``bcrypt`` (``pip install bcrypt``) besides requests.
"""

from __future__ import annotations

import atexit
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import bcrypt
import requests
import yaml

from tests.support.tls import make_server_tls
from tests.support.tokens import TokenIssuer

REGISTRY_BIN_ENV = "MIGRATOR_REGISTRY_BIN"
START_TIMEOUT = 10.0
SETTLE_INTERVAL = 0.03
SETTLE_MAX = 2.0

_ACCESS_RE = re.compile(
    r'^\S+ \S+ \S+ \[[^\]]+\] "(?P<method>[A-Z]+) (?P<uri>\S+)(?: [^"]*)?" (?P<status>\d{3}) '
)
_LISTEN_RE = re.compile(r"listening on (?:\[[^\]]*\]|[0-9.]+|[^\s:\"]*):(?P<port>\d+)")

_LIVE: set[subprocess.Popen[bytes]] = set()
_LIVE_LOCK = threading.Lock()


def _kill_all_live() -> None:
    """Last line of defence against orphans if a fixture's teardown never ran."""
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


atexit.register(_kill_all_live)


def registry_binary() -> str:
    """Path of the registry executable (override with $MIGRATOR_REGISTRY_BIN)."""
    path = os.environ.get(REGISTRY_BIN_ENV) or shutil.which("docker-registry")
    if not path:
        raise RuntimeError(
            "docker-registry not found: apt-get install docker-registry "
            f"(or set {REGISTRY_BIN_ENV})"
        )
    return path


@dataclass
class RunningRegistry:
    """A live registry process plus what tests need to talk to it and inspect it."""

    host: str
    url: str
    root: Path
    log_path: Path
    ca_file: Path | None = None
    username: str | None = None
    password: str | None = None
    auth_mode: str = "none"
    token_issuer: TokenIssuer | None = None
    config_path: Path = field(default=Path(), repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log_file: IO[bytes] | None = field(default=None, repr=False)
    _owns_issuer: bool = field(default=False, repr=False)
    _entries: list[tuple[str, str, int]] = field(default_factory=list, repr=False)
    _log_offset: int = field(default=0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def auth(self) -> tuple[str, str] | None:
        """(username, password) for the htpasswd/token variants, else None."""
        if self.username is None or self.password is None:
            return None
        return (self.username, self.password)

    @property
    def verify(self) -> str | bool:
        """Value for requests' ``verify=``: the test CA for TLS registries."""
        return str(self.ca_file) if self.ca_file else True

    @property
    def running(self) -> bool:
        """Whether the registry process is alive (False after stop())."""
        return self._proc is not None and self._proc.poll() is None

    # -- access log ----------------------------------------------------------------------

    def _read_new(self) -> int:
        """Parse complete lines appended since the last read; returns the entry count."""
        with self._lock:
            try:
                with open(self.log_path, "rb") as fh:
                    fh.seek(self._log_offset)
                    chunk = fh.read()
            except FileNotFoundError:
                return len(self._entries)
            end = chunk.rfind(b"\n")
            if end >= 0:
                self._log_offset += end + 1
                for raw in chunk[: end + 1].splitlines():
                    m = _ACCESS_RE.match(raw.decode("utf-8", "replace"))
                    if m:
                        self._entries.append((m["method"], m["uri"], int(m["status"])))
            return len(self._entries)

    def _settled_count(self) -> int:
        """Poll until the access-log count stops growing (bounded by SETTLE_MAX)."""
        deadline = time.monotonic() + SETTLE_MAX
        count = self._read_new()
        while True:
            time.sleep(SETTLE_INTERVAL)
            again = self._read_new()
            if again == count or time.monotonic() >= deadline:
                return again
            count = again

    def requests(self, since: int = 0) -> list[tuple[str, str, int]]:
        """(METHOD, path-with-query, status) for every logged request after index ``since``."""
        self._settled_count()
        with self._lock:
            return list(self._entries[since:])

    def mark(self) -> int:
        """Current number of logged requests; pass it as ``since`` to count only later ones."""
        return self._settled_count()

    def count(self, method: str | None = None, path_contains: str = "", since: int = 0) -> int:
        """How many logged requests match a method (None = any) and a path substring."""
        return sum(
            1
            for m, p, _ in self.requests(since)
            if (method is None or m == method.upper()) and path_contains in p
        )

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of the combined log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle -----------------------------------------------------------------------

    def stop(self) -> None:
        """Terminate the process (SIGTERM, then SIGKILL after 3 s); idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            with _LIVE_LOCK:
                _LIVE.discard(proc)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def close(self) -> None:
        """Stop the registry and the token issuer it created itself, if any."""
        self.stop()
        if self._owns_issuer and self.token_issuer is not None:
            self.token_issuer.stop()

    def restart(self) -> None:
        """Stop and start again on the same port with the same storage and secret."""
        self.stop()
        self._launch()

    def kill(self) -> None:
        """SIGKILL, as a crash: no graceful shutdown, open requests die with the process.

        ``start()`` brings it back on the same port with the same storage.
        """
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self.stop()

    def start(self) -> None:
        """Start again after ``stop()`` or ``kill()``: same port, storage and secret."""
        if not self.running:
            self._launch()

    def _launch(self) -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        cmd = [registry_binary(), "serve", str(self.config_path)]
        setpriv = shutil.which("setpriv")
        if setpriv and threading.current_thread() is threading.main_thread():
            # The kernel kills the registry if pytest dies without running teardown. Only
            # from the main thread: PDEATHSIG fires when the *thread* that forked exits.
            cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
        proc = subprocess.Popen(
            cmd,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
        )
        self._proc = proc
        with _LIVE_LOCK:
            _LIVE.add(proc)
        try:
            port = self._wait_listening(offset)
            if not self.host:
                self.host = f"127.0.0.1:{port}"
                scheme = "https" if self.ca_file else "http"
                self.url = f"{scheme}://{self.host}"
                self._pin_port(port)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_listening(self, offset: int) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                m = _LISTEN_RE.search(fh.read().decode("utf-8", "replace"))
            if m:
                return int(m["port"])
            if self._proc is not None and self._proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(
            f"registry in {self.root} did not start listening; log tail:\n{self.log_tail()}"
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        probe = requests.Session()
        probe.trust_env = False  # no proxy / CA-bundle variables from the environment
        while time.monotonic() < deadline:
            try:
                r = probe.get(f"{self.url}/v2/", verify=self.verify, timeout=2)
                if r.status_code in (200, 401):
                    probe.close()
                    return
                last = RuntimeError(f"GET /v2/ answered {r.status_code}")
            except requests.RequestException as exc:
                last = exc
            if self._proc is not None and self._proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(
            f"registry {self.url} never answered GET /v2/ ({last}); log tail:\n{self.log_tail()}"
        )

    def _pin_port(self, port: int) -> None:
        config = yaml.safe_load(self.config_path.read_text())
        config["http"]["addr"] = f"127.0.0.1:{port}"
        self.config_path.write_text(yaml.safe_dump(config))

    def __enter__(self) -> RunningRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_registry(
    workdir: Path,
    *,
    auth: Literal["none", "htpasswd", "token"] = "none",
    tls: bool = False,
    username: str = "tester",
    password: str | None = None,
    token_issuer: TokenIssuer | None = None,
    schema1: bool = False,
) -> RunningRegistry:
    """Start a registry with filesystem storage under ``workdir`` and wait until it answers.

    ``schema1=True`` lets it take Docker schema1 manifests (measured on 2.8.2: without it a
    schema1 PUT is answered ``500 UNKNOWN``, its log saying "manifest schema v1
    unsupported"; with it, the registry stores the signed payload and serves it signed again
    with a key of its own, so the bytes served differ from those pushed, the digest not).

    ``auth="token"`` without ``token_issuer`` starts a private issuer (stopped by
    ``close()``); with one, the test user is added to it (keeping the password it already
    has there, so several registries can share one issuer). Call ``close()`` (or use the
    fixtures) so the process is always killed.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if password is None and token_issuer is not None and username in token_issuer.users:
        password = token_issuer.users[username]  # registries sharing an issuer share users
    password = password or secrets.token_urlsafe(12)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        # A fixed secret keeps upload-session state valid across restart().
        "http": {"addr": "127.0.0.1:0", "secret": secrets.token_hex(16)},
        # Foreign layers (Windows base layers) name where their bytes live; Distribution
        # refuses every such URL unless allowed (measured: 500 UNKNOWN on the manifest PUT).
        "validation": {"manifests": {"urls": {"allow": ["^https?://"]}}},
    }
    if schema1:
        config["compatibility"] = {"schema1": {"enabled": True}}
    reg = RunningRegistry(
        host="", url="", root=workdir, log_path=workdir / "registry.log", auth_mode=auth
    )
    if tls:
        reg.ca_file = make_tls_files(workdir)
        config["http"]["tls"] = {  # type: ignore[index]
            "certificate": str(workdir / "server.crt"),
            "key": str(workdir / "server.key"),
        }
    if auth == "htpasswd":
        htpasswd = workdir / "htpasswd"
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        htpasswd.write_text(f"{username}:{hashed}\n")
        config["auth"] = {"htpasswd": {"realm": "test-registry", "path": str(htpasswd)}}
        reg.username, reg.password = username, password
    elif auth == "token":
        if token_issuer is None:
            token_issuer = TokenIssuer(workdir / "issuer")
            reg._owns_issuer = True
        token_issuer.add_user(username, password)
        reg.token_issuer = token_issuer
        config["auth"] = {
            "token": {
                "realm": token_issuer.url,
                "service": token_issuer.service,
                "issuer": token_issuer.issuer,
                "rootcertbundle": str(token_issuer.cert_path),
            }
        }
        reg.username, reg.password = username, password
    elif auth != "none":
        raise ValueError(f"unknown auth mode {auth!r}")
    reg.config_path = workdir / "config.yml"
    reg.config_path.write_text(yaml.safe_dump(config))
    try:
        reg._launch()
    except BaseException:
        reg.close()
        raise
    return reg


def make_tls_files(workdir: Path) -> Path:
    """A throwaway CA plus `server.crt`/`server.key` for 127.0.0.1 and localhost; the CA path."""
    return make_server_tls(workdir).ca_path
