"""Parsing what registries say about authentication and retries."""

import email.utils
import time

from migrator.registry.auth import parse_challenge
from migrator.registry.client import parse_retry_after, redact


def test_bearer_challenge_with_quoted_and_bare_values():
    challenge = parse_challenge(
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:ns/repo:pull,push",error=insufficient_scope'
    )
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example.com/token",
        "service": "registry.example.com",
        "scope": "repository:ns/repo:pull,push",
        "error": "insufficient_scope",
    }


def test_basic_challenge_and_absent_header():
    assert parse_challenge('Basic realm="Registry Realm"').scheme == "basic"
    assert parse_challenge(None) is None
    assert parse_challenge("") is None


def test_retry_after_seconds_and_http_date():
    assert parse_retry_after("7") == 7.0
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= parse_retry_after(future) <= 31
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_redact_drops_userinfo_and_query():
    assert redact("https://user:secret@reg.example.com:5000/v2/x/blobs/uploads/u?_state=abc") == (
        "https://reg.example.com:5000/v2/x/blobs/uploads/u"
    )
