"""docs/reliability.md stays true: each class of promise has its section, and every test it names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "reliability.md"
SECTIONS = [
    "Nothing overwritten that cruijff-kit did not write", "One runner per experiment",
    "Every network call has a total deadline", "Secrets by value", "Numbers that cannot train",
    "Hostile YAML and JSON", "Damaged state files", "Data that would be silently cut",
    "Least exposure on rented machines",
]
TEST_NAME = re.compile(r"\btest_[a-z0-9_]+\b")


def defined_tests() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(node.name)
    return names


def test_every_class_has_promises_and_a_table() -> None:
    lines = PAGE.read_text(encoding="utf-8").splitlines()
    headings = [line[3:] for line in lines if line.startswith("## ")]
    assert headings == SECTIONS
    starts = [lines.index(f"## {h}") for h in headings] + [len(lines)]
    for title, start, end in zip(headings, starts, starts[1:], strict=False):
        body = lines[start:end]
        assert "**Promises**" in body, title
        assert any(line.startswith("1. ") for line in body), title
        assert any(line.startswith("| promise |") for line in body), title


def test_every_test_the_page_names_exists() -> None:
    known = defined_tests()
    named: set[str] = set()
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        named.update(m.group(0) for m in TEST_NAME.finditer(line) if not m.group(0).endswith("_"))
    files = {n for n in named if (ROOT / "tests" / f"{n}.py").exists()}
    missing = sorted(named - files - known)
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"
    assert len(named - files) > 60  # the page does name the tests
