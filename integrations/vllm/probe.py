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

`Sweep` runs the first three legs over a range of pool sizes (the follow-up paper's
capacity sweep, ``kvclaims probe --usable``).
"""

from __future__ import annotations

from typing import Any, Sequence

from kvclaims.columns import columns

from kvclaims.model.feasibility import Decision
from kvclaims.model.names import EVENT, POLICY
from kvclaims.vllm.engine import VllmEngine

U, B, RESIDENT, ACTIVE = 80, 32, 60, 70
CLAIM = "resident"
OFFLOADED = "resident-offload"  # the restore-failure leg's claim (a claim id is never reused)


def prompts(resident: int, prefill: int) -> tuple[list[int], list[int]]:
    """A prefix of `resident` blocks and an unrelated prompt of `prefill` blocks (of `B`
    tokens) that shares no block with it; token ids below the tiny model's vocabulary (512)."""
    return [3 + i % 500 for i in range(resident * B)], [5 + (7 * i) % 400 for i in range(prefill * B)]


PREFIX, PREFILL = prompts(RESIDENT, ACTIVE)
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


def _reset(engine: VllmEngine) -> None:
    if not engine.reset_cache():
        raise RuntimeError("the prefix cache could not be reset: requests still hold blocks")


def leg(engine: VllmEngine, name: str, *, claim: bool = False, no_admit: bool = False) -> dict[str, Any]:
    """One run of the probe on `engine`, from an empty prefix cache. On stock vLLM the claim
    is still sent (as ``extra_args``), and ignored: that is the point of the comparison."""
    _reset(engine)
    return measure(engine, name, claim=claim, no_admit=no_admit)


def measure(
    engine: VllmEngine,
    name: str,
    *,
    claim: bool = False,
    no_admit: bool = False,
    prefix: Sequence[int] = PREFIX,
    prefill: Sequence[int] = PREFILL,
) -> dict[str, Any]:
    """`leg` on an engine whose prefix cache the caller has emptied (`Sweep` resizes it)."""
    claim_args = {"kvclaims_claim": CLAIM} if claim else {}
    engine.run(f"{name}-resident", [*prefix, 1], extra_args=claim_args)
    before = engine.run(f"{name}-replay1", [*prefix, 2]).num_cached_tokens
    active = engine.run(f"{name}-prefill", prefill, extra_args={"kvclaims_no_admit": True} if no_admit else {})
    after = engine.run(f"{name}-replay2", [*prefix, 4]).num_cached_tokens
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
        "resident_blocks_lost": (before - after) // engine.B,
        "claim_state": state,
    }


def restore_failure(engine: VllmEngine, name: str = "restore_failure", claim: str = OFFLOADED) -> dict[str, Any]:
    """The restore-failure leg on `engine` (it runs the claims host tier). Besides the
    probe's numbers: the replay's outcome, whether its output equals the cold run's, the
    engine steps it took, and whether the claim's `fail` came before any of its blocks
    was stored again. `claim` is the claim's id (an id is never reused)."""
    _reset(engine)
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


class Sweep:
    """The capacity sweep's two engines, stock vLLM and the integration, each started once
    with the largest pool asked for (an engine start costs tens of seconds on a CPU) and
    shrunk for each size. Usable blocks are those vLLM allocates from: an engine of
    `largest` usable blocks has ``largest + 1`` (one is vLLM's null block), and a size `u`
    withholds ``largest - u`` free blocks from vLLM's free queue (`PoolView.withhold`), as if
    the engine had been started with ``u + 1``. Stock vLLM keeps its own scheduler and
    allocator; the integration's pool is restarted at `u` with a fresh claim book
    (`HarnessScheduler.restart`)."""

    def __init__(self, largest: int, resident: int = RESIDENT, prefill: int = ACTIVE) -> None:
        from vllm.v1.core.sched.scheduler import Scheduler

        from kvclaims.vllm.pool import PoolView

        self.B = B
        self.prefix, self.prefill = prompts(resident, prefill)
        length = B * (max(resident, prefill) + 1)  # the longest prompt and its one output token
        self.stock = VllmEngine(integration=False, U=largest, max_model_len=length)
        self.claims = _OneAtATime(U=largest, max_model_len=length)
        stock = self.stock.scheduler
        assert isinstance(stock, Scheduler), f"stock vLLM runs its own scheduler, not {type(stock)}"
        config = self.stock.engine.vllm_config.cache_config
        self.view = PoolView(stock.kv_cache_manager, B, config.prefix_caching_hash_algo)

    def leg(
        self, usable: int, name: str, *, claim: bool = False, no_admit: bool = False
    ) -> tuple[int, Decision, int, str | None]:
        """`measure` with `usable` blocks: the replay's hit blocks before the prefill, the
        prefill's decision, the replay's hit blocks after it, the claim's state. Legs with
        a claim or write no-admit run on the integration, the others on stock vLLM."""
        engine = self.claims if claim or no_admit else self.stock
        engine.clear()  # (request ids are used again)
        if engine is self.claims:
            self.claims.harness.restart(U=usable, reserve=0, enforce=True)
        else:
            self.view.unwithhold()
            _reset(engine)
            self.view.withhold(self.view.U - usable)
        lg = measure(engine, name, claim=claim, no_admit=no_admit, prefix=self.prefix, prefill=self.prefill)
        p = lg["prefill"]
        return (
            lg["replay_cached_tokens_before"] // B,
            Decision(p["refused"] or "admit", tuple(p["blocking_claims"])),
            lg["replay_cached_tokens_after"] // B,
            lg["claim_state"],
        )


class _OneAtATime(VllmEngine):
    """The integration on `HarnessScheduler` (its `restart` resizes the pool), which schedules
    only the waiting request it names: the sweep runs one request at a time to its end, so
    it names the last one submitted."""

    def __init__(self, **settings: Any) -> None:
        from kvclaims.vllm.adapter import HARNESS
        from kvclaims.vllm.harness import HarnessScheduler

        super().__init__(scheduler=HARNESS, **settings)
        assert isinstance(self.scheduler, HarnessScheduler), f"{HARNESS} asked, {type(self.scheduler)} built"
        self.harness = self.scheduler

    def submit_request(self, request_id: str, tokens: Sequence[int], **kw: Any) -> None:
        super().submit_request(request_id, tokens, **kw)
        self.harness.only = request_id


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
