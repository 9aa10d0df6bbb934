"""Validate loaded YAML against a pydantic model and explain failures at file:line:col.

Messages look like ``targets/rpi3.yaml:7:3: unknown key 'thread' (did you mean 'threads'?)``.
"""
from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from edgefleet.config.yamlsrc import Loc, SourceMap
from edgefleet.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete alternatives of an annotation: Optional/Union/Annotated peeled away."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        out: list[Any] = []
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                out.extend(_unwrap(arg))
        return out
    return [annotation]


def _model_tag(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("kind")
    if field is None:
        return None
    args = typing.get_args(field.annotation)
    return args[0] if args else None


def resolve_loc(root: type[BaseModel], loc: Loc) -> tuple[Loc, type[BaseModel] | None]:
    """Map a pydantic error loc to the document path and the model that owns its last key.

    Pydantic inserts the tag of a discriminated union into ``loc``; the document
    has no such level, so it is dropped here.
    """
    data_loc: list[str | int] = []
    current: list[Any] = [root]
    owner: type[BaseModel] | None = root
    parts = list(loc)
    i = 0
    while i < len(parts):
        part = parts[i]
        models = [a for a in current if isinstance(a, type) and issubclass(a, BaseModel)]
        tagged = [m for m in models if _model_tag(m) == part]
        if len(models) > 1 and tagged:
            current = tagged
            i += 1
            continue
        data_loc.append(part)
        i += 1
        nxt: list[Any] = []
        owner = None
        for alt in current:
            if isinstance(alt, type) and issubclass(alt, BaseModel):
                field = alt.model_fields.get(str(part))
                if field is not None:
                    nxt.extend(_unwrap(field.annotation))
            else:
                origin = typing.get_origin(alt)
                args = typing.get_args(alt)
                if origin in (dict, typing.Mapping) and len(args) == 2 and not isinstance(part, int) \
                        or origin in (list, tuple, typing.Sequence) and isinstance(part, int) and args:
                    nxt.extend(_unwrap(args[-1] if origin in (dict, typing.Mapping) else args[0]))
        current = nxt
        owners = [a for a in current if isinstance(a, type) and issubclass(a, BaseModel)]
        owner = owners[0] if len(owners) == 1 else None
    return tuple(data_loc), owner


def _parent_owner(root: type[BaseModel], loc: Loc) -> tuple[Loc, type[BaseModel] | None]:
    if not loc:
        return (), root
    parent_loc, owner = resolve_loc(root, loc[:-1])
    return parent_loc, owner


def _literal_choices(ctx: dict[str, Any]) -> list[str]:
    return re.findall(r"'([^']*)'", str(ctx.get("expected", "")))


def _shown_key(part: str | int) -> str:
    # A key with control characters or odd spacing is quoted, so a message stays one line per problem.
    text = str(part)
    return text if text and text.isprintable() and text.strip() == text and "." not in text else repr(text)


def explain(err: dict[str, Any], root: type[BaseModel], smap: SourceMap) -> str:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        parent_loc, owner = _parent_owner(root, loc)
        key = loc[-1]
        data_loc = parent_loc + (key,)
        allowed = list(owner.model_fields) if owner else []
        return f"{smap.nearest(data_loc)}: unknown key {key!r}{did_you_mean(str(key), allowed)}" + \
            (f"; allowed keys: {', '.join(allowed)}" if allowed and not did_you_mean(str(key), allowed) else "")
    data_loc, _ = resolve_loc(root, loc)
    dotted = ".".join(_shown_key(p) for p in data_loc) or "(top level)"
    if kind == "missing":
        parent = smap.nearest(data_loc[:-1]) if len(data_loc) > 1 else smap.nearest(())
        return f"{parent}: missing required key {dotted!r}"
    pos = smap.value_at(data_loc) or smap.nearest(data_loc, prefer_key=False)
    value = err.get("input")
    if kind in ("literal_error", "enum"):
        choices = _literal_choices(err.get("ctx", {}))
        hint = did_you_mean(str(value), choices)
        return f"{pos}: {dotted}: {value!r} is not one of {', '.join(choices)}{hint}"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    shown = f" (got {value!r})" if not isinstance(value, (dict, list)) and value is not None else ""
    return f"{pos}: {dotted}: {msg}{shown}"


def validate(model: type[M], data: Any, smap: SourceMap, *, what: str) -> M:
    """Build ``model`` from ``data``; every error becomes one line of a ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = [explain(e, model, smap) for e in exc.errors(include_url=False)]
        head = f"invalid {what}:" if len(lines) > 1 else ""
        body = "\n".join(("  " + line) if head else line for line in lines)
        raise ConfigError(f"{head}\n{body}" if head else body) from None
