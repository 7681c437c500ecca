"""The auth file: lookup, environment references, validation, and secrets kept out of text."""

import json

import pytest
from pydantic import ValidationError

from migrator.auth import AuthFile, RegistryAuth, load_auth
from migrator.errors import ConfigError

SECRET = "s3cr3t-P@ss"


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    # Problems name the file as the user wrote it: work with short relative names.
    monkeypatch.chdir(tmp_path)


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return name


def load(tmp_path, data, *, name="auth.json", environ=None):
    return load_auth(write(tmp_path, name, data), environ=environ or {}, required=True)


def problems(tmp_path, data, *, name="auth.json", environ=None):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, data, name=name, environ=environ)
    return info.value.problems


# --- lookup ---------------------------------------------------------------------------------


def test_spec_example(tmp_path):
    auth = load(
        tmp_path,
        {
            "quay.io/coreos": {},
            "registry.example.com": {
                "username": "cn-north-4@AK123",
                "password": "${REG_PASSWORD}",
                "insecure": True,
            },
        },
        environ={"REG_PASSWORD": SECRET},
    )
    entry = auth.lookup("registry.example.com", "test/etcd")
    assert entry.username == "cn-north-4@AK123"
    assert entry.password.get_secret_value() == SECRET
    assert entry.insecure and entry.allow_plain_http
    assert auth.lookup("quay.io", "coreos/etcd").anonymous


def test_longest_match_wins(tmp_path):
    auth = load(
        tmp_path,
        {
            "quay.io": {"username": "registry-wide", "password": "a"},
            "quay.io/coreos": {"username": "namespace", "password": "b"},
            "quay.io/coreos/team": {"username": "deeper", "password": "c"},
        },
    )
    assert auth.lookup("quay.io", "coreos/etcd").username == "namespace"
    assert auth.lookup("quay.io", "coreos/team/app").username == "deeper"
    assert auth.lookup("quay.io", "other/etcd").username == "registry-wide"
    # Whole components only: `quay.io/coreos` is not a prefix of `quay.io/coreos-extra`.
    assert auth.lookup("quay.io", "coreos-extra/etcd").username == "registry-wide"
    assert auth.lookup("ghcr.io", "coreos/etcd") == RegistryAuth()


def test_lookup_registry_port_and_docker_hub_aliases(tmp_path):
    auth = load(
        tmp_path,
        {
            "index.docker.io": {"username": "hub", "password": "a"},
            "Harbor.Local:8443/team": {"username": "harbor", "password": "b"},
        },
    )
    assert set(auth.entries) == {"docker.io", "harbor.local:8443/team"}
    assert auth.lookup("docker.io", "library/nginx").username == "hub"
    assert auth.lookup("registry-1.docker.io", "library/nginx").username == "hub"
    assert auth.lookup("harbor.local:8443", "team/app").username == "harbor"
    assert auth.lookup("harbor.local", "team/app").anonymous  # another port, another registry


def test_empty_auth_file_object():
    assert AuthFile("auth.json").lookup("quay.io", "a/b").anonymous


# --- environment references -----------------------------------------------------------------


@pytest.mark.parametrize("reference", ["${REG_PASSWORD}", "$REG_PASSWORD"])
def test_env_both_forms(tmp_path, reference):
    auth = load(
        tmp_path,
        {"r.io": {"username": "$REG_USER", "password": reference}},
        environ={"REG_PASSWORD": SECRET, "REG_USER": "robot"},
    )
    entry = auth.lookup("r.io", "a/b")
    assert entry.username == "robot"
    assert entry.password.get_secret_value() == SECRET


@pytest.mark.parametrize("value", ["pre${REG_PASSWORD}", "$REG PASSWORD", "$1abc", "a$b"])
def test_env_only_as_whole_value(tmp_path, value):
    auth = load(tmp_path, {"r.io": {"username": "u", "password": value}}, environ={})
    assert auth.lookup("r.io", "a/b").password.get_secret_value() == value


def unresolved(auth, registry, repository="a/b"):
    with pytest.raises(ConfigError) as info:
        auth.lookup(registry, repository)
    return info.value.problems


def test_env_missing_fails_where_the_entry_is_used(tmp_path):
    # A CI secret missing for one registry blocks nothing else: the file reads, and only a
    # lookup of that entry fails, with the variable's name.
    auth = load(tmp_path, {"registry.example.com": {"username": "${REG_USER}",
                                                   "password": "${REG_PASSWORD}"},
                           "other.example.com": {"username": "u", "password": SECRET}},
                environ={"REG_USER": "robot"})
    assert unresolved(auth, "registry.example.com") == [
        "auth.json: 'registry.example.com': password: environment variable REG_PASSWORD is not set"
    ]
    assert auth.unresolved_for("registry.example.com", "x") == tuple(
        unresolved(auth, "registry.example.com"))
    assert auth.lookup("other.example.com", "a/b").username == "u"
    assert auth.unresolved_for("other.example.com", "a/b") == ()
    assert auth.lookup("third.example.com", "a/b").anonymous


def test_env_missing_in_a_namespace_entry_leaves_the_registry_entry_usable(tmp_path):
    auth = load(tmp_path, {"r.io": {"username": "u", "password": SECRET},
                           "r.io/team": {"username": "u", "password": "${TEAM_PASSWORD}"}},
                environ={})
    assert auth.lookup("r.io", "other/app").username == "u"
    assert unresolved(auth, "r.io", "team/app") == [
        "auth.json: 'r.io/team': password: environment variable TEAM_PASSWORD is not set"]


def test_env_missing_with_another_problem_is_reported_at_once(tmp_path):
    assert problems(tmp_path, {"r.io": {"username": "u", "password": "${P}",
                                        "insecur": True}}, environ={}) == [
        "auth.json: 'r.io': unknown key 'insecur': did you mean 'insecure'?",
        "auth.json: 'r.io': password: environment variable P is not set",
    ]


def test_env_empty_is_a_mistake(tmp_path):
    auth = load(tmp_path, {"r.io": {"username": "u", "password": "$REG_PASSWORD"}},
                environ={"REG_PASSWORD": ""})
    (problem,) = unresolved(auth, "r.io")
    assert problem.endswith("password: environment variable REG_PASSWORD is empty")


# --- validation -----------------------------------------------------------------------------


def test_unknown_key(tmp_path):
    assert problems(tmp_path, {"quay.io": {"username": "u", "pasword": SECRET}}) == [
        "auth.json: 'quay.io': unknown key 'pasword': did you mean 'password'?"
    ]


def test_identity_token_explained(tmp_path):
    (problem,) = problems(tmp_path, {"quay.io": {"identityToken": SECRET}})
    assert "identity tokens are not supported" in problem
    assert SECRET not in problem


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"insecure": "true"}, "insecure: must be true or false"),
        ({"tls_verify": 1}, "tls_verify: must be true or false"),
        ({"username": "u", "password": 123456}, "password: must be a string (quote it)"),
        ({"password": SECRET}, "password is set but username is not"),
        (["u", SECRET], "must be a mapping of username, password, insecure, tls_verify, "),
        ("u:p", "must be a mapping"),
    ],
)
def test_bad_entries(tmp_path, entry, expected):
    (problem,) = problems(tmp_path, {"quay.io": entry})
    assert problem.startswith("auth.json: 'quay.io': ")
    assert expected in problem


@pytest.mark.parametrize(
    "key",
    ["https://quay.io", "quay.io/", "quay.io//coreos", "quay.io/CoreOS", "bad host", "a_b.io"],
)
def test_bad_keys(tmp_path, key):
    (problem,) = problems(tmp_path, {key: {}})
    assert problem.startswith(f"auth.json: '{key}': invalid key: ")


def test_same_registry_twice_after_normalisation(tmp_path):
    (problem,) = problems(tmp_path, {"docker.io": {}, "index.docker.io": {"insecure": True}})
    assert problem == ("auth.json: 'index.docker.io': same registry as 'docker.io', with other "
                       "settings: keep one of the two")


def test_docker_hub_under_each_of_its_names_with_the_same_entry(tmp_path):
    entry = {"username": "$HUB_USER", "password": "$HUB_PASSWORD"}
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({name: entry for name in (
        "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com", "docker.io")}))
    auth = load_auth(str(path), environ={"HUB_USER": "me", "HUB_PASSWORD": "pw"}, required=True)
    assert list(auth.entries) == ["docker.io"]
    assert auth.lookup("docker.io", "library/nginx").username == "me"


def test_a_key_from_the_environment(tmp_path):
    path = tmp_path / "auth.yaml"
    path.write_text("$TARGET_REGISTRY: {username: u, password: p}\n")
    auth = load_auth(str(path), environ={"TARGET_REGISTRY": "Harbor.example.com"}, required=True)
    assert list(auth.entries) == ["harbor.example.com"]
    (problem,) = problems(tmp_path, {"${TARGET_REGISTRY}": {}})
    assert problem == ("auth.json: '${TARGET_REGISTRY}': invalid key: environment variable "
                       "TARGET_REGISTRY is not set or empty")


def test_duplicate_keys_json(tmp_path):
    text = (
        '{"ghcr.io": {}, "quay.io": {"username": "a", "password": "x", "password": "y"},'
        ' "ghcr.io": {}}'
    )
    assert problems(tmp_path, text) == [
        "auth.json: 'ghcr.io': duplicate key: only the last value would count",
        "auth.json: 'quay.io': 'password': duplicate key: only the last value would count",
    ]


def test_duplicate_keys_yaml(tmp_path):
    text = "quay.io:\n  username: a\n  username: b\n"
    assert problems(tmp_path, text, name="auth.yaml") == [
        "auth.yaml: 'quay.io': 'username': duplicate key (again on line 3): "
        "only the last value would count"
    ]


def test_every_problem_at_once(tmp_path):
    found = problems(
        tmp_path,
        {
            "quay.io": {"pasword": "x"},
            "ghcr.io": {"username": "u", "password": "$NOPE"},
            "ok.io": {"username": "u", "password": "p"},
            "https://r.io": {},
        },
    )
    # ghcr.io's unset variable is no problem of the file: it counts only where a rule uses it
    assert len(found) == 2 and not any("ghcr.io" in problem for problem in found)


def test_null_entry_is_anonymous(tmp_path):
    auth = load(tmp_path, "quay.io/coreos:\nquay.io: {}\n", name="auth.yaml")
    assert auth.lookup("quay.io", "coreos/etcd").anonymous


def test_empty_strings_mean_anonymous(tmp_path):
    auth = load(tmp_path, {"quay.io": {"username": "", "password": ""}})
    entry = auth.lookup("quay.io", "a/b")
    assert entry.anonymous and entry.username is None and entry.password is None


# --- secrets never shown ---------------------------------------------------------------------


def test_password_not_in_repr_or_str():
    entry = RegistryAuth(username="robot", password=SECRET)
    for text in (
        repr(entry),
        str(entry),
        entry.model_dump_json(),
        repr(AuthFile("a", {"r": entry})),
    ):
        assert SECRET not in text
    assert "robot" in repr(entry)
    username_only = RegistryAuth(username="robot")
    assert "robot" in repr(username_only) and "password=None" in repr(username_only)


def test_password_not_in_validation_errors():
    with pytest.raises(ValidationError) as info:
        RegistryAuth(username="u", password=SECRET, insecure="maybe")
    assert SECRET not in str(info.value)


def test_password_not_in_problems(tmp_path):
    found = problems(
        tmp_path,
        {
            "quay.io": {"username": 5, "password": SECRET, "extra": SECRET},
            "ghcr.io": {"password": SECRET},
            SECRET.lower() + ".io": {"password": SECRET, "insecure": SECRET},
        },
    )
    assert found and not any(SECRET in problem for problem in found)


def test_yaml_numeric_password_keeps_its_text(tmp_path):
    # Go's YAML decoder keeps the written text for string fields; so do we.
    auth = load(tmp_path, "r.io:\n  username: 0123\n  password: 007\n", name="auth.yaml")
    entry = auth.lookup("r.io", "a/b")
    assert (entry.username, entry.password.get_secret_value()) == ("0123", "007")


# --- TLS and plain HTTP ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "verify", "plain_http"),
    [
        ({}, True, False),
        ({"insecure": True}, False, True),
        ({"insecure": True, "tls_verify": True}, True, True),
        ({"tls_verify": False}, False, False),
        ({"insecure": False, "tls_verify": False}, False, False),
    ],
)
def test_verify(settings, verify, plain_http):
    entry = RegistryAuth(**settings)
    assert entry.verify is verify
    assert entry.allow_plain_http is plain_http


def test_ca_file(tmp_path):
    (tmp_path / "certs").mkdir()
    ca = tmp_path / "certs" / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    auth = load(
        tmp_path,
        {
            "a.io": {"ca_file": "certs/ca.pem"},  # relative to the auth file
            "b.io": {"ca_file": str(ca), "insecure": True},  # a CA asks for verification
            "c.io": {"ca_file": str(ca), "tls_verify": False},
        },
    )
    assert auth.lookup("a.io", "x/y").verify == str(ca)
    assert auth.lookup("b.io", "x/y").verify == str(ca)
    assert auth.lookup("b.io", "x/y").allow_plain_http
    assert auth.lookup("c.io", "x/y").verify is False


def test_ca_file_missing(tmp_path):
    assert problems(tmp_path, {"a.io": {"ca_file": "nope.pem"}}) == [
        "auth.json: 'a.io': ca_file: file not found: nope.pem"
    ]


def test_model_is_frozen_and_strict():
    entry = RegistryAuth()
    with pytest.raises(ValidationError):
        entry.insecure = True  # type: ignore[misc]
    with pytest.raises(ValidationError):
        RegistryAuth(insecure="yes")
    with pytest.raises(ValidationError):
        RegistryAuth(pasword="x")


# --- files ----------------------------------------------------------------------------------


def test_missing_default_file_is_anonymous(tmp_path):
    path = str(tmp_path / "auth.json")
    auth = load_auth(path, environ={}, required=False)
    assert auth.entries == {}
    assert auth.lookup("quay.io", "a/b").anonymous


def test_no_path_is_anonymous():
    assert load_auth(None, environ={}, required=False).entries == {}


def test_missing_required_file():
    with pytest.raises(ConfigError) as info:
        load_auth("auth.json", environ={}, required=True)
    assert info.value.problems == ["auth.json: file not found"]


def test_invalid_json_with_line(tmp_path):
    write(tmp_path, "auth.json", '{\n  "quay.io": {\n    "username": "a"\n    "password": "b"}\n}')
    with pytest.raises(ConfigError) as info:
        load_auth("auth.json", environ={}, required=True)
    assert info.value.problems == [
        "auth.json: line 4, column 5: invalid JSON: Expecting ',' delimiter"
    ]


def test_invalid_yaml_with_line(tmp_path):
    (problem,) = problems(tmp_path, "quay.io:\n  username: a\n password: b\n", name="auth.yml")
    assert "auth.yml: line 3" in problem and "invalid YAML" in problem


def test_yaml_equals_json(tmp_path):
    data = {
        "quay.io": {"username": "u", "password": "$P", "insecure": True},
        "quay.io/coreos": {},
    }
    yaml_text = "quay.io:\n  username: u\n  password: $P\n  insecure: true\nquay.io/coreos: {}\n"
    from_json = load(tmp_path, data, environ={"P": SECRET})
    from_yaml = load(tmp_path, yaml_text, name="auth.yaml", environ={"P": SECRET})
    assert from_json.entries == from_yaml.entries


def test_image_syncer_yaml_example(tmp_path):
    text = (
        "quay.io:\n  username: xxx\n  password: xxxxxxxxx\n  insecure: true\n"
        "registry.cn-beijing.aliyuncs.com:\n  username: xxx\n  password: xxxxxxxxx\n"
        "docker.io:\n  username: xxx\n  password: xxxxxxxxxx\n"
        "quay.io/coreos:\n  username: abc\n  password: xxxxxxxxx\n  insecure: true\n"
    )
    auth = load(tmp_path, text, name="auth.yaml")
    assert auth.lookup("quay.io", "coreos/etcd").username == "abc"
    assert auth.lookup("quay.io", "other/etcd").username == "xxx"


def test_top_level_must_be_mapping(tmp_path):
    assert problems(tmp_path, ["quay.io"]) == [
        "auth.json: the top level must be a mapping of registry to credentials, not a list"
    ]


def test_empty_yaml_is_anonymous(tmp_path):
    assert load(tmp_path, "", name="auth.yaml").entries == {}


# --- hostile files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "expected"),
    [
        (SECRET + "\n", "password: holds a control character (a line break, a tab, NUL...)"),
        (SECRET + "\x00", "password: holds a control character"),
        ("\ud800" + SECRET, "password: holds an unpaired surrogate escape"),
    ],
)
def test_unusable_passwords_are_refused_without_showing_them(tmp_path, password, expected):
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"quay.io": {"username": "u", "password": password}}))
    with pytest.raises(ConfigError) as info:
        load_auth("auth.json", environ={}, required=True)
    (problem,) = info.value.problems
    assert problem.startswith("auth.json: 'quay.io': ") and expected in problem
    assert SECRET not in problem


def test_a_password_from_the_environment_with_a_line_break(tmp_path):
    (problem,) = problems(tmp_path, {"quay.io": {"username": "u", "password": "$PW"}},
                          environ={"PW": SECRET + "\n"})
    assert problem.endswith("remove it (from environment variable PW)")
    assert SECRET not in problem


def test_a_yaml_block_password_keeps_its_line_break_and_is_refused(tmp_path):
    text = f"quay.io:\n  username: u\n  password: |\n    {SECRET}\n"
    (problem,) = problems(tmp_path, text, name="auth.yaml")
    assert "password: holds a control character" in problem and SECRET not in problem


def test_a_user_name_with_a_colon_is_refused(tmp_path):
    (problem,) = problems(tmp_path, {"quay.io": {"username": "a:b", "password": SECRET}})
    assert "username: holds ':'" in problem


@pytest.mark.parametrize("key", [f"robot:{SECRET}@quay.io", f"https://robot:{SECRET}@quay.io"])
def test_credentials_in_a_key_are_masked(tmp_path, key):
    (problem,) = problems(tmp_path, {key: {}})
    assert "robot:***@quay.io" in problem and SECRET not in problem


@pytest.mark.parametrize(
    ("key", "expected"),
    [("quay.\u0456o", "U+0456"), ("quay.io:70000", "port 70000"), ("quay.io\r\nx", "'\\r'")],
)
def test_hostile_keys(tmp_path, key, expected):
    (problem,) = problems(tmp_path, {key: {}})
    assert "invalid key: " in problem and expected in problem


def test_billion_laughs_auth_is_refused(tmp_path):
    lines = [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}" if i else "lol"] * 9) + "]"
             for i in range(10)]
    (problem,) = problems(tmp_path, "\n".join(lines) + "\n", name="auth.yaml")
    assert problem.startswith("auth.yaml: invalid YAML: aliases (*name) would expand")


def test_an_empty_user_name_with_a_password_is_still_refused(tmp_path):
    (problem,) = problems(tmp_path, {"quay.io": {"username": "", "password": SECRET}})
    assert problem.endswith("password is set but username is not")
