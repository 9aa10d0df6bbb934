"""YAML loading that remembers where every key and value came from.

Values are returned as plain Python data; positions live beside them in a
SourceMap keyed by the path of keys/indices, so a pydantic error location
maps straight back to ``file:line:col``.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

from edgefleet.errors import ConfigError

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Position:
    file: Path
    line: int  # 1-based
    col: int   # 1-based

    def __str__(self) -> str:
        return f"{display_path(self.file)}:{self.line}:{self.col}"


def display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class SourceMap:
    """Positions of keys (``key_at``) and values (``value_at``) by their path in the document."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self._keys: dict[Loc, Position] = {}
        self._values: dict[Loc, Position] = {}

    def record(self, loc: Loc, key: Position | None, value: Position | None) -> None:
        if key is not None:
            self._keys[loc] = key
        if value is not None:
            self._values[loc] = value

    def merged_over(self, base: SourceMap) -> SourceMap:
        """This map's positions win; the base fills in what an ``extends`` inherited."""
        out = SourceMap(self.file)
        out._keys = {**base._keys, **self._keys}
        out._values = {**base._values, **self._values}
        return out

    def key_at(self, loc: Loc) -> Position | None:
        return self._keys.get(tuple(loc))

    def value_at(self, loc: Loc) -> Position | None:
        return self._values.get(tuple(loc))

    def nearest(self, loc: Loc, *, prefer_key: bool = True) -> Position:
        """The position of ``loc``, or of its closest ancestor that has one, or the file's start."""
        loc = tuple(loc)
        for end in range(len(loc), 0, -1):
            head = loc[:end]
            found = (self.key_at(head) or self.value_at(head)) if prefer_key else \
                (self.value_at(head) or self.key_at(head))
            if found is not None:
                return found
        return Position(self.file, 1, 1)


def _plain(node: Any, loc: Loc, smap: SourceMap, file: Path) -> Any:
    if isinstance(node, CommentedMap):
        out: dict[Any, Any] = {}
        for key, value in node.items():
            child = loc + (key,)
            kpos = node.lc.key(key)
            vpos = node.lc.value(key)
            smap.record(child,
                        Position(file, kpos[0] + 1, kpos[1] + 1) if kpos else None,
                        Position(file, vpos[0] + 1, vpos[1] + 1) if vpos else None)
            out[key] = _plain(value, child, smap, file)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for index, value in enumerate(node):
            child = loc + (index,)
            ipos = node.lc.item(index)
            smap.record(child, None, Position(file, ipos[0] + 1, ipos[1] + 1) if ipos else None)
            items.append(_plain(value, child, smap, file))
        return items
    if isinstance(node, str):
        return str(node)
    return node


def load_yaml(path: Path) -> tuple[Any, SourceMap]:
    """Parse ``path``; a syntax error becomes a ConfigError naming file:line:col."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{display_path(path)}: file not found") from None
    except UnicodeDecodeError as exc:
        data = path.read_bytes()
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(f"{display_path(path)}:{line}:{col}: not UTF-8 text (byte {data[exc.start]:#04x}); "
                          f"save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{display_path(path)}: cannot read: {exc}") from None
    data, smap = _parse(path, text)
    # Callers may reshape what they get (extends: merges); the cached parse stays pristine.
    return copy.deepcopy(data), smap


# One deploy reads the same profiles and recipe several times (its own plan, the host's wheelhouse plan);
# ruamel's round-trip parser is slow enough that this was a fifth of an unchanged deploy. Keyed on the
# text itself, so an edited file is parsed again.
@functools.lru_cache(maxsize=64)
def _parse(path: Path, text: str) -> tuple[Any, SourceMap]:
    yaml = YAML(typ="rt")
    try:
        doc = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise ConfigError(f"{display_path(path)}:{line}:{col}: invalid YAML: {exc.problem or exc.context}") from None
    except Exception as exc:  # ruamel raises a few unmarked errors (e.g. a list used as a mapping key)
        found = _complex_key(text)
        if found is not None:
            raise ConfigError(f"{display_path(path)}:{found[0]}:{found[1]}: invalid YAML: a key must be a plain "
                              f"value, not a list or mapping") from None
        raise ConfigError(f"{display_path(path)}:1:1: invalid YAML: {exc}") from None
    smap = SourceMap(path)
    data = _plain(doc, (), smap, path)
    if data is None:
        data = {}
    return data, smap


def _complex_key(text: str) -> tuple[int, int] | None:
    """Line and column (1-based) of the first mapping key that is itself a list or mapping."""
    try:
        root = YAML(typ="rt").compose(text)
    except Exception:  # noqa: BLE001 - only a better position is at stake
        return None
    pending = [root] if root is not None else []
    while pending:
        node = pending.pop()
        if isinstance(node, MappingNode):
            for key, value in node.value:
                if not isinstance(key, ScalarNode):
                    return key.start_mark.line + 1, key.start_mark.column + 1
                pending.append(value)
        elif isinstance(node, SequenceNode):
            pending.extend(node.value)
    return None
