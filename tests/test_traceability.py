"""Every obligation id of the spec is named by a proof or a test, and no test names a
stale id; the generated docs match the spec."""

import ast
import re
import subprocess
import sys
from pathlib import Path

from kvclaims.evidence import marked_ids, marked_tests
from kvclaims.spec import load

ROOT = Path(__file__).resolve().parents[1]
ID = re.compile(r"RKC-[A-Z]+-\d+")


def ids_named_in(*folders: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == Path(__file__).name:
                continue
            for oid in ID.findall(path.read_text()):
                found.setdefault(oid, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_obligation_has_a_proof_or_test():
    """Evidence is read off `@pytest.mark.obligation` markers (and the proofs), not off
    strings that merely mention an id."""
    named = {**ids_named_in("proofs"), **marked_tests(ROOT / "tests")}
    missing = [oid for oid in load().obligations if oid not in named]
    assert missing == [], f"obligations with no proof or marked test: {missing}"


def test_markers_name_what_docstrings_claim():
    """A test whose docstring cites an obligation is marked as its evidence, and a marker
    names only ids the spec has."""
    known, unmarked = set(load().obligations), []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
                marked = {i for d in node.decorator_list for i in marked_ids(d)}
                cited = set(ID.findall(ast.get_docstring(node) or ""))
                if cited - marked or marked - known:
                    unmarked.append(f"{path.name}::{node.name}: {sorted(cited - marked) or sorted(marked - known)}")
    assert unmarked == []


def test_no_stale_ids():
    known = set(load().obligations)
    folders = ("tests", "proofs", "model", "conformance", "refimpl", "kvclaims", "integrations")
    stale = {oid: where for oid, where in ids_named_in(*folders).items() if oid not in known}
    assert stale == {}


def test_contract_prose_cites_every_obligation():
    text = "".join(p.read_text() for p in (ROOT / "spec").glob("*.md"))
    assert [oid for oid in load().obligations if oid not in text] == []


def test_generated_docs_are_current():
    out = subprocess.run([sys.executable, "-m", "kvclaims.cli", "docs"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
