"""Foreign / non-distributable layers (Windows base layers): left where their `urls` point by
default, as skopeo and crane do, and copied from the source with --include-foreign-layers."""

from __future__ import annotations

import json

from migrator.cli import EXIT_OK, main
from migrator.copy import CopyOptions
from tests.support.images import (
    blob_exists,
    get_manifest,
    make_config,
    make_layer,
    push_blob,
    push_manifest,
    session_for,
)

FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def push_windows_image(registry, repository: str, tag: str) -> tuple[str, str, str]:
    """(manifest digest, foreign layer digest, own layer digest): a Windows image whose base
    layer is foreign, with `urls` to its usual home; the registry holds its bytes too (a
    mirror that allowed them), so that the flag has something to copy."""
    base, own = make_layer(48 * 1024, 601), make_layer(8 * 1024, 602)
    url = registry.url
    with session_for(registry, None, None) as session:
        config = make_config("windows", "amd64")
        config_digest = push_blob(session, url, repository, config)
        base_digest = push_blob(session, url, repository, base)
        own_digest = push_blob(session, url, repository, own)
        body = json.dumps({
            "schemaVersion": 2, "mediaType": MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "size": len(config), "digest": config_digest},
            "layers": [
                {"mediaType": FOREIGN, "size": len(base), "digest": base_digest,
                 "urls": [f"https://mcr.microsoft.com/v2/windows/servercore/blobs/{base_digest}"]},
                {"mediaType": LAYER, "size": len(own), "digest": own_digest}],
        }, indent=3).encode()
        digest = push_manifest(session, url, repository, tag, body, MANIFEST)
    return digest, base_digest, own_digest


def test_foreign_layers_stay_behind_unless_asked(tmp_path, capsys, source_registry,
                                                 registry_factory):
    target = registry_factory()
    digest, foreign, own = push_windows_image(source_registry, "win/app", "ltsc2022")
    (tmp_path / "auth.json").write_text(json.dumps({source_registry.host: {"insecure": True},
                                                    target.host: {"insecure": True}}))

    def run(command: str, destination: str, *flags: str) -> str:
        (tmp_path / "images.json").write_text(json.dumps(
            {f"{source_registry.host}/win/app:ltsc2022": f"{target.host}/{destination}"}))
        code = main([command, "--images", str(tmp_path / "images.json"), "--auth",
                     str(tmp_path / "auth.json"), "--log", str(tmp_path / "log"), "--no-state",
                     *flags], {})
        out, err = capsys.readouterr()
        assert code == EXIT_OK, out + err
        return out

    assert "2 blobs to upload" in run("plan", "plain/app")
    assert "3 blobs to upload" in run("plan", "plain/app", "--include-foreign-layers")
    run("sync", "plain/app")
    assert get_manifest(target, "plain/app", "ltsc2022")[2] == digest  # unchanged, urls kept
    assert blob_exists(target, "plain/app", own)
    assert not blob_exists(target, "plain/app", foreign)

    run("sync", "full/app", "--include-foreign-layers")
    assert get_manifest(target, "full/app", "ltsc2022")[2] == digest
    assert blob_exists(target, "full/app", foreign) and blob_exists(target, "full/app", own)


def test_the_flag_reaches_the_fleet_s_workers():
    kwargs = json.loads(json.dumps(CopyOptions(foreign_layers=True).to_task_kwargs()))
    assert kwargs == {"foreign_layers": True}
    assert CopyOptions.from_task_kwargs(kwargs).foreign_layers
    assert not CopyOptions.from_task_kwargs({}).foreign_layers
