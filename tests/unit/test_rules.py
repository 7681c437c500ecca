"""The images file: the eight rules, the extensions and every kind of bad input."""

import json

import pytest

from migrator.documents import MAX_FILE_BYTES
from migrator.errors import ConfigError
from migrator.reference import Reference
from migrator.rules import (
    Job,
    Rule,
    load_rules,
    parse_rules,
    resolve_defaults,
)

DIGEST = "sha256:" + "0123456789abcdef" * 4
OTHER_DIGEST = "sha256:" + "f" * 64


def rules_of(data, *, registry="registry.example.com", namespace="test"):
    return parse_rules(
        data, filename="images.json", default_registry=registry, default_namespace=namespace
    )


def problems_of(data, *, registry="registry.example.com", namespace="test"):
    with pytest.raises(ConfigError) as info:
        rules_of(data, registry=registry, namespace=namespace)
    return info.value.problems


def one_rule(source, target, **defaults):
    rules = rules_of({source: target}, **defaults)
    assert len(rules) == 1
    return rules[0]


def job_strings(rule, tags=None):
    return [str(job) for job in rule.jobs(tags)]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- the spec's example -------------------------------------------------------------------


def test_spec_example():
    rules = rules_of(
        {
            "quay.io/coreos/etcd:1.0.0": "registry.example.com/test/etcd:1.0.0",
            "quay.io/coreos/etcd": "registry.example.com/test/etcd",
            "quay.io/coreos/etcd:2.7.3": "registry.example.com/test/etcd",
            "quay.io/coreos/kube-rbac-proxy:v0.4.1": "",
        }
    )
    assert [rule.origin for rule in rules] == [
        "images.json: 'quay.io/coreos/etcd:1.0.0'",
        "images.json: 'quay.io/coreos/etcd'",
        "images.json: 'quay.io/coreos/etcd:2.7.3'",
        "images.json: 'quay.io/coreos/kube-rbac-proxy:v0.4.1'",
    ]
    assert job_strings(rules[0]) == [
        "quay.io/coreos/etcd:1.0.0 -> registry.example.com/test/etcd:1.0.0"
    ]
    assert rules[1].needs_tag_list
    assert job_strings(rules[1], ["a", "b"]) == [
        "quay.io/coreos/etcd:a -> registry.example.com/test/etcd:a",
        "quay.io/coreos/etcd:b -> registry.example.com/test/etcd:b",
    ]
    assert job_strings(rules[2]) == [
        "quay.io/coreos/etcd:2.7.3 -> registry.example.com/test/etcd:2.7.3"
    ]
    assert job_strings(rules[3]) == [
        "quay.io/coreos/kube-rbac-proxy:v0.4.1 -> registry.example.com/test/kube-rbac-proxy:v0.4.1"
    ]


# --- rule 1: the largest unit is a repository ---------------------------------------------


@pytest.mark.parametrize("source", ["quay.io", "quay.io:/v1/", "localhost:5000"])
def test_rule1_no_whole_registry(source):
    (problem,) = problems_of({source: "registry.example.com/test/etcd"})
    assert problem.startswith(f"images.json: '{source}': the source names a whole registry")
    assert "cannot copy a whole namespace or registry" in problem


def test_rule1_a_registry_and_one_component_is_a_repository():
    # image-syncer v1.5 reads `quay.io/coreos` as Docker does: the repository `coreos`.
    rule = one_rule("quay.io/coreos:v1", "registry.example.com/test")
    assert (rule.source, rule.tags, rule.target) == (
        Reference("quay.io", "coreos"), ("v1",), Reference("registry.example.com", "test"))


# --- rules 2 and 3: references read as `docker pull` reads them ------------------------------


def test_rule3_deep_paths():
    rule = one_rule("harbor.local:8443/a/b/c/app:v1", "registry.example.com/x/y/z/app")
    assert rule.source == Reference("harbor.local:8443", "a/b/c/app")
    assert rule.tags == ("v1",)
    assert job_strings(rule) == [
        "harbor.local:8443/a/b/c/app:v1 -> registry.example.com/x/y/z/app:v1"
    ]


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ("nginx:latest", "registry.example.com/test/nginx",
         "docker.io/library/nginx:latest -> registry.example.com/test/nginx:latest"),
        ("library/nginx:1.25", "lchdzh/nginx",
         "docker.io/library/nginx:1.25 -> docker.io/lchdzh/nginx:1.25"),
        ("docker.io/nginx:1.21-alpine", "lchdzh/nginx:1.21-alpine",
         "docker.io/library/nginx:1.21-alpine -> docker.io/lchdzh/nginx:1.21-alpine"),
        ("grafana/grafana:11.3.2", "registry:5000/image-syncer-test/grafana",
         "docker.io/grafana/grafana:11.3.2 -> registry:5000/image-syncer-test/grafana:11.3.2"),
        ("k8s.gcr.io/pause:3.2", "davidliyutong/pause",
         "k8s.gcr.io/pause:3.2 -> docker.io/davidliyutong/pause:3.2"),
        ("registry.hub.docker.com/library/redis:7", "index.docker.io/me/redis",
         "docker.io/library/redis:7 -> docker.io/me/redis:7"),
        ("registry-1.docker.io/bitnami/redis:7", "localhost:5000/redis",
         "docker.io/bitnami/redis:7 -> localhost:5000/redis:7"),
    ],
)
def test_rule3_docker_short_names(source, target, expected):
    assert job_strings(one_rule(source, target)) == [expected]


def test_rule3_docker_short_name_without_tag_copies_every_tag():
    rule = one_rule("kubernetesui/dashboard", "registry.example.com/k/dashboard")
    assert rule.source == Reference("docker.io", "kubernetesui/dashboard")
    assert rule.needs_tag_list


def test_rule3_regex_on_a_docker_hub_name():
    rule = one_rule("docker.io/consul:/^1\\./", "registry.example.com/x/consul")
    assert (rule.source, rule.tag_pattern) == (Reference("docker.io", "library/consul"), "^1\\.")


def test_rule8_default_target_of_a_docker_hub_name():
    rule = one_rule("redis:7.2.7-alpine", "")
    assert job_strings(rule) == ["docker.io/library/redis:7.2.7-alpine -> "
                                 "registry.example.com/test/redis:7.2.7-alpine"]


def test_rule3_a_target_that_is_only_a_registry_hints_the_repository_name():
    (problem,) = problems_of({"quay.io/coreos/etcd:v1": "registry.example.com"})
    assert problem == (
        "images.json: 'quay.io/coreos/etcd:v1': target 'registry.example.com': the target "
        "names a whole registry, not a repository: write registry.example.com/etcd"
    )


@pytest.mark.parametrize(
    "source",
    ["quay.io/CoreOS/etcd", "quay.io/coreos/../etcd", "quay.io//etcd", "quay.io/co reos/etcd"],
)
def test_rule2_grammar(source):
    (problem,) = problems_of({source: ""})
    assert problem.startswith(f"images.json: '{source}': ")


def test_scheme_is_refused():
    problems = problems_of({"https://quay.io/coreos/etcd": "http://registry.example.com/a/b"})
    assert len(problems) == 2
    assert all("without a scheme" in problem for problem in problems)


# --- rule 4: source never empty; one source, several targets -------------------------------


@pytest.mark.parametrize("source", ["", "   "])
def test_rule4_empty_source(source):
    (problem,) = problems_of({source: "registry.example.com/test/etcd"})
    assert "the source is empty" in problem


def test_rule4_list_of_targets():
    rules = rules_of(
        {
            "quay.io/coreos/etcd:v1": [
                "registry.example.com/a/etcd",
                "registry.example.com/b/etcd:stable",
                "",
                "registry.example.com/a/etcd",  # the same target twice: folded
            ]
        }
    )
    assert [str(job) for rule in rules for job in rule.jobs()] == [
        "quay.io/coreos/etcd:v1 -> registry.example.com/a/etcd:v1",
        "quay.io/coreos/etcd:v1 -> registry.example.com/b/etcd:stable",
        "quay.io/coreos/etcd:v1 -> registry.example.com/test/etcd:v1",
    ]
    assert {rule.origin for rule in rules} == {"images.json: 'quay.io/coreos/etcd:v1'"}


def test_rule4_empty_list():
    assert problems_of({"quay.io/coreos/etcd": []}) == [
        "images.json: 'quay.io/coreos/etcd': the list of targets is empty"
    ]


# --- rule 5: the repository name may differ ------------------------------------------------


def test_rule5_rename():
    rule = one_rule("quay.io/coreos/etcd:v1", "registry.example.com/infra/kv-store:prod")
    assert job_strings(rule) == [
        "quay.io/coreos/etcd:v1 -> registry.example.com/infra/kv-store:prod"
    ]


# --- rule 6: no tag = every tag; the target must then have no tag --------------------------


def test_rule6_all_tags():
    rule = one_rule("quay.io/coreos/etcd", "registry.example.com/test/etcd")
    assert rule.needs_tag_list and rule.tags == () and rule.tag_pattern is None
    assert job_strings(rule, ["v2", "v1", "v2"]) == [
        "quay.io/coreos/etcd:v2 -> registry.example.com/test/etcd:v2",
        "quay.io/coreos/etcd:v1 -> registry.example.com/test/etcd:v1",
    ]


def test_rule6_tag_list_required():
    rule = one_rule("quay.io/coreos/etcd", "registry.example.com/test/etcd")
    with pytest.raises(ValueError):
        rule.jobs()


def test_rule6_tags_outside_the_grammar_are_skipped():
    rule = one_rule("quay.io/coreos/etcd", "registry.example.com/test/etcd")
    assert job_strings(rule, ["../x", "ok"]) == [
        "quay.io/coreos/etcd:ok -> registry.example.com/test/etcd:ok"
    ]


def test_rule6_target_tag_refused():
    (problem,) = problems_of({"quay.io/coreos/etcd": "registry.example.com/test/etcd:v1"})
    assert problem.startswith(
        "images.json: 'quay.io/coreos/etcd': target 'registry.example.com/test/etcd:v1': "
        "the target names a tag but the source names none"
    )


# --- rule 7: one tag; a target without a tag keeps it; several tags -------------------------


def test_rule7_keep_tag():
    rule = one_rule("quay.io/coreos/etcd:2.7.3", "registry.example.com/test/etcd")
    assert not rule.needs_tag_list
    assert rule.target.tag is None
    assert job_strings(rule) == [
        "quay.io/coreos/etcd:2.7.3 -> registry.example.com/test/etcd:2.7.3"
    ]


def test_rule7_retag():
    rule = one_rule("quay.io/coreos/etcd:2.7.3", "registry.example.com/test/etcd:stable")
    assert job_strings(rule) == [
        "quay.io/coreos/etcd:2.7.3 -> registry.example.com/test/etcd:stable"
    ]


def test_rule7_retag_inside_one_repository_is_fine():
    rule = one_rule("quay.io/coreos/etcd:2.7.3", "quay.io/coreos/etcd:stable")
    assert rule.jobs()[0].target.tag == "stable"


@pytest.mark.parametrize(
    "target", ["quay.io/coreos/etcd", "quay.io/coreos/etcd:v1", "index.docker.io/coreos/etcd"]
)
def test_copy_onto_itself(target):
    source = "docker.io/coreos/etcd:v1" if target.startswith("index") else "quay.io/coreos/etcd:v1"
    (problem,) = problems_of({source: target})
    assert problem.endswith("the target is the source itself")


def test_several_tags():
    rule = one_rule("quay.io/coreos/etcd:v1,v2, v3,v1", "registry.example.com/test/etcd")
    assert rule.tags == ("v1", "v2", "v3")  # duplicates folded, order kept
    assert job_strings(rule) == [
        f"quay.io/coreos/etcd:{tag} -> registry.example.com/test/etcd:{tag}"
        for tag in ("v1", "v2", "v3")
    ]


def test_several_tags_target_tag_refused():
    (problem,) = problems_of({"quay.io/coreos/etcd:v1,v2": "registry.example.com/test/etcd:v1"})
    assert "the target names a tag but the source names several" in problem


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("quay.io/coreos/etcd:v1,,v2", "empty tag in 'v1,,v2'"),
        ("quay.io/coreos/etcd:v1,", "empty tag"),
        ("quay.io/coreos/etcd:", "empty tag after ':'"),
        ("quay.io/coreos/etcd:v1,-bad", "invalid tag '-bad'"),
    ],
)
def test_bad_tags(source, fragment):
    (problem,) = problems_of({source: "registry.example.com/test/etcd"})
    assert fragment in problem


def test_several_tags_in_target_refused():
    (problem,) = problems_of({"quay.io/coreos/etcd:v1": "registry.example.com/test/etcd:a,b"})
    assert "a target names at most one tag" in problem


# --- rule 8: empty target → defaults ---------------------------------------------------------


@pytest.mark.parametrize("target", ["", None, "  "])
def test_rule8_default_target(target):
    rule = one_rule("quay.io/coreos/kube-rbac-proxy:v0.4.1", target, namespace="mirror/k8s")
    assert rule.target == Reference("registry.example.com", "mirror/k8s/kube-rbac-proxy")
    assert job_strings(rule) == [
        "quay.io/coreos/kube-rbac-proxy:v0.4.1 -> "
        "registry.example.com/mirror/k8s/kube-rbac-proxy:v0.4.1"
    ]


def test_rule8_default_uses_last_component():
    rule = one_rule("quay.io/a/b/c/app", "")
    assert rule.target == Reference("registry.example.com", "test/app")


def test_rule8_docker_hub_alias_as_default_registry():
    rule = one_rule("quay.io/a/app:v1", "", registry="index.docker.io", namespace="me")
    assert rule.target.registry == "docker.io"


@pytest.mark.parametrize(
    ("registry", "namespace", "fragment"),
    [
        (
            None,
            None,
            "no default registry and namespace are set: pass --registry and "
            "--namespace or set DEFAULT_REGISTRY and DEFAULT_NAMESPACE",
        ),
        (None, "test", "no default registry is set: pass --registry or set DEFAULT_REGISTRY"),
        ("r.io", None, "no default namespace is set: pass --namespace or set DEFAULT_NAMESPACE"),
        ("r.io", "Bad", "the default registry/namespace is invalid"),
    ],
)
def test_rule8_missing_defaults(registry, namespace, fragment):
    problems = problems_of(
        {"quay.io/a/app:v1": "", "quay.io/a/other": None, "quay.io/a/fine": "r.io/x/fine"},
        registry=registry,
        namespace=namespace,
    )
    assert len(problems) == 2  # every entry that needs the defaults, and only those
    assert problems[0].startswith("images.json: 'quay.io/a/app:v1': target '': ")
    assert all(fragment in problem for problem in problems)


def test_rule8_defaults_not_needed():
    rule = one_rule("quay.io/a/app:v1", "r.io/x/app", registry=None, namespace=None)
    assert rule.target.registry == "r.io"


def test_resolve_defaults_flag_wins():
    env = {"DEFAULT_REGISTRY": "env.example.com", "DEFAULT_NAMESPACE": "envns"}
    assert resolve_defaults("flag.example.com", "flagns", env) == ("flag.example.com", "flagns")
    assert resolve_defaults(None, "flagns", env) == ("env.example.com", "flagns")
    assert resolve_defaults(None, None, env) == ("env.example.com", "envns")
    assert resolve_defaults(None, None, {}) == (None, None)
    assert resolve_defaults("", " ", {"DEFAULT_REGISTRY": ""}) == (None, None)


# --- extension: digests ---------------------------------------------------------------------


def test_digest_without_target_tag_pushes_by_digest():
    rule = one_rule(f"quay.io/coreos/etcd@{DIGEST}", "registry.example.com/test/etcd")
    assert not rule.needs_tag_list and rule.tags == ()
    assert rule.source == Reference("quay.io", "coreos/etcd", None, DIGEST)
    (job,) = rule.jobs()
    assert job.source.manifest_ref == DIGEST
    assert job.target == Reference("registry.example.com", "test/etcd")


def test_digest_with_target_tag():
    rule = one_rule(f"quay.io/coreos/etcd@{DIGEST}", "registry.example.com/test/etcd:v1")
    assert job_strings(rule) == [
        f"quay.io/coreos/etcd@{DIGEST} -> registry.example.com/test/etcd:v1"
    ]


def test_tag_and_digest_keeps_tag_for_target():
    rule = one_rule(f"quay.io/coreos/etcd:v1@{DIGEST}", "")
    (job,) = rule.jobs()
    assert job.source.manifest_ref == DIGEST
    assert str(job.target) == "registry.example.com/test/etcd:v1"


def test_digest_same_in_target_is_accepted():
    rule = one_rule(f"quay.io/coreos/etcd@{DIGEST}", f"registry.example.com/test/etcd@{DIGEST}")
    assert rule.target.digest is None


@pytest.mark.parametrize(
    ("source", "target", "fragment"),
    [
        ("quay.io/coreos/etcd@sha256:abc", "", "invalid digest"),
        (f"quay.io/coreos/etcd:a,b@{DIGEST}", "", "cannot name several tags"),
        ("quay.io/coreos/etcd:v1", f"r.io/a/etcd@{DIGEST}", "a target cannot name a digest"),
        (f"quay.io/coreos/etcd@{DIGEST}", f"r.io/a/etcd@{OTHER_DIGEST}", "cannot name a digest"),
        (f"quay.io/coreos/etcd@{DIGEST}", "quay.io/coreos/etcd", "the source itself"),
    ],
)
def test_bad_digests(source, target, fragment):
    (problem,) = problems_of({source: target})
    assert fragment in problem


# --- extension: tag regex -------------------------------------------------------------------


def test_regex():
    rule = one_rule(r"quay.io/coreos/etcd:/v3\.[0-9]+\.[0-9]+/", "registry.example.com/test/etcd")
    assert rule.tag_pattern == r"v3\.[0-9]+\.[0-9]+"
    assert rule.needs_tag_list
    tags = ["v3.5.0", "v3.5.0-rc1", "v3.4.9", "latest", "v2.3.1", "xv3.1.1"]
    assert [job.source.tag for job in rule.jobs(tags)] == ["v3.5.0", "v3.4.9"]  # full match


def test_regex_may_contain_slashes_and_colons():
    rule = one_rule("quay.io/coreos/etcd:/(a/b|c:d|v1)/", "")
    assert rule.tag_pattern == "(a/b|c:d|v1)"


def test_regex_with_port_in_registry():
    rule = one_rule("host:5000/ns/app:/^v1.*$/", "")
    assert rule.source == Reference("host:5000", "ns/app")
    assert rule.tag_pattern == "^v1.*$"


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("quay.io/coreos/etcd:/v1(/", "invalid tag regex 'v1('"),
        ("quay.io/coreos/etcd:/[/", "invalid tag regex"),
        ("quay.io/coreos/etcd://", "the tag regex is empty"),
        ("quay.io/coreos/etcd:/v1.*", "a tag regex is written between slashes"),
        ("quay.io/coreos/etcd:/", "a tag regex is written between slashes"),
        ("quay.io:/v1/", "whole registry"),
    ],
)
def test_bad_regex(source, fragment):
    (problem,) = problems_of({source: ""})
    assert problem.startswith(f"images.json: '{source}': ")
    assert fragment in problem


def test_regex_target_tag_refused():
    (problem,) = problems_of({"quay.io/coreos/etcd:/v1.*/": "registry.example.com/test/etcd:v1"})
    assert "the source names a tag regex" in problem


def test_regex_in_target_refused():
    (problem,) = problems_of({"quay.io/coreos/etcd:v1": "registry.example.com/test/etcd:/v/"})
    assert "a target cannot hold a tag regex" in problem


# --- value types, top level ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [(5, "a number"), (True, "a boolean"), (1.5, "a number")],
)
def test_wrong_value_types(value, kind):
    assert problems_of({"quay.io/coreos/etcd:v1": value}) == [
        "images.json: 'quay.io/coreos/etcd:v1': the target must be a string, null or a list "
        f"of strings, not {kind}"
    ]


def test_wrong_list_item_type():
    (problem,) = problems_of({"quay.io/coreos/etcd:v1": ["r.io/a/etcd", 3]})
    assert problem.endswith("each target in the list must be a string, not a number")


def test_non_string_key():
    (problem,) = problems_of({1: "r.io/a/b"})
    assert problem == "images.json: 1: the source must be a string, not a number"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ([], "the top level must be a mapping of source image to target, not a list"),
        ("quay.io/a/b", "not a string"),
        ({}, "no rules"),
        (None, "no rules"),
    ],
)
def test_top_level(data, fragment):
    (problem,) = problems_of(data)
    assert problem.startswith("images.json: ")
    assert fragment in problem


def test_control_characters_are_escaped():
    (problem,) = problems_of({"quay.io/a/b\nfake: line": ""})
    assert "\n" not in problem
    assert "'quay.io/a/b\\nfake: line'" in problem


# --- conflicts ------------------------------------------------------------------------------


def test_conflicting_targets():
    problems = problems_of(
        {
            "quay.io/a/etcd:v1": "r.io/x/etcd",
            "ghcr.io/b/etcd:v1,v2": "r.io/x/etcd",
        }
    )
    assert problems == [
        "images.json: 'ghcr.io/b/etcd:v1,v2': writes r.io/x/etcd:v1 from ghcr.io/b/etcd:v1, "
        "but 'quay.io/a/etcd:v1' writes it from quay.io/a/etcd:v1"
    ]


def test_conflict_via_retag_and_digest():
    problems = problems_of(
        {
            "quay.io/a/etcd:v2": "r.io/x/etcd:stable",
            f"quay.io/a/etcd@{DIGEST}": "r.io/x/etcd:stable",
        }
    )
    assert len(problems) == 1 and "writes r.io/x/etcd:stable" in problems[0]


def test_same_source_twice_is_no_conflict():
    rules = rules_of({"quay.io/a/etcd:v1": "r.io/x/etcd", "quay.io/a/etcd:v1,v2": "r.io/x/etcd"})
    assert len(rules) == 2


def test_unknown_tags_are_not_conflicts():
    rules = rules_of({"quay.io/a/etcd": "r.io/x/etcd", "ghcr.io/b/etcd:v1": "r.io/x/etcd"})
    assert len(rules) == 2


# --- every problem at once -------------------------------------------------------------------


def test_all_problems_reported_at_once():
    problems = problems_of(
        {
            "quay.io": "r.io/a/b",  # rule 1
            "quay.io/coreos/etcd": "r.io/a/etcd:v1",  # rule 6
            "quay.io/coreos/ok:v1": "r.io/a/ok",  # fine
            "quay.io/coreos/x:/(/": "",  # bad regex
        }
    )
    assert len(problems) == 3
    assert [problem.split(": ")[1] for problem in problems] == [
        "'quay.io'",
        "'quay.io/coreos/etcd'",
        "'quay.io/coreos/x:/(/'",
    ]


def test_source_and_target_problems_both_reported():
    problems = problems_of({"quay.io/Bad/x:v1": "r.io/Bad/x"})
    assert len(problems) == 2


# --- files ----------------------------------------------------------------------------------

JSON_TEXT = """{
  "quay.io/coreos/etcd:1.0.0": "registry.example.com/test/etcd:1.0.0",
  "quay.io/coreos/etcd": "registry.example.com/test/etcd",
  "quay.io/coreos/etcd:/v3\\\\.[0-9]+/": "",
  "quay.io/coreos/kube-rbac-proxy:v0.4.1,v0.5.0": ["", "registry.example.com/b/proxy"]
}
"""

YAML_TEXT = r"""
quay.io/coreos/etcd:1.0.0: registry.example.com/test/etcd:1.0.0
quay.io/coreos/etcd: registry.example.com/test/etcd
"quay.io/coreos/etcd:/v3\\.[0-9]+/": ""
quay.io/coreos/kube-rbac-proxy:v0.4.1,v0.5.0:
  - ""
  - registry.example.com/b/proxy
"""


def load(path, **kwargs):
    kwargs.setdefault("default_registry", "registry.example.com")
    kwargs.setdefault("default_namespace", "test")
    return load_rules(path, **kwargs)


def load_problems(path, **kwargs):
    with pytest.raises(ConfigError) as info:
        load(path, **kwargs)
    return info.value.problems


def describe(rules):
    return [(r.source, r.tags, r.tag_pattern, r.target) for r in rules]


@pytest.mark.parametrize("name", ["images.yaml", "images.yml", "images.conf"])
def test_yaml_equals_json(tmp_path, name):
    from_json = load(write(tmp_path, "images.json", JSON_TEXT))
    from_yaml = load(write(tmp_path, name, YAML_TEXT))
    assert describe(from_json) == describe(from_yaml)
    assert len(from_json) == 5
    assert from_json[2].tag_pattern == r"v3\.[0-9]+"


def test_json_without_extension(tmp_path):
    assert len(load(write(tmp_path, "images", JSON_TEXT))) == 5


def test_origin_uses_the_path_as_given(tmp_path, monkeypatch):
    write(tmp_path, "images.json", JSON_TEXT)
    monkeypatch.chdir(tmp_path)
    rules = load("./images.json")
    assert rules[0].origin == "./images.json: 'quay.io/coreos/etcd:1.0.0'"
    assert rules[0].jobs()[0].rule == rules[0].origin


def test_image_syncer_yaml_example(tmp_path):
    # image-syncer's example/images.yaml, unchanged.
    path = write(
        tmp_path,
        "images.yaml",
        "quay.io/coreos/kube-rbac-proxy: quay.io/ruohe/kube-rbac-proxy\n\n"
        "quay.io/coreos/kube-rbac-proxy:v1.0: quay.io/ruohe/kube-rbac-proxy\n\n"
        "quay.io/coreos/kube-rbac-proxy:v1.0,v2.0: quay.io/ruohe/kube-rbac-proxy",
    )
    rules = load(path)
    assert [rule.tags for rule in rules] == [(), ("v1.0",), ("v1.0", "v2.0")]


def test_missing_file(tmp_path):
    path = str(tmp_path / "images.json")
    assert load_problems(path) == [f"{path}: file not found"]
    assert load(path, required=False) == []


def test_directory(tmp_path):
    (problem,) = load_problems(str(tmp_path))
    assert "is a directory" in problem


def test_invalid_json_with_line(tmp_path):
    path = write(tmp_path, "images.json", '{\n  "quay.io/a/b": "r.io/a/b"\n  "quay.io/a/c": ""\n}')
    assert load_problems(path) == [
        f"{path}: line 3, column 3: invalid JSON: Expecting ',' delimiter"
    ]


def test_invalid_yaml_with_line(tmp_path):
    path = write(tmp_path, "images.yaml", "quay.io/a/b: r.io/a/b\nquay.io/a/c: [r.io/a/c\n")
    (problem,) = load_problems(path)
    assert problem.startswith(f"{path}: line 3, column 1: invalid YAML: ")


def test_invalid_yaml_unsafe_tag(tmp_path):
    path = write(tmp_path, "images.yaml", "quay.io/a/b: !!python/object/apply:os.system [id]\n")
    (problem,) = load_problems(path)
    assert "invalid YAML" in problem and "line 1" in problem


def test_unknown_extension_reports_json_error_for_json_like_text(tmp_path):
    path = write(tmp_path, "images.txt", '{\n  "quay.io/a/b": "r.io/a/b"\n  "quay.io/a/c": ""\n}')
    (problem,) = load_problems(path)
    assert problem == f"{path}: line 3, column 3: invalid JSON: Expecting ',' delimiter"


def test_unknown_extension_reports_yaml_error_otherwise(tmp_path):
    path = write(tmp_path, "images.txt", "a: b\n  c: d\n")
    (problem,) = load_problems(path)
    assert "invalid YAML" in problem


def test_empty_yaml_file(tmp_path):
    path = write(tmp_path, "images.yaml", "# nothing yet\n")
    assert load_problems(path) == [f"{path}: no rules: the file is empty"]


def test_non_mapping_top_level_file(tmp_path):
    path = write(tmp_path, "images.json", '["quay.io/a/b"]')
    (problem,) = load_problems(path)
    assert (
        problem == f"{path}: the top level must be a mapping of source image to target, not a list"
    )


def test_not_utf8(tmp_path):
    path = tmp_path / "images.json"
    path.write_bytes(b'{\n"quay.io/a/b": "\xff"}')
    assert load_problems(str(path)) == [f"{path}: line 2: not UTF-8 text"]


def test_utf8_bom_accepted(tmp_path):
    path = tmp_path / "images.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"quay.io/a/b:v1": "r.io/a/b"}).encode())
    assert len(load(str(path))) == 1


def test_size_cap(tmp_path):
    path = tmp_path / "images.json"
    with path.open("wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)
    assert load_problems(str(path)) == [f"{path}: file larger than 10 MiB"]


def test_duplicate_keys_json(tmp_path):
    path = write(
        tmp_path,
        "images.json",
        '{"quay.io/a/b:v1": "r.io/a/b", "quay.io/a/c:v1": "", "quay.io/a/b:v1": "r.io/x/b"}',
    )
    assert load_problems(path) == [
        f"{path}: 'quay.io/a/b:v1': duplicate key: only the last value would count"
    ]


def test_duplicate_keys_yaml(tmp_path):
    path = write(
        tmp_path,
        "images.yaml",
        "quay.io/a/b:v1: r.io/a/b\nquay.io/a/c:v1: ''\nquay.io/a/b:v1: ''\n",
    )
    assert load_problems(path) == [
        f"{path}: 'quay.io/a/b:v1': duplicate key (again on line 3): "
        "only the last value would count"
    ]


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    text = (
        "base: &base\n  quay.io/a/b:v1: r.io/a/b\nrules:\n  <<: *base\n  quay.io/a/b:v1: r.io/x/b\n"
    )
    path = write(tmp_path, "images.yaml", text)
    problems = load_problems(path)  # the mapping values are wrong, but no key is a duplicate
    assert problems and not any("duplicate" in problem for problem in problems)


def test_three_bad_entries_three_lines(tmp_path):
    path = write(
        tmp_path,
        "images.yaml",
        "quay.io/coreos/a: r.io\n"
        "quay.io/coreos/etcd: r.io/a/etcd:v1\n"
        "quay.io/coreos/ok:v1: r.io/a/ok\n"
        "quay.io/coreos/x: 5\n",
    )
    with pytest.raises(ConfigError) as info:
        load(path)
    assert len(info.value.problems) == 3
    assert len(str(info.value).splitlines()) == 3
    assert all(problem.startswith(f"{path}: 'quay.io/coreos") for problem in info.value.problems)


def test_yaml_keys_with_regex_must_be_quoted_when_needed(tmp_path):
    # Unquoted, `[` and `*` inside a plain key still parse; `#` after a space would not.
    path = write(tmp_path, "images.yaml", "quay.io/a/b:/v[0-9]+.*/: r.io/a/b\n")
    assert load(path)[0].tag_pattern == "v[0-9]+.*"


# --- the dataclasses ------------------------------------------------------------------------


def test_job_str_and_frozen():
    job = Job(Reference("quay.io", "a/b", "v1"), Reference("r.io", "x/b", "v1"), "f: 'k'")
    assert str(job) == "quay.io/a/b:v1 -> r.io/x/b:v1"
    with pytest.raises(AttributeError):
        job.rule = "other"  # type: ignore[misc]


def test_rule_jobs_ignores_tag_list_when_not_needed():
    rule = Rule("f: 'k'", Reference("quay.io", "a/b"), ("v1",), None, Reference("r.io", "x/b"))
    assert [str(job) for job in rule.jobs(["v2"])] == ["quay.io/a/b:v1 -> r.io/x/b:v1"]


# --- tag filters: a rule written as a mapping ----------------------------------------------

TAGS = ["latest", "nightly", "v1.2.3", "1.10.0", "1.9.0", "2.0.0-rc.1", "1.9.1-alpine",
        "v3.4.1", "3.5.0", "4.0.0"]


def selected(options, tags=TAGS, source="quay.io/coreos/etcd"):
    rule = one_rule(source, options)
    return [job.source.tag for job in rule.jobs(tags)]


def test_mapping_with_target_and_no_filter_is_the_plain_rule():
    assert one_rule("quay.io/a/etcd", {"target": "r.io/x/etcd"}) == one_rule(
        "quay.io/a/etcd", "r.io/x/etcd")
    assert one_rule("quay.io/a/etcd:v1", {"target": None}).target == Reference(
        "registry.example.com", "test/etcd")
    rules = rules_of({"quay.io/a/etcd:v1": {"targets": ["r.io/x/etcd", ""]}})
    assert [str(rule.target) for rule in rules] == ["r.io/x/etcd", "registry.example.com/test/etcd"]
    assert one_rule("quay.io/a/etcd", {}).target.name == "registry.example.com/test/etcd"


def test_include_searches_and_exclude_drops():
    assert selected({"include": ["^v"]}) == ["v1.2.3", "v3.4.1"]
    assert selected({"include": "^v3\\.|^4"}) == ["v3.4.1", "4.0.0"]  # one string = one regex
    assert selected({"include": ["^v", "alpine"]}) == ["v1.2.3", "1.9.1-alpine", "v3.4.1"]
    assert selected({"exclude": ["-rc", "alpine", "^[a-z]+$"]}) == [
        "v1.2.3", "1.10.0", "1.9.0", "v3.4.1", "3.5.0", "4.0.0"]
    assert selected({"include": ["^v"], "exclude": ["^v1"]}) == ["v3.4.1"]


def test_filters_combine_with_a_tag_regex():
    # The `/regex/` of the key keeps its full match; the mapping's filters apply after it.
    assert selected({"exclude": ["^v3"]}, source="quay.io/coreos/etcd:/v.*/") == ["v1.2.3"]


@pytest.mark.parametrize(
    ("semver", "tags"),
    [
        (">=3.4, <4", ["v3.4.1", "3.5.0"]),
        (">= 3.4 <4", ["v3.4.1", "3.5.0"]),  # spaces as in npm
        (">=v1.9", ["1.10.0", "1.9.0", "v3.4.1", "3.5.0", "4.0.0"]),  # no pre-release
        (">=2.0.0-rc.0", ["2.0.0-rc.1", "v3.4.1", "3.5.0", "4.0.0"]),  # names one: allowed
        ("^1.9", ["1.10.0", "1.9.0"]),
        ("^1", ["v1.2.3", "1.10.0", "1.9.0"]),
        ("~1.9", ["1.9.0"]),
        ("~3", ["v3.4.1", "3.5.0"]),
        ("1.x", ["v1.2.3", "1.10.0", "1.9.0"]),
        ("1.2.3", ["v1.2.3"]),
        ("=v4.0.0", ["4.0.0"]),
        ("==1.*", ["v1.2.3", "1.10.0", "1.9.0"]),
        ("~=3.4", ["v3.4.1", "3.5.0"]),
        ("<1.10 || >=4", ["v1.2.3", "1.9.0", "4.0.0"]),
        ("!=3.5.0, >=3", ["v3.4.1", "4.0.0"]),
    ],
)
def test_semver_ranges(semver, tags):
    assert selected({"semver": semver}) == tags


def test_caret_and_tilde_follow_npm_below_1():
    tags = ["0.1.0", "0.2.0", "0.2.5", "0.3.0", "0.0.3", "0.0.4"]
    assert selected({"semver": "^0.2.1"}, tags) == ["0.2.5"]
    assert selected({"semver": "^0.0.3"}, tags) == ["0.0.3"]
    assert selected({"semver": "~0.2"}, tags) == ["0.2.0", "0.2.5"]


def test_newest_in_version_order_when_every_tag_is_a_version():
    assert selected({"semver": ">=1", "newest": 3}) == ["v3.4.1", "3.5.0", "4.0.0"]
    assert selected({"include": ["^1\\.(9|10)\\.0$"], "newest": 1}) == ["1.10.0"]  # not "1.9.0"
    # Pre-releases are versions too, ordered below their release.
    assert selected({"include": ["^2", "^1.10"], "newest": 1}) == ["2.0.0-rc.1"]
    assert selected({"newest": 1}, ["1.0", "v1.0"]) == ["1.0"]  # equal: list order decides


def test_newest_in_list_order_when_some_tags_are_not_versions():
    assert selected({"newest": 2}) == ["3.5.0", "4.0.0"]  # the last two of the list
    assert selected({"newest": 3}, ["b", "a", "1.0"]) == ["b", "a", "1.0"]
    assert selected({"newest": 2}, ["1.0", "latest", "0.9"]) == ["latest", "0.9"]
    assert selected({"newest": 50}) == TAGS


def test_yaml_rule_with_filters(tmp_path):
    path = write(tmp_path, "images.yaml", """\
quay.io/coreos/etcd:
  target: registry.example.com/test/etcd
  include: ['^v?3\\.']
  exclude: [-rc, alpha]
  semver: ">=3.4, <4"
  newest: 5
""")
    (rule,) = load(path)
    assert rule.filters.include == ("^v?3\\.",)
    assert rule.filters.exclude == ("-rc", "alpha")
    assert rule.filters.semver == ">=3.4, <4"
    assert rule.filters.newest == 5
    assert [job.source.tag for job in rule.jobs(TAGS)] == ["v3.4.1", "3.5.0"]


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"inlcude": "x"}, "unknown key 'inlcude': did you mean 'include'?"),
        ({"newset": 3}, "unknown key 'newset': did you mean 'newest'?"),
        ({"zzz": 1}, "unknown key 'zzz': the keys are target, targets, include"),
        ({"target": "r.io/a/b", "targets": []}, "give target or targets, not both"),
        ({"include": []}, "include: the list is empty"),
        ({"include": [""]}, "include: an empty regex matches every tag"),
        ({"exclude": 3}, "exclude: must be a regex or a list of regexes (strings), not a number"),
        ({"exclude": ["ok", 3]}, "exclude: must be a regex or a list of regexes"),
        ({"include": ["v1("]}, "include: invalid regex 'v1(': missing ), unterminated"),
        ({"semver": 1.2}, "semver: must be a string (quote it), not a number"),
        ({"semver": ""}, "semver: the range is empty"),
        ({"semver": "latest"}, "semver: 'latest': 'latest' is not a comparison such as >=1.2"),
        ({"semver": ">=1.0 ||"}, "an alternative of '||' is empty"),
        ({"semver": ">=abc1"}, "is not a comparison"),
        ({"semver": "^1.x"}, "'1.x' is not a version"),
        ({"newest": 0}, "newest: must be at least 1, not 0"),
        ({"newest": "5"}, "newest: must be a whole number, not a string"),
        ({"newest": True}, "newest: must be a whole number, not a boolean"),
        ({"catalog": "yes"}, "catalog: must be true or false, not a string"),
        ({"target": 5}, "the target must be a string, null or a list of strings, not a number"),
    ],
)
def test_option_problems(options, fragment):
    (problem,) = problems_of({"quay.io/coreos/etcd": options})
    assert problem.startswith("images.json: 'quay.io/coreos/etcd': ")
    assert fragment in problem


def test_every_option_problem_at_once():
    problems = problems_of({
        "quay.io/coreos/etcd": {"inlcude": "x", "newest": 0, "semver": "bad", "exclude": "("},
        "quay.io/coreos/ok": {"newest": 1},
    })
    assert len(problems) == 4
    assert all(problem.startswith("images.json: 'quay.io/coreos/etcd': ") for problem in problems)


@pytest.mark.parametrize(
    "source",
    ["quay.io/coreos/etcd:v1", "quay.io/coreos/etcd:v1,v2", f"quay.io/coreos/etcd@{DIGEST}"],
)
def test_filters_need_a_source_without_tags(source):
    (problem,) = problems_of({source: {"newest": 2}})
    assert problem == (
        f"images.json: '{source}': tag filters (include, exclude, semver, newest) choose among "
        "the source's tags: give them a source without tags (every tag, /regex/ or *)")


def test_duplicate_option_keys_yaml(tmp_path):
    path = write(tmp_path, "images.yaml", "quay.io/a/b:\n  newest: 1\n  newest: 2\n")
    (problem,) = load_problems(path)
    assert problem == (f"{path}: 'quay.io/a/b': 'newest': duplicate key (again on line 3): "
                       "only the last value would count")


# --- a whole namespace through the registry's catalog --------------------------------------


def test_star_source_is_refused_without_the_opt_in():
    (problem,) = problems_of({"quay.io/coreos/*": "r.io/mirror"})
    assert problem == (
        "images.json: 'quay.io/coreos/*': the source names every repository of a namespace: a "
        "rule cannot copy a whole namespace or registry unless asked to: pass --allow-catalog, "
        "or write the rule as a mapping with catalog: true (the registry must offer its catalog)")
    (problem,) = problems_of({"quay.io/*": ""})
    assert "every repository of a registry" in problem


def test_catalog_rule_with_the_flag_or_per_rule():
    by_flag = parse_rules({"quay.io/coreos/*": "r.io/mirror"}, filename="images.json",
                          default_registry=None, default_namespace=None, allow_catalog=True)
    per_rule = one_rule("quay.io/coreos/*", {"catalog": True, "target": "r.io/mirror/*"})
    for rule in (by_flag[0], per_rule):
        assert rule.catalog and rule.needs_tag_list
        assert rule.source == Reference("quay.io", "coreos")
        assert rule.target == Reference("r.io", "mirror")
        assert rule.catalog_source == "quay.io/coreos/*"
    with pytest.raises(ValueError):
        per_rule.jobs(["v1"])


def test_catalog_layout_below_the_target_namespace():
    rule = one_rule("quay.io/team/*:/v1.*/", {"catalog": True, "target": "r.io/m", "newest": 1})
    found = rule.repositories(["team/app", "team/deep/er/x", "other/app", "team", "teams/y",
                               "team/app", "team/Bad"])
    assert [(str(one.source), str(one.target)) for one in found] == [
        ("quay.io/team/app", "r.io/m/app"), ("quay.io/team/deep/er/x", "r.io/m/deep/er/x")]
    assert found[0].origin == "images.json: 'quay.io/team/*:/v1.*/' (quay.io/team/app)"
    assert not found[0].catalog and found[0].tag_pattern == "v1.*"
    assert [job.source.tag for job in found[0].jobs(["v1.0", "v1.1", "v2"])] == ["v1.1"]


def test_catalog_of_a_whole_registry_and_default_target():
    rule = one_rule("harbor.local:8443/*", {"catalog": True})
    assert rule.source == Reference("harbor.local:8443", "")
    assert rule.catalog_source == "harbor.local:8443/*"
    assert rule.target == Reference("registry.example.com", "test")
    assert [str(one.target) for one in rule.repositories(["a/b", "c"])] == [
        "registry.example.com/test/a/b", "registry.example.com/test/c"]
    (problem,) = problems_of({"quay.io/a/*": {"catalog": True}}, registry=None)
    assert "no default registry" in problem


@pytest.mark.parametrize(
    ("source", "target", "fragment"),
    [
        ("quay.io/a/x*", "r.io/m", "'*' stands for every repository only as the last"),
        ("quay.io/*/x", "r.io/m", "'*' stands for every repository only as the last"),
        ("quay.io/a/*:v1", "r.io/m", "a source with '*' copies every tag of each repository"),
        (f"quay.io/a/*@{DIGEST}", "r.io/m", "names no tag or digest"),
        ("quay.io/A/*", "r.io/m", "invalid repository path component 'A'"),
        ("quay.io/a/*", "r.io", "the target of a source with '*' is a namespace"),
        ("quay.io/a/*", "r.io/m:v1", "the target of a source with '*' is a namespace"),
        ("quay.io/a/*", "quay.io/a", "the target is the source itself"),
        ("quay.io/a/*", "quay.io/a/mirror", "the target namespace lies within the source"),
        ("quay.io/*", "quay.io/mirror", "the target namespace lies within the source"),
    ],
)
def test_catalog_problems(source, target, fragment):
    (problem,) = problems_of({source: {"catalog": True, "target": target}})
    assert problem.startswith(f"images.json: '{source}': ")
    assert fragment in problem


def test_catalog_true_needs_a_star_and_the_hint_names_it():
    (problem,) = problems_of({"quay.io/a/etcd": {"catalog": True}})
    assert "catalog: true needs a source ending in '/*'" in problem
    problems = problems_of({"quay.io": {"catalog": True}})
    assert problems[0].endswith("or quay.io/* for every repository the registry lists")


def test_filters_travel_to_the_fleet_as_plain_json():
    from migrator.fleet import expand_args, rule_from_args

    plain = one_rule("quay.io/a/etcd:/v.*/", {"target": "r.io/x/etcd", "include": "^v3",
                                              "exclude": ["-rc"], "semver": ">=3", "newest": 2})
    catalog = one_rule("quay.io/a/*", {"catalog": True, "target": "r.io/m", "semver": "^1"})
    whole = one_rule("quay.io/*", {"catalog": True, "target": "r.io/m"})
    for rule in (plain, catalog, whole, one_rule("quay.io/a/etcd", "")):
        args = json.loads(json.dumps(expand_args(rule)))
        back = rule_from_args(args)
        assert (back.source, back.target, back.tag_pattern, back.filters, back.catalog) == (
            rule.source, rule.target, rule.tag_pattern, rule.filters, rule.catalog)
    assert expand_args(catalog)["source"] == "quay.io/a/*" and expand_args(catalog)["catalog"]
    assert set(expand_args(one_rule("quay.io/a/etcd", ""))) == {
        "source", "pattern", "target", "rule"}  # unchanged for a rule without filters


def test_platforms_per_rule_reach_every_job_and_travel_to_workers():
    from migrator.fleet import expand_args, job_kwargs, rule_from_args

    rules = rules_of({
        "a.io/ns/multi": {"target": "b.io/ns/multi", "platforms": ["linux/arm64"]},
        "a.io/ns/other:1,2": {"target": "b.io/ns/other", "platforms": "linux/amd64,linux/arm/v7"},
        "a.io/ns/plain:1": "b.io/ns/plain",
    })
    by_source = {rule.source.repository: rule for rule in rules}
    assert by_source["ns/multi"].platforms == {"linux/arm64"}
    assert {job.platforms for job in by_source["ns/other"].jobs()} == {
        frozenset({"linux/amd64", "linux/arm/v7"})}
    assert by_source["ns/plain"].platforms == frozenset()
    travelled = rule_from_args(json.loads(json.dumps(expand_args(by_source["ns/multi"]))))
    assert travelled.platforms == {"linux/arm64"}
    job = travelled.jobs(["v1"])[0]
    assert job_kwargs(job, 3, {"platforms": ["linux/s390x"]})["platforms"] == ["linux/arm64"]
    assert "platforms" not in job_kwargs(by_source["ns/plain"].jobs()[0], 3, {})


def test_bad_platforms_are_problems_of_their_entry():
    lines = problems_of({
        "a.io/ns/x:1": {"target": "b.io/ns/x", "platforms": ["Linux"]},
        "a.io/ns/y:1": {"target": "b.io/ns/y", "platforms": 5},
    })
    assert len(lines) == 2
    assert "'a.io/ns/x:1': platforms: 'Linux' is not os/architecture" in lines[0]
    assert "'a.io/ns/y:1': platforms: must be a list" in lines[1]


# --- hostile files ----------------------------------------------------------------------------


def test_billion_laughs_is_refused_at_once(tmp_path):
    lines = [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}" if i else "lol"] * 9) + "]"
             for i in range(10)]
    path = tmp_path / "images.yaml"
    path.write_text("\n".join(lines) + "\n")
    (problem,) = load_problems(str(path))
    assert problem == (f"{path}: invalid YAML: aliases (*name) would expand the document by "
                       "more than 1000000 values; write the values out instead")


def test_an_alias_to_its_own_container_is_refused(tmp_path):
    path = tmp_path / "images.yaml"
    path.write_text("a.io/ns/x:1: &loop [*loop]\n")
    (problem,) = load_problems(str(path))
    assert problem.startswith(f"{path}: line 1: invalid YAML: an alias names a node that")


def test_a_few_aliases_are_fine(tmp_path):
    path = tmp_path / "images.yaml"
    path.write_text("_base: &t b.io/ns/x\na.io/ns/x:1: *t\na.io/ns/x:2: [*t]\n")
    problems = load_problems(str(path))
    assert len(problems) == 1 and "'_base'" in problems[0]  # only the anchor's own entry


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("images.json", "", "the file is empty: write {} for a file without entries"),
        ("images.json", '{"a.io/ns/x": {"target": "b.io/ns/x", "newest": NaN}}',
         "invalid JSON: NaN is not a JSON value"),
        ("images.json", '{"a.io/ns/x": {"newest": ' + "9" * 5000 + "}}",
         "invalid JSON: Exceeds the limit (4300 digits) for integer string conversion: "
         "value has 5000 digits"),
        ("images.yaml", "a.io/ns/x:1: 2024-13-45\n",
         "invalid YAML: cannot read a value: month must be in 1..12"),
        ("images.yaml", "a.io/ns/x:1: b\x00\n",
         "line 1: invalid YAML: the control character U+0000 is not allowed"),
    ],
)
def test_unreadable_values_are_one_line_naming_the_file(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    assert load_problems(str(path)) == [f"{path}: {expected}"]


def test_utf16_is_named(tmp_path):
    path = tmp_path / "images.json"
    path.write_bytes('{"a.io/ns/x:1": ""}'.encode("utf-16"))
    assert load_problems(str(path)) == [f"{path}: the file is UTF-16 text: save it as UTF-8"]


def test_a_semver_range_with_a_huge_number_is_a_problem_not_a_crash():
    (problem,) = problems_of({"a.io/ns/x": {"target": "b.io/ns/x", "semver": "^1." + "9" * 5000}})
    assert problem.startswith("images.json: 'a.io/ns/x': semver: ")
    assert "is not a version" in problem


def test_credentials_in_a_source_are_masked_in_the_entry():
    (problem,) = problems_of({"robot:hunter2@a.io/ns/x:1": "b.io/ns/x"})
    assert problem.startswith("images.json: 'robot:***@a.io/ns/x:1': '@' in the registry")
    assert "hunter2" not in problem


def test_a_look_alike_slash_is_named_not_taken_for_a_namespace():
    (problem,) = problems_of({"a.io\uff0fns/x:1": "b.io/ns/x"})
    assert "U+FF0F FULLWIDTH SOLIDUS" in problem and "namespace" not in problem


def test_long_keys_are_cut_in_messages():
    data = {f"a.io/ns/{i}{'x' * 5000}": "b.io/ns/x" for i in range(50)}
    problems = problems_of(data)
    assert len(problems) == 50
    assert all(len(problem) < 400 and "characters)" in problem for problem in problems)
