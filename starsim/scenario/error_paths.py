"""Pydantic's validation errors as the field paths a user wrote, each with one line saying what is wrong."""

from __future__ import annotations

import difflib
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from .link import Link
from .overrides import _short
from .schema import Scenario

# Turning pydantic's error locations into the field paths a user wrote: walk the model
# classes along the location, dropping the union tags pydantic inserts (``draft.time.linear.a``
# is ``draft.time.a`` in the file), and remembering which model holds the last key so an
# unknown key can be answered with the allowed ones.


def _alternatives(tp: Any) -> list:
    """An annotation's alternatives: ``Annotated`` and ``X | Y | None`` unwrapped, None dropped."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _alternatives(get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        return [a for arg in get_args(tp) for a in _alternatives(arg)]
    return [] if tp is type(None) else [tp]


def _models(alts: list) -> list[type[BaseModel]]:
    return [a for a in alts if isinstance(a, type) and issubclass(a, BaseModel)]


def _kinds(model: type[BaseModel]) -> tuple:
    f = model.model_fields.get("kind")
    return get_args(f.annotation) if f is not None else ()


def _field_type(model: type[BaseModel], key: str) -> Any:
    for name, f in model.model_fields.items():
        if key in (name, f.alias):
            return f.annotation
    return None


def _keys(model: type[BaseModel]) -> list[str]:
    keys = [f.alias or name for name, f in model.model_fields.items()]
    return keys + list(getattr(model, "SHORTHAND", ()))


def _walk(loc: tuple, unknown_key: bool = False) -> tuple[list[str], list, list]:
    """``(path parts, alternatives holding the last part, alternatives at the end)``."""
    parts: list[str] = []
    parent: list = []
    cur: list = [Scenario]
    for i, p in enumerate(loc):
        alts = [a for c in cur for a in _alternatives(c)]
        models = _models(alts)
        if isinstance(p, str) and len(models) > 1:
            tagged = [m for m in models if p in _kinds(m)]
            if tagged:  # a discriminated union's tag, not a key in the file
                cur = tagged
                continue
        if p == "[key]":  # the error is about a mapping key itself
            continue
        nxt: list = []
        for a in alts:
            origin = get_origin(a)
            if origin is dict:
                nxt.append(get_args(a)[1])
            elif origin in (list, tuple) and isinstance(p, int):
                nxt.append(get_args(a)[0])
        if isinstance(p, str):
            nxt += [t for m in models if (t := _field_type(m, p)) is not None]
            last_unknown = unknown_key and i == len(loc) - 1
            if not nxt and not last_unknown and ("[" in p or p.startswith("function-")):
                continue  # a pydantic-internal label
        parts.append(str(p))
        parent, cur = alts, nxt
    return parts, parent, [a for c in cur for a in _alternatives(c)]


_MISSING = object()


def _lookup(data: Any, parts: list[str]) -> Any:
    node = data
    for p in parts:
        if isinstance(node, dict):
            node = node.get(p, node.get(int(p), _MISSING) if p.isdigit() else _MISSING)
        elif isinstance(node, list) and p.isdigit() and int(p) < len(node):
            node = node[int(p)]
        else:
            return _MISSING
        if node is _MISSING:
            return _MISSING
    return node


def _as_written(parts: list[str], data: Any) -> list[str]:
    """Map a path in the validated form back onto what the file says."""
    # link: {latency_s: ...} is a shorthand expanded into up and down: report it once, as written.
    for i in range(1, len(parts) - 1):
        if parts[i - 1] == "link" and parts[i] in ("up", "down") and parts[i + 1] in Link.SHORTHAND:
            link, key = _lookup(data, parts[:i]), parts[i + 1]
            given = link.get(parts[i]) if isinstance(link, dict) else None
            if isinstance(link, dict) and key in link and not (isinstance(given, dict) and key in given):
                return parts[:i] + parts[i + 1:]
    # A bare number is a constant timing spec: its error is the field's, not ``.value``'s.
    if parts and parts[-1] == "value" and isinstance(_lookup(data, parts[:-1]), (int, float)):
        return parts[:-1]
    return parts


def _problems(err: ValidationError, data: Any = None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for e in err.errors():
        kind, msg, given = e["type"], e["msg"], e.get("input")
        parts, parent, alts = _walk(e["loc"], unknown_key=kind == "extra_forbidden")
        parts = _as_written(parts, data)
        path = ".".join(parts)
        if kind in ("value_error", "assertion_error"):
            msg = msg.split(", ", 1)[1] if msg.startswith(("Value error, ", "Assertion failed, ")) else msg
            # Cross-field checks carry their own field paths as "@path@ message".
            if msg.startswith("@"):
                for part in msg.split("; @"):
                    p, _, m = part.lstrip("@").partition("@ ")
                    out.append((p, m))
                continue
            out.append((path, msg))  # our own validators say what they got
            continue
        union = sorted({k for m in _models(alts) for k in _kinds(m)}, key=str)
        if kind == "extra_forbidden":
            allowed = [k for m in _models(parent) for k in _keys(m)]
            msg = "unknown key"
            if allowed and parts:
                near = difflib.get_close_matches(parts[-1], allowed, n=1)
                msg += f" (did you mean {near[0]!r}?)" if near else ""
                msg += f"; allowed: {', '.join(dict.fromkeys(allowed))}"
            out.append((path, msg))
            continue
        if kind == "missing":
            out.append((path, "required field is missing"))
            continue
        if kind == "union_tag_invalid":
            tags = e.get("ctx", {}).get("expected_tags", "")
            out.append((path, f"unknown kind {_short(given.get('kind'))}; expected one of: {tags}"))
            continue
        if kind == "union_tag_not_found":
            out.append((path, f"a 'kind' is required here, one of: {', '.join(union) or '?'}"))
            continue
        if e["loc"] and e["loc"][-1] == "[key]":
            msg = "keys here must be strings"
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            if len(union) > 1:
                number = "a number or " if "constant" in union else ""
                msg = f"expected {number}a mapping with a 'kind' (one of: {', '.join(union)})"
            elif _models(alts):
                msg = f"expected a mapping with keys from: {', '.join(_keys(_models(alts)[0]))}"
            else:
                msg = "expected a mapping"
        elif kind in ("int_parsing", "float_parsing", "bool_parsing", "int_from_float"):
            msg = msg.split(",", 1)[0]  # "Input should be a valid integer"
        out.append((path, f"{msg} (got {_short(given)})"))
    return list(dict.fromkeys(out))
