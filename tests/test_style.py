"""Readable at a glance: the checks of issue 16 that anyone can run, on the exported package (what users read)."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p for p in (ROOT / "cskd").glob("*.py") if p.name != "_modidx.py")
MAX_FUNCTION_LINES = 60


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


def test_the_checks_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n" + "    x = 1\n" * 61)
    assert [n for _, n in _functions(bad)] == [62]
