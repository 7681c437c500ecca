"""Reading the input files: JSON or YAML, safely, with every problem located.

Both input files (rules and auth) share this: format by extension, a size cap, YAML without
object construction, duplicate keys detected (a dict would silently keep the last), and problems
that name the file and the line.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import yaml

MAX_FILE_BYTES = 10 * 1024 * 1024
# `https://quay.io/...` is a URL, not a reference; say so instead of a puzzling grammar error.
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")



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
    a line break in a file can never forge a line of the report."""
    if isinstance(value, str) and value.isprintable() and "'" not in value:
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


_YamlBase: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml parses much faster
_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"
_STR_TAG = "tag:yaml.org,2002:str"


class _YamlLoader(_YamlBase):
    """`yaml.safe_load` (no object construction) that also records duplicate keys.

    `raw_text_keys`: values of these keys keep the text written in the file, as Go's YAML
    decoder does for string fields, so `password: 0123` stays "0123" instead of becoming 83.
    """

    raw_text_keys: frozenset[str] = frozenset()

    def construct_yaml_map(self, node: yaml.MappingNode) -> Iterator[_Mapping]:
        mapping = _Mapping()
        yield mapping
        mapping.duplicates.extend(_yaml_duplicates(node))  # before merge keys are flattened
        mapping.update(self.construct_mapping(node))

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        mapping = super().construct_mapping(node, deep=deep)
        if self.raw_text_keys:
            for key_node, value_node in node.value:
                if (
                    isinstance(key_node, yaml.ScalarNode)
                    and key_node.tag == _STR_TAG
                    and key_node.value in self.raw_text_keys
                    and isinstance(value_node, yaml.ScalarNode)
                    and value_node.tag != _NULL_TAG
                ):
                    mapping[key_node.value] = value_node.value
        return mapping


_YamlLoader.add_constructor("tag:yaml.org,2002:map", _YamlLoader.construct_yaml_map)


def _yaml_duplicates(node: yaml.MappingNode) -> list[tuple[object, int | None]]:
    seen: set[tuple[str, str]] = set()
    found: list[tuple[object, int | None]] = []
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
            continue
        ident = (key_node.tag, key_node.value)
        if ident in seen:
            found.append((key_node.value, key_node.start_mark.line + 1))
        seen.add(ident)
    return found


def _yaml_loader(raw_text_keys: frozenset[str]) -> type:
    if not raw_text_keys:
        return _YamlLoader
    return type("_RawTextYamlLoader", (_YamlLoader,), {"raw_text_keys": raw_text_keys})


def _parse_json(name: str, text: str) -> tuple[object, str | None]:
    try:
        return json.loads(text, object_pairs_hook=_json_object), None
    except json.JSONDecodeError as exc:
        return None, f"{name}: line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}"
    except RecursionError:
        return None, f"{name}: invalid JSON: nested too deeply"


def _parse_yaml(name: str, text: str, raw_text_keys: frozenset[str]) -> tuple[object, str | None]:
    try:
        return yaml.load(text, Loader=_yaml_loader(raw_text_keys)), None  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        return None, f"{name}: {where}invalid YAML: {exc.problem or exc.context}"
    except yaml.YAMLError as exc:
        return None, f"{name}: invalid YAML: {exc}"
    except RecursionError:
        return None, f"{name}: invalid YAML: nested too deeply"


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


