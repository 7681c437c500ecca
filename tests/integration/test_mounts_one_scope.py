"""A token service that grants one scope per token (old GitLab, Harbor 1.1) cannot grant a
cross-repository mount: once that is known, no more mounts are asked of it in the run, and the
refusal says why instead of "may not push"."""

from __future__ import annotations

import json

from migrator.cli import EXIT_OK, main
from tests.support.images import get_manifest, make_layer, push_image
from tests.support.tokens import TokenIssuer

BASE = [make_layer(64 * 1024, seed) for seed in (401, 402, 403)]


def test_one_refused_mount_and_then_uploads(tmp_path, capsys, source_registry,
                                            registry_factory):
    with TokenIssuer(tmp_path / "issuer", scopes_read="last") as issuer:
        target = registry_factory(auth="token", token_issuer=issuer)
        push_image(source_registry, "ns/one", "1", layers=[*BASE, make_layer(8 * 1024, 404)])
        second = push_image(source_registry, "ns/two", "1",
                            layers=[*BASE, make_layer(8 * 1024, 405)])
        (tmp_path / "auth.json").write_text(json.dumps({
            source_registry.host: {"insecure": True},
            target.host: {"username": target.username, "password": target.password,
                          "insecure": True}}))
        log = tmp_path / "migrator.log"

        def sync(source: str, destination: str) -> int:
            (tmp_path / "images.json").write_text(json.dumps(
                {f"{source_registry.host}/{source}": f"{target.host}/{destination}"}))
            code = main(["sync", "--images", str(tmp_path / "images.json"), "--auth",
                         str(tmp_path / "auth.json"), "--log", str(log), "--state",
                         str(tmp_path / "state"), "--retries", "0", "--workers", "1"],
                        {"MIGRATOR_BLOB_PARALLELISM": "1"})
            capsys.readouterr()
            return code

        assert sync("ns/one:1", "t/one") == EXIT_OK
        mark = target.mark()
        assert sync("ns/two:1", "t/two") == EXIT_OK
        assert get_manifest(target, "t/two", "1", auth=target.auth)[2] == second.digest
        mounts = [status for method, path, status in target.requests(mark)
                  if method == "POST" and "from=t/one" in path]
        assert mounts == [401]  # the first base layer asked; the other two uploaded at once
        said = log.read_text()
        assert ("mount into 't/two' from 't/one' refused: its token service puts one scope in a "
                "token, and a mount needs the source's pull with the target's push in one; "
                "the blob is uploaded instead") in said
        assert "may not push" not in said
