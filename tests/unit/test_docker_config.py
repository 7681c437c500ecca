"""Docker's config file and credential helpers as a fallback of the auth file.

The helpers are real programs: small shell scripts written into tmp_path and found through
the PATH of the environment handed to the product, as `docker` finds them.
"""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from migrator.auth import load_auth
from migrator.docker_config import DockerConfig, normalize_server, server_address
from migrator.errors import AuthError

SECRET = "s3cr3t-Pässwörd"


def write_config(directory: Path, config: dict) -> dict[str, str]:
    """Docker's config in `directory`; the environment that points at it (and at the
    helpers written next to it)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return {"DOCKER_CONFIG": str(directory), "PATH": f"{directory}:/usr/bin:/bin"}


def write_helper(directory: Path, name: str, body: str) -> Path:
    """`docker-credential-<name>`: a shell script; `$0.stdin` keeps what it was asked."""
    path = directory / f"docker-credential-{name}"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def answering(username: str, secret: str) -> str:
    answer = json.dumps({"ServerURL": "", "Username": username, "Secret": secret})
    return f'cat > "$0.stdin"\necho "$0 $1" >> "$0.calls"\necho \'{answer}\'\n'


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(("key", "registry"), [
    ("https://index.docker.io/v1/", "docker.io"),
    ("index.docker.io", "docker.io"),
    ("registry-1.docker.io", "docker.io"),
    ("https://registry.example.com/v2/", "registry.example.com"),
    ("http://Registry.Example.com:5000", "registry.example.com:5000"),
    ("registry.example.com/namespace", "registry.example.com"),
])
def test_keys_are_normalised_as_docker_does(key, registry):
    assert normalize_server(key) == registry


def test_helpers_receive_dockers_server_address():
    assert server_address("docker.io") == "https://index.docker.io/v1/"
    assert server_address("registry.example.com:5000") == "registry.example.com:5000"


def test_auths_base64_username_password_and_identity_token(tmp_path):
    environ = write_config(tmp_path, {"auths": {
        "https://index.docker.io/v1/": {"auth": basic("hub-user", SECRET)},
        "https://quay.io": {"username": "quay-user", "password": SECRET},
        "ghcr.io": {"auth": basic("ignored", "ignored"), "identitytoken": "refresh-me"},
        "empty.example.com": {},
    }})
    config = DockerConfig.of(environ)
    assert config is not None
    hub = config.credentials("docker.io")
    assert hub is not None and hub.username == "hub-user"
    assert hub.password is not None and hub.password.get_secret_value() == SECRET
    quay = config.credentials("quay.io")
    assert quay is not None and quay.username == "quay-user"
    ghcr = config.credentials("ghcr.io")
    assert ghcr is not None and ghcr.identity_token
    assert ghcr.password is not None and ghcr.password.get_secret_value() == "refresh-me"
    assert config.credentials("empty.example.com") is None
    assert config.credentials("other.example.com") is None


def test_the_exact_key_docker_writes_wins_over_another_spelling(tmp_path):
    environ = write_config(tmp_path, {"auths": {
        "docker.io": {"auth": basic("old", "old")},
        "https://index.docker.io/v1/": {"auth": basic("current", SECRET)},
    }})
    found = DockerConfig.of(environ).credentials("docker.io")
    assert found is not None and found.username == "current"


def test_cred_helper_runs_with_the_server_on_stdin_once_per_registry(tmp_path):
    environ = write_config(tmp_path, {"credHelpers": {"registry.example.com:5000": "test"}})
    helper = write_helper(tmp_path, "test", answering("helper-user", SECRET))
    config = DockerConfig.of(environ)
    assert config is not None
    for _ in range(3):
        found = config.credentials("registry.example.com:5000")
        assert found is not None and found.username == "helper-user"
    assert Path(f"{helper}.stdin").read_text() == "registry.example.com:5000"
    assert Path(f"{helper}.calls").read_text().splitlines() == [f"{helper} get"]
    assert found.refresher is not None
    again = found.refresher()  # asks the helper again
    assert again is not None and again.username == "helper-user"
    assert len(Path(f"{helper}.calls").read_text().splitlines()) == 2


def test_creds_store_for_docker_hub_and_not_found_means_anonymous(tmp_path):
    environ = write_config(tmp_path, {"credsStore": "store", "auths": {"quay.io": {}}})
    helper = write_helper(tmp_path, "store", (
        'read server\nprintf %s "$server" > "$0.stdin"\n'
        'if [ "$server" = "https://index.docker.io/v1/" ]; then\n'
        f'  echo \'{json.dumps({"Username": "hub", "Secret": SECRET})}\'\n'
        'else\n  echo "credentials not found in native keychain"; exit 1\nfi\n'))
    config = DockerConfig.of(environ)
    assert config is not None
    hub = config.credentials("docker.io")
    assert hub is not None and hub.username == "hub"
    assert Path(f"{helper}.stdin").read_text() == "https://index.docker.io/v1/"
    assert config.credentials("quay.io") is None


def test_a_failing_helper_is_one_line_without_the_secret(tmp_path):
    environ = write_config(tmp_path, {"credHelpers": {"ecr.example.com": "ecr"}})
    write_helper(tmp_path, "ecr", 'echo "no AWS credentials: run aws configure" >&2\n'
                                  f'echo "debris {SECRET}" >&2\nexit 3\n')
    with pytest.raises(AuthError) as caught:
        DockerConfig.of(environ).credentials("ecr.example.com")
    message = str(caught.value)
    assert "\n" not in message and SECRET not in message
    assert "ecr.example.com" in message and "docker-credential-ecr" in message
    assert "exit status 3" in message and "no AWS credentials: run aws configure" in message


def test_a_helper_missing_from_path_says_so(tmp_path):
    environ = write_config(tmp_path, {"credsStore": "desktop"})
    with pytest.raises(AuthError, match="docker-credential-desktop .*is not on PATH"):
        DockerConfig.of(environ).credentials("quay.io")


def test_a_broken_config_file_is_named_without_its_content(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "config.json").write_text('{"auths": {"quay.io": {"auth": "' + SECRET)
    config = DockerConfig(str(tmp_path / "config.json"), {})
    with pytest.raises(AuthError, match="not JSON") as caught:
        config.credentials("quay.io")
    assert SECRET not in str(caught.value)


def test_home_is_used_without_docker_config(tmp_path):
    write_config(tmp_path / ".docker", {"auths": {"quay.io": {"auth": basic("u", SECRET)}}})
    found = DockerConfig.of({"HOME": str(tmp_path)}).credentials("quay.io")
    assert found is not None and found.username == "u"
    assert DockerConfig.of({}) is None


def test_the_auth_file_wins_and_its_settings_apply_to_docker_credentials(tmp_path):
    environ = write_config(tmp_path / "docker", {"auths": {
        "registry.example.com": {"auth": basic("docker-user", SECRET)},
        "quay.io": {"auth": basic("docker-user", SECRET)},
        "ghcr.io": {"auth": basic("docker-user", SECRET)},
    }})
    (tmp_path / "auth.json").write_text(json.dumps({
        "registry.example.com": {"username": "file-user", "password": "file-password"},
        "quay.io": {"insecure": True},
    }))
    auth = load_auth(tmp_path / "auth.json", environ=environ, required=True)
    named = auth.lookup("registry.example.com", "ns/app")
    assert named.username == "file-user"
    settings_only = auth.lookup("quay.io", "ns/app")
    assert settings_only.username == "docker-user" and settings_only.insecure
    unnamed = auth.lookup("ghcr.io", "ns/app")
    assert unnamed.username == "docker-user" and not unnamed.insecure
    assert auth.lookup("other.example.com", "ns/app").anonymous
    # The same entry found twice is one client's key.
    assert auth.lookup("quay.io", "a/b") == auth.lookup("quay.io", "c/d")


def test_without_an_auth_file_docker_credentials_still_apply(tmp_path):
    environ = write_config(tmp_path, {"auths": {"quay.io": {"auth": basic("u", SECRET)}}})
    auth = load_auth(None, environ=environ, required=False)
    assert auth.lookup("quay.io", "ns/app").username == "u"
    missing = load_auth(tmp_path / "absent.json", environ=environ, required=False)
    assert missing.lookup("quay.io", "ns/app").username == "u"


def test_auth_file_entries_are_read_again_for_fresh_credentials(tmp_path):
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"quay.io": {"username": "u", "password": "${P}"}}))
    auth = load_auth(path, environ={"P": "first"}, required=True)
    entry = auth.lookup("quay.io", "ns/app")
    assert entry.refresher is not None
    path.write_text(json.dumps({"quay.io": {"username": "u", "password": "second"}}))
    fresh = entry.refresher()
    assert fresh is not None and fresh.password is not None
    assert fresh.password.get_secret_value() == "second"
    path.write_text("{")
    with pytest.raises(AuthError, match="read again"):
        entry.refresher()


def test_sealing_for_the_fleet_carries_no_docker_credentials(tmp_path):
    from migrator.auth import seal, unseal

    environ = write_config(tmp_path, {"auths": {"quay.io": {"auth": basic("u", SECRET)}}})
    (tmp_path / "auth.json").write_text(json.dumps({"quay.io": {"insecure": True}}))
    # The producer's own lookups do use its Docker config...
    assert load_auth(tmp_path / "auth.json", environ=environ, required=True).lookup(
        "quay.io", "ns/app").username == "u"
    auth = load_auth(tmp_path / "auth.json", environ=environ, required=True)
    key = "x" * 43 + "="
    sealed = seal(auth, key)
    opened = unseal(sealed, key)
    assert opened.entries["quay.io"].anonymous  # the workers use their own Docker config
    assert opened.entries["quay.io"].insecure
