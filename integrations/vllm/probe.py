"""The paper's probe on a real vLLM engine, three ways.

Pool: U=80 usable blocks of 32 tokens. A 60-block resident prefix is computed
and replayed (its hit is the replay's ``num_cached_tokens``), then a 70-block
unrelated prefill arrives (60 + 70 > 80), then the resident is replayed again.
Legs: stock vLLM; the integration with write no-admit on the prefill and no
claim; the integration with a hard claim on the resident prefix.
"""

from __future__ import annotations

from typing import Any

from kvclaims.vllm.engine import VllmEngine

U, B, RESIDENT, ACTIVE = 80, 32, 60, 70
CLAIM = "resident"
PREFIX = [3 + i % 500 for i in range(RESIDENT * B)]  # token ids < the tiny vocab (512)
PREFILL = [5 + (7 * i) % 400 for i in range(ACTIVE * B)]  # shares no block with PREFIX
LEGS = {"stock": "stock vLLM", "no_admit": "stock + write no-admit", "hard_claim": "hard claims"}


def leg(engine: VllmEngine, name: str, *, claim: bool = False, no_admit: bool = False) -> dict[str, Any]:
    """One run of the probe on `engine`, from an empty prefix cache. On stock vLLM the claim
    is still sent (as ``extra_args``), and ignored: that is the point of the comparison."""
    if not engine.reset_cache():
        raise RuntimeError("the prefix cache could not be reset: requests still hold blocks")
    claim_args = {"kvclaims_claim": CLAIM} if claim else {}
    engine.run(f"{name}-resident", PREFIX + [1], extra_args=claim_args)
    before = engine.run(f"{name}-replay1", PREFIX + [2]).num_cached_tokens
    active = engine.run(f"{name}-prefill", PREFILL, extra_args={"kvclaims_no_admit": True} if no_admit else {})
    after = engine.run(f"{name}-replay2", PREFIX + [4]).num_cached_tokens
    state = None
    if claim and engine.integration:
        state = engine.claim_state(CLAIM)
        engine.release_claim(CLAIM)
    return {
        "leg": name,
        "label": LEGS[name],
        "replay_cached_tokens_before": before,
        "prefill": {
            "finish_reason": active.finish_reason,
            "refused": active.kvclaims.get("refused"),
            "blocking_claims": active.kvclaims.get("blocking_claims", []),
        },
        "replay_cached_tokens_after": after,
        "resident_blocks_lost": (before - after) // B,
        "claim_state": state,
    }


def run_probe(stock: VllmEngine, claims: VllmEngine) -> dict[str, Any]:
    return {
        "U": U,
        "B": B,
        "resident_blocks": RESIDENT,
        "prefill_blocks": ACTIVE,
        "legs": [leg(stock, "stock"), leg(claims, "no_admit", no_admit=True), leg(claims, "hard_claim", claim=True)],
    }


def table(result: dict[str, Any]) -> str:
    legs = result["legs"]

    def prefill(p: dict) -> str:
        if p["refused"]:
            return f"refused ({p['refused']}: {', '.join(p['blocking_claims'])})"
        return "admitted"

    rows = [
        ("", [lg["label"] for lg in legs]),
        ("replay cached tokens, before", [str(lg["replay_cached_tokens_before"]) for lg in legs]),
        (f"{result['prefill_blocks']}-block prefill", [prefill(lg["prefill"]) for lg in legs]),
        ("replay cached tokens, after", [str(lg["replay_cached_tokens_after"]) for lg in legs]),
        ("resident blocks lost", [str(lg["resident_blocks_lost"]) for lg in legs]),
        ("claim state", [lg["claim_state"] or "-" for lg in legs]),
    ]
    w0 = max(len(r[0]) for r in rows)
    ws = [max(len(r[1][i]) for r in rows) for i in range(len(legs))]
    head = (
        f"The paper's probe on vLLM: U={result['U']} blocks of {result['B']} tokens, "
        f"a {result['resident_blocks']}-block resident prefix, a {result['prefill_blocks']}-block prefill"
    )
    lines = [head] + ["  ".join([r[0].ljust(w0), *(c.ljust(w) for c, w in zip(r[1], ws))]).rstrip() for r in rows]
    return "\n".join(lines)
