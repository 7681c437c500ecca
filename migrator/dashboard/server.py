"""The dashboard's HTTP server: one page, its script and style, and `/api/runs` (JSON).

Tornado serves it: it is already installed (Flower, a dependency of ours, is built on it), it
is well kept, and its IOLoop paces the periodic Redis sample (the blocking redis-py reads go
to the loop's executor, so a slow Redis never stalls a page).

Security, in order: it binds 127.0.0.1 unless told otherwise, and refuses any address that is
not loopback without a password; with a password every request needs HTTP Basic (any user
name, the password compared in constant time); without one, only loopback Host headers are
answered, so a web page that rebinds its own name to 127.0.0.1 cannot read the runs. Only GET
is routed. The page runs no inline script (Content-Security-Policy), and its script writes
every value as text, never as HTML: image names and registry messages are not ours.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import ipaddress
import signal
import socket
import sys
from dataclasses import dataclass
from typing import IO

import redis
import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.web

from migrator.dashboard import page
from migrator.dashboard.sampler import Sampler, redis_label
from migrator.errors import ConfigError

REALM = "migrator dashboard"
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


@dataclass(frozen=True)
class Options:
    host: str = "127.0.0.1"
    port: int = 8008
    password: str | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "migrator:"
    interval: float = 2.0
    runs: int = 20


def is_loopback(host: str) -> bool:
    """True when every address `host` stands for is a loopback one ('' and 0.0.0.0 are all
    interfaces: not loopback)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False  # binding will fail with its own message
    return bool(found) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback
                               for info in found)


def listen_problem(host: str, password: str | None) -> str | None:
    """Why the dashboard must not listen on `host` with this password, or None."""
    if password or is_loopback(host):
        return None
    where = host or "every interface"
    return (f"refusing to serve the dashboard on {where} without a password: anyone who "
            "reaches it would read every run; set MIGRATOR_DASHBOARD_PASSWORD (or name another "
            "variable with --password-env), or keep --host 127.0.0.1")


class Handler(tornado.web.RequestHandler):
    """Authentication and headers shared by every route."""

    def set_default_headers(self) -> None:
        self.clear_header("Server")
        self.set_header("Content-Security-Policy",
                        "default-src 'none'; script-src 'self'; style-src 'self'; "
                        "connect-src 'self'; img-src 'self'; base-uri 'none'; "
                        "form-action 'none'; frame-ancestors 'none'")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-store")

    def prepare(self) -> None:
        password: str | None = self.settings["password"]
        if password is None:
            if not is_loopback_name(self.request.host_name):
                self.set_status(403)
                self.finish("this dashboard answers only to a loopback Host (localhost, "
                            "127.0.0.1, [::1])\n")
        elif not self._authorized(password):
            self.set_status(401)
            self.set_header("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')
            self.finish("password needed\n")

    def _authorized(self, password: str) -> bool:
        scheme, _, value = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        _, colon, given = decoded.partition(b":")
        # The user name is not checked: one shared password guards a read-only page.
        return bool(colon) and hmac.compare_digest(given, password.encode())


def is_loopback_name(hostname: str) -> bool:
    """A Host header's name that only this machine resolves to itself (no DNS asked)."""
    name = hostname.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


ASSETS = {
    "/": (page.HTML, "text/html; charset=UTF-8"),
    "/dashboard.js": (page.SCRIPT, "text/javascript; charset=UTF-8"),
    "/dashboard.css": (page.STYLE, "text/css; charset=UTF-8"),
}


class AssetHandler(Handler):
    def get(self) -> None:
        body, kind = ASSETS[self.request.path]
        self.set_header("Content-Type", kind)
        self.finish(body)


class RunsHandler(Handler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(self.settings["sampler"].document)


def _quiet_log(handler: tornado.web.RequestHandler) -> None:
    """Access lines only for server errors: a polled page would fill the terminal."""
    if handler.get_status() >= 500:
        tornado.web.app_log.error("%d %s", handler.get_status(), handler._request_summary())


def make_app(sampler: Sampler, password: str | None) -> tornado.web.Application:
    return tornado.web.Application(
        [(r"/(?:dashboard\.js|dashboard\.css)?", AssetHandler), (r"/api/runs", RunsHandler)],
        sampler=sampler, password=password, log_function=_quiet_log, compress_response=True)


def serve(options: Options, *, err: IO[str] = sys.stderr) -> None:
    """Serve until SIGINT or SIGTERM. Raises ConfigError for an address it must not use or
    cannot bind; an unreachable Redis is shown on the page (and said once here) instead."""
    problem = listen_problem(options.host, options.password)
    if problem:
        raise ConfigError(problem)
    client = redis.Redis.from_url(options.redis_url, socket_connect_timeout=3,
                                  socket_timeout=10, health_check_interval=30)
    sampler = Sampler(client, prefix=options.prefix, redis_url=options.redis_url,
                      interval=options.interval, runs=options.runs)
    sampler.sample()
    if sampler.last["error"]:
        print(f"warning: {sampler.last['error'].split('; showing')[0]}; the page says so "
              "until it answers", file=err, flush=True)
    if not is_loopback(options.host):
        print("note: HTTP Basic sends the password with every request: off this machine, put "
              "TLS in front of the dashboard (docs/dashboard.md)", file=err, flush=True)
    try:
        sockets = tornado.netutil.bind_sockets(options.port, address=options.host or None)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"cannot listen on {options.host}:{options.port}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    try:
        asyncio.run(_serve(options, sampler, sockets, err))
    finally:
        client.close()


async def _serve(options: Options, sampler: Sampler, sockets: list[socket.socket],
                 err: IO[str]) -> None:
    server = tornado.httpserver.HTTPServer(make_app(sampler, options.password))
    server.add_sockets(sockets)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)

    async def sample() -> None:
        await loop.run_in_executor(None, sampler.sample)  # redis-py blocks: not on the loop

    ticker = tornado.ioloop.PeriodicCallback(sample, options.interval * 1000)
    ticker.start()
    port = sockets[0].getsockname()[1]
    host = options.host if ":" not in options.host else f"[{options.host}]"
    print(f"dashboard of the runs in Redis {redis_label(options.redis_url)} (prefix "
          f"{options.prefix}) at http://{host}:{port}/ — read-only"
          f"{', password required' if options.password else ''}; Ctrl-C stops it",
          file=err, flush=True)
    try:
        await stop.wait()
    finally:
        ticker.stop()
        server.stop()
        await server.close_all_connections()
