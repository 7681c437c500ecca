"""`cause_of`: the few words behind a failed request, found in the chain requests builds."""

from __future__ import annotations

import socket
import ssl

import pytest
import requests
from urllib3.exceptions import MaxRetryError, NameResolutionError, NewConnectionError
from urllib3.exceptions import SSLError as Urllib3SSLError

from migrator.registry.connection import Cause, cause_of, plain_http


def wrapped(inner: BaseException) -> requests.ConnectionError:
    """requests' wrapping: ConnectionError(MaxRetryError(reason=inner))."""
    return requests.ConnectionError(MaxRetryError(None, "/v2/", inner))  # type: ignore[arg-type]


def test_a_closed_port_is_connection_refused_and_unreachable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(requests.ConnectionError) as caught:
        requests.get(f"http://127.0.0.1:{port}/v2/", timeout=5)
    assert cause_of(caught.value) == Cause("connection refused", unreachable=True)


def test_an_unknown_name_is_no_such_host_and_a_resolver_hiccup_is_not():
    def resolution(errno: int) -> requests.ConnectionError:
        error = NameResolutionError("registry.invalid", None, socket.gaierror(errno, "x"))  # type: ignore[arg-type]
        error.__cause__ = socket.gaierror(errno, "x")
        return wrapped(error)

    assert cause_of(resolution(socket.EAI_NONAME)) == Cause("no such host", unreachable=True)
    again = cause_of(resolution(socket.EAI_AGAIN))
    assert not again.unreachable and again.text.startswith("name resolution failed")


def test_tls_failures_name_the_reason_and_plain_http_is_recognised():
    wrong = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    wrong.reason = "WRONG_VERSION_NUMBER"  # type: ignore[misc]
    cause = cause_of(requests.exceptions.SSLError(
        MaxRetryError(None, "/v2/", Urllib3SSLError(wrong))))  # type: ignore[arg-type]
    assert cause == Cause("TLS handshake failed: wrong version number", tls=True)
    assert plain_http(cause)
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "self-signed certificate"  # type: ignore[attr-defined]
    cause = cause_of(requests.exceptions.SSLError(verify))
    assert cause.text == "TLS handshake failed: certificate verify failed: self-signed certificate"
    assert cause.tls and not plain_http(cause)


def test_transient_faults_keep_their_words_and_the_rest_its_text_cut_short():
    refused = NewConnectionError(None, "Failed to establish a new connection")  # type: ignore[arg-type]
    refused.__cause__ = ConnectionResetError(104, "Connection reset by peer")
    assert cause_of(wrapped(refused)) == Cause("connection reset")
    assert cause_of(requests.ReadTimeout("read timeout")).text == "read timed out"
    assert cause_of(requests.ConnectTimeout("connect timeout")).text == "connect timed out"
    assert cause_of(requests.ConnectionError("x" * 500)).text == "x" * 160 + "…"
    no_route = NewConnectionError(None, "Failed to establish a new connection")  # type: ignore[arg-type]
    no_route.__cause__ = OSError(113, "No route to host")
    assert cause_of(wrapped(no_route)) == Cause("no route to host")
    proxied = requests.exceptions.ProxyError(MaxRetryError(
        None, "/v2/", ConnectionRefusedError(111, "Connection refused")))  # type: ignore[arg-type]
    assert cause_of(proxied) == Cause("connection refused", unreachable=True, proxy=True)
