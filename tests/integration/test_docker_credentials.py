"""Credentials the Docker ecosystem already has, end to end: Docker's config file, a
credential helper of the tests' own on PATH (a shell script whose answer the test changes),
`credsStore`, identity tokens, and short-lived credentials that expire mid-run, with
`migrator sync` and with the fleet.

A password "expires" the way it does at ECR, GCR or SWR: the registry stops accepting it
mid-run (the htpasswd file is rewritten, or the token issuer's password changed) after the
credentials source was given the new one. The hook that does it is a request of the source
registry for a blob of the third image, so the target has accepted the old password before.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import bcrypt
import pytest

from migrator.cli import EXIT_FAILED, EXIT_OK, main
from tests.integration.test_fleet import Fleet
from tests.support.auth_front import AuthFront
from tests.support.images import get_manifest, make_layer, push_image
from tests.support.tokens import TokenIssuer

NEW_PASSWORD = "fresh-password-after-expiry-42"
FLEET_REDIS = "redis://127.0.0.1:6379/1"


class Helper:
    """`docker-credential-<name>` in `bin`: answers what `answer()` last wrote (nothing:
    "credentials not found"), and records each server it was asked for."""

    def __init__(self, bin_dir: Path, name: str) -> None:
        bin_dir.mkdir(parents=True, exist_ok=True)
        self.path = bin_dir / f"docker-credential-{name}"
        self.path.write_text(
            "#!/bin/sh\nread server\necho \"$1 $server\" >> \"$0.calls\"\n"
            "if [ ! -s \"$0.answer\" ]; then\n"
            "  echo 'credentials not found in native keychain'; exit 1\nfi\n"
            "cat \"$0.answer\"\n")
        self.path.chmod(self.path.stat().st_mode | stat.S_IXUSR)

    def answer(self, username: str, secret: str) -> None:
        Path(f"{self.path}.answer").write_text(json.dumps({"Username": username,
                                                           "Secret": secret}))

    def fail(self, message: str) -> None:
        self.path.write_text(f"#!/bin/sh\necho '{message}' >&2\necho 'second line' >&2\n"
                             "exit 1\n")

    @property
    def calls(self) -> list[str]:
        calls = Path(f"{self.path}.calls")
        return calls.read_text().splitlines() if calls.exists() else []


def docker_env(tmp_path: Path, config: dict) -> dict[str, str]:
    directory = tmp_path / "docker"
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return {"DOCKER_CONFIG": str(directory), "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}


def set_htpasswd(registry, password: str) -> None:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    (registry.root / "htpasswd").write_text(f"{registry.username}:{hashed}\n")


def images(source, count: int = 4) -> list:
    base = [make_layer(64 * 1024, seed) for seed in (401, 402)]
    return [push_image(source, f"ns/app{i}", "1", layers=[*base, make_layer(8 * 1024, 410 + i)])
            for i in range(count)]


def expire_at_third_image(front_of, pushed, expire) -> tuple[AuthFront, threading.Event]:
    """A front for the source whose first request for the third image's own layer runs
    `expire()` once (the target has taken two images with the old credentials by then)."""
    own_layer = pushed[2].blobs[-1]
    done = threading.Event()

    def on_request(method: str, path: str) -> None:
        if method == "GET" and path.endswith(own_layer) and not done.is_set():
            done.set()
            expire()

    return AuthFront(front_of.url, on_request=on_request), done


class Sync:
    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.dir, self.capsys, self.log = tmp_path, capsys, tmp_path / "migrator.log"

    def __call__(self, rules: dict, auth: dict, environ: dict[str, str], *flags: str
                 ) -> tuple[int, str]:
        (self.dir / "images.json").write_text(json.dumps(rules))
        (self.dir / "auth.json").write_text(json.dumps(auth))
        code = main(["sync", "--images", str(self.dir / "images.json"), "--auth",
                     str(self.dir / "auth.json"), "--log", str(self.log), "--debug",
                     "--state", str(self.dir / "state"), "-w", "1", *flags], environ)
        out, err = self.capsys.readouterr()
        return code, out + err + self.log.read_text()


@pytest.fixture
def sync(tmp_path, capsys) -> Sync:
    return Sync(tmp_path, capsys)


def test_cred_helper_asked_again_when_the_password_expires_mid_run(
        sync, tmp_path, source_registry, registry_factory):
    target = registry_factory(auth="htpasswd")
    helper = Helper(tmp_path / "bin", "test")
    helper.answer(target.username, target.password)
    environ = docker_env(tmp_path, {"credHelpers": {target.host: "test"}})
    pushed = images(source_registry)

    def expire() -> None:
        helper.answer(target.username, NEW_PASSWORD)  # the source first, as a login would
        set_htpasswd(target, NEW_PASSWORD)

    front, expired = expire_at_third_image(source_registry, pushed, expire)
    try:
        code, said = sync({f"{front.host}/ns/app{i}:1": f"{target.host}/t/app{i}"
                           for i in range(4)},
                          {front.host: {"insecure": True}, target.host: {"insecure": True}},
                          environ)
    finally:
        front.close()
    assert code == EXIT_OK, said
    assert expired.is_set()
    for i, image in enumerate(pushed):
        assert get_manifest(target, f"t/app{i}", "1",
                            auth=(target.username, NEW_PASSWORD))[2] == image.digest
    # Once at the start, once after the refusal: helper answers are kept, not asked per image.
    assert helper.calls == [f"get {target.host}", f"get {target.host}"]
    assert "credentials refused after they had worked" in said
    assert target.password not in said and NEW_PASSWORD not in said


def test_creds_store_and_a_token_service_that_stops_taking_the_old_password(
        sync, tmp_path, source_registry, registry_factory):
    with TokenIssuer(tmp_path / "issuer") as issuer:
        target = registry_factory(auth="token", token_issuer=issuer)
        helper = Helper(tmp_path / "bin", "store")
        helper.answer(target.username, target.password)
        environ = docker_env(tmp_path, {"credsStore": "store",
                                        "auths": {target.host: {}}})
        pushed = images(source_registry)

        def expire() -> None:
            helper.answer(target.username, NEW_PASSWORD)
            issuer.set_password(target.username, NEW_PASSWORD)

        front, expired = expire_at_third_image(source_registry, pushed, expire)
        try:
            code, said = sync({f"{front.host}/ns/app{i}:1": f"{target.host}/t/app{i}"
                               for i in range(4)},
                              {front.host: {"insecure": True},
                               target.host: {"insecure": True}}, environ)
        finally:
            front.close()
        assert code == EXIT_OK, said
        assert expired.is_set()
        assert [reason for user, reason in issuer.denied] == ["bad credentials"]
        # credsStore serves every registry: the source's "credentials not found" is anonymous
        assert sorted(helper.calls) == sorted([f"get {front.host}", f"get {target.host}",
                                               f"get {target.host}"])
        for i, image in enumerate(pushed):
            assert get_manifest(target, f"t/app{i}", "1",
                                auth=(target.username, NEW_PASSWORD))[2] == image.digest
        assert target.password not in said and NEW_PASSWORD not in said


def test_the_auth_file_is_read_again_when_its_password_expires(
        sync, tmp_path, source_registry, registry_factory):
    target = registry_factory(auth="htpasswd")
    pushed = images(source_registry)

    def expire() -> None:  # a job rewrites the file (or a Kubernetes Secret is updated)
        auth = json.loads((tmp_path / "auth.json").read_text())
        auth[target.host]["password"] = NEW_PASSWORD
        (tmp_path / "auth.json").write_text(json.dumps(auth))
        set_htpasswd(target, NEW_PASSWORD)

    front, expired = expire_at_third_image(source_registry, pushed, expire)
    try:
        code, said = sync({f"{front.host}/ns/app{i}:1": f"{target.host}/t/app{i}"
                           for i in range(4)},
                          {front.host: {"insecure": True},
                           target.host: {"username": target.username,
                                         "password": target.password, "insecure": True}},
                          {})
    finally:
        front.close()
    assert code == EXIT_OK, said
    assert expired.is_set()
    assert get_manifest(target, "t/app3", "1",
                        auth=(target.username, NEW_PASSWORD))[2] == pushed[3].digest
    assert NEW_PASSWORD not in said


def test_identity_token_from_docker_config_and_one_image_mode(
        sync, tmp_path, capsys, source_registry, registry_factory):
    with TokenIssuer(tmp_path / "issuer") as issuer:
        target = registry_factory(auth="token", token_issuer=issuer)
        token = issuer.add_identity_token(target.username)
        environ = docker_env(tmp_path, {"auths": {
            f"http://{target.host}/v1/": {"identitytoken": token}}})
        image = images(source_registry, 1)[0]
        code = main(["sync", "--src", f"{source_registry.host}/ns/app0:1",
                     "--dst", f"{target.host}/t/one", "--src-insecure", "--dst-insecure",
                     "--state", str(tmp_path / "state")], environ)
        out, err = capsys.readouterr()
        assert code == EXIT_OK, out + err
        # Exchanged by the OAuth2 POST: no GET with a password ever reached the realm.
        assert issuer.queries == [] and {user for user, _ in issuer.issued} == {target.username}
        assert get_manifest(target, "t/one", "1", auth=target.auth)[2] == image.digest
        assert token not in out + err


def test_a_failing_helper_is_one_line_naming_it(sync, tmp_path, source_registry,
                                                registry_factory):
    target = registry_factory(auth="htpasswd")
    helper = Helper(tmp_path / "bin", "ecr-login")
    helper.fail("token expired: run aws sso login")
    environ = docker_env(tmp_path, {"credHelpers": {target.host: "ecr-login"}})
    images(source_registry, 1)
    code, said = sync({f"{source_registry.host}/ns/app0:1": f"{target.host}/t/app"},
                      {source_registry.host: {"insecure": True},
                       target.host: {"insecure": True}}, environ)
    assert code == EXIT_FAILED
    lines = [line for line in said.splitlines() if "docker-credential-ecr-login" in line]
    assert lines and all(f"{target.host}: credential helper docker-credential-ecr-login"
                         in line and "failed (exit status 1): token expired: run aws sso "
                         "login" in line for line in lines), said
    assert "second line" not in said


@pytest.fixture
def fleet(tmp_path, capsys):
    instance = Fleet(tmp_path, capsys, redis_url=FLEET_REDIS)
    instance.redis.flushdb()
    yield instance
    instance.stop_all()
    instance.redis.flushdb()
    instance.redis.close()


def test_fleet_workers_use_their_own_docker_config_and_ask_again_on_expiry(
        fleet, tmp_path, source_registry, registry_factory):
    """The producer hands over no Docker credentials: each worker reads its own Docker config
    (HOME or DOCKER_CONFIG of its process) and asks its own helper again when they expire."""
    target = registry_factory(auth="htpasswd")
    helper = Helper(tmp_path / "bin", "test")
    helper.answer(target.username, target.password)
    worker_env = docker_env(tmp_path, {"credHelpers": {target.host: "test"}})
    worker_env["PATH"] = f"{tmp_path / 'bin'}:{os.environ['PATH']}"
    pushed = images(source_registry)

    def expire() -> None:
        helper.answer(target.username, NEW_PASSWORD)
        set_htpasswd(target, NEW_PASSWORD)

    front, expired = expire_at_third_image(source_registry, pushed, expire)
    try:
        fleet.write({f"{front.host}/ns/app{i}:1": f"{target.host}/t/app{i}" for i in range(4)},
                    {front.host: {"insecure": True}, target.host: {"insecure": True}})
        fleet.start_worker("w1", concurrency=1, extra_env=worker_env)
        code, out, err = fleet.enqueue("--wait", "--timeout", "120")
    finally:
        front.close()
    assert code == EXIT_OK, out + err + fleet.log("w1")
    assert expired.is_set()
    for i, image in enumerate(pushed):
        assert get_manifest(target, f"t/app{i}", "1",
                            auth=(target.username, NEW_PASSWORD))[2] == image.digest
    assert helper.calls == [f"get {target.host}", f"get {target.host}"]
    stored = b"".join(key + repr(fleet.redis.dump(key)).encode()
                      for key in fleet.redis.scan_iter())
    for secret in (target.password, NEW_PASSWORD):
        assert secret.encode() not in stored
        assert secret not in out + err + fleet.log("w1")
