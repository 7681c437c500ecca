"""How a run's auth entries combine with a worker's own auth file."""

from __future__ import annotations

from migrator.auth import AuthFile, RegistryAuth, merge


def test_a_run_entry_without_credentials_keeps_the_workers_credentials() -> None:
    own = AuthFile("own", {"r.example": RegistryAuth(username="bot", password="s3cret"),
                           "other.example": RegistryAuth(username="x", password="y")})
    run = AuthFile("run", {"r.example": RegistryAuth(insecure=True, requests_per_second=5),
                           "other.example": RegistryAuth(username="alice", password="pw")})
    merged = merge(own, run).entries
    assert merged["r.example"].username == "bot"
    assert merged["r.example"].password.get_secret_value() == "s3cret"
    assert merged["r.example"].insecure and merged["r.example"].requests_per_second == 5
    assert merged["other.example"].username == "alice"  # the run's credentials win


def test_a_run_entry_for_a_registry_the_worker_does_not_know_is_taken_as_is() -> None:
    merged = merge(AuthFile("own"), AuthFile("run", {"n.example": RegistryAuth(insecure=True)}))
    assert merged.entries["n.example"] == RegistryAuth(insecure=True)


def test_every_setting_of_an_entry_reaches_workers_without_a_shared_key() -> None:
    # Without MIGRATOR_SECRET_KEY only settings travel: a new auth.json setting left out of
    # PLAIN_FIELDS would silently not apply on the workers.
    from migrator.fleet import PLAIN_FIELDS, auth_for_transport, auth_from_transport
    from migrator.settings import Settings

    not_plain = {"username", "password", "proxy", "ca_file"}  # secrets, and a local path
    assert set(RegistryAuth.model_fields) - not_plain == PLAIN_FIELDS
    entry = RegistryAuth(insecure=True, tls_verify=False, requests_per_second=3,
                         concurrent_requests=2, upload="monolithic", chunk_size=1 << 20,
                         create_namespace=True)
    auth = AuthFile("auth.json", {"r.example": entry})
    travelled = auth_from_transport(auth_for_transport(auth, Settings()), Settings())
    assert travelled.entries["r.example"] == entry
