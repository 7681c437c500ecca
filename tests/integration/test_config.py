"""`migrator config` end to end: the real `kubernetes` client against a fake API server.

The server (tests/support/kubeapi.py) speaks HTTPS with a CA made per test, checks bearer
tokens and serves list bodies shaped like the real API server's, page by page. The command
runs in-process (`main(argv, environ)`); its file is checked with the rules loader that
`migrator sync` uses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from migrator.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, main
from migrator.kube import connect, scan
from migrator.rules import load_rules
from tests.support import kubeapi as k

REPO = "registry.example.com/test"
PIN = "sha256:" + "5e" * 32
MIGRATE_PIN = "sha256:" + "0d" * 32
ADMIN, VIEWER = "admin-token-3f9a", "viewer-token-77c1"
USERS = {ADMIN: "system:serviceaccount:migrator:migrator-config",
         VIEWER: "system:serviceaccount:migrator:viewer"}

# What the cluster below runs: every workload kind and container kind contributes an image
# found nowhere else, so a kind that is not read shows as a missing rule.
EXPECTED = {
    "docker.io/library/nginx:latest": f"{REPO}/nginx:latest",  # pod container, bare name
    "docker.io/library/busybox:1.36": f"{REPO}/busybox:1.36",  # ephemeral container
    "docker.io/library/nginx:1.25": f"{REPO}/nginx:1.25",  # deployment + its pods
    "docker.io/library/busybox:latest": f"{REPO}/busybox:latest",  # deployment init container
    "ghcr.io/acme/api:2.1.0": f"{REPO}/api:2.1.0",  # deployment scaled to zero
    f"docker.io/library/postgres:16.3@{PIN}": f"{REPO}/postgres:16.3",  # statefulset
    "docker.io/fluent/fluent-bit:3.0.7": f"{REPO}/fluent-bit:3.0.7",  # daemonset
    "docker.io/library/httpd:2.4": f"{REPO}/httpd:2.4",  # replicaset without owner, at 0
    f"ghcr.io/acme/migrate@{MIGRATE_PIN}": f"{REPO}/migrate",  # job
    "quay.io/acme/report:1.4": f"{REPO}/report:1.4",  # cronjob
    "quay.io/acme/report-init:1.4": f"{REPO}/report-init:1.4",  # cronjob init container
    "registry.k8s.io/coredns/coredns:v1.11.1": f"{REPO}/coredns:v1.11.1",  # pod in kube-system
    # registry/repository with no namespace: a rule like any other (image-syncer v1.5 reads it)
    "registry.k8s.io/kube-proxy:v1.30.2": f"{REPO}/kube-proxy:v1.30.2",  # kube-system daemonset
}


def cluster_objects() -> list[dict]:
    return [
        k.namespace("default"), k.namespace("kube-system"), k.namespace("web"),
        k.namespace("batch"), k.namespace("idle"),
        k.pod("default", "debug", [("app", "nginx")], ephemeral=[("shell", "busybox:1.36")]),
        k.pod("default", "stale", [("app", f"{REPO}/tools:1")]),  # already migrated
        k.pod("default", "typo", [("app", "Nginx:1.25")]),  # never pulled: invalid reference
        k.deployment("web", "front", [("app", "nginx:1.25")], init=[("wait", "busybox")]),
        k.replicaset("web", "front-5d4b9", [("app", "nginx:1.25")], replicas=2,
                     deployment="front"),
        k.replicaset("web", "front-6c7f8", [("app", "nginx:1.24")], replicas=0,
                     deployment="front"),  # a past revision
        k.pod("web", "front-5d4b9-x2k8p", [("app", "docker.io/library/nginx:1.25")],
              owner=("ReplicaSet", "front-5d4b9")),
        k.pod("web", "front-5d4b9-q7w3z", [("app", "index.docker.io/library/nginx:1.25")],
              owner=("ReplicaSet", "front-5d4b9")),
        k.deployment("web", "api", [("api", "ghcr.io/acme/api:2.1.0")], replicas=0),
        k.statefulset("web", "db", [("postgres", f"postgres:16.3@{PIN}")]),
        k.replicaset("web", "legacy", [("httpd", "httpd:2.4")], replicas=0),
        k.daemonset("kube-system", "log-agent", [("fluent-bit", "fluent/fluent-bit:3.0.7")]),
        k.daemonset("kube-system", "kube-proxy",
                    [("kube-proxy", "registry.k8s.io/kube-proxy:v1.30.2")]),
        k.pod("kube-system", "kube-proxy-7xk2v",
              [("kube-proxy", "registry.k8s.io/kube-proxy:v1.30.2")],
              owner=("DaemonSet", "kube-proxy")),
        k.pod("kube-system", "coredns-76f75df574-abcde",
              [("coredns", "registry.k8s.io/coredns/coredns:v1.11.1")]),
        k.job("batch", "migrate", [("migrate", f"ghcr.io/acme/migrate@{MIGRATE_PIN}")]),
        k.cronjob("batch", "report", [("report", "quay.io/acme/report:1.4")],
                  init=[("prepare", "quay.io/acme/report-init:1.4")]),
    ]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[k.FakeKubeAPI]:
    server = k.FakeKubeAPI.start(tmp_path, USERS)
    server.add(*cluster_objects())
    # The viewer may read pods and namespaces but not deployments nor cronjobs.
    server.forbid(VIEWER, "deployments")
    server.forbid(VIEWER, "cronjobs")
    yield server
    server.stop()


@pytest.fixture
def kubeconfig(api: k.FakeKubeAPI, tmp_path: Path) -> Path:
    return api.write_kubeconfig(tmp_path / "kubeconfig", {"admin": ADMIN, "viewer": VIEWER})


class Config:
    """Runs `migrator config` in tmp_path with the test kubeconfig."""

    def __init__(self, tmp_path: Path, kubeconfig: Path, capsys: pytest.CaptureFixture[str]):
        self.dir = tmp_path
        self.kubeconfig = kubeconfig
        self.capsys = capsys
        self.output = tmp_path / "images.json"

    def __call__(self, *flags: str, environ: dict[str, str] | None = None,
                 kubeconfig: bool = True) -> tuple[int, str, str]:
        argv = ["config", "-t", REPO]
        if kubeconfig:
            argv += ["-k", str(self.kubeconfig)]
        if "-o" not in flags:
            argv += ["-o", str(self.output)]
        code = main([*argv, *flags], environ if environ is not None else {"HOME": str(self.dir)})
        out, err = self.capsys.readouterr()
        return code, out, err

    def written(self) -> dict:
        return json.loads(self.output.read_text())


@pytest.fixture
def config(tmp_path: Path, kubeconfig: Path, capsys: pytest.CaptureFixture[str]) -> Config:
    return Config(tmp_path, kubeconfig, capsys)


def jobs_of(path: Path) -> list[str]:
    rules = load_rules(path, default_registry="registry.example.com", default_namespace="test")
    return sorted(str(job) for rule in rules for job in rule.jobs())


# --- the whole cluster ------------------------------------------------------------------------


def test_writes_a_rule_for_every_image_of_every_workload(config: Config, api: k.FakeKubeAPI):
    code, out, err = config()
    assert code == EXIT_OK, err
    assert config.written() == EXPECTED
    text = config.output.read_text()
    assert text.endswith("}\n") and '\n  "docker.io/fluent/fluent-bit:3.0.7": ' in text
    assert list(config.written()) == sorted(EXPECTED)
    # What `migrator sync` will do with it: one copy per image, pins copied by digest.
    assert jobs_of(config.output) == sorted(
        f"{source} -> {target}" for source, target in EXPECTED.items())
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == f"reading {api.url} (context 'admin' of {config.kubeconfig})"
    assert lines[1] == ("scanned 5 namespaces: 17 workloads (7 Pod, 2 Deployment, "
                        "1 StatefulSet, 2 DaemonSet, 3 ReplicaSet, 1 Job, 1 CronJob)")
    assert lines[2] == "found 16 images: 13 new rules, 0 conflicts, 3 skipped"
    assert f"skipped '{REPO}/tools:1' (in pod default/stale (container app)): already in " \
           f"the target {REPO}" in lines
    assert any(line.startswith("skipped 'Nginx:1.25' (in pod default/typo (container app)): "
                               "not a valid image reference") for line in lines)
    assert any(line.startswith("skipped 'docker.io/library/nginx:1.24' (in replicaset "
                               "web/front-6c7f8 (container app)): only in past revisions")
               for line in lines)
    assert not any("kube-proxy" in line for line in lines if line.startswith("skipped"))
    assert lines[-1] == f"wrote 13 rules to {config.output}"


def test_every_list_is_read_cluster_wide_with_the_token(config: Config, api: k.FakeKubeAPI):
    config()
    paths = [r.path for r in api.requests]
    assert paths == [
        "/api/v1/namespaces", "/api/v1/pods", "/apis/apps/v1/deployments",
        "/apis/apps/v1/statefulsets", "/apis/apps/v1/daemonsets", "/apis/apps/v1/replicasets",
        "/apis/batch/v1/jobs", "/apis/batch/v1/cronjobs",
    ]
    assert {r.user for r in api.requests} == {USERS[ADMIN]}
    assert {r.query.get("limit") for r in api.requests} == {"500"}


def test_pages_through_large_lists_with_continue(config: Config, api: k.FakeKubeAPI):
    api.add(*(k.pod("load", f"worker-{i:03}", [("app", f"quay.io/acme/worker:{i}")])
              for i in range(25)))
    code, _, err = config("--chunk-size", "4")
    assert code == EXIT_OK, err
    pods = api.lists("pods")
    assert len(pods) == 8  # 32 pods, 4 a page
    assert [r.query.get("limit") for r in pods] == ["4"] * 8
    assert "continue" not in pods[0].query
    assert all(r.query["continue"] for r in pods[1:])
    assert len({r.query.get("continue") for r in pods}) == 8
    written = config.written()
    assert {f"quay.io/acme/worker:{i}" for i in range(25)} <= set(written)
    assert set(EXPECTED.items()) <= set(written.items())
    assert "32 Pod" in err


def test_a_list_whose_continue_token_expired_starts_over(config: Config, api: k.FakeKubeAPI):
    api.expire_continue = 1
    code, _, err = config("--chunk-size", "5")  # namespaces fit one page, pods take two
    assert code == EXIT_OK, err
    pods = api.lists("pods")
    # First page, a 410 on the second, then the whole list again.
    assert ["continue" in r.query for r in pods] == [False, True, False, True]
    assert config.written() == EXPECTED
    assert "7 Pod," in err  # what was read before the restart is not counted twice


# --- namespaces -------------------------------------------------------------------------------


def test_namespaces_limit_what_is_read(config: Config, api: k.FakeKubeAPI):
    code, _, err = config("-n", "kube-system,batch")
    assert code == EXIT_OK, err
    assert config.written() == {
        source: target for source, target in EXPECTED.items()
        if source.startswith(("registry.k8s.io", "docker.io/fluent", "ghcr.io/acme/migrate",
                              "quay.io/acme"))
    }
    paths = {r.path for r in api.requests}
    assert "/api/v1/pods" not in paths and "/api/v1/namespaces" not in paths
    assert {"/api/v1/namespaces/kube-system", "/api/v1/namespaces/batch",
            "/api/v1/namespaces/kube-system/pods", "/apis/apps/v1/namespaces/batch/daemonsets",
            "/apis/batch/v1/namespaces/batch/cronjobs"} <= paths
    assert not any(p.startswith("/api/v1/namespaces/web") for p in paths)
    assert "scanned 2 namespaces (kube-system, batch): 6 workloads" in err


def test_a_namespace_that_does_not_exist_is_bad_input(config: Config, api: k.FakeKubeAPI):
    code, _, err = config("-n", "web,wbe")
    assert code == EXIT_BAD_INPUT
    assert "error: -n/--namespaces: namespace 'wbe' does not exist in the cluster" in err
    assert not config.output.exists()
    assert not api.lists("pods")  # nothing was scanned


def test_without_get_namespaces_the_namespace_check_is_skipped(config: Config,
                                                               api: k.FakeKubeAPI,
                                                               tmp_path: Path):
    api.tokens["team-token"] = "team-batch"  # a user with RoleBindings in a few namespaces
    api.forbid("team-token", "namespaces", verb="get")
    team = api.write_kubeconfig(tmp_path / "team", {"team": "team-token"})
    code, _, err = config("-k", str(team), "-n", "batch")
    assert code == EXIT_OK, err
    assert ("/api/v1/namespaces/batch", 403) in api.answers
    assert set(config.written()) == {f"ghcr.io/acme/migrate@{MIGRATE_PIN}",
                                     "quay.io/acme/report:1.4", "quay.io/acme/report-init:1.4"}


# --- what a user can act on -------------------------------------------------------------------


def test_forbidden_lists_are_all_named_with_the_fix(config: Config, api: k.FakeKubeAPI):
    code, _, err = config("--context", "viewer")
    assert code == EXIT_FAILED
    lines = err.splitlines()
    assert lines[1].startswith("error: 403 Forbidden: list deployments.apps in all namespaces "
                               "(the server said: deployments.apps is forbidden: User "
                               '"system:serviceaccount:migrator:viewer" cannot list')
    assert lines[2].startswith("error: 403 Forbidden: list cronjobs.batch in all namespaces")
    assert "deploy/kubernetes/rbac-config.yaml" in lines[3]
    assert "kubectl auth can-i list deployments.apps --all-namespaces" in lines[3]
    assert lines[-1] == "nothing was written"
    assert not config.output.exists()
    assert len(api.lists("jobs")) == 1  # the scan went on to find every missing permission


def test_forbidden_in_one_namespace_names_that_namespace(config: Config):
    code, _, err = config("--context", "viewer", "-n", "web")
    assert code == EXIT_FAILED
    assert "error: 403 Forbidden: list deployments.apps in namespace web" in err
    assert "kubectl auth can-i list deployments.apps -n web" in err


def test_a_refused_token_is_reported(config: Config, api: k.FakeKubeAPI, tmp_path: Path):
    expired = api.write_kubeconfig(tmp_path / "expired", {"old": "revoked-token"})
    code, _, err = config("-k", str(expired))
    assert code == EXIT_FAILED
    assert f"error: the API server {api.url} refused the credentials (401 Unauthorized)" in err
    assert [r.user for r in api.requests] == [None]
    assert not config.output.exists()


def test_an_unreachable_api_server_is_reported(config: Config, api: k.FakeKubeAPI,
                                               tmp_path: Path):
    port = api.port
    api.stop()
    code, _, err = config("--request-timeout", "5")
    assert code == EXIT_FAILED
    assert f"error: cannot reach the API server https://127.0.0.1:{port}" in err
    assert "is the cluster up" in err
    assert not config.output.exists()


def test_an_api_server_certificate_from_another_ca_is_refused(config: Config, api: k.FakeKubeAPI,
                                                              tmp_path: Path):
    (tmp_path / "other").mkdir()
    other_ca, _, _ = k.make_tls(tmp_path / "other")
    wrong = api.write_kubeconfig(tmp_path / "wrong-ca", {"admin": ADMIN}, ca_pem=other_ca)
    code, _, err = config("-k", str(wrong))
    assert code == EXIT_FAILED
    assert f"error: cannot verify the certificate of the API server {api.url}" in err
    assert api.requests == []  # no token was ever sent to an unverified server


def test_an_unknown_context_lists_the_known_ones(config: Config, api: k.FakeKubeAPI):
    code, _, err = config("--context", "prod")
    assert code == EXIT_BAD_INPUT
    assert (f"error: kubeconfig {config.kubeconfig}: unknown context 'prod' "
            "(known contexts: admin, viewer)") in err
    assert api.requests == []


def test_without_any_kubeconfig_says_where_it_looked(config: Config, tmp_path: Path):
    code, _, err = config(kubeconfig=False, environ={"HOME": str(tmp_path)})
    assert code == EXIT_BAD_INPUT
    assert "error: no kubeconfig: pass -k/--kubeconfig, set KUBECONFIG, or create " \
           f"{tmp_path}/.kube/config" in err


def test_kubeconfig_env_var_and_its_current_context(config: Config, api: k.FakeKubeAPI,
                                                    tmp_path: Path):
    viewer_first = api.write_kubeconfig(tmp_path / "kc2", {"admin": ADMIN, "viewer": VIEWER},
                                        current="viewer")
    code, _, err = config(kubeconfig=False, environ={"KUBECONFIG": str(viewer_first)})
    assert code == EXIT_FAILED  # the current context is the viewer's: forbidden lists
    assert "context 'viewer'" in err.splitlines()[0]
    code, _, err = config("--force", "--context", "admin", kubeconfig=False,
                          environ={"KUBECONFIG": str(viewer_first)})
    assert code == EXIT_OK, err
    assert config.written() == EXPECTED


def test_in_a_pod_the_service_account_is_used(api: k.FakeKubeAPI, tmp_path: Path):
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(ADMIN)
    (account / "ca.crt").write_bytes(api.ca_pem)
    environ = {"HOME": str(tmp_path), "KUBERNETES_SERVICE_HOST": "127.0.0.1",
               "KUBERNETES_SERVICE_PORT": str(api.port)}
    connection = connect(None, None, environ, service_account_dir=str(account))
    assert connection.origin == "the pod's service account"
    with connection.api_client:
        result = scan(connection.api_client, namespaces=["batch"])
    assert sorted(result.images) == [f"ghcr.io/acme/migrate@{MIGRATE_PIN}",
                                     "quay.io/acme/report-init:1.4", "quay.io/acme/report:1.4"]
    assert {r.user for r in api.requests} == {USERS[ADMIN]}


# --- the output file --------------------------------------------------------------------------


def test_an_existing_file_is_not_overwritten_without_force(config: Config, api: k.FakeKubeAPI):
    config.output.write_text('{"quay.io/coreos/etcd:v3.5.0": ""}\n')
    code, _, err = config()
    assert code == EXIT_BAD_INPUT
    assert f"error: {config.output} exists: pass --force to overwrite it or --merge" in err
    assert config.output.read_text() == '{"quay.io/coreos/etcd:v3.5.0": ""}\n'
    assert api.requests == []  # refused before the cluster is read

    code, _, err = config("--force")
    assert code == EXIT_OK, err
    assert config.written() == EXPECTED


def test_merge_keeps_existing_entries_and_reports_the_new_ones(config: Config):
    existing = {
        "quay.io/coreos/etcd:v3.5.0": "",  # not in the cluster: kept
        "docker.io/library/nginx:1.25": f"{REPO}/web/nginx:1.25",  # edited by hand: kept
        "quay.io/acme/report": f"{REPO}/report",  # every tag: covers report:1.4
    }
    config.output.write_text(json.dumps(existing))
    code, _, err = config("--merge")
    assert code == EXIT_OK, err
    added = {s: t for s, t in EXPECTED.items()
             if s not in ("docker.io/library/nginx:1.25", "quay.io/acme/report:1.4")}
    assert config.written() == {**existing, **added}
    assert "found 16 images: 11 new rules, 2 already in the file, 0 conflicts, 3 skipped" in err
    assert f"merged into {config.output}: 3 existing entries kept, 11 added" in err
    assert f"added ghcr.io/acme/api:2.1.0 -> {REPO}/api:2.1.0" in err.splitlines()
    rules = load_rules(config.output, default_registry="registry.example.com",
                       default_namespace="test")  # still a file `migrator sync` accepts
    assert len(rules) == 3 + 11

    code, _, err = config("--merge")  # a second run finds nothing new
    assert code == EXIT_OK
    assert f"nothing new: {config.output} left as it was" in err


def test_force_and_merge_exclude_each_other(config: Config,
                                            capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as info:
        config("--force", "--merge")
    assert info.value.code == EXIT_BAD_INPUT  # argparse's usage error
    assert "--merge: not allowed with argument --force" in capsys.readouterr().err


def test_a_kind_the_server_does_not_serve_is_noted_and_skipped(config: Config,
                                                              api: k.FakeKubeAPI):
    api.unserved.add("cronjobs")  # as a server from before batch/v1 CronJobs
    code, _, err = config("-n", "batch,web")
    assert code == EXIT_OK, err
    assert "note: the API server does not serve cronjobs.batch: none read" in err
    assert len(api.lists("cronjobs")) == 1  # not asked again for the next namespace
    written = config.written()
    assert "quay.io/acme/report:1.4" not in written
    assert f"ghcr.io/acme/migrate@{MIGRATE_PIN}" in written


def test_yaml_output_when_the_name_says_so(config: Config, tmp_path: Path):
    output = tmp_path / "images.yaml"
    code, _, err = config("-o", str(output))
    assert code == EXIT_OK, err
    text = output.read_text()
    assert text.startswith("docker.io/fluent/fluent-bit:3.0.7: registry.example.com/test/")
    assert len(jobs_of(output)) == len(EXPECTED)


def test_past_revisions_on_request(config: Config):
    code, _, err = config("--include-old-revisions", "-n", "web")
    assert code == EXIT_OK, err
    assert config.written()["docker.io/library/nginx:1.24"] == f"{REPO}/nginx:1.24"
    assert "past revisions" not in err


def test_output_to_stdout(config: Config):
    code, out, _ = config("-o", "-")
    assert code == EXIT_OK
    assert json.loads(out) == EXPECTED
    assert not config.output.exists()


# --- conflicts --------------------------------------------------------------------------------


def test_a_conflict_keeps_the_first_source_and_fails(config: Config, api: k.FakeKubeAPI):
    api.add(k.deployment("web", "edge", [("nginx", "quay.io/bitnami/nginx:1.25.4")]))
    code, _, err = config()
    assert code == EXIT_FAILED  # written, but one image has no rule: a script must notice
    assert config.written() == EXPECTED
    assert "0 conflicts" not in err and "1 conflict," in err
    assert ("conflict: quay.io/bitnami/nginx (in deployment web/edge (container nginx)) would "
            f"also go to {REPO}/nginx, which docker.io/library/nginx takes: left out; "
            "--keep-namespace keeps each source's namespace in the target name") in err


def test_keep_namespace_resolves_the_conflict(config: Config, api: k.FakeKubeAPI):
    api.add(k.deployment("web", "edge", [("nginx", "quay.io/bitnami/nginx:1.25.4")]))
    code, _, err = config("--keep-namespace")
    assert code == EXIT_OK, err
    written = config.written()
    assert written["quay.io/bitnami/nginx:1.25.4"] == f"{REPO}/bitnami-nginx:1.25.4"
    assert written["docker.io/library/nginx:1.25"] == f"{REPO}/library-nginx:1.25"
    assert written["registry.k8s.io/coredns/coredns:v1.11.1"] == \
        f"{REPO}/coredns-coredns:v1.11.1"
    assert len(jobs_of(config.output)) == len(EXPECTED) + 1
