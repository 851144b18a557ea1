"""``--set FIELD=VALUE``: parsing one, and setting it in a scenario's mapping before validation."""

from __future__ import annotations

from typing import Any

from ..errors import ScenarioError
from ..yaml_files import parse_yaml


def apply_override(data: dict, path: str, value: Any, source: str = "--set") -> None:
    """Set ``a.b.0.c`` in a nested dict/list, creating missing mapping keys."""
    parts = path.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = ".".join(parts[: i + 1])
        if isinstance(node, list):
            n = len(node)
            if not part.isdigit() or int(part) >= n:
                has = f"the list has {n} item{'' if n == 1 else 's'}"
                raise ScenarioError(source, [(here, f"no list item {part!r}: {has}")])
            key: Any = int(part)
        elif isinstance(node, dict):
            key = part
            if not last and key not in node:
                node[key] = {}
        else:
            raise ScenarioError(
                source, [(here, f"cannot set a field inside {_short(node)}: it is not a mapping or list")]
            )
        if last:
            node[key] = value
        else:
            node = node[key]


def parse_override(text: str) -> tuple[str, Any]:
    """``"targets.0.count=8"`` -> ``("targets.0.count", 8)`` (value parsed as YAML)."""
    if "=" not in text:
        raise ScenarioError("--set", [("", f"expected FIELD=VALUE, got {text!r}")])
    path, raw = text.split("=", 1)
    path = path.strip()
    if not path:
        raise ScenarioError("--set", [("", f"expected FIELD=VALUE, got {text!r}")])
    value = parse_yaml(raw, "--set", field=path, prefix=f"value {raw!r} is not valid YAML") if raw.strip() else ""
    return path, value


def _short(value: Any) -> str:
    """A value as messages quote it (here and in error_paths): its repr, cut to 60 characters."""
    s = repr(value)
    return s if len(s) <= 60 else s[:57] + "..."
