"""Readable at a glance: the checks of issues 16 and 26 that anyone can run, on the exported package (what users
read) and on the chapters (its source)."""

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p for p in (ROOT / "cskd").glob("*.py") if p.name != "_modidx.py")
CHAPTERS = sorted((ROOT / "nbs").glob("*.ipynb"))
MAX_FUNCTION_LINES = 60
MAX_EXPORT_CELL_LINES = 60


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


def test_no_function_is_longer_than_60_lines():
    long = [f"{p.name}:{name} ({n} lines)" for p in MODULES for name, n in _functions(p) if n > MAX_FUNCTION_LINES]
    assert not long, f"split these into named stages: {long}"


def test_only_the_engine_calls_backward():
    calls = [
        f"{p.name}:{i}"
        for p in MODULES
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"\.backward\(", line) and p.name != "engine.py"
    ]
    assert not calls, f"every training loop goes through cskd.engine.fit: {calls}"


def _cskd_imports(path: Path) -> list:
    "`(line, module, name)` of each import from a cskd module: relative or absolute, at the top or in a function."
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[1], None) for a in node.names if a.name.startswith("cskd.")]
        elif isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "cskd"):
            parts = (node.module or "").split(".")[0 if node.level else 1 :]
            for a in node.names:  # `from . import x` and `from cskd import x` import the module x
                out.append((node.lineno, parts[0], a.name) if parts and parts[0] else (node.lineno, a.name, None))
    return out


def _import_graph(paths) -> dict:
    "Module -> the other modules (of `paths`) it imports."
    stems = {p.stem for p in paths}
    return {p.stem: {m for _, m, _ in _cskd_imports(p) if m in stems} - {p.stem} for p in paths}


def _cycle(graph: dict) -> list:
    "One import cycle of `graph` as `[a, b, ..., a]`, or []: a depth-first search that meets a module still open."
    state = {}

    def visit(path):
        state[path[-1]] = "open"
        for n in sorted(graph[path[-1]]):
            if state.get(n) == "open":
                return path[path.index(n) :] + [n]
            if n not in state and (found := visit(path + [n])):
                return found
        state[path[-1]] = "done"
        return []

    for m in sorted(graph):
        if m not in state and (found := visit([m])):
            return found
    return []


def _private_imports(path: Path) -> list:
    return [f"{path.name}:{line} {m}.{name}" for line, m, name in _cskd_imports(path) if (name or "").startswith("_")]


def _long_export_cells(path: Path) -> list:
    "`name:cell (n lines)` of each `#| export` cell of a notebook longer than `MAX_EXPORT_CELL_LINES`."
    sources = ["".join(c["source"]) if c["cell_type"] == "code" else "" for c in json.loads(path.read_text())["cells"]]
    return [
        f"{path.name}:cell {i} ({len(s.splitlines())} lines)"
        for i, s in enumerate(sources)
        if re.search(r"^#\|\s*export\s*$", s, re.M) and len(s.splitlines()) > MAX_EXPORT_CELL_LINES
    ]


def test_no_import_cycle_among_modules():
    cycle = _cycle(_import_graph(MODULES))
    assert not cycle, f"import cycle: {' -> '.join(cycle)}; put each function where its dependencies point one way"


def test_no_private_name_is_imported_from_another_module():
    private = [x for p in MODULES for x in _private_imports(p)]
    assert not private, f"make these public (with a docstring) or move them: {private}"


def test_no_export_cell_is_longer_than_60_lines():
    long = [x for p in CHAPTERS for x in _long_export_cells(p)]
    assert not long, f"split these into cells of one or a few definitions, each with its example: {long}"


def _exported_module(path: Path) -> str | None:
    "The module a chapter exports (its `#| default_exp`), or None."
    cells = json.loads(path.read_text())["cells"]
    found = (re.search(r"^#\|\s*default_exp\s+(\S+)", "".join(c["source"]), re.M) for c in cells)
    return next((m.group(1) for m in found if m), None)


def _out_of_order(chapters, graph: dict) -> list:
    "`chapter imports module (chapter)` wherever a chapter imports a module exported by a later chapter."
    rank = {_exported_module(p): p.name for p in chapters}
    return [
        f"{p.name} imports {m} ({rank[m]})"
        for p in chapters
        for m in sorted(graph.get(_exported_module(p), ()))
        if m in rank and rank[m] > p.name
    ]


def test_chapters_are_numbered_in_dependency_order():
    late = _out_of_order(CHAPTERS, _import_graph(MODULES))
    assert not late, f"renumber the chapters so that what a chapter imports comes before it: {late}"


def test_the_checks_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n" + "    x = 1\n" * 61)
    assert [n for _, n in _functions(bad)] == [62]
    (tmp_path / "a.py").write_text("from .b import f\n")
    (tmp_path / "b.py").write_text("def g():\n    from cskd.c import _h\n")
    (tmp_path / "c.py").write_text("import cskd.a\n")
    graph = _import_graph(sorted(tmp_path.glob("?.py")))
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"a"}} and _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
    assert _private_imports(tmp_path / "b.py") == ["b.py:2 c._h"]
    cell = dict(cell_type="code", source=["#| export\n"] + ["x = 1\n"] * 60)
    (tmp_path / "n.ipynb").write_text(json.dumps(dict(cells=[cell, dict(cell, source=cell["source"][:60])])))
    assert _long_export_cells(tmp_path / "n.ipynb") == ["n.ipynb:cell 0 (61 lines)"]
    for name, exp in (("00_a.ipynb", "a"), ("01_b.ipynb", "b")):
        (tmp_path / name).write_text(json.dumps(dict(cells=[dict(cell_type="code", source=[f"#| default_exp {exp}"])])))
    chapters = sorted(tmp_path.glob("0?_?.ipynb"))
    assert _out_of_order(chapters, {"a": {"b"}, "b": set()}) == ["00_a.ipynb imports b (01_b.ipynb)"]
    assert _out_of_order(chapters, {"a": set(), "b": {"a"}}) == []
