"""Broken and hostile input files: a clear error, exit code 2, and nothing copied or enqueued.

The corpus (`tests/corpus`, described by `tests/corpus/expected.yaml`) is read by the real
commands, in-process, against real registries and a real Redis: `migrator sync` must leave
both registries without a single request, `migrator enqueue` must leave its Redis database
empty, and no output may show a password. Files too big to commit (over the size cap, nested
a hundred thousand deep, thousands of long keys) and things that are not files are made here.

Redis: database 9 only, flushed before and after (never FLUSHALL).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import yaml

from migrator.cli import EXIT_BAD_INPUT, EXIT_OK, main
from tests.support.images import make_layer, manifest_exists, push_image
from tests.support.registry import RunningRegistry, start_registry

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
MANIFEST: dict[str, dict] = yaml.safe_load((CORPUS / "expected.yaml").read_text())
REDIS_URL = "redis://127.0.0.1:6379/9"
SECRET_MARK = "S3CRET"  # every password in the corpus holds it
PWNED = "corpus-pwned"  # what the corpus' YAML object tags would create, were they obeyed
ENVIRON = {"CORPUS_EMPTY": "", "CORPUS_NEWLINE": "pw-S3CRET-env\n", "MIGRATOR_REDIS_URL": REDIS_URL}


@dataclass(frozen=True)
class Case:
    """One bad input: how to make it in a directory, and what its error must say."""

    name: str  # images/... or auth/...
    make: Callable[[Path, dict[str, str]], Path]
    error: str
    entry: str | None = None  # how the error names the entry; None: a problem of the file
    max_line: int | None = None  # bound on the length of every output line
    min_errors: int = 1

    @property
    def kind(self) -> str:
        return self.name.split("/")[0]


def _substituted(text: str, hosts: dict[str, str]) -> str:
    for placeholder, host in hosts.items():
        text = text.replace(placeholder, host)
    return text


def _from_corpus(name: str) -> Callable[[Path, dict[str, str]], Path]:
    def make(directory: Path, hosts: dict[str, str]) -> Path:
        raw = (CORPUS / name).read_bytes()
        for placeholder, host in hosts.items():
            raw = raw.replace(placeholder.encode(), host.encode())
        path = directory / Path(name).name
        path.write_bytes(raw)
        return path
    return make


def _written(file_name: str, content: Callable[[dict[str, str]], bytes]):
    def make(directory: Path, hosts: dict[str, str]) -> Path:
        path = directory / file_name
        path.write_bytes(content(hosts))
        return path
    return make


def _huge(hosts: dict[str, str]) -> bytes:  # valid JSON, one byte over the 10 MiB cap
    head = json.dumps({f"{hosts['SOURCE_REGISTRY']}/corpus/app:v1": ""})[:-1] + ', "x": "'
    return (head + "x" * (10 * 1024 * 1024 - len(head) - 1) + '"}').encode()


def _directory(directory: Path, hosts: dict[str, str]) -> Path:
    path = directory / "images.json"
    path.mkdir()
    return path


def _symlink_loop(directory: Path, hosts: dict[str, str]) -> Path:
    path = directory / "loop.yaml"
    path.symlink_to(path)
    return path


def _long_keys(hosts: dict[str, str]) -> bytes:
    source = hosts["SOURCE_REGISTRY"]
    return json.dumps({f"{source}/corpus/{i:04}{'a' * 4000}": "" for i in range(2000)}).encode()


def _many_bad(hosts: dict[str, str]) -> bytes:
    source = hosts["SOURCE_REGISTRY"]
    return json.dumps({f"{source}/corpus/App{i}:v1": "" for i in range(3000)}).encode()


GENERATED = [
    Case("images/huge.json", _written("huge.json", _huge), "file larger than 10 MiB"),
    Case("auth/huge.yaml", _written("huge.yaml", lambda hosts: b"#" * (10 * 1024 * 1024 + 1)),
         "file larger than 10 MiB"),
    Case("images/endless", lambda directory, hosts: Path("/dev/zero"), "file larger than 10 MiB"),
    Case("images/deep.json", _written("deep.json", lambda hosts: b"[" * 100_000 + b"]" * 100_000),
         "invalid JSON: nested too deeply"),
    Case("images/deep.yaml", _written("deep.yaml", lambda hosts: b"[" * 100_000 + b"]" * 100_000),
         "invalid YAML"),
    Case("auth/deep.json", _written("deep.json", lambda hosts: b'{"a":' * 100_000 + b"1"
                                    + b"}" * 100_000), "invalid JSON: nested too deeply"),
    Case("auth/deep-mapping.yaml", _written("deep-mapping.yaml", lambda hosts: "".join(
        "  " * level + "k:\n" for level in range(1200)).encode()), "invalid YAML"),
    Case("images/a-directory", _directory, "is a directory, not a file"),
    Case("auth/a-directory", _directory, "is a directory, not a file"),
    Case("images/missing.json", lambda directory, hosts: directory / "missing.json",
         "file not found"),
    Case("auth/missing.json", lambda directory, hosts: directory / "missing.json",
         "file not found"),
    Case("images/symlink-loop.yaml", _symlink_loop, "cannot read the file"),
    Case("images/long-keys.json", _written("long-keys.json", _long_keys),
         "repository name longer than 255 characters", max_line=600, min_errors=2000),
    Case("images/many-bad-entries.json", _written("many-bad-entries.json", _many_bad),
         "invalid repository path component", min_errors=3000),
]
CASES = [Case(name, _from_corpus(name), expected["error"], expected["entry"])
         for name, expected in sorted(MANIFEST.items())] + GENERATED


@dataclass
class Setting:
    source: RunningRegistry
    target: RunningRegistry
    hosts: dict[str, str]
    good_images: Path
    good_auth: Path
    redis: redis.Redis


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setting]:
    """Two registries (a seeded source, an empty target), valid files that would copy from
    one to the other, and Redis database 9: shared by the whole corpus for speed."""
    directory = tmp_path_factory.mktemp("hostile")
    source = start_registry(directory / "source")
    target = start_registry(directory / "target")
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    try:
        for repository in ("corpus/app", "corpus/web"):
            push_image(source, repository, "v1", layers=[make_layer(4096, len(repository))])
        hosts = {"SOURCE_REGISTRY": source.host, "TARGET_REGISTRY": target.host}
        good_images = directory / "images.json"
        good_images.write_text(json.dumps({f"{source.host}/corpus/app:v1": ""}))
        good_auth = directory / "auth.json"
        good_auth.write_text(json.dumps({source.host: {"insecure": True},
                                         target.host: {"insecure": True}}))
        yield Setting(source, target, hosts, good_images, good_auth, client)
    finally:
        client.flushdb()
        client.close()
        target.close()
        source.close()


def argv(setting: Setting, command: str, kind: str, path: Path, state: Path) -> list[str]:
    """The command line that reads `path` as the `kind` file and a valid file for the other."""
    images = path if kind == "images" else setting.good_images
    auth = path if kind == "auth" else setting.good_auth
    words = [command, "--images", str(images), "--auth", str(auth), "--retries", "0",
             "--registry", setting.target.host, "--namespace", "mirror"]
    if command == "sync":
        words += ["--state", str(state), "--log", str(state.parent / "migrator.log")]
    return words


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_refused_before_anything_runs(
    setting: Setting, case: Case, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # a YAML tag that ran a command would leave PWNED here
    path = case.make(tmp_path, setting.hosts)
    state = tmp_path / "state"
    marks = setting.source.mark(), setting.target.mark()

    for command in ("sync", "enqueue"):
        code = main(argv(setting, command, case.kind, path, state), ENVIRON)
        out, err = capsys.readouterr()

        assert code == EXIT_BAD_INPUT, f"{command}: {err}"
        assert out == ""
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) >= case.min_errors
        assert all(line.startswith(f"error: {path}") for line in errors), err
        expected = _substituted(case.error, setting.hosts)
        entry = _substituted(case.entry, setting.hosts) if case.entry else ""
        assert any(expected in line and line.startswith(f"error: {path}: {entry}")
                   for line in errors), f"{command}: {err}"
        assert err.splitlines()[-1] == "nothing was copied: fix the input above and run again"
        assert SECRET_MARK not in out + err
        if case.max_line is not None:
            assert max(len(line) for line in err.splitlines()) <= case.max_line
        assert setting.redis.dbsize() == 0  # enqueue sent no task and started no run

    # Nothing ran: no request reached either registry, no record, no log, no command.
    assert setting.source.requests(marks[0]) == []
    assert setting.target.requests(marks[1]) == []
    assert not state.exists() and not (tmp_path / "migrator.log").exists()
    assert not (tmp_path / PWNED).exists()


def test_the_corpus_is_large_and_its_files_are_small() -> None:
    files = [path for path in CORPUS.rglob("*") if path.is_file() and path.parent != CORPUS
             and "switchers" not in path.parts]  # real users' files: test_switchers_corpus
    assert len(files) >= 100
    assert sorted(str(path.relative_to(CORPUS)) for path in files) == sorted(MANIFEST)
    assert all(path.stat().st_size < 64 * 1024 for path in files)
    assert sum(1 for name in MANIFEST if name.startswith("auth/")) >= 40


def test_the_valid_files_do_copy_and_enqueue(setting: Setting, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The control: the rule that every corpus images file also holds copies when its file is
    valid, so "no request" above means refused, not unreachable."""
    mark = setting.target.mark()
    code = main(argv(setting, "sync", "images", setting.good_images, tmp_path / "state"),
                ENVIRON)
    capsys.readouterr()
    assert code == EXIT_OK
    assert any(method == "PUT" for method, _, _ in setting.target.requests(mark))
    assert manifest_exists(setting.target, "mirror/app", "v1")
    try:
        code = main(argv(setting, "enqueue", "images", setting.good_images, tmp_path / "state"),
                    ENVIRON)
        out, _ = capsys.readouterr()
        assert code == EXIT_OK and out.strip()
        assert setting.redis.dbsize() > 0
    finally:
        setting.redis.flushdb()

