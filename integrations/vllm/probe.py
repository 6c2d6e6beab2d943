"""The paper's probe on a real vLLM engine, four ways.

Pool: U=80 usable blocks of 32 tokens. A 60-block resident prefix is computed
and replayed (its hit is the replay's ``num_cached_tokens``), then a 70-block
unrelated prefill arrives (60 + 70 > 80), then the resident is replayed again.
Legs: stock vLLM; the integration with write no-admit on the prefill and no
claim; the integration with a hard claim on the resident prefix; and the
follow-up paper's witness (arXiv 2606.01387), a restore failure through vLLM's own
offload/load path: the claim has policy ``offload`` on the claims host tier, the
prefill's pressure offloads it, its first block's host copy is corrupted, and the
replay's load fails its check, so the claim fails closed (``fail``,
``checksum_mismatch``) before any of those blocks is reused and the replay
recomputes: its tokens and logprobs are the cold run's.
"""

from __future__ import annotations

from typing import Any

from kvclaims.columns import columns

from kvclaims.model.names import EVENT, POLICY
from kvclaims.vllm.engine import VllmEngine

U, B, RESIDENT, ACTIVE = 80, 32, 60, 70
CLAIM = "resident"
OFFLOADED = "resident-offload"  # the restore-failure leg's claim (a claim id is never reused)
PREFIX = [3 + i % 500 for i in range(RESIDENT * B)]  # token ids < the tiny vocab (512)
PREFILL = [5 + (7 * i) % 400 for i in range(ACTIVE * B)]  # shares no block with PREFIX
LEGS = {
    "stock": "stock vLLM",
    "no_admit": "stock + write no-admit",
    "hard_claim": "hard claims",
    "restore_failure": "offload, corrupt copy",
}
HOST_BYTES = 8 << 20  # the claims engine's host tier: 256 blocks of the tiny model
# The claims engine's host tier holds claims only: vLLM's own host cache of every computed
# block would bring the evicted resident back and hide what write no-admit alone does.
CLAIMS_ENGINE: dict[str, Any] = {"host_bytes": HOST_BYTES, "host_tier": "claims"}
MAX_STEPS = 200  # a replay that has not finished by then is a livelock


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


def restore_failure(engine: VllmEngine, name: str = "restore_failure", claim: str = OFFLOADED) -> dict[str, Any]:
    """The restore-failure leg on `engine` (it runs the claims host tier). Besides the
    probe's numbers: the replay's outcome, whether its output equals the cold run's, the
    engine steps it took, and whether the claim's `fail` came before any of its blocks
    was stored again. `claim` is the claim's id (an id is never reused)."""
    if not engine.reset_cache():
        raise RuntimeError("the prefix cache could not be reset: requests still hold blocks")
    sched, start = engine.claims, len(engine.trace)
    cold = engine.run(f"{name}-resident", PREFIX + [1], max_tokens=4, claim=claim, policy=POLICY.offload)
    before = engine.run(f"{name}-replay1", PREFIX + [2]).num_cached_tokens
    engine.settle()  # the host copies complete one step after the compute
    active = engine.run(f"{name}-prefill", PREFILL)
    offloaded = engine.claim_state(claim)
    sched.inject_host_fault(sched.book.claims[claim].chain[0])  # the first block: stock vLLM livelocks here
    engine.submit_request(f"{name}-replay2", PREFIX + [1], max_tokens=4)
    replay = engine.finish(f"{name}-replay2", max_steps=MAX_STEPS)
    records = engine.trace[start:]
    fail = [r["seq"] for r in records if r["kind"] == "claim" and r["claim"] == claim and r["event"] == EVENT.fail]
    chain = set(sched.book.claims[claim].chain)
    reuse = [
        r["seq"]
        for r in records
        if r["kind"] == "block_store" and r.get("request") == f"{name}-replay2" and chain & set(r["blocks"])
    ]
    return {
        "leg": name,
        "label": LEGS["restore_failure"],
        "replay_cached_tokens_before": before,
        "prefill": {
            "finish_reason": active.finish_reason,
            "refused": active.kvclaims.get("refused"),
            "blocking_claims": active.kvclaims.get("blocking_claims", []),
            "claim_after": offloaded,
        },
        "replay_cached_tokens_after": replay.num_cached_tokens if replay.finish_reason != "error" else 0,
        "resident_blocks_lost": RESIDENT,
        "claim_state": engine.claim_state(claim),
        "replay": {
            "finish_reason": replay.finish_reason,
            "equals_cold": (replay.token_ids, replay.logprobs) == (cold.token_ids, cold.logprobs),
            "steps": replay.steps,
            "fail_before_reuse": bool(fail) and all(fail[0] < s for s in reuse),
        },
    }


def run_probe(stock: VllmEngine, claims: VllmEngine) -> dict[str, Any]:
    """`claims` runs the claims host tier (`VllmEngine(**CLAIMS_ENGINE)`)."""
    return {
        "U": U,
        "B": B,
        "resident_blocks": RESIDENT,
        "prefill_blocks": ACTIVE,
        "legs": [
            leg(stock, "stock"),
            leg(claims, "no_admit", no_admit=True),
            leg(claims, "hard_claim", claim=True),
            restore_failure(claims),
        ],
    }


def table(result: dict[str, Any]) -> str:
    legs = result["legs"]

    def prefill(p: dict) -> str:
        if p["refused"]:
            return f"refused ({p['refused']}: {', '.join(p['blocking_claims'])})"
        return f"admitted (claim {p['claim_after']})" if p.get("claim_after") else "admitted"

    def replay(lg: dict) -> str:
        r = lg.get("replay")
        if r is None:
            return "-"
        same = "= cold" if r["equals_cold"] else "!= cold"
        order = "fail first" if r["fail_before_reuse"] else "REUSED BEFORE FAIL"
        return f"{r['finish_reason']}, {same}, {r['steps']} steps, {order}"

    rows = [
        ("", [lg["label"] for lg in legs]),
        ("replay cached tokens, before", [str(lg["replay_cached_tokens_before"]) for lg in legs]),
        (f"{result['prefill_blocks']}-block prefill", [prefill(lg["prefill"]) for lg in legs]),
        ("replay cached tokens, after", [str(lg["replay_cached_tokens_after"]) for lg in legs]),
        ("resident blocks lost", [str(lg["resident_blocks_lost"]) for lg in legs]),
        ("claim state", [lg["claim_state"] or "-" for lg in legs]),
        ("replay after a corrupt restore", [replay(lg) for lg in legs]),
    ]
    head = (
        f"The paper's probe on vLLM: U={result['U']} blocks of {result['B']} tokens, "
        f"a {result['resident_blocks']}-block resident prefix, a {result['prefill_blocks']}-block prefill"
    )
    return columns(head, rows)
