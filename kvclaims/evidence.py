"""Which tests are evidence for which obligation: read off `@pytest.mark.obligation(...)`
markers in `tests/` by parsing the files (no import, no collection), so the docs
generator and the traceability test can name test node ids without starting vLLM.
"""

from __future__ import annotations

import ast
from pathlib import Path


def marked_ids(decorator: ast.expr) -> list[str]:
    """The string ids of an `@pytest.mark.obligation("RKC-…", …)` decorator, else []."""
    if isinstance(decorator, ast.Call) and ast.unparse(decorator.func) == "pytest.mark.obligation":
        return [a.value for a in decorator.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return []


def marked_tests(tests: Path) -> dict[str, list[str]]:
    """Obligation id -> node ids (`tests/test_x.py::test_y`, `...::Class::test_y`) of the
    tests marked as its evidence, in file order."""
    found: dict[str, list[str]] = {}
    for path in sorted(tests.glob("test_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        prefix = f"{tests.name}/{path.name}"
        for owner, node in _functions(tree):
            for oid in dict.fromkeys(i for d in node.decorator_list for i in marked_ids(d)):
                found.setdefault(oid, []).append("::".join([prefix, *owner, node.name]))
    return found


def _functions(tree: ast.Module):
    """(enclosing class names, test function) for module- and class-level tests."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield (), node
        elif isinstance(node, ast.ClassDef):
            for inner in node.body:
                if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield (node.name,), inner
