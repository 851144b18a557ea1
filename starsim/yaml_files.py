"""Reading a user's YAML file with bounds, so that no file can hang or exhaust a run before
its schema is checked: one place for every file starsim reads (scenarios, sweeps, profiles,
acceptance curves, model specs).

Each bound fails with one line naming the file and what the limit is:

- size: a file over ``max_bytes`` is refused before it is read (a 50 MB log handed over as
  a scenario would otherwise be parsed for minutes), and one of more than
  :data:`MAX_NODES` values while it is parsed (PyYAML is pure Python here);
- bytes: not UTF-8 text (a gzipped or binary file) is said so;
- aliases: YAML anchors (``&a``) and aliases (``*a``) are allowed, but they may add at most
  :data:`MAX_ALIAS_VALUES` values to the document ("billion laughs": ten aliases of ten
  aliases expand a few lines into 10^9 values, which validation would walk);
- nesting: at most :data:`MAX_DEPTH` levels (the parser recurses per level);
- integers: at most :data:`MAX_INT_DIGITS` digits (Python refuses to read 4,300 and more);
- keys: a key given twice in one mapping is an error (PyYAML silently keeps the last).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import ScenarioError

MAX_BYTES = 1_000_000  # 20x the largest shipped file (a measured profile, 50 kB)
MAX_NODES = 100_000  # values written in the file; PyYAML parses some 50k a second
MAX_ALIAS_VALUES = 100_000
MAX_DEPTH = 64
MAX_INT_DIGITS = 40


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with a nesting bound, an expansion bound, an integer-size bound and
    no duplicate keys."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent, index):
        self._depth += 1
        self._nodes += 1
        try:
            if self._nodes > MAX_NODES:
                raise yaml.composer.ComposerError(
                    None, None, f"more than {MAX_NODES:,} values (the limit for any starsim file)",
                    self.peek_event().start_mark)
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels (the limit for any starsim file)", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node

    def construct_yaml_int(self, node):
        digits = sum(c.isdigit() for c in str(node.value))
        if digits > MAX_INT_DIGITS:
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {digits} digits (at most {MAX_INT_DIGITS})", node.start_mark)
        return super().construct_yaml_int(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    dup = key in seen
                    seen.add(key)
                except TypeError:  # unhashable key: the base class reports it
                    continue
                if dup:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)
# YAML 1.2 floats: PyYAML (YAML 1.1) reads 1e-3 and 2E6, without a dot, as strings, and
# latencies are written so. This pattern adds them (PyYAML copies the resolver table into
# this class first: yaml.SafeLoader itself is unchanged).
_BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases add more than :data:`MAX_ALIAS_VALUES` values to it.
    An alias is the same node object as its anchor, so each node's expanded size is counted
    once (memo by id): time linear in the file, not in the expansion. A node is blamed as
    soon as its expansion exceeds every node counted so far (its own included) by the
    budget, which its aliases alone can do."""
    size: dict[int, int] = {}
    open_: set[int] = set()  # nodes whose children are still being counted: one met again is its own alias
    # iterative post-order: a document may be wide, and the composer already bounded depth
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in size:
            continue
        children = _children(node)
        if not done:
            if id(node) in open_:
                raise yaml.composer.ComposerError(
                    None, None, "an alias (*name) inside its own anchor: a value that contains itself", node.start_mark)
            open_.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in size)
            continue
        open_.discard(id(node))
        total = 1 + sum(size[id(c)] for c in children)
        if total - (len(size) + 1) > MAX_ALIAS_VALUES:
            raise yaml.composer.ComposerError(
                None, None, f"its aliases (*name) expand it by more than {MAX_ALIAS_VALUES:,} values",
                node.start_mark)
        size[id(node)] = total


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def yaml_problem(e: yaml.YAMLError) -> str:
    """One line: ``line L, column C: what is wrong`` (PyYAML's own text spans several)."""
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{where}{problem}"


def parse_yaml(text: str, source: str = "<yaml>", *, field: str = "", prefix: str = "broken YAML") -> Any:
    """``text`` parsed within the bounds; if not, :class:`ScenarioError` naming ``source``
    and ``field``: ``prefix: line L, column C: what is wrong``."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)
    except yaml.YAMLError as e:
        raise ScenarioError(source, [(field, f"{prefix}: {yaml_problem(e)}")]) from None
    except RecursionError:  # a bound above should come first; kept so that no input gives a traceback
        raise ScenarioError(source, [(field, f"{prefix}: nested too deeply (at most {MAX_DEPTH} levels)")]) from None


def read_yaml(path: str | Path, what: str = "file", max_bytes: int = MAX_BYTES) -> Any:
    """The YAML document of the file at ``path`` (a ``what``: "scenario", "profile", ...),
    read within the bounds above; :class:`ScenarioError` with one line for each way it can
    fail before its schema is checked."""
    p, source = Path(path), str(path)
    if p.is_dir():
        raise ScenarioError(source, [("", f"is a directory, not a {what} file")])
    if not p.is_file():
        raise ScenarioError(source, [("", "file not found")])
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise ScenarioError(source, [("", f"is {size / 1e6:.1f} MB; a {what} file is at most "
                                              f"{max_bytes / 1e6:g} MB (is it the right file?)")])
        raw = p.read_bytes()
    except OSError as e:
        raise ScenarioError(source, [("", f"cannot read: {e.strerror or e}")]) from None
    if raw[:2] == b"\x1f\x8b":
        raise ScenarioError(source, [("", f"a gzip file; a {what} file is YAML text (gunzip it first)")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ScenarioError(source, [("", "not a UTF-8 text file")]) from None
    if "\x00" in text:
        raise ScenarioError(source, [("", f"a binary file (a {what} file is YAML text)")])
    return parse_yaml(text, source)


def read_mapping(path: str | Path, what: str = "file") -> dict:
    """:func:`read_yaml` for a file whose top level must be a mapping (profiles, sweeps, specs)."""
    data = read_yaml(path, what)
    if not isinstance(data, dict):
        raise ScenarioError(str(path), [("", f"expected a mapping at the top level, got {type(data).__name__}")])
    return data


def file_problems(err, model) -> list[tuple[str, str]]:
    """(field path, message) for each problem of a pydantic ``ValidationError`` on a file
    model (sweeps, plans); an unknown key lists the keys allowed there."""
    problems = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + (f"; allowed at the top level: {', '.join(model.model_fields)}"
                                   if len(e["loc"]) == 1 else "")
        problems.append((loc, msg))
    return problems
