"""The architecture in imports: they flow one way (no cycle among starsim's modules, counting the
imports inside functions too), the real backend imports nothing of the simulator's and nothing of
calibration's, and the closed form none of the simulator's internals."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "starsim"


def _module(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> list[str]:
    if node.level:
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    out = [target]
    # "from . import x" / "from .pkg import mod": the names may be modules themselves
    out += [f"{target}.{a.name}" for a in node.names]
    return out


def import_graph() -> dict[str, set[str]]:
    files = {p: _module(p) for p in PKG.rglob("*.py")}
    known = set(files.values())
    graph: dict[str, set[str]] = {m: set() for m in known}
    for path, mod in files.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = _resolve(mod, path.name == "__init__.py", node)
            for n in names:
                if n in known and n != mod:
                    graph[mod].add(n)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def _package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Modules of a package folded into it (starsim.sim.run -> starsim.sim); top-level modules stay."""
    def pkg(m: str) -> str:
        parts = m.split(".")
        return ".".join(parts[:2]) if len(parts) > 1 and (PKG / parts[1]).is_dir() else m

    out: dict[str, set[str]] = {}
    for m, deps in graph.items():
        out.setdefault(pkg(m), set()).update(pkg(d) for d in deps if pkg(d) != pkg(m))
    return out


def test_no_import_cycle_among_modules():
    cycle = _cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_no_import_cycle_among_packages():
    cycle = _cycle(_package_graph(import_graph()))
    assert cycle is None, " -> ".join(cycle)


def test_real_imports_neither_the_simulator_nor_calibration():
    for mod, deps in import_graph().items():
        if mod.startswith("starsim.real"):
            bad = sorted(d for d in deps if d.startswith(("starsim.sim", "starsim.calibrate")))
            assert not bad, f"{mod} imports {bad}"


def test_closed_form_imports_no_simulator_internals():
    deps = import_graph()["starsim.analytic"]
    assert not [d for d in deps if d.startswith("starsim.sim")], deps


MAX_LINES, MAX_PARAMS = 85, 10  # "about 80 lines", "10 parameters"


def _functions():
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                params = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs) if p.arg not in ("self", "cls")]
                yield f"{path.relative_to(PKG.parent)}:{node.lineno} {node.name}", node, len(params)


def test_long_functions_and_many_parameters_say_why():
    """A function over about 80 lines says why in its docstring (its "lines"), and one with over
    10 parameters too (its "parameters")."""
    unexplained = []
    for where, node, params in _functions():
        doc = (ast.get_docstring(node) or "").lower()
        lines = node.end_lineno - node.lineno + 1
        if lines > MAX_LINES and "lines" not in doc:
            unexplained.append(f"{where}: {lines} lines")
        if params > MAX_PARAMS and "parameters" not in doc:
            unexplained.append(f"{where}: {params} parameters")
    assert not unexplained, unexplained
