"""YAML as tunedeck reads and writes it: presets, `--set` values and the editor's fields.

Two things differ from `yaml.safe_load`:

- Plain scalars are typed by YAML 1.2's core schema, not PyYAML's YAML 1.1 rules: `2e-5`, `1E3`,
  `.5` and `-1e-4` are numbers (1.1 reads the first two as strings), `yes`/`no`/`on`/`off` stay
  strings (1.1 reads them as booleans; only `true`/`false` are booleans), `012` is twelve (1.1:
  octal ten; write `0o12` for octal), and `1:30` or `2024-01-01` stay strings. Schema fields that
  are booleans still accept `yes`/`no` (pydantic reads them); TRL's `training:` arguments want
  `true`/`false` and say so.
- A document whose aliases expand to more than `MAX_EXPANDED_NODES` nodes is refused while it is
  parsed, before any Python object is built: a few lines of nested aliases (a "billion laughs"
  document) would otherwise expand to gigabytes in whatever walks the result. A recursive alias
  is refused too.

`dump` quotes every string that a YAML 1.1 or 1.2 reader would take for something else, so what
tunedeck writes reads back the same under either (the training process reads its config.yaml
with PyYAML's own loader).
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

# A preset has tens of nodes; the largest useful ones (long module lists, a DeepSpeed mapping)
# a few hundred. This leaves room for any real file and stops an expansion in microseconds.
MAX_EXPANDED_NODES = 100_000
# A preset nests four or five levels; PyYAML's recursive parser overflows Python's stack at a
# few hundred ('[[[[...').
MAX_DEPTH = 64


_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlTooLarge(yaml.MarkedYAMLError):
    """A document refused for the size its aliases expand to, a recursive alias, or nesting
    deeper than `MAX_DEPTH`."""


_CORE_RESOLVERS: list[tuple[str, re.Pattern[str], list[str]]] = [
    ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")),
    (
        "tag:yaml.org,2002:int",
        re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
        list("-+0123456789"),
    ),
    (
        "tag:yaml.org,2002:float",
        re.compile(
            r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
        ),
        list("-+.0123456789"),
    ),
    ("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"]),
]


def _core_resolvers() -> dict[Any, list[tuple[str, re.Pattern[str]]]]:
    table: dict[Any, list[tuple[str, re.Pattern[str]]]] = {}
    for tag, pattern, first in _CORE_RESOLVERS:
        for char in first:
            table.setdefault(char or None, []).append((tag, pattern))
    return table


def _construct_int(loader: Loader, node: Node) -> int:
    text = str(loader.construct_scalar(node))  # type: ignore[arg-type]
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)


def _construct_float(loader: Loader, node: Node) -> float:
    text = str(loader.construct_scalar(node)).lower()  # type: ignore[arg-type]
    if text.endswith(".inf"):
        return float("-inf") if text.startswith("-") else float("inf")
    if text == ".nan":
        return float("nan")
    return float(text)


class Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 core typing and a bound on alias expansion."""

    yaml_implicit_resolvers = _core_resolvers()

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._expanded_nodes = 0
        self._sizes: dict[int, int] = {}
        self._depth = 0

    def _count(self, nodes: int, mark: Any) -> None:
        self._expanded_nodes += nodes
        if self._expanded_nodes > MAX_EXPANDED_NODES:
            raise YamlTooLarge(
                problem=f"refused: its aliases expand to more than {MAX_EXPANDED_NODES:,} "
                "values (nested aliases, as in a 'billion laughs' document)",
                problem_mark=mark,
            )

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None:
                size = self._sizes.get(id(target))
                if size is None:
                    raise YamlTooLarge(
                        problem=f"refused: alias *{event.anchor} refers to a value that "
                        "contains it (a recursive alias)",
                        problem_mark=event.start_mark,
                    )
                self._count(size, event.start_mark)
            return super().compose_node(parent, index)
        before = self._expanded_nodes
        start = self.peek_event().start_mark
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise YamlTooLarge(
                problem=f"refused: nested more than {MAX_DEPTH} levels deep", problem_mark=start
            )
        try:
            node: Node | None = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._count(1, start)
        if node is not None:
            self._sizes[id(node)] = self._expanded_nodes - before
        return node

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        # PyYAML keeps the last of two equal keys without a word; in a preset the first one
        # is then silently ignored, which is never what was meant.
        if isinstance(node, MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {key!r}; the first is on line {seen[key].line + 1}",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]


Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def load(text: str) -> Any:
    """One YAML document, typed by YAML 1.2's core schema; raises `yaml.YAMLError` (a
    `YamlTooLarge` for an alias bomb or a recursive alias)."""
    loader = Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class _Dumper(yaml.SafeDumper):
    """Quotes a string whenever YAML 1.1 (PyYAML's own loader) or 1.2 would read it otherwise,
    and writes a value shared through an alias out in full at each place."""

    def ignore_aliases(self, data: Any) -> bool:
        return True

    def resolve(self, kind: type[Node], value: Any, implicit: Any) -> str:
        tag: str = super().resolve(kind, value, implicit)
        if kind is ScalarNode and implicit[0] and tag == "tag:yaml.org,2002:str":
            for core_tag, pattern in _core_resolvers().get(value[:1] or None, []):
                if pattern.match(value):
                    return core_tag
        return tag


# Long strings (a deep path, a description) stay on one line instead of being folded.
NO_FOLDING = 1 << 30


def dump(data: Any, width: int = NO_FOLDING) -> str:
    """`data` as block YAML, keys in the given order, read back the same by `load` and by
    `yaml.safe_load`."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=width)
