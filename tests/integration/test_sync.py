"""`migrator sync` end to end against real Distribution registries.

Each test seeds a source registry with images built by the tests' own pusher, runs the real
command in-process (`main(argv, environ)`), and checks the target with the tests' own client
and the registry's access log: the product's code is never on both sides of an assertion.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from migrator.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, main
from tests.support.images import (
    get_manifest,
    list_tags,
    make_layer,
    manifest_exists,
    push_image,
    push_index,
    sha256_digest,
)

WRITES = ("POST", "PUT", "PATCH", "DELETE")


class Sync:
    """Runs `migrator sync` with rule and auth files written from dicts."""

    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.dir = tmp_path
        self.capsys = capsys
        self.log = tmp_path / "migrator.log"

    def __call__(
        self,
        images: dict,
        auth: dict | None = None,
        *flags: str,
        environ: dict[str, str] | None = None,
        state: str = "state",
    ) -> tuple[int, str, str]:
        (self.dir / "images.json").write_text(json.dumps(images))
        (self.dir / "auth.json").write_text(json.dumps(auth or {}))
        argv = [
            "sync",
            "--images",
            str(self.dir / "images.json"),
            "--auth",
            str(self.dir / "auth.json"),
            "--log",
            str(self.log),
            "--state",
            str(self.dir / state),
            "--retries",
            "0",
            *flags,
        ]
        code = main(argv, environ or {})
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def sync(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Sync:
    return Sync(tmp_path, capsys)


def insecure(*registries) -> dict:
    return {registry.host: {"insecure": True} for registry in registries}


def writes(registry, since: int = 0) -> list[tuple[str, str, int]]:
    return [r for r in registry.requests(since) if r[0] in WRITES]


def layers(*seeds: int, size: int = 64 * 1024) -> list[bytes]:
    return [make_layer(size, seed) for seed in seeds]


def test_all_tags_renamed_repository_and_summary(sync, source_registry, target_registry):
    pushed = {
        tag: push_image(source_registry, "team/app", tag, layers=layers(1, 2, i + 10))
        for i, tag in enumerate(["v1", "v2", "latest"])
    }
    code, out, _ = sync(
        {f"{source_registry.host}/team/app": f"{target_registry.host}/x/renamed"},
        insecure(source_registry, target_registry),
    )
    assert code == EXIT_OK
    assert out.splitlines()[0] == "Start to generate images tasks, please wait ..."
    assert "Start to handle images tasks, please wait ..." in out
    assert out.splitlines()[-1] == (
        "Images(3) migration finished, 0 images tasks failed, 0 tasks generate failed"
    )
    assert sorted(list_tags(target_registry, "x/renamed")) == ["latest", "v1", "v2"]
    for tag, image in pushed.items():
        raw, _, digest = get_manifest(target_registry, "x/renamed", tag)
        assert digest == image.digest and raw == image.manifest


def test_one_tag_keeps_or_renames_tag_and_several_tags(sync, source_registry, target_registry):
    for tag in ("1.0", "2.0", "3.0"):
        push_image(source_registry, "ns/etcd", tag, layers=layers(3, hash(tag) % 1000))
    src, dst = source_registry.host, target_registry.host
    code, out, _ = sync(
        {
            f"{src}/ns/etcd:1.0": f"{dst}/test/etcd",  # rule 7: keeps the tag
            f"{src}/ns/etcd:2.0": f"{dst}/test/etcd-two:stable",  # rule 5: new name and tag
            f"{src}/ns/etcd:1.0,3.0": f"{dst}/multi/etcd",  # several tags
        },
        insecure(source_registry, target_registry),
    )
    assert code == EXIT_OK, out
    assert "Images(4)" in out
    assert list_tags(target_registry, "test/etcd") == ["1.0"]
    assert list_tags(target_registry, "test/etcd-two") == ["stable"]
    assert sorted(list_tags(target_registry, "multi/etcd")) == ["1.0", "3.0"]
    assert (
        get_manifest(target_registry, "test/etcd-two", "stable")[2]
        == get_manifest(source_registry, "ns/etcd", "2.0")[2]
    )


def test_tag_regex_and_digest_pins(sync, source_registry, target_registry):
    for tag in ("v1.0", "v1.1", "v2.0", "nightly"):
        push_image(source_registry, "ns/tool", tag, layers=layers(4, len(tag) + ord(tag[-1])))
    pinned = push_image(source_registry, "ns/pinned", "moving", layers=layers(5))
    src, dst = source_registry.host, target_registry.host
    code, out, _ = sync(
        {
            f"{src}/ns/tool:/v1\\..*/": f"{dst}/re/tool",
            f"{src}/ns/pinned@{pinned.digest}": [f"{dst}/pin/tagged:fixed", f"{dst}/pin/bydigest"],
        },
        insecure(source_registry, target_registry),
    )
    assert code == EXIT_OK, out
    assert sorted(list_tags(target_registry, "re/tool")) == ["v1.0", "v1.1"]
    assert get_manifest(target_registry, "pin/tagged", "fixed")[2] == pinned.digest
    assert manifest_exists(target_registry, "pin/bydigest", pinned.digest)
    assert list_tags(target_registry, "pin/bydigest") == []


def test_empty_target_uses_defaults_flag_over_environment(sync, source_registry, target_registry):
    push_image(source_registry, "coreos/kube-rbac-proxy", "v0.4.1", layers=layers(6))
    rules = {f"{source_registry.host}/coreos/kube-rbac-proxy:v0.4.1": ""}
    environ = {"DEFAULT_REGISTRY": target_registry.host, "DEFAULT_NAMESPACE": "fromenv"}
    code, out, _ = sync(rules, insecure(source_registry, target_registry), environ=environ)
    assert code == EXIT_OK, out
    assert list_tags(target_registry, "fromenv/kube-rbac-proxy") == ["v0.4.1"]
    code, out, _ = sync(
        rules,
        insecure(source_registry, target_registry),
        "--namespace",
        "fromflag",
        environ=environ,
    )
    assert code == EXIT_OK, out
    assert list_tags(target_registry, "fromflag/kube-rbac-proxy") == ["v0.4.1"]


@pytest.mark.parametrize("media", ["docker", "oci"])
def test_multi_arch_index_keeps_its_digest(sync, source_registry, target_registry, media):
    index = push_index(
        source_registry,
        "ns/multi",
        "1.0",
        media=media,
        platforms=[("linux", "amd64", layers(7, 8)), ("linux", "arm64", layers(7, 9))],
    )
    code, out, _ = sync(
        {f"{source_registry.host}/ns/multi:1.0": f"{target_registry.host}/m/x"},
        insecure(source_registry, target_registry),
    )
    assert code == EXIT_OK, out
    raw, media_type, digest = get_manifest(target_registry, "m/x", "1.0")
    assert digest == index.digest and raw == index.manifest
    assert media_type == index.media_type
    for child in index.children:
        assert get_manifest(target_registry, "m/x", child.digest)[2] == child.digest
    # A new repository (its tag list: NAME_UNKNOWN) holds no child manifest: no HEAD for one.
    heads = [uri for method, uri, _ in target_registry.requests() if method == "HEAD"]
    assert not [uri for uri in heads if "/manifests/sha256:" in uri], heads

    # Into a repository with tags, each child is asked for first; one already there (amd64,
    # shared with 1.0) is neither PUT again nor are its blobs.
    second = push_index(
        source_registry, "ns/multi", "2.0", media=media,
        platforms=[("linux", "amd64", layers(7, 8)), ("linux", "arm64", layers(7, 10))])
    mark = target_registry.mark()
    code, out, _ = sync(
        {f"{source_registry.host}/ns/multi:2.0": f"{target_registry.host}/m/x"},
        insecure(source_registry, target_registry),
    )
    assert code == EXIT_OK, out
    after = target_registry.requests(mark)
    shared, new = (child.digest for child in second.children)
    assert shared == index.children[0].digest
    assert [m for m, uri, _ in after if uri.endswith(f"/manifests/{shared}")] == ["HEAD"]
    assert [m for m, uri, _ in after if uri.endswith(f"/manifests/{new}")] == ["HEAD", "PUT"]
    assert get_manifest(target_registry, "m/x", "2.0")[2] == second.digest


def test_shared_layers_are_mounted_not_uploaded_again(sync, source_registry, target_registry):
    base = layers(20, 21, 22, size=256 * 1024)
    push_image(source_registry, "apps/a", "1", layers=[*base, *layers(23)])
    src, dst = source_registry.host, target_registry.host
    auth = insecure(source_registry, target_registry)
    assert sync({f"{src}/apps/a:1": f"{dst}/prod/a"}, auth)[0] == EXIT_OK
    push_image(source_registry, "apps/b", "1", layers=[*base, *layers(24)])
    mark = target_registry.mark()
    code, out, _ = sync({f"{src}/apps/b:1": f"{dst}/prod/b"}, auth)
    assert code == EXIT_OK, out
    after = target_registry.requests(mark)
    mounts = [r for r in after if r[0] == "POST" and "from=prod/a" in r[1]]
    uploads = [r for r in after if r[0] == "PUT" and "/blobs/uploads/" in r[1]]
    assert len(mounts) == 3 and all(status == 201 for _, _, status in mounts)
    assert len(uploads) == 2  # the new layer and the new config only


def test_a_stale_mount_source_falls_back_to_an_upload(sync, source_registry, target_registry):
    """The record says a repository of the target holds the blobs; the registry has none
    there: each mount opens an upload session instead, and the blob goes up through it."""
    from migrator.ledger import SQLiteLedger

    pushed = push_image(source_registry, "ns/stale", "1", layers=layers(72, 73))
    ledger = SQLiteLedger(sync.dir / "state" / "ledger.sqlite")
    for digest in pushed.blobs:
        ledger.add_blob(target_registry.host, digest, "ghost/repo")
    ledger.close()
    code, out, _ = sync({f"{source_registry.host}/ns/stale:1": f"{target_registry.host}/t/stale"},
                        insecure(source_registry, target_registry))
    assert code == EXIT_OK, out
    requests = target_registry.requests()
    mounts = [status for method, uri, status in requests
              if method == "POST" and ("from=ghost%2Frepo" in uri or "from=ghost/repo" in uri)]
    assert mounts == [202] * len(pushed.blobs)
    assert [m for m, *_ in requests].count("POST") == len(pushed.blobs)  # no second session
    assert get_manifest(target_registry, "t/stale", "1")[2] == pushed.digest


def test_second_run_writes_nothing_and_costs_one_head_per_tag(
    sync, source_registry, target_registry
):
    for tag in ("a", "b", "c"):
        push_image(source_registry, "ns/re", tag, layers=layers(30, ord(tag)))
    push_index(
        source_registry,
        "ns/idx",
        "1",
        platforms=[("linux", "amd64", layers(31)), ("linux", "arm64", layers(32))],
    )
    rules = {
        f"{source_registry.host}/ns/re:a,b,c": f"{target_registry.host}/n/re",
        f"{source_registry.host}/ns/idx:1": f"{target_registry.host}/n/idx",
    }
    auth = insecure(source_registry, target_registry)
    assert sync(rules, auth)[0] == EXIT_OK
    src_mark, dst_mark = source_registry.mark(), target_registry.mark()
    # Every target tag HEADed, as on every run with 1 (the default samples a share of the
    # tags: tests/integration/test_reruns.py).
    code, out, _ = sync(rules, auth, environ={"MIGRATOR_VERIFY_TARGET_EVERY": "1"})
    assert code == EXIT_OK and "Images(4)" in out
    assert writes(target_registry, dst_mark) == []
    source_requests = [r for r in source_registry.requests(src_mark) if r[1] != "/v2/"]
    assert len(source_requests) == 4
    assert all(method == "HEAD" and "/manifests/" in path for method, path, _ in source_requests)
    target_requests = [r for r in target_registry.requests(dst_mark) if r[1] != "/v2/"]
    assert len(target_requests) == 4


def test_lost_record_and_stale_record_never_break_correctness(
    sync, source_registry, registry_factory
):
    target = registry_factory()
    push_image(source_registry, "ns/app", "1", layers=layers(40, 41))
    rules = {f"{source_registry.host}/ns/app:1": f"{target.host}/t/app"}
    auth = insecure(source_registry, target)
    assert sync(rules, auth)[0] == EXIT_OK
    # A fresh target with the old record: the record claims blobs the registry lacks.
    fresh = registry_factory()
    rules = {f"{source_registry.host}/ns/app:1": f"{fresh.host}/t/app"}
    auth = insecure(source_registry, fresh)
    assert sync(rules, auth)[0] == EXIT_OK
    assert manifest_exists(fresh, "t/app", "1")
    # No record at all against a filled target: nothing written.
    mark = fresh.mark()
    assert sync(rules, auth, state="other-state")[0] == EXIT_OK
    assert writes(fresh, mark) == []


def test_missing_source_tag_fails_the_image_with_reason(sync, source_registry, target_registry):
    push_image(source_registry, "ns/there", "1", layers=layers(50))
    code, out, err = sync(
        {
            f"{source_registry.host}/ns/there:1": f"{target_registry.host}/t/there",
            f"{source_registry.host}/ns/there:nope": f"{target_registry.host}/t/there",
            f"{source_registry.host}/ns/absent": f"{target_registry.host}/t/absent",
        },
        insecure(source_registry, target_registry),
    )
    assert code == EXIT_FAILED
    assert out.splitlines()[-1] == (
        "Images(2) migration finished, 1 images tasks failed, 1 tasks generate failed"
    )
    assert "ns/there:nope" in err and "not found" in err
    assert "ns/absent" in err


def test_bad_input_reports_every_problem_and_copies_nothing(sync, source_registry, target_registry):
    src, dst = source_registry.host, target_registry.host
    push_image(source_registry, "ns/ok", "1", layers=layers(60))
    mark = target_registry.mark()
    code, out, err = sync(
        {
            f"{src}/ns/ok:1": f"{dst}/t/ok",
            src: f"{dst}/t/whole",  # rule 1: a whole registry
            f"{src}/ns/all": f"{dst}/t/all:tagged",  # rule 6
            f"{src}/ns/default:1": "",  # rule 8 with no defaults
        },
        {dst: {"username": "u", "password": "${UNSET_PASSWORD}"}},
    )
    assert code == EXIT_BAD_INPUT
    problems = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(problems) == 4, err
    assert all("images.json" in p or "auth.json" in p for p in problems)
    assert "UNSET_PASSWORD" in err
    assert "Images(" not in out
    assert writes(target_registry, mark) == [] and target_registry.requests(mark) == []


def test_flipped_byte_is_caught_and_no_manifest_is_written(
    sync, source_registry, target_registry, fault_proxy
):
    proxy = fault_proxy(source_registry.url)
    push_image(source_registry, "ns/corrupt", "1", layers=layers(70, size=512 * 1024))
    proxy.flip_byte(method="GET", path=r"/blobs/sha256:", times=100)
    code, out, err = sync(
        {f"{proxy.host}/ns/corrupt:1": f"{target_registry.host}/t/corrupt"},
        {proxy.host: {"insecure": True}, **insecure(target_registry)},
    )
    assert code == EXIT_FAILED
    assert "digest mismatch" in err
    assert not manifest_exists(target_registry, "t/corrupt", "1")
    assert not [r for r in target_registry.requests() if r[0] == "PUT" and "/manifests/" in r[1]]


def test_rate_limits_and_dropped_connections_are_retried(
    sync, source_registry, target_registry, fault_proxy
):
    proxy = fault_proxy(source_registry.url)
    image = push_image(source_registry, "ns/flaky", "1", layers=layers(80, 81, size=256 * 1024))
    proxy.status(429, method="GET", path=r"/manifests/", times=1, retry_after=1)
    proxy.status(503, method="GET", path=r"/manifests/", times=1)
    proxy.reset(method="GET", path=r"/blobs/sha256:", times=2, after_bytes=1000)
    code, out, err = sync(
        {f"{proxy.host}/ns/flaky:1": f"{target_registry.host}/t/flaky"},
        {proxy.host: {"insecure": True}, **insecure(target_registry)},
    )
    assert code == EXIT_OK, err
    assert get_manifest(target_registry, "t/flaky", "1")[2] == image.digest
    assert len(proxy.fired) == 4


def test_tls_basic_auth_target_and_no_password_anywhere(sync, source_registry, tls_registry):
    image = push_image(source_registry, "ns/secure", "1", layers=layers(90))
    rules = {f"{source_registry.host}/ns/secure:1": f"{tls_registry.host}/t/secure"}
    good = {
        **insecure(source_registry),
        tls_registry.host: {
            "username": tls_registry.username,
            "password": "${TARGET_PASSWORD}",
            "ca_file": str(tls_registry.ca_file),
        },
    }
    code, out, err = sync(rules, good, environ={"TARGET_PASSWORD": tls_registry.password})
    assert code == EXIT_OK, err
    assert (
        get_manifest(
            tls_registry, "t/secure", "1", auth=(tls_registry.username, tls_registry.password)
        )[2]
        == image.digest
    )
    everything = out + err + sync.log.read_text()
    assert tls_registry.password not in everything

    bad = {**good, tls_registry.host: {**good[tls_registry.host], "password": "wrong-secret"}}
    code, out, err = sync({f"{source_registry.host}/ns/secure:1": f"{tls_registry.host}/t/2"}, bad)
    assert code == EXIT_FAILED
    assert "authentication failed" in err and tls_registry.username in err
    assert "wrong-secret" not in out + err + sync.log.read_text()


def test_tls_without_the_ca_is_refused_with_advice(sync, source_registry, tls_registry):
    push_image(source_registry, "ns/ca", "1", layers=layers(91))
    code, _, err = sync(
        {f"{source_registry.host}/ns/ca:1": f"{tls_registry.host}/t/ca"},
        {
            **insecure(source_registry),
            tls_registry.host: {
                "username": tls_registry.username,
                "password": tls_registry.password,
            },
        },
    )
    assert code == EXIT_FAILED
    assert "TLS" in err and "ca_file" in err


def test_bearer_token_registries_on_both_sides(sync, token_registry, registry_factory):
    source = token_registry.registry
    target = registry_factory(auth="token", token_issuer=token_registry.issuer)
    image = push_image(
        source, "ns/tok", "1", layers=layers(95, 96), auth=(source.username, source.password)
    )
    push_image(
        source, "ns/tok", "2", layers=layers(95, 97), auth=(source.username, source.password)
    )
    auth = {
        source.host: {"username": source.username, "password": source.password, "insecure": True},
        target.host: {"username": target.username, "password": target.password, "insecure": True},
    }
    issued_before = len(token_registry.issuer.issued)
    code, out, err = sync({f"{source.host}/ns/tok": f"{target.host}/t/tok"}, auth)
    issued = len(token_registry.issuer.issued) - issued_before
    assert code == EXIT_OK, err
    assert (
        get_manifest(target, "t/tok", "1", auth=(target.username, target.password))[2]
        == image.digest
    )
    # Tokens are cached per scope and fetched once however many threads need them: source
    # pull, target pull (the first HEAD), target pull,push (which then serves pulls too).
    assert issued == 3
    assert source.password not in out + err + sync.log.read_text()


def test_failed_images_are_retried_after_the_pass(sync, source_registry, target_registry,
                                                  fault_proxy):
    proxy = fault_proxy(source_registry.url)
    layer = layers(85, size=256 * 1024)
    image = push_image(source_registry, "ns/later", "1", layers=layer)
    # Every try of the first pass breaks mid-blob; the retry pass finds the network healed.
    proxy.reset(method="GET", path=sha256_digest(layer[0]), times=3, after_bytes=1000)
    rules = {f"{proxy.host}/ns/later:1": f"{target_registry.host}/t/later"}
    auth = {proxy.host: {"insecure": True}, **insecure(target_registry)}
    environ = {"MIGRATOR_RETRY_PASS_DELAY": "0.1", "MIGRATOR_BACKOFF_INITIAL": "0.01"}
    code, out, err = sync(rules, auth, "--retries", "1", environ=environ)
    assert code == EXIT_OK, err
    assert get_manifest(target_registry, "t/later", "1")[2] == image.digest
    assert "retry pass 1" in sync.log.read_text()


def test_invalid_setting_is_bad_input(sync, source_registry, target_registry):
    code, _, err = sync({f"{source_registry.host}/ns/x:1": f"{target_registry.host}/t/x"},
                        insecure(source_registry, target_registry),
                        environ={"MIGRATOR_CHUNK_SIZE": "tiny"})
    assert code == EXIT_BAD_INPUT
    assert "MIGRATOR_CHUNK_SIZE" in err


def test_console_script_runs_as_a_process(tmp_path, source_registry, target_registry):
    import os
    import subprocess
    import sys

    image = push_image(source_registry, "ns/proc", "1", layers=layers(86))
    (tmp_path / "images.yaml").write_text(
        f"{source_registry.host}/ns/proc:1: {target_registry.host}/t/proc\n")
    (tmp_path / "auth.yaml").write_text(
        f"{source_registry.host}:\n  insecure: true\n{target_registry.host}:\n  insecure: true\n")
    # The virtualenv's own script: nothing named migrator need be on PATH (nor should be).
    migrator = Path(sys.executable).parent / "migrator"
    done = subprocess.run(
        [migrator, "sync", "--images", "images.yaml", "--auth", "auth.yaml", "-w", "2", "-r", "0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (
        "Images(1) migration finished, 0 images tasks failed, 0 tasks generate failed")
    assert (tmp_path / ".migrator" / "ledger.sqlite").exists()
    assert get_manifest(target_registry, "t/proc", "1")[2] == image.digest
