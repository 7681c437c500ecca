"""Settings come from MIGRATOR_* variables; bad ones are bad input, secrets never echoed."""

import pytest
from cryptography.fernet import Fernet

from migrator.cli import EXIT_BAD_INPUT, main
from migrator.settings import load_settings


def test_values_come_from_the_given_environment():
    settings = load_settings({"MIGRATOR_CHUNK_SIZE": "65536", "UNRELATED": "x"})
    assert settings.chunk_size == 65536


def test_an_empty_secret_key_is_no_key_and_a_real_one_is_kept():
    assert load_settings({"MIGRATOR_SECRET_KEY": ""}).secret_key is None
    key = Fernet.generate_key().decode()
    assert load_settings({"MIGRATOR_SECRET_KEY": key}).secret_key.get_secret_value() == key


@pytest.mark.parametrize("command", [["status"], ["sync", "--src", "r.io/a/b:1", "--dst", ""]])
def test_a_bad_secret_key_is_bad_input_and_is_not_printed(command, capsys):
    code = main(command, {"MIGRATOR_SECRET_KEY": "not-a-fernet-key-1234"})
    out, err = capsys.readouterr()
    assert code == EXIT_BAD_INPUT
    assert "MIGRATOR_SECRET_KEY: Value error, must be a Fernet key" in err
    assert "not-a-fernet-key-1234" not in out + err


def test_unreachable_redis_is_one_line_without_the_password(capsys):
    import socket

    from migrator.cli import EXIT_UNAVAILABLE

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environ = {"MIGRATOR_REDIS_URL": f"redis://:hunter2@127.0.0.1:{port}/0"}
    for command in (["status"],
                    ["enqueue", "--src", "r.example.com/a/b:1", "--dst", "t.example.com/c/d"]):
        code = main(command, environ)
        out, err = capsys.readouterr()
        assert code == EXIT_UNAVAILABLE
        assert f"Redis at 127.0.0.1:{port} unavailable" in err
        assert "hunter2" not in out + err and "Traceback" not in err
