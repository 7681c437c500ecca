"""Token services as real registries run them, reproduced on the wire in front of a real
Distribution registry (tests/support/tokens.py, tests/support/auth_front.py cite the source of
each behaviour), and `migrator sync` copying through each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest

from migrator.cli import EXIT_FAILED, EXIT_OK, main
from tests.support.auth_front import AuthFront
from tests.support.images import get_manifest, make_layer, push_image
from tests.support.tokens import TokenIssuer


class Sync:
    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.dir, self.capsys = tmp_path, capsys
        self.log = tmp_path / "migrator.log"

    def __call__(self, images: dict, auth: dict, *, state: str = "state"
                 ) -> tuple[int, str]:
        (self.dir / "images.json").write_text(json.dumps(images))
        (self.dir / "auth.json").write_text(json.dumps(auth))
        code = main(["sync", "--images", str(self.dir / "images.json"),
                     "--auth", str(self.dir / "auth.json"), "--log", str(self.log), "--debug",
                     "--state", str(self.dir / state), "--retries", "0"], {})
        out, err = self.capsys.readouterr()
        return code, out + err + self.log.read_text()


@pytest.fixture
def sync(tmp_path, capsys) -> Sync:
    return Sync(tmp_path, capsys)


def credentials(registry, **settings) -> dict:
    return {"username": registry.username, "password": registry.password, "insecure": True,
            **settings}


BASE = [make_layer(96 * 1024, seed) for seed in (301, 302)]


def test_a_realm_on_another_host_gets_the_password_the_registry_only_tokens(
        sync, tmp_path, source_registry, registry_factory):
    with TokenIssuer(tmp_path / "issuer", realm_host="localhost") as issuer:
        target = registry_factory(auth="token", tls=True, token_issuer=issuer)
        assert issuer.url.startswith("http://localhost:") and target.host.startswith("127.")
        image = push_image(source_registry, "ns/app", "1", layers=BASE)
        tls = {"username": target.username, "password": target.password,
               "ca_file": str(target.ca_file)}
        # An HTTPS registry whose realm is plain HTTP: the password goes there only when the
        # entry says insecure (the certificate is still verified: ca_file).
        code, said = sync({f"{source_registry.host}/ns/app:1": f"{target.host}/t/app"},
                          {source_registry.host: {"insecure": True},
                           target.host: {**tls, "insecure": True}})
        assert code == EXIT_OK, said
        assert get_manifest(target, "t/app", "1", auth=target.auth)[2] == image.digest
        assert {user for user, _ in issuer.issued} == {target.username}
        issued = len(issuer.issued)
        code, said = sync({f"{source_registry.host}/ns/app:1": f"{target.host}/t/app2"},
                          {source_registry.host: {"insecure": True}, target.host: tls})
        assert code == EXIT_FAILED
        assert f"token realm http://localhost:{issuer.port}/token is plain HTTP" in said
        assert len(issuer.issued) == issued and target.password not in said


@pytest.mark.parametrize("scopes_read", ["all", "last", "first"])
def test_mount_scopes_whichever_way_the_token_service_reads_them(
        sync, tmp_path, source_registry, registry_factory,
        scopes_read: Literal["all", "last", "first"]):
    """A mount needs push on the target and pull on the source in one token: a service that
    reads every `scope=` gives both and the blobs are mounted; one that reads a single scope
    cannot, and the blobs are uploaded instead, with one scope per token from then on."""
    with TokenIssuer(tmp_path / "issuer", scopes_read=scopes_read) as issuer:
        target = registry_factory(auth="token", token_issuer=issuer)
        push_image(source_registry, "ns/one", "1", layers=[*BASE, make_layer(8 * 1024, 303)])
        second = push_image(source_registry, "ns/two", "1",
                            layers=[*BASE, make_layer(8 * 1024, 304)])
        auth = {source_registry.host: {"insecure": True}, target.host: credentials(target)}
        code, said = sync({f"{source_registry.host}/ns/one:1": f"{target.host}/t/one"}, auth)
        assert code == EXIT_OK, said
        mark, asked = target.mark(), len(issuer.queries)
        code, said = sync({f"{source_registry.host}/ns/two:1": f"{target.host}/t/two"}, auth)
        assert code == EXIT_OK, said
        assert get_manifest(target, "t/two", "1", auth=target.auth)[2] == second.digest
        mounts = [(path, status) for method, path, status in target.requests(mark)
                  if method == "POST" and "from=t/one" in path]
        uploads = [path for method, path, status in target.requests(mark)
                   if method == "PUT" and "/blobs/uploads/" in path and status == 201]
        both = [values for values in issuer.queries[asked:]
                if any("t/one:pull" in value for value in values)
                and any("t/two:pull,push" in value for value in values)]
        if scopes_read == "all":
            assert mounts and all(status == 201 for _, status in mounts), mounts
            assert len(uploads) == 2  # the config and the own layer; the base is mounted
            assert both and all(len(values) == 2 for values in both)  # repeated parameters
        else:
            assert all(status == 401 for _, status in mounts), mounts
            assert len(uploads) == 4  # the base layers too: the mount could not be granted
            assert "grants one scope per token" not in said
            assert "one scope per token: a cross-repository mount cannot be granted" in said
            assert len(issuer.queries) - asked <= 8, issuer.queries[asked:]


def test_an_insufficient_scope_challenge_names_the_scope_to_ask_for(
        sync, tmp_path, target_registry, registry_factory):
    with TokenIssuer(tmp_path / "issuer") as issuer:
        upstream = registry_factory(auth="token", token_issuer=issuer)
        image = push_image(upstream, "ns/app", "1", layers=BASE, auth=upstream.auth)
        extra = "repository:ns/app:list"  # an action no client derives from the path

        def demand(method: str, path: str) -> tuple[str, ...]:
            listing = method == "GET" and path.startswith("/v2/ns/app/tags/list")
            return ("repository:ns/app:pull", extra) if listing else ()

        front = AuthFront(upstream.url, demand=demand, realm=issuer.url,
                          service=issuer.service)
        try:
            code, said = sync({f"{front.host}/ns/app": f"{target_registry.host}/t/app"},
                              {front.host: credentials(upstream),
                               target_registry.host: {"insecure": True}})
        finally:
            front.close()
        assert code == EXIT_OK, said
        assert get_manifest(target_registry, "t/app", "1")[2] == image.digest
        refused = [(m, p) for m, p, status in front.seen if status == 401 and "tags" in p]
        assert len(refused) == 1, front.seen  # then the token asked for holds the extra scope
        # one scope per resource, its actions joined: what the service then grants
        assert any("repository:ns/app:pull,list" in values for values in issuer.queries)
        assert any('error="insufficient_scope"' in c for c in front.challenges)


def test_anonymous_token_exchange_for_public_images_and_a_clear_refusal_otherwise(
        sync, tmp_path, target_registry, registry_factory):
    def ghcr(user, type_, name, actions):
        if user is not None:
            return list(actions)
        return ["pull"] if name.startswith("public/") and "pull" in actions else []

    with TokenIssuer(tmp_path / "issuer", policy=ghcr, refuse_anonymous=True) as issuer:
        source = registry_factory(auth="token", token_issuer=issuer)
        public = push_image(source, "public/app", "1", layers=BASE, auth=source.auth)
        push_image(source, "private/app", "1", layers=BASE, auth=source.auth)
        auth = {source.host: {"insecure": True}, target_registry.host: {"insecure": True}}
        code, said = sync({f"{source.host}/public/app:1": f"{target_registry.host}/t/app"},
                          auth)
        assert code == EXIT_OK, said
        assert get_manifest(target_registry, "t/app", "1")[2] == public.digest
        assert any(user is None for user, _ in issuer.issued)  # anonymous tokens, no password

        code, said = sync({f"{source.host}/private/app:1": f"{target_registry.host}/t/p"},
                          auth)
        assert code == EXIT_FAILED
        assert ("the token service refused anonymous access to private/app (HTTP 401): if "
                "the image is not public, give this registry's credentials") in said


def test_basic_challenge_in_capitals_nexus(sync, source_registry, registry_factory):
    upstream = registry_factory(auth="htpasswd")
    front = AuthFront(upstream.url, challenge=lambda _: (
        'BASIC realm="Sonatype Nexus Repository Manager"'))
    image = push_image(source_registry, "ns/app", "1", layers=BASE)
    rules = {f"{source_registry.host}/ns/app:1": f"{front.host}/t/app"}
    try:
        code, said = sync(rules, {source_registry.host: {"insecure": True},
                                  front.host: credentials(upstream)})
        assert code == EXIT_OK, said
        assert get_manifest(upstream, "t/app", "1", auth=upstream.auth)[2] == image.digest
        assert 'BASIC realm="Sonatype Nexus Repository Manager"' in front.challenges
        wrong = {**credentials(upstream), "password": "not-the-password"}
        code, said = sync({f"{source_registry.host}/ns/app:1": f"{front.host}/t/other"},
                          {source_registry.host: {"insecure": True}, front.host: wrong})
        assert code == EXIT_FAILED
        assert f"authentication failed for user {upstream.username!r}" in said
        assert "not-the-password" not in said
    finally:
        front.close()
