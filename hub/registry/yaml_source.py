"""YAML text as plain data, plus the line and column of every value in it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from hub.problems import ConfigError, Problem, format_path

PathPart = str | int

_MERGE_TAG = "tag:yaml.org,2002:merge"


# libyaml's loader when PyYAML was built with it: ten times faster on a registry of
# thousands of units, and its nodes carry the same positions.
_FastLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_FastLoader):  # type: ignore[misc,valid-type]
    """The safe loader; a value it cannot make (`2001-02-30`) is a YAML error at its node."""

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except ValueError as exc:  # from int(), float(), date(): a YAMLError has no place
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value: {exc}", node.start_mark
            ) from None


@dataclass(frozen=True)
class YamlDocument:
    """A parsed YAML document: `data` as plain Python, the node tree to find positions.

    `problems` holds what does not stop reading the file but must still be reported
    (duplicate keys): callers have to pass these on with their own findings.
    """

    file: str
    data: Any
    root: Node | None
    problems: tuple[Problem, ...] = ()

    @classmethod
    def parse(cls, text: str, file: str) -> YamlDocument:
        """Parse one YAML document safely; raises ConfigError at the error's position."""
        loader = None
        try:
            loader = _Loader(text)
            root = loader.get_single_node()
            if root is None:
                return cls(file, None, None)
            # Before constructing: construction rewrites merge keys (`<<`) in the node tree.
            problems = tuple(_duplicate_keys(root, file))
            data = loader.construct_document(root)
        except yaml.YAMLError as exc:
            raise ConfigError([_syntax_problem(exc, text, file)]) from None
        finally:
            if loader is not None:
                loader.dispose()
        return cls(file, data, root, problems)

    def locate(self, path: Sequence[PathPart]) -> tuple[int, int] | None:
        """1-based (line, col) of the value at path, else of its nearest existing parent."""
        node = self._deepest(path)[0]
        return _position(node) if node is not None else None

    def locate_key(self, path: Sequence[PathPart]) -> tuple[int, int] | None:
        """Like locate, but for a mapping entry gives the position of its key."""
        node, key, reached = self._deepest(path)
        if key is not None and reached == len(path):
            return _position(key)
        return _position(node) if node is not None else None

    def _deepest(self, path: Sequence[PathPart]) -> tuple[Node | None, Node | None, int]:
        """Deepest node along path, the key node leading to it, and how many parts matched."""
        node, key = self.root, None
        for depth, part in enumerate(path):
            child = _child(node, part) if node is not None else None
            if child is None:
                return node, key, depth
            key, node = child
        return node, key, len(path)


def _child(node: Node, part: PathPart) -> tuple[Node | None, Node] | None:
    """(key node, value node) of part within node, or None when there is no such child."""
    if isinstance(node, SequenceNode):
        if isinstance(part, int) and 0 <= part < len(node.value):
            return None, node.value[part]
        return None
    if isinstance(node, MappingNode):
        found = None
        # The last entry wins, as in the constructed data.
        for key, value in node.value:
            if isinstance(key, ScalarNode) and key.value == str(part):
                found = key, value
        return found
    return None


def _position(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _duplicate_keys(root: Node, file: str) -> Iterator[Problem]:
    """A problem for every key repeated in a mapping (PyYAML would silently keep the last)."""
    visited: set[int] = set()
    stack: list[tuple[Node, tuple[PathPart, ...]]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in visited:  # aliases share nodes and may even form cycles
            continue
        visited.add(id(node))
        if isinstance(node, SequenceNode):
            stack.extend((item, (*path, i)) for i, item in enumerate(node.value))
        elif isinstance(node, MappingNode):
            yield from _repeated_keys(node, path, file)
            for key, value in node.value:
                stack.append((value, (*path, key.value if isinstance(key, ScalarNode) else "?")))


def _repeated_keys(node: MappingNode, path: tuple[PathPart, ...], file: str) -> Iterator[Problem]:
    first: dict[tuple[str, str], Node] = {}
    for key, _ in node.value:
        if not isinstance(key, ScalarNode) or key.tag == _MERGE_TAG:
            continue
        earlier = first.setdefault((key.tag, key.value), key)
        if earlier is not key:
            message = f"duplicate key '{key.value}' (first used at line {_position(earlier)[0]})"
            yield Problem(file, *_position(key), format_path((*path, key.value)), message)


def _syntax_problem(exc: yaml.YAMLError, text: str, file: str) -> Problem:
    """The YAML library's error as a Problem at its position."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or exc.context or "unreadable"
        if exc.context and exc.problem and exc.context_mark is not None:
            message += f" ({exc.context} at line {exc.context_mark.line + 1})"
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        if mark is not None and text[mark.index : mark.index + 1] == "\t":
            message = "found character '\\t' (a tab): YAML indents with spaces only"
        return Problem(file, line, col, "", f"invalid YAML: {message}")
    if isinstance(exc, yaml.reader.ReaderError):
        before = text[: exc.position]
        line = before.count("\n") + 1
        col = len(before) - (before.rfind("\n") + 1) + 1
        return Problem(
            file, line, col, "", f"invalid YAML: {exc.reason} (character #x{exc.character:04x})"
        )
    return Problem(file, None, None, "", f"invalid YAML: {exc}")
