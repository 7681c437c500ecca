"""The reference grammar: rule-file parsing (`parse`) and docker-style normalisation."""

import pytest

from migrator.errors import ConfigError, InvalidReference
from migrator.reference import (
    Reference,
    check_digest,
    check_tag,
    normalize,
    parse,
    split,
    split_name,
)

DIGEST = "sha256:" + "a" * 64


class TestSplit:
    def test_port_is_not_a_tag(self):
        assert split("host:5000/ns/repo") == ("host:5000/ns/repo", None, None)

    def test_port_and_tag(self):
        assert split("host:5000/ns/repo:v1") == ("host:5000/ns/repo", "v1", None)

    def test_digest(self):
        assert split(f"quay.io/ns/repo@{DIGEST}") == ("quay.io/ns/repo", None, DIGEST)

    def test_tag_and_digest(self):
        assert split(f"quay.io/ns/repo:v1@{DIGEST}") == ("quay.io/ns/repo", "v1", DIGEST)

    def test_tag_part_is_not_judged(self):
        # Several tags and regexes are given meaning by the rules, not by the grammar.
        assert split("quay.io/ns/repo:v1,v2") == ("quay.io/ns/repo", "v1,v2", None)


class TestSplitName:
    def test_first_component_is_the_registry(self):
        assert split_name("quay.io/coreos/etcd") == ("quay.io", "coreos/etcd")

    def test_deep_path(self):
        assert split_name("harbor.local:8443/a/b/c/repo") == ("harbor.local:8443", "a/b/c/repo")

    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            ("quay.io/etcd", ("quay.io", "etcd")),  # registry/repository, no namespace
            ("registry.k8s.io/pause", ("registry.k8s.io", "pause")),
            ("registry:5000/team/olm", ("registry:5000", "team/olm")),  # a port, no dot
            ("localhost/app", ("localhost", "app")),
            ("nginx", ("docker.io", "library/nginx")),  # Docker Hub's official images
            ("docker.io/nginx", ("docker.io", "library/nginx")),
            ("index.docker.io/nginx", ("docker.io", "library/nginx")),
            ("grafana/grafana", ("docker.io", "grafana/grafana")),
            ("quay/etcd", ("docker.io", "quay/etcd")),  # no dot, no port: a Hub namespace
            ("quay.io", ("docker.io", "library/quay.io")),  # as Docker reads it; rules refuse
        ],
    )
    def test_read_as_docker_pull_reads_it(self, name, expected):
        assert split_name(name) == expected

    def test_empty_component(self):
        with pytest.raises(InvalidReference, match="empty path component"):
            split_name("quay.io//etcd")


class TestParse:
    def test_full(self):
        assert parse("quay.io/coreos/etcd:v3.5") == Reference("quay.io", "coreos/etcd", "v3.5")

    def test_no_tag(self):
        ref = parse("quay.io/coreos/etcd")
        assert ref.tag is None and ref.digest is None
        assert str(ref) == "quay.io/coreos/etcd"

    def test_port_not_taken_for_tag(self):
        ref = parse("registry.local:5000/team/app")
        assert ref == Reference("registry.local:5000", "team/app")

    def test_port_and_tag(self):
        assert parse("registry.local:5000/team/app:1.0").tag == "1.0"

    def test_ipv6_registry(self):
        assert parse("[::1]:5000/team/app:1.0").registry == "[::1]:5000"

    def test_deep_path(self):
        ref = parse("quay.io/a/b/c/d:v1")
        assert ref.repository == "a/b/c/d"
        assert ref.name == "quay.io/a/b/c/d"

    def test_digest(self):
        ref = parse(f"quay.io/coreos/etcd@{DIGEST}")
        assert ref.digest == DIGEST and ref.tag is None
        assert ref.manifest_ref == DIGEST

    def test_tag_and_digest(self):
        ref = parse(f"quay.io/coreos/etcd:v1@{DIGEST}")
        assert (ref.tag, ref.digest) == ("v1", DIGEST)
        assert ref.manifest_ref == DIGEST  # the digest wins
        assert str(ref) == f"quay.io/coreos/etcd:v1@{DIGEST}"

    def test_docker_hub_alias_is_normalised(self):
        assert parse("index.docker.io/library/nginx:1").registry == "docker.io"
        assert parse("registry-1.docker.io/library/nginx:1").registry == "docker.io"

    def test_manifest_ref_needs_tag_or_digest(self):
        with pytest.raises(ValueError):
            _ = parse("quay.io/coreos/etcd").manifest_ref

    def test_with_tag_drops_digest(self):
        ref = parse(f"quay.io/coreos/etcd@{DIGEST}").with_tag("v1")
        assert ref == Reference("quay.io", "coreos/etcd", "v1")

    @pytest.mark.parametrize(
        "text",
        [
            "quay.io/Coreos/etcd",  # uppercase
            "quay.io/coreos/Etcd:v1",
            "quay.io/coreos/../etcd",  # ..
            "quay.io/coreos/./etcd",
            "quay.io//etcd",  # empty component
            "quay.io/coreos/etcd/",
            "/quay.io/coreos/etcd",
            "quay.io/coreos/etcd\r\n:v1",  # CRLF inside
            "quay.io/coreos/etcd:v1\r\nX-Injected: 1",
            "quay.io/co reos/etcd",
            "registry@evil/ns/repo",
            "user:pass@quay.io/ns/repo",
            "quay.io/ns/" + "x" * 300,  # over-long name
            "quay.io/ns/repo:" + "t" * 129,  # over-long tag
            "quay.io/ns/repo:",  # empty tag
            "quay.io/ns/repo:.hidden",
            "quay.io/ns/repo:-x",
            "quay.io/ns/repo@sha256:abc",  # short digest
            "quay.io/ns/repo@md5:" + "a" * 32,
            "quay.io/ns/repo@sha256:" + "A" * 64,
            "quay.io/ns/repo:v1,v2",  # several tags: only rules accept that
            "bad_host!/ns/repo",
            "Nginx",  # uppercase, read on Docker Hub
            "",
        ],
    )
    def test_invalid(self, text):
        with pytest.raises(InvalidReference):
            parse(text)

    def test_reference_error_is_a_config_error(self):
        with pytest.raises(ConfigError):
            parse("quay.io/Coreos/etcd")

    def test_messages_escape_line_breaks(self):
        with pytest.raises(InvalidReference) as info:
            parse("quay.io/coreos/etcd\r\n:v1")
        assert "\n" not in str(info.value) and "\r" not in str(info.value)
        assert "'\\r' (U+000D)" in str(info.value)


class TestCheck:
    @pytest.mark.parametrize("tag", ["v1", "1.0.0", "latest", "_x", "A-b_c.d", "t" * 128])
    def test_valid_tags(self, tag):
        assert check_tag(tag) == tag

    @pytest.mark.parametrize("tag", ["", ".x", "-x", "a/b", "a:b", "a b", "t" * 129, "é"])
    def test_invalid_tags(self, tag):
        with pytest.raises(InvalidReference):
            check_tag(tag)

    def test_digests(self):
        assert check_digest(DIGEST) == DIGEST
        assert check_digest("sha512:" + "b" * 128)
        for bad in ["sha256:" + "a" * 63, "sha256:" + "g" * 64, "a" * 64, "sha256-" + "a" * 64]:
            with pytest.raises(InvalidReference):
                check_digest(bad)


class TestNormalize:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("nginx", "docker.io/library/nginx:latest"),
            ("nginx:1.25", "docker.io/library/nginx:1.25"),
            ("library/nginx", "docker.io/library/nginx:latest"),
            ("bitnami/redis:7", "docker.io/bitnami/redis:7"),
            ("docker.io/nginx", "docker.io/library/nginx:latest"),
            ("index.docker.io/nginx", "docker.io/library/nginx:latest"),
            ("index.docker.io/library/nginx:1", "docker.io/library/nginx:1"),
            ("registry.hub.docker.com/bitnami/redis", "docker.io/bitnami/redis:latest"),
            ("quay.io/coreos/etcd", "quay.io/coreos/etcd:latest"),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/app:v1", "localhost:5000/app:v1"),
            ("registry.local:5000/a/b/c", "registry.local:5000/a/b/c:latest"),
            ("ghcr.io/org/app", "ghcr.io/org/app:latest"),
        ],
    )
    def test_normalize(self, text, expected):
        assert str(normalize(text)) == expected

    def test_pinned_gets_no_default_tag(self):
        ref = normalize(f"nginx@{DIGEST}")
        assert ref == Reference("docker.io", "library/nginx", None, DIGEST)

    @pytest.mark.parametrize("text", ["Nginx", "nginx:", "nginx@sha256:1", "a//b", "nginx:a b"])
    def test_invalid(self, text):
        with pytest.raises(InvalidReference):
            normalize(text)


class TestHostile:
    """What hostile files put into references: each refused with a message that says why."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("quay.io/coreos/\u0430pp", "'\u0430' (U+0430 CYRILLIC SMALL LETTER A) at position 16"),
            ("quay.io\uff0fcoreos/app", "U+FF0F FULLWIDTH SOLIDUS"),
            ("quay.io/coreos/a\u200bpp", "U+200B ZERO WIDTH SPACE"),
            ("quay.io/coreos/app\x00", "a control character '\\x00' (U+0000)"),
            ("quay.io/coreos/%2e%2e/app", "the character '%' at position 16"),
            ("quay.io/coreos\\app/x", "the character '\\\\'"),
            ("quay.io/co reos/app", "contains white space at position 11"),
            ("quay.io:65536/coreos/app", "port 65536 is not between 1 and 65535"),
            ("quay.io:0/coreos/app", "port 0 is not between 1 and 65535"),
            ("r" * 64 + ".io/coreos/app", "63 between dots"),
            ("quay.io/coreos//app", "has an empty path component"),
            ("registry.example.com/ns/" + "/".join(["a" * 60] * 4),
             "name longer than 255 characters, registry included (267)"),
        ],
    )
    def test_refused_with_the_reason(self, text, expected):
        with pytest.raises(InvalidReference) as info:
            parse(text)
        assert expected in str(info.value)

    @pytest.mark.parametrize("text", ["user:hunter2@quay.io/ns/repo",
                                      "https://user:hunter2@quay.io/ns/repo"])
    def test_credentials_in_a_reference_are_not_repeated(self, text):
        with pytest.raises(InvalidReference) as info:
            parse(text)
        assert "hunter2" not in str(info.value)

    def test_a_long_bad_part_is_cut_in_the_message(self):
        with pytest.raises(InvalidReference) as info:
            parse("quay.io/ns/" + "A" * 250)
        assert len(str(info.value)) < 400 and "(253 characters)" in str(info.value)

    def test_the_highest_port_and_an_ipv6_registry_are_fine(self):
        assert parse("quay.io:65535/ns/repo").registry == "quay.io:65535"
        assert parse("[::1]:5000/ns/repo").registry == "[::1]:5000"
