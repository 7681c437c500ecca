"""Operators: fail fast with the true cause (against real registries, in sync and the fleet).

- A registry whose `/v2/` ping cannot connect (refused, no such host, TLS mismatch) fails its
  images at once, each with one line naming the cause; the other registries' images go on.
- Only what can change (resets, timeouts, 408, 429, 5xx) gets a retry pass; a 404, 401, 403
  or a TLS mismatch is reported after the first pass.
- Missing push rights and a target namespace that does not exist say so, with the fix.
- A copy's note (a platform skip, a changed index digest) reaches the terminal once.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from migrator.cli import EXIT_FAILED, EXIT_OK, main
from tests.integration.test_fleet import Fleet
from tests.integration.test_sync import Sync, insecure, layers
from tests.support.images import get_manifest, list_tags, push_image, push_index
from tests.support.proxy import MANIFEST, UPLOAD
from tests.support.tokens import TokenIssuer

TAGS = [f"t{n:02d}" for n in range(20)]
# Our own database on the shared Redis (flushed before and after), apart from test_fleet's.
FLEET_REDIS = "redis://127.0.0.1:6379/15"


@pytest.fixture
def sync(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Sync:
    return Sync(tmp_path, capsys)


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def failed_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("failed: ")]


def seed_tags(source_registry) -> None:
    """Twenty tags of one image (one manifest PUT each after the first) and two of another."""
    for tag in TAGS:
        push_image(source_registry, "ns/app", tag, layers=layers(1))
    for tag in ("1", "2"):
        push_image(source_registry, "ns/ok", tag, layers=layers(2, 3 + int(tag)))


# -- 1. an unreachable registry fails its work at once, with the cause ---------------------


@pytest.mark.parametrize("kind", ["connection refused", "no such host", "TLS mismatch"])
def test_an_unreachable_target_fails_its_images_at_once_and_the_others_are_copied(
        kind, sync, source_registry, target_registry, registry_factory):
    seed_tags(source_registry)
    auth = insecure(source_registry, target_registry)
    if kind == "connection refused":
        bad = f"127.0.0.1:{closed_port()}"
        auth[bad] = {"insecure": True}  # tried over HTTPS, then plain HTTP: refused both
        cause = f"cannot connect to {bad}: connection refused"
    elif kind == "no such host":
        bad = "registry.invalid:5000"  # .invalid never resolves (RFC 6761)
        cause = f"cannot connect to {bad}: no such host"
    else:
        bad = registry_factory().host  # plain HTTP, and no `insecure` entry: TLS is spoken
        cause = f"cannot connect to {bad}: TLS handshake failed: wrong version number"
    rules = {f"{source_registry.host}/ns/app:{','.join(TAGS)}": f"{bad}/copy/app",
             f"{source_registry.host}/ns/ok:1,2": f"{target_registry.host}/copy/ok"}
    started = time.monotonic()
    code, out, err = sync(rules, auth, "--retries", "3")
    elapsed = time.monotonic() - started
    print(f"\n{kind}: 22 images (20 to an unreachable target) in {elapsed:.1f} s")
    assert code == EXIT_FAILED
    assert out.splitlines()[-1] == (
        "Images(22) migration finished, 20 images tasks failed, 0 tasks generate failed")
    lines = failed_lines(err)
    assert len(lines) == 20, err
    assert all(line.split(": ", 2)[2].startswith(cause) for line in lines), lines[:3]
    assert all(len(line) < 300 for line in lines), lines[0]
    assert sorted(list_tags(target_registry, "copy/ok")) == ["1", "2"]
    assert "retry pass" not in sync.log.read_text()  # nothing there could change
    assert elapsed < 8, f"{elapsed:.1f} s"


def test_an_unreachable_source_fails_its_rule_at_once_with_the_cause(sync, source_registry,
                                                                   target_registry):
    push_image(source_registry, "ns/ok", "1", layers=layers(2))
    bad = f"127.0.0.1:{closed_port()}"
    rules = {f"{bad}/ns/gone": f"{target_registry.host}/copy/gone",  # listed at generate
             f"{source_registry.host}/ns/ok:1": f"{target_registry.host}/copy/ok"}
    started = time.monotonic()
    code, out, err = sync(rules, {**insecure(source_registry, target_registry),
                                  bad: {"insecure": True}}, "--retries", "3")
    assert code == EXIT_FAILED
    assert time.monotonic() - started < 8
    assert out.splitlines()[-1] == (
        "Images(1) migration finished, 0 images tasks failed, 1 tasks generate failed")
    assert f"cannot connect to {bad}: connection refused" in err
    assert list_tags(target_registry, "copy/ok") == ["1"]


def test_the_fleet_fails_an_unreachable_registrys_images_at_once(tmp_path, capsys,
                                                                 source_registry,
                                                                 target_registry):
    seed_tags(source_registry)
    bad = f"127.0.0.1:{closed_port()}"
    fleet = Fleet(tmp_path, capsys, redis_url=FLEET_REDIS)
    fleet.redis.flushdb()
    try:
        fleet.write({f"{source_registry.host}/ns/app:{','.join(TAGS)}": f"{bad}/copy/app",
                     f"{source_registry.host}/ns/ok:1,2": f"{target_registry.host}/copy/ok"},
                    {**insecure(source_registry, target_registry), bad: {"insecure": True}})
        fleet.start_worker("w1", concurrency=4)
        failed = tmp_path / "failed.json"
        started = time.monotonic()
        code, out, err = fleet.enqueue("--wait", "--timeout", "300", "--retries", "3",
                                       "--output-failed", str(failed))
        elapsed = time.monotonic() - started
        print(f"\nfleet: 22 images (20 to a closed port) in {elapsed:.1f} s")
        assert code == EXIT_FAILED, err + fleet.log("w1")
        assert out.splitlines()[-1] == (
            "Images(22) migration finished, 20 images tasks failed, 0 tasks generate failed")
        reasons = json.loads((tmp_path / "failed.json.reasons.json").read_text())
        assert len(reasons) == 20
        assert {entry["reason"] for entry in reasons} == {
            f"cannot connect to {bad}: connection refused"}
        assert sorted(list_tags(target_registry, "copy/ok")) == ["1", "2"]
        assert elapsed < 15, f"{elapsed:.1f} s"
    finally:
        fleet.stop_all()
        fleet.redis.flushdb()
        fleet.redis.close()


# -- 2. one retry policy: only what can change gets a retry pass ----------------------------


def test_permanent_failures_get_no_retry_pass_and_transient_ones_do(
        sync, source_registry, target_registry, fault_proxy):
    push_image(source_registry, "ns/there", "1", layers=layers(10))
    flaky = push_image(source_registry, "ns/flaky", "1", layers=layers(11, size=256 * 1024))
    proxy = fault_proxy(source_registry.url)
    # Every try of the first pass breaks mid-blob (3 blob attempts); the retry pass heals.
    proxy.reset(method="GET", path=flaky.blobs[-1], times=3, after_bytes=1000)
    rules = {f"{source_registry.host}/ns/there:nope": f"{target_registry.host}/t/there",
             f"{source_registry.host}/ns/absent": f"{target_registry.host}/t/absent",
             f"{proxy.host}/ns/flaky:1": f"{target_registry.host}/t/flaky"}
    environ = {"MIGRATOR_RETRY_PASS_DELAY": "0.1", "MIGRATOR_BACKOFF_INITIAL": "0.01"}
    code, out, err = sync(rules, {**insecure(source_registry, target_registry),
                                  proxy.host: {"insecure": True}}, "--retries", "3",
                          environ=environ)
    assert code == EXIT_FAILED
    assert out.splitlines()[-1] == (
        "Images(2) migration finished, 1 images tasks failed, 1 tasks generate failed")
    assert get_manifest(target_registry, "t/flaky", "1")[2] == flaky.digest
    log = sync.log.read_text()
    # The reset image alone is retried; the 404s are reported after the first pass.
    assert "retry pass 1 of 3 in 0.1s: 1 images, 0 rules" in log, log
    assert "retry pass 2" not in log
    assert source_registry.count("GET", "/v2/ns/there/manifests/nope") == 1
    assert source_registry.count("GET", "/v2/ns/absent/tags/list") == 1
    assert "ns/there:nope" in err and "not found" in err


# -- 3. the true cause of a refused push ---------------------------------------------------


def pull_only(user: str | None, type_: str, name: str, actions: list[str]) -> list[str]:
    return [action for action in actions if action == "pull"]


def test_a_token_without_push_rights_says_so(sync, source_registry, registry_factory,
                                             tmp_path):
    push_image(source_registry, "ns/app", "1", layers=layers(20))
    with TokenIssuer(tmp_path / "issuer", policy=pull_only) as issuer:
        target = registry_factory(auth="token", token_issuer=issuer)
        code, out, err = sync(
            {f"{source_registry.host}/ns/app:1": f"{target.host}/team/app"},
            {**insecure(source_registry), target.host: {
                "username": target.username, "password": target.password, "insecure": True}},
            "--retries", "3")
    assert code == EXIT_FAILED
    (line,) = failed_lines(err)
    print("\n" + line)
    assert (f"{target.host}: user 'tester' may not push to 'team/app' (the token grants no "
            "push: insufficient_scope): does the namespace 'team' exist, and may this account "
            "push to it?") in line
    assert f"(POST http://{target.host}/v2/team/app/blobs/uploads/) HTTP 401 UNAUTHORIZED" in line
    assert "check the auth file" not in line
    assert "retry pass" not in sync.log.read_text()


@pytest.mark.parametrize(("status", "code", "method", "path"), [
    (404, "NAME_UNKNOWN", "POST", UPLOAD),  # Distribution, ECR: the repository is unknown
    (401, "DENIED", "POST", UPLOAD),
    (403, "DENIED", "PUT", MANIFEST),
])
def test_a_refused_push_asks_whether_the_namespace_exists(status, code, method, path, sync,
                                                          source_registry, registry_factory,
                                                          fault_proxy):
    push_image(source_registry, "ns/app", "1", layers=layers(21))
    target = registry_factory(auth="htpasswd")  # Basic auth over plain HTTP
    proxy = fault_proxy(target)
    body = json.dumps({"errors": [{"code": code, "message": "refused by the test"}]}).encode()
    proxy.status(status, method, path, None, body=body)
    code_, _, err = sync(
        {f"{source_registry.host}/ns/app:1": f"{proxy.host}/missing/app"},
        {**insecure(source_registry), proxy.host: {
            "username": target.username, "password": target.password, "insecure": True}},
        "--retries", "3")
    assert code_ == EXIT_FAILED
    (line,) = failed_lines(err)
    print("\n" + line)
    assert "does the namespace 'missing' exist, and may this account push to it?" in line
    assert f"({method} http://{proxy.host}/v2/missing/app/" in line
    assert f"HTTP {status} {code}: refused by the test" in line
    assert "check the auth file" not in line and target.password not in err
    assert "retry pass" not in sync.log.read_text()


def test_a_wrong_password_still_says_check_the_auth_file(sync, source_registry,
                                                        registry_factory):
    push_image(source_registry, "ns/app", "1", layers=layers(22))
    target = registry_factory(auth="htpasswd")
    code, _, err = sync(
        {f"{source_registry.host}/ns/app:1": f"{target.host}/team/app"},
        {**insecure(source_registry), target.host: {
            "username": target.username, "password": "wrong", "insecure": True}})
    assert code == EXIT_FAILED
    (line,) = failed_lines(err)
    assert "authentication failed for user 'tester'" in line and "check the auth file" in line


# -- 4. a note reaches the terminal once ---------------------------------------------------


def test_each_note_is_printed_once_and_kept_in_a_debug_log(tmp_path, capsys, source_registry,
                                                           target_registry):
    src, dst = source_registry.host, target_registry.host
    push_index(source_registry, "ns/multi", "1", media="oci", platforms=[
        ("linux", "amd64", layers(30)), ("linux", "arm64", layers(31))])
    push_image(source_registry, "ns/arm", "1", layers=layers(32), arch="arm64")
    (tmp_path / "images.json").write_text(json.dumps({f"{src}/ns/multi:1": f"{dst}/t/multi",
                                                      f"{src}/ns/arm:1": f"{dst}/t/arm"}))
    (tmp_path / "auth.json").write_text(json.dumps(insecure(source_registry, target_registry)))
    argv = ["sync", "--images", str(tmp_path / "images.json"), "--auth",
            str(tmp_path / "auth.json"), "--no-state", "-r", "0", "--platform", "linux/amd64"]
    assert main(argv, {}) == EXIT_OK
    _, err = capsys.readouterr()  # no --log: the log goes to the terminal too
    notes = ["skipped: platform linux/arm64 is not among linux/amd64",
             "index filtered to linux/amd64: its digest"]
    for note in notes:
        assert err.count(note) == 1, err
    assert main([*argv, "--force", "--log", str(tmp_path / "debug.log"), "--debug"], {}) == EXIT_OK
    capsys.readouterr()
    logged = [line for line in (tmp_path / "debug.log").read_text().splitlines()
              if any(note in line for note in notes)]
    assert len(logged) == 2 and all(" DEBUG " in line for line in logged), logged
