"""`migrator config` without a server: images out of objects, rules out of images, the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from migrator.errors import ConfigError
from migrator.kube import (
    NAMESPACES,
    WORKLOADS,
    Permission,
    ScanResult,
    Sighting,
    find_kubeconfig,
    images_of,
    kubeconfig_contexts,
    parse_namespaces,
    parse_repo,
    plan,
    render,
    summarize,
)
from migrator.rules import load_rules, parse_rules
from tests.support import kubeapi as k

REPO = "registry.example.com/test"
A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
POD = Sighting("Pod", "web", "front-1", "container", "app")
OLD = Sighting("ReplicaSet", "web", "front-6c7", "container", "app", old_revision=True)


def plan_of(*images: str, **kwargs):
    return plan({image: [POD] for image in images}, REPO, **kwargs)


def round_trip(rules):
    """The file `migrator sync` would read: every rule valid, no conflict."""
    return parse_rules(rules, filename="images.json", default_registry="registry.example.com",
                       default_namespace="test")


# --- images out of Kubernetes objects ---------------------------------------------------------


def found(obj):
    return [(image, s.container_type, s.container) for image, s in images_of(obj["kind"], obj)]


def test_a_pod_gives_containers_init_containers_and_ephemeral_containers():
    obj = k.pod("default", "debug", [("app", "nginx")], init=[("setup", "busybox:1.36")],
                ephemeral=[("shell", "alpine:3.20")])
    assert found(obj) == [
        ("nginx", "container", "app"),
        ("busybox:1.36", "init container", "setup"),
        ("alpine:3.20", "ephemeral container", "shell"),
    ]
    # What the kubelet reports in status (resolved names, image IDs) is not what was asked.
    assert all(not image.startswith("docker.io") for image, _, _ in found(obj))


@pytest.mark.parametrize(
    "obj",
    [
        k.deployment("web", "front", [("app", "nginx:1.25")], init=[("migrate", "flyway:10")]),
        k.statefulset("web", "db", [("app", "nginx:1.25"), ("migrate", "flyway:10")]),
        k.daemonset("kube-system", "agent", [("app", "nginx:1.25"), ("migrate", "flyway:10")]),
        k.replicaset("web", "legacy", [("app", "nginx:1.25"), ("migrate", "flyway:10")]),
        k.job("batch", "once", [("app", "nginx:1.25"), ("migrate", "flyway:10")]),
        k.cronjob("batch", "nightly", [("app", "nginx:1.25")], init=[("migrate", "flyway:10")]),
    ],
    ids=lambda obj: obj["kind"],
)
def test_every_workload_kind_gives_its_pod_template(obj):
    images = sorted(image for image, _, _ in found(obj))
    assert images == ["flyway:10", "nginx:1.25"]
    sighting = next(s for _, s in images_of(obj["kind"], obj))
    assert (sighting.kind, sighting.namespace, sighting.name) == (
        obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])


def test_only_a_replicaset_its_deployment_scaled_to_zero_is_a_past_revision():
    old = k.replicaset("web", "front-6c7", [("app", "nginx:1.24")], replicas=0,
                       deployment="front")
    current = k.replicaset("web", "front-5d4", [("app", "nginx:1.25")], replicas=2,
                           deployment="front")
    orphan = k.replicaset("web", "legacy", [("app", "httpd:2.4")], replicas=0)
    assert [s.old_revision for _, s in images_of("ReplicaSet", old)] == [True]
    assert [s.old_revision for _, s in images_of("ReplicaSet", current)] == [False]
    assert [s.old_revision for _, s in images_of("ReplicaSet", orphan)] == [False]


def test_a_container_without_image_is_reported_not_dropped():
    obj = k.pod("default", "odd", [("app", "nginx")])
    del obj["spec"]["containers"][0]["image"]
    result = plan({image: [s] for image, s in images_of("Pod", obj)}, REPO)
    assert [(s.image, s.reason) for s in result.skipped] == [("", "the container names no image")]


# --- normalisation, digests, folding ----------------------------------------------------------


def test_references_are_normalised_as_docker_reads_them_and_folded():
    result = plan_of("nginx", "nginx:latest", "library/nginx", "index.docker.io/library/nginx",
                     "docker.io/library/nginx:latest", "quay.io/coreos/etcd:v3.5.0",
                     "localhost:5000/team/app")
    assert result.rules == {
        "docker.io/library/nginx:latest": f"{REPO}/nginx:latest",
        "localhost:5000/team/app:latest": f"{REPO}/app:latest",
        "quay.io/coreos/etcd:v3.5.0": f"{REPO}/etcd:v3.5.0",
    }
    assert result.images == 3
    round_trip(result.rules)


def test_an_image_pinned_by_digest_stays_pinned():
    result = plan_of(f"postgres:16.3@{A}", f"ghcr.io/acme/migrate@{B}")
    assert result.rules == {
        f"docker.io/library/postgres:16.3@{A}": f"{REPO}/postgres:16.3",
        # No tag to keep: pushed by digest, as the rules file allows for a pinned source.
        f"ghcr.io/acme/migrate@{B}": f"{REPO}/migrate",
    }
    jobs = [str(job) for rule in round_trip(result.rules) for job in rule.jobs()]
    assert f"ghcr.io/acme/migrate@{B} -> {REPO}/migrate" in jobs


def test_a_digest_seen_with_and_without_its_tag_is_copied_once():
    result = plan_of(f"postgres@{A}", f"postgres:16.3@{A}")
    assert result.rules == {f"docker.io/library/postgres:16.3@{A}": f"{REPO}/postgres:16.3"}


def test_a_tag_also_seen_pinned_is_written_once_and_the_pin_goes_by_digest():
    result = plan_of("nginx:1.25", f"nginx:1.25@{A}", f"nginx:1.25@{B}")
    assert result.rules == {
        "docker.io/library/nginx:1.25": f"{REPO}/nginx:1.25",
        # By digest alone: `name:tag@digest` to a target without a tag would write the tag.
        f"docker.io/library/nginx@{A}": f"{REPO}/nginx",
        f"docker.io/library/nginx@{B}": f"{REPO}/nginx",
    }
    assert len(result.notes) == 2 and "copied by digest only" in result.notes[0]
    assert result.conflicts == []
    round_trip(result.rules)  # no target tag written from two sources


def test_of_two_digests_under_one_tag_the_first_keeps_the_tag():
    result = plan_of(f"nginx:1.25@{B}", f"nginx:1.25@{A}")
    assert result.rules == {
        f"docker.io/library/nginx:1.25@{A}": f"{REPO}/nginx:1.25",
        f"docker.io/library/nginx@{B}": f"{REPO}/nginx",
    }
    round_trip(result.rules)


def test_several_tags_of_one_repository_are_not_a_conflict():
    result = plan_of("nginx:1.24", "nginx:1.25")
    assert sorted(result.rules.values()) == [f"{REPO}/nginx:1.24", f"{REPO}/nginx:1.25"]
    assert result.conflicts == []


# --- skipped images ---------------------------------------------------------------------------


def test_invalid_references_are_skipped_with_their_reason():
    result = plan_of("Nginx:1.25", "nginx:-bad", "nginx:1.25")
    assert result.rules == {"docker.io/library/nginx:1.25": f"{REPO}/nginx:1.25"}
    reasons = {s.image: s.reason for s in result.skipped}
    assert set(reasons) == {"Nginx:1.25", "nginx:-bad"}
    assert "invalid repository path component 'Nginx'" in reasons["Nginx:1.25"]
    assert "invalid tag" in reasons["nginx:-bad"]
    assert result.skipped[0].seen == (POD,)


def test_images_already_in_the_target_are_skipped():
    result = plan_of(f"{REPO}/nginx:1.25", "registry.example.com/other/nginx:1.25")
    assert [s.image for s in result.skipped] == [f"{REPO}/nginx:1.25"]
    assert f"already in the target {REPO}" in result.skipped[0].reason
    assert result.rules == {"registry.example.com/other/nginx:1.25": f"{REPO}/nginx:1.25"}


def test_images_without_a_namespace_get_rules_too():
    # registry/repository is a valid source (image-syncer v1.5 reads names as Docker does).
    result = plan_of("registry.k8s.io/pause:3.9", "registry.k8s.io/coredns/coredns:v1.11.1",
                     "nginx:1.25")
    assert result.rules == {"docker.io/library/nginx:1.25": f"{REPO}/nginx:1.25",
                            "registry.k8s.io/coredns/coredns:v1.11.1": f"{REPO}/coredns:v1.11.1",
                            "registry.k8s.io/pause:3.9": f"{REPO}/pause:3.9"}
    assert result.skipped == []
    round_trip(result.rules)


def test_images_only_in_past_revisions_are_skipped_unless_asked_for():
    images = {"nginx:1.24": [OLD], "nginx:1.25": [POD], "docker.io/library/httpd:2.4": [OLD],
              "httpd:2.4": [POD]}
    result = plan(images, REPO)
    assert sorted(result.rules) == ["docker.io/library/httpd:2.4", "docker.io/library/nginx:1.25"]
    assert [s.image for s in result.skipped] == ["docker.io/library/nginx:1.24"]
    assert "--include-old-revisions" in result.skipped[0].reason
    assert "docker.io/library/nginx:1.24" in plan(images, REPO, include_old_revisions=True).rules


# --- conflicts --------------------------------------------------------------------------------


def test_two_sources_for_one_target_keep_the_first_and_report_the_other():
    for order in (["quay.io/bitnami/nginx:1.25", "nginx:1.25"],
                  ["nginx:1.25", "quay.io/bitnami/nginx:1.25"]):
        result = plan_of(*order)
        assert result.rules == {"docker.io/library/nginx:1.25": f"{REPO}/nginx:1.25"}
        [conflict] = result.conflicts
        assert conflict.target == f"{REPO}/nginx"
        assert conflict.kept == "docker.io/library/nginx"
        assert conflict.dropped == ("quay.io/bitnami/nginx",)
        assert conflict.seen == (POD,)


def test_a_conflict_is_per_repository_even_with_different_tags():
    result = plan_of("nginx:1.25", "quay.io/bitnami/nginx:1.26")
    assert list(result.rules) == ["docker.io/library/nginx:1.25"]
    assert len(result.conflicts) == 1


def test_keep_namespace_puts_the_source_path_in_the_target_name():
    result = plan_of("nginx:1.25", "quay.io/bitnami/nginx:1.26", "ghcr.io/a/b/tool:1",
                     keep_namespace=True)
    assert result.rules == {
        "docker.io/library/nginx:1.25": f"{REPO}/library-nginx:1.25",
        "ghcr.io/a/b/tool:1": f"{REPO}/a-b-tool:1",
        "quay.io/bitnami/nginx:1.26": f"{REPO}/bitnami-nginx:1.26",
    }
    assert result.conflicts == []
    round_trip(result.rules)


def test_keep_namespace_still_reports_the_same_path_on_two_registries():
    result = plan_of("quay.io/x/nginx:1", "ghcr.io/x/nginx:1", keep_namespace=True)
    assert result.rules == {"ghcr.io/x/nginx:1": f"{REPO}/x-nginx:1"}
    assert result.conflicts[0].dropped == ("quay.io/x/nginx",)


def test_a_target_name_too_long_is_skipped():
    source = "/".join(["a" * 60] * 4) + "/app"  # quay.io/ and 247: 255, valid as a source
    result = plan_of(f"quay.io/{source}:1", keep_namespace=True)
    assert result.rules == {}
    assert "no valid target name" in result.skipped[0].reason


# --- merging into an existing file ------------------------------------------------------------


def existing(entries):
    return {"existing": entries, "existing_rules": round_trip(entries)}


def test_merge_keeps_existing_entries_and_adds_only_new_ones():
    old = {
        "docker.io/library/nginx:1.25": "registry.example.com/test/web-nginx:1.25",  # hand-edited
        "quay.io/coreos/etcd": "registry.example.com/test/etcd",  # every tag
        "docker.io/library/redis:7": "",
    }
    result = plan_of("nginx:1.25", "quay.io/coreos/etcd:v3.5.0", "redis:7", "busybox:1.36",
                     **existing(old))
    assert result.added == {"docker.io/library/busybox:1.36": f"{REPO}/busybox:1.36"}
    assert result.rules == {**old, **result.added}
    assert result.present == 3
    round_trip(result.rules)


def test_merge_reports_a_conflict_with_an_existing_entry_and_keeps_the_entry():
    old = {"quay.io/bitnami/nginx:1.0": f"{REPO}/nginx:1.0"}
    result = plan_of("nginx:1.25", **existing(old))
    assert result.rules == old and result.added == {}
    assert result.conflicts[0].kept == "quay.io/bitnami/nginx"


def test_merge_never_writes_a_tag_an_existing_pinned_entry_writes():
    old = {f"docker.io/library/nginx:1.25@{A}": f"{REPO}/nginx:1.25"}
    result = plan_of("nginx:1.25", **existing(old))
    assert result.added == {}
    assert result.conflicts[0].target == f"{REPO}/nginx:1.25"


# --- flags ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "repo"),
    [
        ("registry.example.com/test", "registry.example.com/test"),
        ("registry.example.com/test/", "registry.example.com/test"),
        ("harbor.local:8443/team/sub", "harbor.local:8443/team/sub"),
        ("index.docker.io/me", "docker.io/me"),
    ],
)
def test_repo_flag_accepts_registry_and_namespace(text, repo):
    assert parse_repo(text) == repo


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("registry.example.com", "expected registry/namespace"),
        ("registry.example.com/test:v1", "with no tag"),
        ("https://registry.example.com/test", "without a scheme"),
        ("registry.example.com/Test", "invalid repository path component 'Test'"),
    ],
)
def test_repo_flag_refuses_what_is_not_a_namespace(text, message):
    with pytest.raises(ConfigError) as info:
        parse_repo(text)
    assert message in info.value.problems[0]
    assert info.value.problems[0].startswith(f"-t/--repo '{text}'")


def test_namespaces_flag_splits_commas_and_repeats_and_checks_names():
    assert parse_namespaces(None) is None
    assert parse_namespaces(["default, kube-system", "web", "default"]) == [
        "default", "kube-system", "web"]
    with pytest.raises(ConfigError) as info:
        parse_namespaces(["Web,ok,-x"])
    assert len(info.value.problems) == 2
    assert "'Web' is not a namespace name" in info.value.problems[0]


def test_permission_names_the_verb_resource_and_scope_and_how_to_check_it():
    deployments = next(r for r in WORKLOADS if r.plural == "deployments")
    everywhere = Permission("list", deployments)
    assert str(everywhere) == "list deployments.apps in all namespaces"
    assert everywhere.can_i == "kubectl auth can-i list deployments.apps --all-namespaces"
    in_web = Permission("list", deployments, "web")
    assert str(in_web) == "list deployments.apps in namespace web"
    assert in_web.can_i == "kubectl auth can-i list deployments.apps -n web"
    assert Permission("list", NAMESPACES).can_i == "kubectl auth can-i list namespaces"


# --- which kubeconfig -------------------------------------------------------------------------


def test_kubeconfig_is_found_as_kubectl_finds_it(tmp_path: Path):
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    default = home / ".kube" / "config"
    default.write_text("{}")
    given = tmp_path / "given.yaml"
    given.write_text("{}")
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("t")
    env = {"HOME": str(home)}

    assert find_kubeconfig(str(given), {**env, "KUBECONFIG": str(default)}, str(sa)) == str(given)
    missing = str(tmp_path / "missing")
    assert find_kubeconfig(None, {**env, "KUBECONFIG": f"{missing}:{given}"}, str(sa)) == str(
        given)
    assert find_kubeconfig(None, env, str(sa)) == str(default)
    default.unlink()
    in_pod = {**env, "KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    assert find_kubeconfig(None, in_pod, str(sa)) is None  # the service account

    with pytest.raises(ConfigError, match="no kubeconfig: pass -k/--kubeconfig"):
        find_kubeconfig(None, env, str(sa))
    with pytest.raises(ConfigError, match=r"-k/--kubeconfig '.*missing': file not found"):
        find_kubeconfig(missing, env, str(sa))
    with pytest.raises(ConfigError, match="KUBECONFIG=.*: no such file"):
        find_kubeconfig(None, {**in_pod, "KUBECONFIG": missing}, str(sa))


def test_contexts_of_several_kubeconfig_files_are_merged_as_kubectl_does(tmp_path: Path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_text(yaml.safe_dump({"contexts": [{"name": "dev", "context": {}}],
                                     "current-context": "dev"}))
    second.write_text(yaml.safe_dump({"contexts": [{"name": "prod", "context": {}},
                                                   {"name": "dev", "context": {}}],
                                      "current-context": "prod"}))
    assert kubeconfig_contexts(f"{first}:{second}") == (["dev", "prod"], "dev")
    second.write_text("contexts: [oops")
    with pytest.raises(ConfigError) as info:
        kubeconfig_contexts(str(second))
    assert "\n" not in info.value.problems[0]  # one line, however YAML words it
    assert info.value.problems[0].startswith(f"kubeconfig {second}: cannot read it: ")


# --- the file and the report ------------------------------------------------------------------


def test_json_output_is_sorted_indented_and_ends_with_a_newline():
    text = render({"quay.io/b/c:1": f"{REPO}/c:1", "docker.io/library/a:1": f"{REPO}/a:1"},
                  as_yaml=False)
    assert text == (
        "{\n"
        f'  "docker.io/library/a:1": "{REPO}/a:1",\n'
        f'  "quay.io/b/c:1": "{REPO}/c:1"\n'
        "}\n"
    )


def test_yaml_output_round_trips_through_the_rules_loader(tmp_path: Path):
    result = plan_of("nginx:1.25", f"postgres:16.3@{A}", f"ghcr.io/acme/migrate@{B}",
                     "localhost:5000/team/app:v1")
    path = tmp_path / "images.yaml"
    path.write_text(render(result.rules, as_yaml=True))
    assert yaml.safe_load(path.read_text()) == result.rules
    assert list(yaml.safe_load(path.read_text())) == sorted(result.rules)
    rules = load_rules(path, default_registry=None, default_namespace=None)
    assert sorted(str(job) for rule in rules for job in rule.jobs()) == sorted([
        f"docker.io/library/nginx:1.25 -> {REPO}/nginx:1.25",
        f"docker.io/library/postgres:16.3@{A} -> {REPO}/postgres:16.3",
        f"ghcr.io/acme/migrate@{B} -> {REPO}/migrate",
        f"localhost:5000/team/app:v1 -> {REPO}/app:v1",
    ])
    json_path = tmp_path / "images.json"
    json_path.write_text(render(result.rules, as_yaml=False))
    assert json.loads(json_path.read_text()) == result.rules


def test_summary_counts_and_explains_every_image_left_out():
    scan = ScanResult(namespaces=["default", "web"])
    scan.workloads.update({"Pod": 3, "Deployment": 1})
    result = plan({"nginx:1.25": [POD], "quay.io/x/nginx:1": [POD, OLD], "Bad:1": [POD]}, REPO)
    lines = summarize(scan, result, namespaces_given=True)
    assert lines[0] == ("scanned 2 namespaces (default, web): 4 workloads (3 Pod, 1 Deployment, "
                        "0 StatefulSet, 0 DaemonSet, 0 ReplicaSet, 0 Job, 0 CronJob)")
    assert lines[1] == "found 3 images: 1 new rule, 1 conflict, 1 skipped"
    assert lines[2].startswith("skipped 'Bad:1' (in pod web/front-1 (container app)): ")
    assert lines[3].startswith(
        "conflict: quay.io/x/nginx (in pod web/front-1 (container app) and 1 more) would also "
        f"go to {REPO}/nginx, which docker.io/library/nginx takes")
    assert "--keep-namespace" in lines[3]


def test_rbac_manifest_grants_get_and_list_on_exactly_what_is_read():
    manifest = Path(__file__).parents[2] / "deploy" / "kubernetes" / "rbac-config.yaml"
    documents = list(yaml.safe_load_all(manifest.read_text()))
    kinds = {doc["kind"]: doc for doc in documents}
    assert set(kinds) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    granted = {
        (group, resource, verb)
        for rule in kinds["ClusterRole"]["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    read = {(r.group, r.plural, verb) for r in (NAMESPACES, *WORKLOADS) for verb in ("get", "list")}
    assert granted == read
    binding = kinds["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == kinds["ClusterRole"]["metadata"]["name"]
    assert binding["subjects"][0]["name"] == kinds["ServiceAccount"]["metadata"]["name"]
