"""What an operator types, against real registries: an auth file with a CI secret missing for a
registry the run does not touch, and one image by --src/--dst with no auth file at all
(plain-HTTP registries, credentials from the environment)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from migrator.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, main
from tests.support.images import get_manifest, make_layer, push_image

SUMMARY = "Images(1) migration finished, 0 images tasks failed, 0 tasks generate failed"


@pytest.fixture
def run(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, list[str], str]:
        code = main(list(argv), {"MIGRATOR_STATE_DIR": str(tmp_path / "state"),
                                 "MIGRATOR_RETRY_PASS_DELAY": "0", **(env or {})})
        out, err = capsys.readouterr()
        return code, out.splitlines(), err

    return run


def test_an_unset_secret_blocks_only_the_runs_that_use_its_registry(
        run, tmp_path, source_registry, target_registry):
    src, dst = source_registry.host, target_registry.host
    pushed = push_image(source_registry, "team/app", "1", layers=[make_layer(4096, 1)])
    (tmp_path / "auth.json").write_text(json.dumps({
        src: {"insecure": True},
        dst: {"insecure": True},
        # The production registry's secret is set only in the nightly job.
        "prod.example.com": {"username": "robot", "password": "${PROD_PASSWORD}"},
    }))
    (tmp_path / "images.json").write_text(json.dumps({f"{src}/team/app:1": f"{dst}/copy/app"}))
    code, out, err = run("sync")
    assert (code, out[-1]) == (EXIT_OK, SUMMARY), err
    assert ("warning: auth.json: 'prod.example.com': password: environment variable "
            "PROD_PASSWORD is not set") in err
    assert get_manifest(target_registry, "copy/app", "1")[2] == pushed.digest

    # A rule that copies to that registry stops the run before any request, naming the
    # variable, with every other problem of the files.
    (tmp_path / "images.json").write_text(json.dumps({
        f"{src}/team/app:1": ["prod.example.com/team/app", f"{dst}/copy/app2"]}))
    mark = target_registry.mark()
    code, out, err = run("sync")
    assert code == EXIT_BAD_INPUT and out == []
    assert ("error: auth.json: 'prod.example.com': password: environment variable "
            "PROD_PASSWORD is not set") in err.splitlines()
    assert "warning" not in err
    assert target_registry.requests(mark) == []


def test_one_image_between_plain_http_registries_without_an_auth_file(
        run, source_registry, target_registry):
    src, dst = source_registry.host, target_registry.host
    pushed = push_image(source_registry, "team/app", "1", layers=[make_layer(4096, 2)])
    code, _, err = run("sync", "--src", f"{src}/team/app:1", "--dst", f"{dst}/copy/app:1")
    assert code == EXIT_FAILED
    assert f"cannot connect to {src}" in err and "--src-insecure/--dst-insecure" in err

    code, out, err = run("sync", "--src", f"{src}/team/app:1", "--dst", f"{dst}/copy/app:1",
                         "--src-insecure", "--dst-insecure")
    assert (code, out[-1]) == (EXIT_OK, SUMMARY), err
    assert get_manifest(target_registry, "copy/app", "1")[2] == pushed.digest


def test_one_image_with_credentials_from_the_environment(run, tmp_path, source_registry,
                                                        tls_registry):
    src = source_registry.host
    pushed = push_image(source_registry, "team/app", "1", layers=[make_layer(4096, 3)])
    user, password = tls_registry.auth
    argv = ("sync", "--src", f"{src}/team/app:1", "--dst", f"{tls_registry.host}/copy/app:1",
            "--src-insecure")
    tls = {"MIGRATOR_CA_BUNDLE": str(tls_registry.ca_file)}
    code, _, err = run(*argv, env=tls)
    assert code == EXIT_FAILED and "authentication" in err

    code, out, err = run(*argv, env={**tls, "MIGRATOR_DST_USERNAME": user,
                                     "MIGRATOR_DST_PASSWORD": password})
    assert (code, out[-1]) == (EXIT_OK, SUMMARY), err
    assert password not in err and password not in "".join(out)
    assert get_manifest(tls_registry, "copy/app", "1", auth=tls_registry.auth)[2] == pushed.digest


@pytest.mark.parametrize(("argv", "env", "problem"), [
    (["--images", "images.json", "--src-insecure"], {},
     "--src-insecure/--dst-insecure: they apply to --src and --dst"),
    (["--src", "r.example.com/a:1", "--dst", "t.example.com/b:1"],
     {"MIGRATOR_SRC_USERNAME": "robot"},
     "MIGRATOR_SRC_USERNAME and MIGRATOR_SRC_PASSWORD: set both"),
    (["--src", "r.example.com/a:1", "--dst", "t.example.com/b:1"],
     {"MIGRATOR_DST_USERNAME": "robot", "MIGRATOR_DST_PASSWORD": "line\n"},
     "MIGRATOR_DST_PASSWORD: holds a control character"),
])
def test_one_image_flags_misused(run, tmp_path, argv, env, problem):
    (tmp_path / "images.json").write_text("{}")
    code, out, err = run("check", *argv, env=env)
    assert code == EXIT_BAD_INPUT and out == []
    assert any(line.startswith("error: ") and problem in line for line in err.splitlines()), err
