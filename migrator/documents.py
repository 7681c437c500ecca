"""Reading the input files: JSON or YAML, safely, with every problem located.

Both input files (rules and auth) share this: format by extension, a size cap, YAML without
object construction, duplicate keys detected (a dict would silently keep the last), and problems
that name the file and the line.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

MAX_FILE_BYTES = 10 * 1024 * 1024
# PyYAML shares an aliased node instead of copying it, so a "billion laughs" file loads in no
# time and memory; but whatever walks the data afterwards (validation, messages, the fleet's
# JSON) would expand it. Aliases may add this many values beyond those written in the file.
MAX_ALIAS_VALUES = 1_000_000
# `https://quay.io/...` is a URL, not a reference; say so instead of a puzzling grammar error.
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# `user:password@host/...`: what a message shows of it must not carry the password.
_USERINFO = re.compile(
    r"^((?:[A-Za-z][A-Za-z0-9+.-]*://)?[^/@:\s]*:)[^/]*@"
    r"(?!sha256:|sha512:)(?=[A-Za-z0-9.:\[\]-]+(?:/|$))"
)
MAX_QUOTED = 160  # characters of a key or value shown in a message; longer ones are cut


class Document(NamedTuple):
    """What `load_document` read: `found` is False only for a missing, optional file."""

    found: bool
    data: object
    problems: list[str]


class _Mapping(dict):
    """A dict that remembers the keys the file wrote twice (the last value wins in `dict`)."""

    def __init__(self) -> None:
        super().__init__()
        self.duplicates: list[tuple[object, int | None]] = []


def duplicate_keys(mapping: object) -> list[tuple[object, int | None]]:
    """Keys written twice in a mapping read by `load_document`: (key, line or None for JSON)."""
    return list(getattr(mapping, "duplicates", ()))


def quote(value: object) -> str:
    """A key or value in quotes for a message; escaped (repr) when it holds odd characters, so
    a line break in a file can never forge a line of the report. A password written as
    `user:password@host` shows as `***`; a long text is cut (a file of a thousand long keys
    must not make a report a thousand times longer)."""
    if not isinstance(value, str):
        text = repr(value)
        return text if len(text) <= MAX_QUOTED else f"{text[:MAX_QUOTED]}…"
    value = _USERINFO.sub(r"\1***@", value)
    if len(value) > MAX_QUOTED:
        return f"{quote(value[:MAX_QUOTED])}… ({len(value)} characters)"
    if value.isprintable() and "'" not in value:
        return f"'{value}'"
    return repr(value)


def duplicate_problem(where: str, key: object, line: int | None) -> str:
    at = f" (again on line {line})" if line is not None else ""
    return f"{where}: {quote(key)}: duplicate key{at}: only the last value would count"


def describe_type(value: object) -> str:
    """The JSON/YAML name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def _json_object(pairs: list[tuple[str, Any]]) -> _Mapping:
    mapping = _Mapping()
    for key, value in pairs:
        if key in mapping:
            mapping.duplicates.append((key, None))
        mapping[key] = value
    return mapping


def _not_json(constant: str) -> object:
    raise ValueError(f"{constant} is not a JSON value")


def _value_problem(exc: ValueError) -> str:
    # int() of a huge number says "Exceeds the limit (4300 digits) ...; use sys.set_int_...":
    # keep the part a user can act on.
    return str(exc).split(";")[0][:200]


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unreadable"


def _parse_json(name: str, text: str) -> tuple[object, str | None]:
    if not text.strip():
        return None, f"{name}: the file is empty: write {{}} for a file without entries"
    try:
        return json.loads(text, object_pairs_hook=_json_object, parse_constant=_not_json), None
    except json.JSONDecodeError as exc:
        return None, f"{name}: line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}"
    except RecursionError:
        return None, f"{name}: invalid JSON: nested too deeply"
    except ValueError as exc:  # a number too long to read, NaN, Infinity
        return None, f"{name}: invalid JSON: {_value_problem(exc)}"


def _parse_yaml(name: str, text: str, raw_text_keys: frozenset[str]) -> tuple[object, str | None]:
    # PyYAML loads only for a YAML file: most runs read JSON, and start-up time counts.
    from migrator.documents_yaml import parse_yaml

    return parse_yaml(name, text, raw_text_keys)


def load_document(
    path: str | os.PathLike[str],
    *,
    required: bool,
    raw_text_keys: frozenset[str] = frozenset(),
) -> Document:
    """Read a JSON or YAML file: by extension (.json, .yaml/.yml), else JSON then YAML.

    Problems name the file as the user wrote it. A missing file is a problem only when
    `required`; otherwise the result says `found=False`. An empty YAML document gives None.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            if os.fstat(handle.fileno()).st_size > MAX_FILE_BYTES:
                return Document(True, None, [f"{name}: file larger than 10 MiB"])
            raw = handle.read(MAX_FILE_BYTES + 1)  # fstat says 0 for pipes: cap the read too
    except FileNotFoundError:
        return Document(False, None, [f"{name}: file not found"] if required else [])
    except IsADirectoryError:
        return Document(True, None, [f"{name}: is a directory, not a file"])
    except PermissionError:
        return Document(True, None, [f"{name}: cannot read the file: permission denied"])
    except OSError as exc:
        return Document(True, None, [f"{name}: cannot read the file: {exc.strerror or exc}"])
    if len(raw) > MAX_FILE_BYTES:
        return Document(True, None, [f"{name}: file larger than 10 MiB"])
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return Document(True, None, [f"{name}: the file is UTF-16 text: save it as UTF-8"])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return Document(True, None, [f"{name}: line {line}: not UTF-8 text"])

    extension = os.path.splitext(name)[1].lower()
    if extension in (".yaml", ".yml"):
        data, error = _parse_yaml(name, text, raw_text_keys)
    elif extension == ".json":
        data, error = _parse_json(name, text)
    else:
        data, error = _parse_json(name, text)
        if error is not None:
            yaml_data, yaml_error = _parse_yaml(name, text, raw_text_keys)
            if yaml_error is None:
                data, error = yaml_data, None
            elif not text.lstrip().startswith(("{", "[")):
                error = yaml_error  # it does not even look like JSON: the YAML error helps more
    if error is not None:
        return Document(True, None, [error])
    return Document(True, data, [])


