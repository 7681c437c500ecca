"""The layers of the package, read from its import statements with `ast` (so an import inside a
function counts as much as one at the top): the registry client depends on nothing above it,
and the library never reaches up into the command line."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What migrator/registry may import of migrator: the root package itself is allowed because
# it holds only `__version__` (and is loaded anyway, as the registry's parent).
REGISTRY_MAY_IMPORT = ("migrator.errors", "migrator.settings", "migrator.throttle",
                       "migrator.registry")
# Exceptions to the rule above, each with its reason (none now).
REGISTRY_EXCEPTIONS: set[tuple[str, str]] = set()

CLI_MODULES = ("migrator.cli", "migrator.commands")
# The command line itself may import its own parts; `python -m migrator` starts it.
CLI_IMPORTERS = ("migrator/__main__.py", "migrator/cli.py", "migrator/commands/")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or base.is_dir()


def imports(path: Path, source: str | None = None) -> Iterator[str]:
    """Every module `path` imports: `from a import b` names `a.b` when b is a module, else `a`.
    `source`: the text to read instead of the file's."""
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield full if is_module(full) else base


def within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


def sources(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def test_the_registry_client_imports_nothing_above_it() -> None:
    found = []
    for path in sources("migrator/registry"):
        where = path.relative_to(ROOT).as_posix()
        for name in imports(path):
            if (within(name, ("migrator",)) and name != "migrator"
                    and not within(name, REGISTRY_MAY_IMPORT)
                    and (where, name) not in REGISTRY_EXCEPTIONS):
                found.append(f"{where} imports {name}")
    assert not found, found


def test_only_the_entry_point_imports_the_command_line() -> None:
    found = []
    for path in sources("migrator", "workers"):
        where = path.relative_to(ROOT).as_posix()
        if where.startswith(CLI_IMPORTERS):
            continue
        found.extend(f"{where} imports {name}" for name in imports(path)
                     if within(name, CLI_MODULES))
    assert not found, found


def test_the_reader_sees_every_kind_of_import() -> None:
    """The rules above are only as good as `imports`: a late import, `from migrator import
    cli`, a module imported from its package and relative imports all count."""
    source = ("import requests\n"
              "from . import stream\n"
              "from ..errors import ConfigError\n"
              "def late():\n"
              "    from migrator import __version__, cli\n"
              "    import migrator.commands\n")
    names = set(imports(ROOT / "migrator" / "registry" / "auth.py", source))
    assert names == {"requests", "migrator.registry.stream", "migrator.errors", "migrator",
                     "migrator.cli", "migrator.commands"}


def test_sync_loads_no_library_of_another_command_before_its_first_request() -> None:
    """What `migrator sync` imports before its first request is its start-up time: the fleet's
    Celery, the Kubernetes client of `config` and the retry loop's tenacity (asyncio with it),
    loaded only after a first failure, stay out."""
    program = ("import sys\n"
               "from migrator.commands.main import build_parser\n"
               "build_parser()\n"
               "import migrator.commands.sync, migrator.runner, migrator.copy\n"
               "print(' '.join(sorted(sys.modules)))\n")
    loaded = set(subprocess.run([sys.executable, "-c", program], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout.split())
    assert "migrator.registry.client" in loaded and "requests" in loaded
    assert loaded & {"celery", "kombu", "redis", "kubernetes", "tenacity", "asyncio"} == set()
