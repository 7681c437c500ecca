"""Real image-syncer files from public repositories (tests/corpus/switchers, origins in its
ORIGINS.md): each valid one reads as image-syncer v1.5 reads it, as `migrator check` prints it;
each broken one is refused, one line per problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from migrator.cli import EXIT_BAD_INPUT, EXIT_OK, main
from migrator.reference import split

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "switchers"
EXPECTED = yaml.safe_load((CORPUS / "expected.yaml").read_text())
DEFAULT_REGISTRY, DEFAULT_NAMESPACE = "default.example.com", "mirror"
# Where we read a file differently from image-syncer v1.5, on purpose: what we say instead
# when a rule uses the entry (a warning when none does).
DIFFERENCES = {
    # v1.5 expands `$oauthtoken` to "" and then logs in as nobody; we refuse the unset variable
    # and say how to write the literal user name nvcr.io expects.
    "Liu-fu-gui__docker-image-sync__configs__auth.json":
        ("nvcr.io/nvidia/cuda:12.2.0-base-ubuntu22.04",
         "environment variable oauthtoken is not set (for a literal '$', write '$$': "
         "'$$oauthtoken')"),
}
# Values for every variable the files name (auth files are filled in by CI secrets).
VARIABLES = {name: "corpus-value" for path in CORPUS.iterdir()
             for name in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", path.read_text())
             if name != "oauthtoken"} | {"TARGET_REGISTRY": "target.example.com"}


def default_target(source: str) -> str:
    """Rule 8: the default registry and namespace, with the source's repository name."""
    name = source[:source.index(":/")] if ":/" in source else split(source)[0]
    return f"{DEFAULT_REGISTRY}/{DEFAULT_NAMESPACE}/{name.rsplit('/', 1)[-1]}"


def expected_rules(entry: dict) -> list[str]:
    lines = []
    for line in entry.get("rules") or []:
        source, _, target = line.partition(" -> ")
        lines.append(f"{source} -> {default_target(source) if target == 'DEFAULT' else target}")
    return lines


def expected_auth(entry: dict) -> list[str]:
    """The auth keys, each once (a registry written under several of its names is one entry),
    a key written `$TARGET_REGISTRY` taken from the environment."""
    keys = [re.sub(r"^\$\{?TARGET_REGISTRY\}?$", VARIABLES["TARGET_REGISTRY"], key)
            for key in entry.get("auth") or []]
    return list(dict.fromkeys(keys))


def check(capsys, tmp_path, name: str, kind: str,
          source: str = "quay.io/a/b:1") -> tuple[int, list[str], list[str]]:
    path = str(CORPUS / name)
    if kind == "config":
        flags = ["--config", path]
    elif kind == "auth":
        rules = tmp_path / "images.yaml"
        rules.write_text(f"{source}: target.example.com/a/b\n")
        flags = ["--auth", path, "--images", str(rules)]
    else:
        flags = ["--images", path]  # and no auth file: ./auth.json is absent
    code = main(["check", *flags, "--registry", DEFAULT_REGISTRY, "--namespace",
                 DEFAULT_NAMESPACE], VARIABLES)
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


@pytest.fixture(autouse=True)
def _in_an_empty_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_the_corpus_is_large_and_every_file_has_an_origin():
    files = sorted(p.name for p in CORPUS.iterdir() if p.name not in ("ORIGINS.md",
                                                                        "expected.yaml"))
    origins = (CORPUS / "ORIGINS.md").read_text()
    assert files == sorted(EXPECTED)
    assert all(f"`{name}`" in origins for name in files)
    repositories = {tuple(name.split("__")[:2]) for name in files}
    assert len(files) >= 40 and len(repositories) >= 20


VALID = sorted(name for name, entry in EXPECTED.items() if entry["valid"]
               and name not in DIFFERENCES)


@pytest.mark.parametrize("name", VALID)
def test_a_valid_file_reads_as_image_syncer_reads_it(capsys, tmp_path, name):
    entry = EXPECTED[name]
    code, out, err = check(capsys, tmp_path, name, entry["kind"])
    assert (code, err) == (EXIT_OK, [])
    rules = [line for line in out if " -> " in line]
    if entry["kind"] != "auth":
        assert rules == expected_rules(entry)
    if entry["kind"] != "images":
        keys = [line.split(" ")[1].rstrip(":") for line in out if line.startswith("auth ")]
        assert keys == expected_auth(entry)
    assert out[-1].startswith(f"Rules({len(rules)}) valid in ")


@pytest.mark.parametrize("name", sorted(name for name, entry in EXPECTED.items()
                                        if not entry["valid"]) + sorted(DIFFERENCES))
def test_a_broken_file_is_refused_one_line_per_problem(capsys, tmp_path, name):
    entry = EXPECTED[name]
    source, expected = DIFFERENCES.get(name) or ("quay.io/a/b:1", entry["error"])
    code, out, err = check(capsys, tmp_path, name, entry["kind"], source)
    assert code == EXIT_BAD_INPUT and out == []
    problems = [line for line in err if line.startswith("error: ")]
    assert err == problems + [f"check failed: {len(problems)} problems"]
    assert all(name in line for line in problems)
    assert any(expected in line for line in problems), problems


@pytest.mark.parametrize("name", sorted(DIFFERENCES))
def test_an_unset_variable_no_rule_needs_is_only_a_warning(capsys, tmp_path, name):
    code, out, err = check(capsys, tmp_path, name, EXPECTED[name]["kind"])
    assert code == EXIT_OK and out[-1].startswith("Rules(1) valid in ")
    (warning,) = err
    assert warning.startswith(f"warning: {CORPUS / name}: 'nvcr.io': username: environment "
                              "variable oauthtoken is not set")
    assert warning.endswith("no rule uses this entry, so it is left out")
