"""The YAML side of reading the input files (migrator.documents): a safe loader that records
duplicate keys, refuses aliases that would expand without bound, and keeps the raw text of
secret fields. Imported only when a YAML file is read."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

from migrator.documents import MAX_ALIAS_VALUES, _first_line, _Mapping, _value_problem

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


def parse_yaml(name: str, text: str, raw_text_keys: frozenset[str]) -> tuple[object, str | None]:
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
