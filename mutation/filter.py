"""Mark as skipped the mutants of a cosmic-ray session that are not mutants of behaviour.

    python mutation/filter.py SESSION.sqlite

cosmic-ray's operators work on parso's syntax tree and also match:
  * `|` inside annotations (`int | None`): every module mutated here starts with
    `from __future__ import annotations`, so no annotation is ever evaluated and each such
    mutant is equivalent by construction;
  * the bare `*` that starts keyword-only parameters (`def f(a, *, b)`), taken for a
    multiplication: its mutant (`def f(a, -, b)`) does not parse, so it is not a mutant;
Every skip is printed (file:line, operator, why), so the report can count them.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from cosmic_ray.work_db import use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult


def annotation_spans(tree: ast.AST) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    spans = []
    for node in ast.walk(tree):
        anns = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            anns.append(node.returns)
        elif isinstance(node, ast.arg):
            anns.append(node.annotation)
        elif isinstance(node, ast.AnnAssign):
            anns.append(node.annotation)
        for a in anns:
            if a is not None:
                spans.append(((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)))
    return spans


def why_skip(mutation, source: list[str], spans) -> str | None:
    line, col = mutation.start_pos
    op = mutation.operator_name
    if any(s <= (line, col) < e for s, e in spans):
        return "inside an annotation (never evaluated: from __future__ import annotations)"
    text = source[line - 1]
    if "ReplaceBinaryOperator_Mul_" in op and text[col] == "*" and text[col + 1 :].lstrip()[:1] in (",", ")"):
        return "the keyword-only marker `*`, not an operator (the mutant does not parse)"
    return None


def main(session: str) -> None:
    parsed: dict[str, tuple[list[str], list]] = {}
    skipped = 0
    with use_db(session) as db:
        for item in db.pending_work_items:
            for m in item.mutations:
                path = str(m.module_path)
                if path not in parsed:
                    text = Path(path).read_text()
                    parsed[path] = (text.split("\n"), annotation_spans(ast.parse(text)))
                reason = why_skip(m, *parsed[path])
                if reason:
                    db.set_result(
                        item.job_id,
                        WorkResult(output=f"filtered: {reason}", worker_outcome=WorkerOutcome.SKIPPED),
                    )
                    skipped += 1
                    print(f"skip {path}:{m.start_pos[0]} {m.operator_name}: {reason}")
    print(f"filter: {skipped} mutants skipped", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
