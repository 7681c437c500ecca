"""image-syncer v1.5's platform filters (`--os`/`--arch`, wildcards, single-platform images
skipped) and `--force` (manifests PUT again), against real registries.

The engine is driven through `EmbeddedRunner` (what `migrator sync` runs) and, for the fleet,
through `start_run` with real worker processes: the command-line flags that build the platform
set and `force` are another layer. The target registry's access log is the oracle.
"""

from __future__ import annotations

import io
import json

import pytest

from migrator.auth import AuthFile, RegistryAuth
from migrator.copy import CopyOptions
from migrator.ledger import MemoryLedger
from migrator.progress import ConsoleReporter
from migrator.rules import parse_rules
from migrator.runner import EmbeddedRunner, Summary
from migrator.settings import load_settings
from tests.integration.test_fleet import fleet  # noqa: F401 - the fixture, with its workers
from tests.support.images import (
    OCI_MANIFEST,
    get_manifest,
    list_tags,
    make_layer,
    push_blob,
    push_image,
    push_index,
    push_manifest,
    session_for,
)

SUMMARY = "Images({}) migration finished, 0 images tasks failed, 0 tasks generate failed"


def layers(*seeds: int) -> list[bytes]:
    return [make_layer(16 * 1024, seed) for seed in seeds]


def auth_of(*registries) -> AuthFile:
    return AuthFile("auth.json", {r.host: RegistryAuth(insecure=True) for r in registries})


def rules_of(images: dict) -> list:
    return parse_rules(images, filename="images.json", default_registry=None,
                       default_namespace=None)


def runner(registries, ledger, *, trust_ledger: bool | None = None, retries: int = 3,
           keep_each: bool = True, **options) -> tuple[EmbeddedRunner, ConsoleReporter]:
    settings = load_settings({"MIGRATOR_RETRY_PASS_DELAY": "0"})
    if trust_ledger is not None:
        settings = settings.model_copy(update={"trust_ledger": trust_ledger})
    reporter = ConsoleReporter(io.StringIO(), live=False)
    return EmbeddedRunner(auth=auth_of(*registries), ledger=ledger, settings=settings,
                          reporter=reporter, workers=2, retries=retries,
                          options=CopyOptions(**options), keep_each=keep_each), reporter


def push_config_image(registry, repository: str, tag: str, config: bytes, config_type: str,
                      seed: int) -> str:
    """An OCI image manifest with this config blob and one layer."""
    session = session_for(registry)
    config_digest = push_blob(session, registry.url, repository, config)
    layer = make_layer(4096, seed)
    layer_digest = push_blob(session, registry.url, repository, layer)
    body = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": len(layer)}]}).encode()
    return push_manifest(session, registry.url, repository, tag, body, OCI_MANIFEST)


def manifest_puts(registry, since: int) -> list[str]:
    return [path for method, path, _ in registry.requests(since)
            if method == "PUT" and "/manifests/" in path]


def other_writes(registry, since: int) -> list[tuple[str, str, int]]:
    """Every write that is not a manifest PUT: blob uploads, mounts, deletions."""
    return [r for r in registry.requests(since) if r[0] in ("POST", "PUT", "PATCH", "DELETE")
            and "/manifests/" not in r[1]]


def by_repository(summary: Summary) -> dict[str, str]:
    return {result.job.target.repository.split("/")[-1]: result.outcome
            for result in summary.results + summary.skipped}


def test_a_single_platform_image_outside_the_filter_is_skipped_not_failed(
        source_registry, target_registry):
    src, dst = source_registry.host, target_registry.host
    amd = push_image(source_registry, "ns/amd", "1", layers=layers(1))
    push_image(source_registry, "ns/arm", "1", layers=layers(2), media="oci", arch="arm64/v8")
    push_image(source_registry, "ns/win", "1", layers=layers(3), os="windows")
    # an artifact (OCI's empty config) and an image config that names no platform: no filter
    push_config_image(source_registry, "ns/artifact", "1", b"{}",
                      "application/vnd.oci.empty.v1+json", seed=6)
    bare = json.dumps({"rootfs": {"type": "layers", "diff_ids": []}}).encode()
    push_config_image(source_registry, "ns/bare", "1", bare,
                      "application/vnd.oci.image.config.v1+json", seed=7)
    index = push_index(source_registry, "ns/multi", "1", media="oci", platforms=[
        ("linux", "amd64", layers(4)), ("linux", "arm64", layers(5))])
    images = {f"{src}/ns/{name}:1": f"{dst}/t/{name}"
              for name in ("amd", "arm", "win", "artifact", "bare", "multi")}
    ledger = MemoryLedger()
    mark, src_mark = target_registry.mark(), source_registry.mark()

    engine, reporter = runner((source_registry, target_registry), ledger, retries=2,
                              platforms=frozenset({"*/amd64"}))
    summary = engine.run(rules_of(images))

    assert summary.ok and summary.failed == {}
    assert summary.line() == SUMMARY.format(6)  # a skipped image counts in the total
    assert by_repository(summary) == {"amd": "copied", "arm": "skipped", "win": "copied",
                                      "artifact": "copied", "bare": "copied", "multi": "copied"}
    assert [result.note for result in summary.skipped] == [
        "skipped: platform linux/arm64/v8 is not among */amd64"]
    assert (reporter.skipped, reporter.failed, reporter.done) == (1, 0, 6)
    assert "1 skipped" in reporter.status_line()
    assert [r for r in target_registry.requests(mark) if "/t/arm/" in r[1]] == []  # not a byte
    assert list_tags(target_registry, "t/arm") == []
    # not retried: its manifest was read once (and its config once), in the first pass
    arm_reads = [r for r in source_registry.requests(src_mark) if "/ns/arm/" in r[1]]
    assert [(method, "/manifests/" in path) for method, path, _ in arm_reads] == [
        ("GET", True), ("GET", False)]
    assert get_manifest(target_registry, "t/amd", "1")[2] == amd.digest
    kept = json.loads(get_manifest(target_registry, "t/multi", "1")[0])["manifests"]
    assert [m["platform"]["architecture"] for m in kept] == ["amd64"]
    assert get_manifest(target_registry, "t/multi", "1")[2] != index.digest

    # `linux/*`: the windows image is the one left out; arm64/v8 passes `*/arm64` and
    # `linux/arm64` (an entry without variant takes every variant), not `linux/arm64/v7`.
    for platforms, skipped in (({"linux/*"}, {"win"}), ({"*/arm64"}, {"amd", "win"}),
                               ({"linux/arm64"}, {"amd", "win"}),
                               ({"linux/arm64/v7"}, {"amd", "win", "arm"})):
        engine, _ = runner((source_registry, target_registry), MemoryLedger(), retries=0,
                           dry_run=True, platforms=frozenset(platforms))
        single = {k: v for k, v in images.items() if "multi" not in k}
        summary = engine.run(rules_of(single))
        assert {name for name, outcome in by_repository(summary).items()
                if outcome == "skipped"} == skipped
        assert all(r.note.startswith("skipped: platform ") for r in summary.skipped)


def test_a_run_that_lists_no_image_counts_them_and_keeps_only_the_notes(
        source_registry, target_registry):
    """`sync` without a report file keeps no word of an image that ended well without a note
    (a 20 000-tag run's memory): the progress display counts it; the notes are still kept."""
    for name, seed in (("a", 20), ("b", 21)):
        push_image(source_registry, f"ns/{name}", "1", layers=layers(seed))
    push_index(source_registry, "ns/multi", "1", media="oci", platforms=[
        ("linux", "amd64", layers(22)), ("linux", "arm64", layers(23))])
    push_image(source_registry, "ns/arm", "1", layers=layers(24), arch="arm64")
    images = {f"{source_registry.host}/ns/{name}:1": f"{target_registry.host}/t/{name}"
              for name in ("a", "b", "multi", "arm")}
    engine, reporter = runner((source_registry, target_registry), MemoryLedger(),
                              keep_each=False, platforms=frozenset({"linux/amd64"}))
    summary = engine.run(rules_of(images))

    assert summary.ok and summary.line() == SUMMARY.format(4)
    assert (reporter.done, reporter.skipped, reporter.failed) == (4, 1, 0)
    assert [(r.job.target.repository, r.outcome) for r in summary.results] == [
        ("t/multi", "copied")]
    assert summary.results[0].note.startswith("index filtered to linux/amd64: its digest ")
    assert [r.job.target.repository for r in summary.skipped] == ["t/arm"]
    assert list_tags(target_registry, "t/b") == ["1"]


def test_a_dry_run_reports_the_skipped_image_as_skipped(source_registry, target_registry):
    push_image(source_registry, "ns/arm", "1", layers=layers(10), arch="arm64")
    push_image(source_registry, "ns/amd", "1", layers=layers(11))
    images = {f"{source_registry.host}/ns/{name}:1": f"{target_registry.host}/t/{name}"
              for name in ("arm", "amd")}
    mark = target_registry.mark()
    engine, reporter = runner((source_registry, target_registry), MemoryLedger(),
                              dry_run=True, platforms=frozenset({"linux/amd64"}))
    summary = engine.run(rules_of(images))
    assert by_repository(summary) == {"arm": "skipped", "amd": "planned"}
    assert summary.skipped[0].note == "skipped: platform linux/arm64 is not among linux/amd64"
    # nothing of it counted as to be uploaded: the plan holds the other image only
    assert [result.job.target.repository for result in summary.planned] == ["t/amd"]
    assert reporter.skipped == 1
    assert [r for r in target_registry.requests(mark) if r[0] not in ("GET", "HEAD")] == []


@pytest.mark.parametrize("trust_ledger", [False, True])
def test_force_puts_every_manifest_again_and_uploads_no_blob(source_registry, target_registry,
                                                             trust_ledger):
    src, dst = source_registry.host, target_registry.host
    single = push_image(source_registry, "ns/one", "1", layers=layers(20, 21))
    index = push_index(source_registry, "ns/multi", "1", media="docker", platforms=[
        ("linux", "amd64", layers(22)), ("linux", "arm64", layers(23))])
    images = {f"{src}/ns/one:1": f"{dst}/t/one", f"{src}/ns/multi:1": f"{dst}/t/multi"}
    registries = (source_registry, target_registry)
    ledger = MemoryLedger()
    options = {"trust_ledger": trust_ledger, "immutable_tags": "1"}  # every shortcut on
    first, _ = runner(registries, ledger, **options)
    assert first.run(rules_of(images)).ok

    mark = target_registry.mark()
    again, _ = runner(registries, ledger, **options)
    summary = again.run(rules_of(images))
    assert summary.ok and set(by_repository(summary).values()) == {"up-to-date"}
    assert manifest_puts(target_registry, mark) == [] and other_writes(target_registry, mark) == []

    mark = target_registry.mark()
    forced, _ = runner(registries, ledger, force=True, **options)
    summary = forced.run(rules_of(images))
    assert summary.ok and by_repository(summary) == {"one": "copied", "multi": "copied"}
    puts = manifest_puts(target_registry, mark)
    assert sorted(puts) == sorted([
        "/v2/t/one/manifests/1", "/v2/t/multi/manifests/1",
        *(f"/v2/t/multi/manifests/{child.digest}" for child in index.children)])
    multi = [path for path in puts if path.startswith("/v2/t/multi/")]
    assert multi[-1] == "/v2/t/multi/manifests/1"  # the index after its children, as ever
    assert other_writes(target_registry, mark) == []  # the ledger knows every blob is there
    assert get_manifest(target_registry, "t/one", "1")[2] == single.digest
    assert get_manifest(target_registry, "t/multi", "1")[2] == index.digest

    # A lost record: the blobs are found at the target (a HEAD or a mount answered 201), never
    # uploaded; every manifest is PUT all the same.
    mark = target_registry.mark()
    lost, _ = runner(registries, MemoryLedger(), force=True, **options)
    assert lost.run(rules_of(images)).ok
    assert len(manifest_puts(target_registry, mark)) == 4
    uploads = [r for r in target_registry.requests(mark)
               if r[0] in ("PUT", "PATCH") and "/blobs/uploads/" in r[1]]
    assert uploads == []


def test_force_in_the_fleet_reaches_the_worker_and_skips_count_apart(
        fleet, source_registry, target_registry):  # noqa: F811 - the imported fixture
    from migrator.cli import main
    from migrator.fleet import start_run, watch
    from migrator.runs import RunStore
    from workers.app import make_app

    src, dst = source_registry.host, target_registry.host
    for tag in ("1", "2"):
        push_image(source_registry, "ns/app", tag, layers=layers(30 + int(tag)))
    push_image(source_registry, "ns/arm", "1", layers=layers(33), arch="arm64")
    rules = rules_of({f"{src}/ns/app": f"{dst}/t/app",  # expanded by a worker
                      f"{src}/ns/arm:1": f"{dst}/t/arm"})
    settings = load_settings(fleet.env)
    app = make_app(settings)
    store = RunStore(fleet.redis, prefix=settings.redis_prefix)
    fleet.start_worker("w1")

    def run(**options):
        started = start_run(rules, auth_of(source_registry, target_registry), settings,
                            store=store, name="test", retries=0,
                            send=lambda name, args, kwargs: app.send_task(
                                name, args=args, kwargs=kwargs),
                            options={"platforms": ["*/amd64"], "referrers": True, **options})
        state = watch(store, started.run_id, interval=0.2, timeout=60)
        assert state.finished, fleet.log("w1")
        return state

    state = run()
    assert state.failed == {} and state.ok, fleet.log("w1")
    assert (state.total, state.succeeded, state.skipped) == (3, 2, 1)
    assert state.line() == SUMMARY.format(3)
    assert store.succeeded_jobs(state.run_id) == [
        f"{src}/ns/app:1 -> {dst}/t/app:1", f"{src}/ns/app:2 -> {dst}/t/app:2"]
    assert store.skipped_jobs(state.run_id) == {
        f"{src}/ns/arm:1 -> {dst}/t/arm:1": "skipped: platform linux/arm64 is not among */amd64"}
    assert list_tags(target_registry, "t/arm") == []
    # A worker has no printed line: its log is where an operator reads a copy's note.
    assert "t/arm:1: skipped: platform linux/arm64 is not among */amd64" in (
        fleet.dir / "w1.log").read_text()
    assert main(["status", state.run_id, "--json"], fleet.env) == 0
    shown = json.loads(fleet.capsys.readouterr().out)
    assert (shown["skipped"], shown["done"], shown["failed"]) == (1, 3, {})

    mark = target_registry.mark()
    state = run()
    assert state.ok and state.skipped == 1
    assert manifest_puts(target_registry, mark) == []  # the record vouches: no task, no PUT

    mark = target_registry.mark()
    state = run(force=True)
    assert state.ok and (state.succeeded, state.skipped) == (2, 1), fleet.log("w1")
    assert sorted(manifest_puts(target_registry, mark)) == [
        "/v2/t/app/manifests/1", "/v2/t/app/manifests/2"]
    assert other_writes(target_registry, mark) == []
