"""The test suite's own layout: test modules share code through helpers, never through each other."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.builders import parse_python

TESTS = Path(__file__).parent


def is_test_module(name: str) -> bool:
    """tests.test_x, or a bare/relative test_x; not a library's own (aiohttp.test_utils)."""
    parts = name.split(".")
    return parts[-1].startswith("test_") and (len(parts) == 1 or parts[0] == "tests")


def imported_test_modules(source: str) -> list[str]:
    """The test_* modules a module's source imports, at any depth (module level or in a function)."""
    found = []
    for node in ast.walk(parse_python(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [n for n in names if is_test_module(n)]
    return found


def test_the_import_finder_sees_every_spelling() -> None:
    src = ("import tests.test_a\nfrom tests.test_b import X\nfrom tests import test_c\nfrom .test_d import Y\n"
           "def f():\n    from test_e import Z\n"
           "from tests.builders import movie\nfrom aiohttp.test_utils import TestClient\n")
    found = imported_test_modules(src)
    assert [n.rsplit(".", 1)[-1] for n in found] == ["test_a", "test_b", "test_c", "test_d", "test_e"], found


def test_no_test_module_imports_another() -> None:
    offenders = {p.name: hits for p in sorted(TESTS.glob("test_*.py"))
                 if (hits := imported_test_modules(p.read_text()))}
    assert offenders == {}, ("share it through tests/builders.py, fuzzkit.py, faketrakt.py or conftest.py",
                             offenders)
