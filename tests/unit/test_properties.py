"""Property tests: no input makes the reference grammar or the file loaders fail with anything
but a ConfigError whose lines name the file and the entry, one line each, without a password.

Hypothesis runs derandomized and without an example database, so every run (and CI) tries the
same inputs and leaves no `.hypothesis` directory behind.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from migrator.auth import load_auth
from migrator.documents import quote
from migrator.errors import ConfigError, InvalidReference
from migrator.reference import (
    DIGEST,
    HOST,
    MAX_NAME_LENGTH,
    PATH_COMPONENT,
    TAG,
    Reference,
    normalize,
    parse,
)
from migrator.rules import OPTION_KEYS, load_rules, parse_rules

FAST = settings(max_examples=100, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
QUICK = settings(FAST, max_examples=50)

# --- references ------------------------------------------------------------------------------

HOSTS = st.sampled_from(["quay.io", "registry.example.com:5000", "localhost:5000", "[::1]:5000",
                         "docker.io", "index.docker.io", "r.io", "127.0.0.1:65535"])
COMPONENT = st.from_regex(r"[a-z0-9]{1,8}(?:(?:[._]|__|-+)[a-z0-9]{1,8}){0,2}", fullmatch=True)
TAGS = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
DIGESTS = st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda hex_: f"sha256:{hex_}")


@st.composite
def valid_references(draw: st.DrawFn) -> str:
    text = draw(HOSTS) + "/" + "/".join(draw(st.lists(COMPONENT, min_size=2, max_size=4)))
    if draw(st.booleans()):
        text += ":" + draw(TAGS)
    if draw(st.booleans()):
        text += "@" + draw(DIGESTS)
    return text


# What hostile or careless files put into references: traversal, URL tricks, look-alikes.
NASTY = ["..", "%2e%2e", "\r\n", "\x00", "\u0430", "\uff0f", "@", "user:pass@", "http://",
         "file://", ":99999", ":0", "//", "A", ":", " ", "\ufeff", "*", ",", ":/", "/", "\u200b",
         "\u00e9", "x" * 300, "\t", "\x1b[31m", "\ud800", "?", "#", "\\", "'", "-", "_", "."]


@st.composite
def near_valid_references(draw: st.DrawFn) -> str:
    text = draw(valid_references())
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(0, len(text)))
        piece = draw(st.sampled_from(NASTY) | st.characters())
        how = draw(st.sampled_from(["insert", "replace", "delete"]))
        if how == "insert":
            text = text[:position] + piece + text[position:]
        elif how == "replace":
            text = text[:position] + piece + text[position + len(piece):]
        else:
            text = text[:position] + text[position + 1:]
    return text


REFERENCE_TEXT = near_valid_references() | st.text(max_size=80) | valid_references()


def assert_in_grammar(reference: Reference) -> None:
    assert HOST.fullmatch(reference.registry)
    assert all(PATH_COMPONENT.fullmatch(part) for part in reference.repository.split("/"))
    assert reference.tag is None or TAG.fullmatch(reference.tag)
    assert reference.digest is None or DIGEST.fullmatch(reference.digest)
    port = reference.registry.rpartition("]")[2].partition(":")[2]
    assert not port or 0 < int(port) <= 65535
    assert str(reference).isascii() and str(reference).isprintable()


@FAST
@given(valid_references())
def test_valid_references_parse_and_print_back(text):
    reference = parse(text)
    assert_in_grammar(reference)
    assert parse(str(reference)) == reference


@FAST
@given(REFERENCE_TEXT)
def test_parse_accepts_only_the_grammar(text):
    try:
        reference = parse(text)
    except InvalidReference as exc:
        assert isinstance(exc, ConfigError)
        assert str(exc) and "\n" not in str(exc) and "\r" not in str(exc)
        assert "pass@" not in str(exc)  # a user:pass@ written in a reference is not repeated
        return
    assert_in_grammar(reference)
    assert len(reference.name) <= MAX_NAME_LENGTH
    assert parse(str(reference)) == reference


@FAST
@given(REFERENCE_TEXT)
def test_normalize_accepts_only_the_grammar(text):
    try:
        reference = normalize(text)
    except InvalidReference as exc:
        assert str(exc) and "\n" not in str(exc) and "\r" not in str(exc)
        return
    assert_in_grammar(reference)
    assert reference.tag or reference.digest
    assert normalize(str(reference)) == reference


# --- the images file -------------------------------------------------------------------------

JSON_LEAVES = (st.none() | st.booleans() | st.integers()
               | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
JSON = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
TARGETS = st.none() | st.just("") | near_valid_references() | valid_references()
OPTIONS = st.dictionaries(
    st.sampled_from([*OPTION_KEYS, "taget", "newst"]),
    TARGETS | st.lists(TARGETS, max_size=3) | JSON
    | st.sampled_from([">=1.2, <2", "^1." + "9" * 5000, "[", "(a+)+", "linux/amd64", 3, -1]),
    max_size=4,
)
RULE_VALUES = TARGETS | st.lists(TARGETS, max_size=3) | OPTIONS | JSON
RULE_KEYS = REFERENCE_TEXT | st.sampled_from(["quay.io/coreos/*", "quay.io/*", "q.io/a/b:/v1.*/",
                                              "q.io/a/b:/(/", "q.io/a/b:v1,v2", "q.io/a/b:,"])
IMAGES = st.dictionaries(RULE_KEYS, RULE_VALUES, max_size=5)


def assert_located(problems: list[str], filename: str, data: object) -> None:
    """Every problem is one line that starts with the file and, for a non-empty mapping, an
    entry of it."""
    assert problems
    for problem in problems:
        assert problem.startswith(f"{filename}: "), problem
        assert "\n" not in problem and "\r" not in problem, problem
    if isinstance(data, dict) and data:
        entries = [f"{filename}: {quote(key)}" for key in data]
        for problem in problems:
            assert any(problem.startswith(entry) for entry in entries), problem


@FAST
@given(IMAGES | JSON, st.booleans())
def test_rules_data_gives_rules_or_located_problems(data, allow_catalog):
    try:
        rules = parse_rules(data, filename="images.json", default_registry="r.example.com",
                            default_namespace="mirror", allow_catalog=allow_catalog)
    except ConfigError as exc:
        assert_located(exc.problems, "images.json", data)
        return
    assert isinstance(data, dict) and data
    for rule in rules:
        assert rule.origin.startswith("images.json: ")
        if not rule.needs_tag_list and not rule.catalog:
            for job in rule.jobs():
                assert_in_grammar(job.source)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("properties")


def write(directory: Path, name: str, content: bytes) -> Path:
    path = directory / name
    path.write_bytes(content)
    return path


def has_surrogate(data: object) -> bool:
    """Whether a structure holds an unpaired surrogate, which JSON escapes and YAML cannot."""
    if isinstance(data, str):
        return any("\ud800" <= char <= "\udfff" for char in data)
    if isinstance(data, dict):
        return any(has_surrogate(key) or has_surrogate(value) for key, value in data.items())
    if isinstance(data, list):
        return any(has_surrogate(item) for item in data)
    return False


def dump(data: object, extension: str) -> bytes:
    if extension == ".json":
        return json.dumps(data).encode()
    return yaml.safe_dump(data, allow_unicode=True).encode()


@QUICK
@given(IMAGES, st.sampled_from([".json", ".yaml"]))
def test_images_file_gives_rules_or_located_problems(workdir, data, extension):
    if extension == ".yaml":  # YAML has no unpaired surrogates: such a dump is not YAML
        assume(not has_surrogate(data))
    path = write(workdir, "images" + extension, dump(data, extension))
    try:
        load_rules(path, default_registry="r.example.com", default_namespace="mirror")
    except ConfigError as exc:
        assert_located(exc.problems, str(path), data)
    else:
        assert data


# Text close to JSON and YAML, with the constructs hostile files use: tags that build objects,
# anchors and aliases, merge keys, documents, flow collections.
YAML_TOKENS = st.sampled_from([
    "{", "}", "[", "]", ":", ": ", ",", "\n", "  ", "- ", "&a ", "*a", "<<: ", "---\n", "...\n",
    "!!python/object/apply:os.system ['true']", "!!binary aGk=", "!!set ", "? ", "!tag ", "'",
    '"', "#", "%YAML 1.1\n", "9" * 5000, "2024-13-45", ".nan", "~", "quay.io/coreos/etcd",
    "r.io/a/b:v1", "\ufeff", "\x00", "\t", "\\u0000", "\\ud800", "NaN", "1e999",
])
DOCUMENT_TEXT = st.lists(YAML_TOKENS | st.text(max_size=8), max_size=30).map("".join)
DOCUMENT_BYTES = DOCUMENT_TEXT.map(lambda text: text.encode("utf-8", "surrogatepass")) | st.binary(
    max_size=64)


@FAST
@given(DOCUMENT_BYTES, st.sampled_from([".json", ".yaml", ".yml", ""]))
def test_any_images_bytes_give_rules_or_problems_naming_the_file(workdir, content, extension):
    path = write(workdir, "raw-images" + extension, content)
    try:
        load_rules(path, default_registry="r.example.com", default_namespace="mirror")
    except ConfigError as exc:
        assert_located(exc.problems, str(path), None)


# --- the auth file ---------------------------------------------------------------------------

SECRETS = st.text(string.ascii_letters + string.digits, min_size=6, max_size=12).map(
    lambda text: f"Pw!{text}")
ENTRY = st.fixed_dictionaries({}, optional={
    "username": st.text(max_size=10) | JSON_LEAVES | st.sampled_from(["u:x", "u\n", "${USER}"]),
    "password": SECRETS | SECRETS.map(lambda s: s + "\n") | SECRETS.map(lambda s: s + "\ud800")
    | SECRETS.map(lambda s: [s]) | SECRETS.map(lambda s: {"value": s}) | st.just("$PASSWORD"),
    "insecure": JSON_LEAVES,
    "tls_verify": JSON_LEAVES,
    "ca_file": st.text(max_size=10) | JSON_LEAVES,
    "passwd": SECRETS,
    "identityToken": SECRETS,
})
AUTH_KEYS = REFERENCE_TEXT | st.sampled_from(["quay.io", "Quay.IO", "u:Pw!inkey@quay.io",
                                              "https://quay.io", "quay.io:99999", "quay.io/"])
AUTH = st.dictionaries(AUTH_KEYS, ENTRY | JSON, max_size=4)


def secrets_in(data: object) -> list[str]:
    """Every password-like value written in an auth structure (and in `user:pass@` keys)."""
    found: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(key, str) and "Pw!" in key:
                found.append("Pw!" + key.split("Pw!", 1)[1].split("@")[0])
            found += secrets_in(value)
    elif isinstance(data, list):
        for item in data:
            found += secrets_in(item)
    elif isinstance(data, str) and data.startswith("Pw!"):
        found.append(data.rstrip("\n\ud800"))
    return found


ENVIRON = {"USER": "robot", "PASSWORD": "Pw!fromenv123"}


@QUICK
@given(AUTH, st.sampled_from([".json", ".yaml"]))
def test_auth_file_gives_entries_or_located_problems_without_passwords(workdir, data, extension):
    content = json.dumps(data) if extension == ".json" else yaml.safe_dump(data)
    if extension == ".yaml":  # YAML has no unpaired surrogates: such a dump is not YAML
        assume(not has_surrogate(data))
    path = write(workdir, "auth" + extension, content.encode("utf-8", "surrogatepass"))
    try:
        auth = load_auth(path, environ=ENVIRON, required=True)
    except ConfigError as exc:
        assert_located(exc.problems, str(path), data)
        text = str(exc)
        for secret in [*secrets_in(data), ENVIRON["PASSWORD"]]:
            assert secret not in text
        return
    for entry in auth.entries.values():
        assert secrets_in(data) == [] or "Pw!" not in repr(entry)


@FAST
@given(DOCUMENT_BYTES, st.sampled_from([".json", ".yaml", ""]))
def test_any_auth_bytes_give_entries_or_problems_naming_the_file(workdir, content, extension):
    path = write(workdir, "raw-auth" + extension, content)
    try:
        load_auth(path, environ=ENVIRON, required=True)
    except ConfigError as exc:
        assert_located(exc.problems, str(path), None)
