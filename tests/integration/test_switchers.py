"""image-syncer v1.5 command lines, as scripts and CI workflows write them, run unchanged
(`image-syncer` replaced by `migrator`) against real local registries: the combined
`--config` file, `-p`/`-r`, `--os`/`--arch`, `--force` and the success file in both
formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from migrator.cli import EXIT_OK, main
from tests.support.images import get_manifest, list_tags, make_layer, push_image, push_index

SUMMARY = "Images({}) migration finished, 0 images tasks failed, 0 tasks generate failed"
WRITES = ("POST", "PUT", "PATCH")


def layers(*seeds: int) -> list[bytes]:
    return [make_layer(8 * 1024, seed) for seed in seeds]


@pytest.fixture
def run(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def run(*argv: str) -> tuple[int, list[str], str]:
        code = main(list(argv), {"MIGRATOR_STATE_DIR": str(tmp_path / "state"),
                                 "MIGRATOR_RETRY_PASS_DELAY": "0"})
        out, err = capsys.readouterr()
        return code, out.splitlines(), err

    return run


def write_config(path: Path, source, target, images: dict) -> None:
    """image-syncer's combined file, as its examples/config.yaml writes it."""
    config = {"auth": {source.host: {"username": "", "password": "", "insecure": True},
                       target.host: {"insecure": True}},
              "images": images}
    path.write_text(yaml.safe_dump(config))


def test_arch_filter_force_and_success_files(run, tmp_path, source_registry, target_registry):
    src, dst = source_registry.host, target_registry.host
    index = push_index(source_registry, "team/multi", "1", platforms=[
        ("linux", "amd64", layers(1, 2)), ("linux", "arm64/v8", layers(1, 3))])
    arm_only = push_image(source_registry, "team/armonly", "1", layers=layers(4), arch="arm64")
    amd_only = push_image(source_registry, "team/amdonly", "1", layers=layers(5))
    write_config(tmp_path / "config.yaml", source_registry, target_registry, {
        f"{src}/team/multi:1": f"{dst}/mirror/multi",
        f"{src}/team/armonly:1": f"{dst}/mirror/armonly",
        f"{src}/team/amdonly:1": [f"{dst}/mirror/amdonly", f"{dst}/backup/amdonly"],
    })

    # A v1.5 workflow's line, with no command: flags alone mean sync.
    code, out, err = run("--config", "config.yaml", "-p", "4", "-r", "1", "--os", "linux",
                         "--arch", "amd64", "--output-success-images", "ok.yaml")
    assert code == EXIT_OK, err
    assert out[-1] == SUMMARY.format(4)
    # The index keeps its amd64 child only, under a digest of its own.
    body, _, digest = get_manifest(target_registry, "mirror/multi", "1")
    children = json.loads(body)["manifests"]
    assert [c["platform"]["architecture"] for c in children] == ["amd64"]
    assert children[0]["digest"] == index.children[0].digest and digest != index.digest
    # The arm64-only image is skipped, not failed, and absent from the success file.
    assert list_tags(target_registry, "mirror/armonly") == []
    assert f"note: {src}/team/armonly:1 -> {dst}/mirror/armonly:1: skipped: platform " \
           "linux/arm64 is not among linux/amd64" in err
    assert get_manifest(target_registry, "backup/amdonly", "1")[2] == amd_only.digest
    assert yaml.safe_load((tmp_path / "ok.yaml").read_text()) == {
        f"{src}/team/multi:1": [f"{dst}/mirror/multi:1"],
        f"{src}/team/amdonly:1": [f"{dst}/backup/amdonly:1", f"{dst}/mirror/amdonly:1"],
    }
    assert arm_only.digest not in (tmp_path / "ok.yaml").read_text()

    # A re-run writes nothing; with --force every manifest is written again, no blob.
    mark = target_registry.mark()
    code, out, err = run("--config", "config.yaml", "--arch=amd64",
                         "--output-success-images", "ok.json", "--output-images-format", "json")
    assert code == EXIT_OK, err
    assert [r for r in target_registry.requests(mark) if r[0] in WRITES] == []
    assert json.loads((tmp_path / "ok.json").read_text()) == yaml.safe_load(
        (tmp_path / "ok.yaml").read_text())

    mark = target_registry.mark()
    code, out, err = run("--config", "config.yaml", "--arch", "amd64", "--force")
    assert code == EXIT_OK, err
    writes = [(method, path) for method, path, _ in target_registry.requests(mark)
              if method in WRITES]
    assert writes and all(method == "PUT" and "/manifests/" in path for method, path in writes)
    # the filtered index and its child, and the single image at both its targets
    assert len(writes) == 4
    assert get_manifest(target_registry, "mirror/multi", "1")[2] == digest


def test_docker_style_names_against_local_registries(run, tmp_path, source_registry,
                                                     target_registry):
    """`registry/repository` without a namespace, on both sides, with a tag list."""
    src, dst = source_registry.host, target_registry.host
    pushed = {tag: push_image(source_registry, "pause", tag, layers=layers(7, i))
              for i, tag in enumerate(["3.2", "3.9"])}
    (tmp_path / "images.json").write_text(json.dumps({f"{src}/pause:3.2,3.9": f"{dst}/pause"}))
    (tmp_path / "auth.json").write_text(json.dumps({src: {"insecure": True},
                                                    dst: {"insecure": True}}))
    code, out, err = run("check")
    assert (code, out[0]) == (EXIT_OK, f"{src}/pause:3.2,3.9 -> {dst}/pause"), err
    code, out, err = run("--auth=auth.json", "--images=images.json", "--proc=2")
    assert code == EXIT_OK, err
    assert out[-1] == SUMMARY.format(2)
    assert {tag: get_manifest(target_registry, "pause", tag)[2] for tag in pushed} == {
        tag: image.digest for tag, image in pushed.items()}
