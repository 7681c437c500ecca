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

    def get_single_data(self) -> object:
        node = self.get_single_node()
        if node is None:
            return None
        _check_aliases(node)  # before anything is constructed
        return self.construct_document(node)

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


class _AliasRefused(yaml.YAMLError):
    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def _check_aliases(root: yaml.Node) -> None:
    """Refuse aliases that would expand past MAX_ALIAS_VALUES or that build a structure which
    contains itself (`&a [*a]`): nothing downstream expects either.

    Counts, without expanding anything, the values the document holds once every alias is
    replaced by what it names; iterative, so depth costs no Python stack.
    """
    ceiling = 1 << 62  # sizes stay machine-sized ints, far above anything a file writes
    sizes: dict[int, int] = {}  # id(node) -> expanded size, capped; absent: not finished
    open_nodes: set[int] = set()  # on the current path: reaching one again is a cycle
    written = 0
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        ident = id(node)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        if done:
            open_nodes.discard(ident)
            sizes[ident] = min(ceiling, 1 + sum(sizes[id(child)] for child in children))
            continue
        if ident in sizes:
            continue
        if ident in open_nodes:
            raise _AliasRefused("an alias names a node that contains it (a structure that "
                                "contains itself)", node.start_mark.line + 1)
        written += 1
        open_nodes.add(ident)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)
    if sizes[id(root)] - written >= MAX_ALIAS_VALUES:
        raise _AliasRefused(f"aliases (*name) would expand the document by more than "
                            f"{MAX_ALIAS_VALUES} values; write the values out instead")


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
    try:
        return yaml.load(text, Loader=_yaml_loader(raw_text_keys)), None  # a SafeLoader subclass
    except _AliasRefused as exc:
        where = f"line {exc.line}: " if exc.line is not None else ""
        return None, f"{name}: {where}invalid YAML: {exc}"
    except yaml.reader.ReaderError as exc:  # its text spans lines and names "<unicode string>"
        line = text[: exc.position].count("\n") + 1
        return None, (f"{name}: line {line}: invalid YAML: the control character "
                      f"U+{exc.character:04X} is not allowed")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = _first_line(str(exc.problem or exc.context))
        return None, f"{name}: {where}invalid YAML: {problem}"
    except yaml.YAMLError as exc:
        return None, f"{name}: invalid YAML: {_first_line(str(exc))}"
    except RecursionError:
        return None, f"{name}: invalid YAML: nested too deeply"
    except ValueError as exc:  # a number too long to read, a date such as 2024-13-45
        return None, f"{name}: invalid YAML: cannot read a value: {_value_problem(exc)}"


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


