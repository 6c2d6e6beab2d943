"""The paper's probe on SGLang's own radix cache (sglang 0.5.23, CPU; `kvclaims.sglang.radix`).

Pool: 80 pages of 16 tokens. A 60-page resident prefix is computed and replayed, then a
70-page unrelated prefill arrives (60 + 70 > 80), then the resident is replayed again.
Legs: stock SGLang with the prefix in one tree node; stock with it in six nodes of ten
pages (six requests, each extending the last); and the contract on SGLang, a hard claim
on the prefix (held with SGLang's lock ref) and the prefill decided before SGLang
allocates. SGLang evicts whole LRU leaves, and asks one spare page per request: the
prefill needs 70 + 1 pages with 20 free, so 51 must go, and whole nodes give 60.
"""

from __future__ import annotations

from typing import Any

from kvclaims.columns import columns

from kvclaims.sglang.claims import RadixClaims

U, B, RESIDENT, ACTIVE = 80, 16, 60, 70
PREFIX = [3 + i % 500 for i in range(RESIDENT * B)]
PREFILL = [5 + (7 * i) % 400 for i in range(ACTIVE * B)]  # shares no page with PREFIX
LEGS = {"one_node": "stock, one node", "six_nodes": "stock, six nodes", "hard_claim": "hard claim"}


def leg(name: str) -> dict[str, Any]:
    rt = RadixClaims(U, B, enforce=name == "hard_claim")
    if name == "hard_claim":
        rt.submit_claim("resident", PREFIX)
    parts = 6 if name == "six_nodes" else 1
    for k in range(1, parts + 1):
        _run(rt, f"warm{k}", PREFIX[: k * RESIDENT // parts * B] + [1])
    before = _run(rt, "replay1", PREFIX + [2])
    d = rt.submit_request("prefill", PREFILL)
    if d.outcome == "admit":
        rt.finish("prefill")
    after = _run(rt, "replay2", PREFIX + [4])
    return {
        "leg": name,
        "label": LEGS[name],
        "replay_cached_pages_before": before,
        "prefill": {"outcome": d.outcome, "blocking_claims": list(d.blocking_claims)},
        "replay_cached_pages_after": after,
        "resident_pages_lost": before - after,
        "claim_state": rt.book.claims["resident"].state if name == "hard_claim" else None,
        "trace_records": len(rt.trace.records),
    }


def _run(rt: RadixClaims, rid: str, tokens: list[int]) -> int:
    """Run a request to its end; the pages it hit."""
    rt.submit_request(rid, tokens)
    hits = rt.running[rid].hits
    rt.finish(rid)
    return hits


def run_probe() -> dict[str, Any]:
    return {"U": U, "B": B, "resident_pages": RESIDENT, "prefill_pages": ACTIVE, "legs": [leg(n) for n in LEGS]}


def table(result: dict[str, Any]) -> str:
    legs = result["legs"]

    def prefill(p: dict) -> str:
        return f"refused ({p['outcome']}: {', '.join(p['blocking_claims'])})" if p["blocking_claims"] else p["outcome"]

    rows = [
        ("", [lg["label"] for lg in legs]),
        ("replay cached pages, before", [str(lg["replay_cached_pages_before"]) for lg in legs]),
        (f"{result['prefill_pages']}-page prefill", [prefill(lg["prefill"]) for lg in legs]),
        ("replay cached pages, after", [str(lg["replay_cached_pages_after"]) for lg in legs]),
        ("resident pages lost", [str(lg["resident_pages_lost"]) for lg in legs]),
        ("claim state", [lg["claim_state"] or "-" for lg in legs]),
    ]
    head = (
        f"The paper's probe on SGLang's radix cache: U={result['U']} pages of {result['B']} tokens, "
        f"a {result['resident_pages']}-page resident prefix, a {result['prefill_pages']}-page prefill"
    )
    return columns(head, rows)
