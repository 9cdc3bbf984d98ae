"""The house plan, read from the code's own imports (docs/architecture.md):

    wire  <-  common  <-  edge, hub

``hub`` never imports ``edge`` nor ``edge`` ``hub``; ``common`` imports neither;
``wire`` imports no I/O module; no import cycle between modules. Each failure names
the file and line of the offending import."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests.helpers import ROOT

PACKAGES = ("wire", "common", "edge", "hub")
FORBIDDEN = {
    "hub": {"edge"},
    "edge": {"hub"},
    "common": {"edge", "hub"},
    "wire": {"common", "edge", "hub"},
}
# what ``wire`` (the protocol, sans I/O) may not touch
IO_MODULES = {
    "socket", "os", "sqlite3", "sqlite_utils", "paho", "flask", "threading", "subprocess",
    "pathlib", "time", "shutil", "tempfile", "asyncio", "selectors", "ssl", "urllib",
    "http", "requests", "pynetdicom", "waitress", "gunicorn", "mmap",
}  # fmt: skip
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = f
    return found


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def test_packages_import_only_what_the_plan_allows():
    bad = []
    for name, path in modules().items():
        pkg = name.split(".")[0]
        for line, target in imports(path):
            top = target.split(".")[0]
            if top in FORBIDDEN[pkg]:
                bad.append(f"{where(path, line)} imports {target} ({pkg} may not import {top})")
            if pkg == "wire" and top in IO_MODULES:
                bad.append(f"{where(path, line)} imports {target} (wire does no I/O)")
    assert not bad, "\n".join(sorted(set(bad)))


def test_no_import_cycles():
    mods = modules()
    graph: dict[str, set[str]] = defaultdict(set)
    first_line: dict[tuple[str, str], int] = {}
    for name, path in mods.items():
        for line, target in imports(path):
            # "from edge import db" names the module edge.db; "from edge.db import x" too
            for cand in (target, target.rpartition(".")[0]):
                if cand in mods and cand != name:
                    graph[name].add(cand)
                    first_line.setdefault((name, cand), line)
    cycles = strongly_connected(graph)
    report = []
    for cycle in cycles:
        members = set(cycle)
        for a in sorted(cycle):
            for b in sorted(graph[a] & members):
                report.append(f"{where(mods[a], first_line[(a, b)])}: {a} imports {b}")
    assert not cycles, "import cycles:\n" + "\n".join(report)


def test_modules_and_functions_stay_small():
    """A module does one job; a function fits on a screen. Past these sizes, split."""
    big = []
    for path in modules().values():
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            big.append(f"{path.relative_to(ROOT)}: {lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    big.append(f"{where(path, node.lineno)} {node.name}: {n} lines")
    assert not big, "\n".join(big)


def test_the_checks_see_a_violation(tmp_path):
    """The cycle finder finds a cycle (so a green run means something)."""
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of two or more modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_each_table_has_one_writer():
    """One module writes each table (INSERT, UPDATE, DELETE); others call it. A side's
    migrations (its ``schema.py``) reshape rows once at an upgrade and do not count."""
    import re

    writes = re.compile(r"\b(?:INSERT INTO|UPDATE|DELETE FROM|REPLACE INTO)\s+([a-z_]+)\b")
    shared = []
    for side in ("edge", "hub"):
        writers: dict[str, set[str]] = defaultdict(set)
        for name, path in modules().items():
            if name.startswith(side + ".") and name != f"{side}.schema":
                for table in writes.findall(path.read_text()):
                    writers[table].add(str(path.relative_to(ROOT)))
        shared += [f"{side} table {t}: {sorted(m)}" for t, m in writers.items() if len(m) > 1]
        assert len(writers) > 5, f"{side}: the check found too few tables to mean anything"
    assert not shared, "tables written by more than one module:\n" + "\n".join(shared)
