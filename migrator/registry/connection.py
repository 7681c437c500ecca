"""Why a request got no answer, in the few words a person acts on.

requests wraps the cause three or four levels deep (ConnectionError → MaxRetryError →
NewConnectionError → ConnectionRefusedError), and its text is urllib3's: a pool and an object
address first, the cause last, where a one-line message cuts it off. The chain is walked
instead, and the cause named: `connection refused`, `no such host`, `TLS handshake failed:
certificate verify failed: self-signed certificate`, `read timed out`.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import requests
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError

# The resolver's "this name does not exist" answers; EAI_AGAIN ("try again") is not one.
_NO_SUCH_NAME = frozenset(code for code in (getattr(socket, "EAI_NONAME", None),
                                            getattr(socket, "EAI_NODATA", None))
                          if code is not None)
# OpenSSL's words for a TLS client that met a plain HTTP server (a port without TLS).
_PLAIN_HTTP = ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "RECORD_LAYER_FAILURE",
               "PACKET_LENGTH_TOO_LONG")
MAX_TEXT = 160
# Faults another try may not meet, and their words. urllib3's NewConnectionError is a
# ConnectTimeoutError too (for compatibility), so it never counts as a timeout here.
_TRANSIENT: list[tuple[type[BaseException] | tuple[type[BaseException], ...], str]] = [
    (ConnectionResetError, "connection reset"),
    (BrokenPipeError, "connection closed while sending"),
    (http.client.RemoteDisconnected, "connection closed without an answer"),
    (http.client.IncompleteRead, "answer cut short"),
    ((ssl.SSLEOFError, ssl.SSLZeroReturnError), "connection closed during TLS"),
    ((requests.ConnectTimeout, ConnectTimeoutError), "connect timed out"),
    ((requests.ReadTimeout, ReadTimeoutError), "read timed out"),
    (TimeoutError, "timed out"),
]


@dataclass(frozen=True)
class Cause:
    """`text`: the cause in a few words. `unreachable`: no connection could be opened at all
    for a reason the next try meets again (refused, no such host). `tls`: the TLS handshake
    failed (a certificate, or TLS spoken to a plain HTTP port): the same on every try.
    `proxy`: the failure was the HTTP proxy's, not the registry's."""

    text: str
    unreachable: bool = False
    tls: bool = False
    proxy: bool = False


def chain(error: BaseException) -> Iterator[BaseException]:
    """`error` and every error behind it, outermost first: causes, contexts, urllib3's
    `reason`, and errors passed as arguments (as requests and urllib3 pass them)."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend(inner for inner in (getattr(current, "reason", None), current.__cause__,
                                        current.__context__, *current.args)
                    if isinstance(inner, BaseException))


def cause_of(error: BaseException) -> Cause:
    """The cause of a failed request (a requests or urllib3 exception, or an OSError)."""
    errors = list(chain(error))
    proxy = isinstance(error, requests.exceptions.ProxyError)
    for inner in errors:
        if isinstance(inner, ssl.SSLCertVerificationError):
            return Cause(f"TLS handshake failed: certificate verify failed: "
                         f"{inner.verify_message or inner.reason}", tls=True, proxy=proxy)
    for inner in errors:
        if isinstance(inner, ssl.SSLError) and not isinstance(
                inner, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            reason = inner.reason or ""
            text = reason.replace("_", " ").lower() if reason else _short(str(inner))
            return Cause(f"TLS handshake failed: {text}", tls=True, proxy=proxy)
    for inner in errors:
        if isinstance(inner, ConnectionRefusedError):
            return Cause("connection refused", unreachable=True, proxy=proxy)
        if isinstance(inner, socket.gaierror):
            if inner.errno in _NO_SUCH_NAME:
                return Cause("no such host", unreachable=True, proxy=proxy)
            return Cause(f"name resolution failed: {inner.strerror}", proxy=proxy)
    for kinds, text in _TRANSIENT:  # the most telling first, wherever it is in the chain
        if any(isinstance(inner, kinds) and not isinstance(inner, NewConnectionError)
               for inner in errors):
            return Cause(text, proxy=proxy)
    for inner in errors:  # any other system error: its own words ("no route to host")
        if isinstance(inner, OSError) and inner.strerror:
            return Cause(inner.strerror.lower(), proxy=proxy)
    return Cause(_short(str(error)), proxy=proxy)


def plain_http(cause: Cause) -> bool:
    """Whether a failed handshake looks like TLS spoken to a port that serves plain HTTP."""
    return cause.tls and any(word.replace("_", " ").lower() in cause.text
                             for word in _PLAIN_HTTP)


def _short(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"
