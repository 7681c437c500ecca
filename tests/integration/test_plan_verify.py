"""Seeing and proving: `--src/--dst`, dry runs (`plan`), reports, and `verify`."""

from __future__ import annotations

import json

from migrator.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, main
from tests.integration.test_sync import WRITES, insecure, layers
from tests.support.images import get_manifest, list_tags, push_image


def run(capsys, *argv: str, environ: dict | None = None) -> tuple[int, str, str]:
    code = main(list(argv), environ or {})
    out, err = capsys.readouterr()
    return code, out, err


def write_auth(tmp_path, *registries) -> str:
    path = tmp_path / "auth.json"
    path.write_text(json.dumps(insecure(*registries)))
    return str(path)


def test_one_image_from_the_command_line(tmp_path, capsys, source_registry, target_registry):
    image = push_image(source_registry, "ns/cli", "1", layers=layers(201))
    auth = write_auth(tmp_path, source_registry, target_registry)
    code, out, err = run(capsys, "sync", "--auth", auth, "--no-state",
                         "--src", f"{source_registry.host}/ns/cli:1",
                         "--dst", f"{target_registry.host}/t/cli:copied")
    assert code == EXIT_OK, err
    assert "Images(1) migration finished" in out
    assert get_manifest(target_registry, "t/cli", "copied")[2] == image.digest
    code, _, err = run(capsys, "sync", "--auth", auth, "--dst", f"{target_registry.host}/t/x")
    assert code == EXIT_BAD_INPUT and "--src" in err


def test_plan_counts_what_would_be_copied_and_writes_nothing(tmp_path, capsys, source_registry,
                                                              target_registry):
    push_image(source_registry, "ns/plan", "1", layers=layers(210, 211, size=100_000))
    push_image(source_registry, "ns/plan", "2", layers=layers(210, 212, size=100_000))
    rules = tmp_path / "images.json"
    rules.write_text(json.dumps({f"{source_registry.host}/ns/plan": f"{target_registry.host}/t/p"}))
    auth = write_auth(tmp_path, source_registry, target_registry)
    state = tmp_path / "state"
    mark = target_registry.mark()
    code, out, err = run(capsys, "plan", "--images", str(rules), "--auth", auth,
                         "--state", str(state))
    assert code == EXIT_OK, err
    assert out.count("would copy: ") == 2
    # 3 shared-or-own layers + 2 configs, each counted once however many images need it
    assert "2 of 2 images to copy, 5 blobs new to the target" in out
    assert [r for r in target_registry.requests(mark) if r[0] in WRITES] == []
    assert not state.exists()
    assert list_tags(target_registry, "t/p") == []

    assert run(capsys, "sync", "--images", str(rules), "--auth", auth, "--state",
               str(state))[0] == EXIT_OK
    code, out, err = run(capsys, "sync", "--dry-run", "--images", str(rules), "--auth", auth,
                         "--state", str(state))
    assert code == EXIT_OK, err
    assert out.count("up to date: ") == 2 and "0 of 2 images to copy" in out


def test_reports_list_successes_and_failures_ready_to_run_again(tmp_path, capsys,
                                                               source_registry,
                                                               target_registry):
    push_image(source_registry, "ns/rep", "1", layers=layers(220))
    rules = tmp_path / "images.json"
    src, dst = source_registry.host, target_registry.host
    rules.write_text(json.dumps({f"{src}/ns/rep:1,2": f"{dst}/t/rep"}))
    auth = write_auth(tmp_path, source_registry, target_registry)
    ok_file, failed_file = tmp_path / "ok.json", tmp_path / "failed.json"
    code, _, _ = run(capsys, "sync", "--images", str(rules), "--auth", auth, "--no-state",
                     "-r", "0", "--output-success", str(ok_file),
                     "--output-failed", str(failed_file))
    assert code == EXIT_FAILED
    assert json.loads(ok_file.read_text()) == {f"{src}/ns/rep:1": f"{dst}/t/rep:1"}
    assert json.loads(failed_file.read_text()) == {f"{src}/ns/rep:2": f"{dst}/t/rep:2"}
    reasons = json.loads((tmp_path / "failed.json.reasons.json").read_text())
    assert reasons[0]["source"] == f"{src}/ns/rep:2" and "not found" in reasons[0]["reason"]

    push_image(source_registry, "ns/rep", "2", layers=layers(221))  # the cause is fixed
    code, out, _ = run(capsys, "sync", "--images", str(failed_file), "--auth", auth,
                       "--no-state")
    assert code == EXIT_OK and "Images(1)" in out
    assert sorted(list_tags(target_registry, "t/rep")) == ["1", "2"]


def test_verify_finds_missing_and_changed_tags(tmp_path, capsys, source_registry,
                                               target_registry):
    for tag in ("a", "b", "c"):
        push_image(source_registry, "ns/ver", tag, layers=layers(230, ord(tag)))
    rules = tmp_path / "images.json"
    rules.write_text(json.dumps(
        {f"{source_registry.host}/ns/ver": f"{target_registry.host}/t/ver"}))
    auth = write_auth(tmp_path, source_registry, target_registry)
    code, out, _ = run(capsys, "verify", "--images", str(rules), "--auth", auth)
    assert code == EXIT_FAILED and out.count("missing: ") == 3

    assert run(capsys, "sync", "--images", str(rules), "--auth", auth, "--no-state")[0] == 0
    mark = target_registry.mark()
    code, out, _ = run(capsys, "verify", "--images", str(rules), "--auth", auth)
    assert code == EXIT_OK
    assert "Verified 3 images: 3 agree, 0 missing, 0 differ" in out
    assert [r for r in target_registry.requests(mark) if r[0] in WRITES] == []

    push_image(target_registry, "t/ver", "b", layers=layers(239))  # changed by someone else
    push_image(source_registry, "ns/ver", "d", layers=layers(238))  # new at the source
    code, out, _ = run(capsys, "verify", "--images", str(rules), "--auth", auth)
    assert code == EXIT_FAILED
    assert f"differs: {source_registry.host}/ns/ver:b -> {target_registry.host}/t/ver:b" in out
    assert f"missing: {source_registry.host}/ns/ver:d" in out
    assert "2 agree, 1 missing, 1 differ" in out
