"""Figure 2: what the integration costs a real vLLM engine, as a throughput ratio.

Two in-process engines on the tiny local model (CPU), built alike except that one
runs the claims scheduler (vLLM allows several engines in one process once
multiprocessing is off, as the tests do). Each round is one fixed workload of
requests sharing a few system-prompt prefixes, submitted together and stepped
to completion; round k is the same prompts on both engines, rounds alternate
between them, and a warm-up round on each comes first. In the claims engine
the two most popular prefixes carry live hard claims (made by their first
requests, as clients make them), so every admission goes through arbitration;
the stock engine runs the same first requests without the claim arguments. The
claims engine runs as a server does by default, its trace off (no `kvclaims.trace`
file, no records kept: figure 1 shows what a kept trace adds). The
pool is large enough that the claims constrain nothing: the ratio is the
integration's bookkeeping, not lost capacity. The model is tiny, so compute per
step is small and the scheduler's share of a step is far larger than with a
real model: the ratio is a lower bound for real deployments.
"""

from __future__ import annotations

import random
import statistics

from kvclaims.bench.ratio import Ratio
from kvclaims.bench.vllm_alloc import compare
from kvclaims.vllm.engine import VllmEngine
from kvclaims.vllm.model_dir import VOCAB
from kvclaims.vllm.scheduler import ClaimsScheduler
from kvclaims.model.names import STATE

U, B = 400, 32
CLAIMED = 2


class Workload:
    """The rounds of prompts, the same sequence for every engine that runs it."""

    def __init__(self, requests: int, max_tokens: int, families: int = 4, seed: int = 0) -> None:
        rng = random.Random(seed)
        self.prefixes = [[rng.randrange(3, VOCAB) for _ in range(B * rng.randint(6, 12))] for _ in range(families)]
        self.requests, self.max_tokens, self.seed = requests, max_tokens, seed

    def prompts(self, k: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + k)
        weights = [1 / (f + 1) for f in range(len(self.prefixes))]
        return [
            rng.choices(self.prefixes, weights)[0]
            + [rng.randrange(3, VOCAB) for _ in range(rng.randint(B // 2, 3 * B))]
            for _ in range(self.requests)
        ]


class Driver:
    """One engine running the workload's rounds in order."""

    def __init__(self, engine: VllmEngine, work: Workload) -> None:
        self.engine, self.work, self.round, self.cached = engine, work, 0, 0
        for c, prefix in enumerate(work.prefixes[:CLAIMED]):
            claim = {"claim": f"sys{c}"} if engine.integration else {}
            res = engine.run(f"first{c}", prefix + [1], **claim)
            if claim and res.kvclaims != {"claims": {f"sys{c}": STATE.materialized}}:
                raise AssertionError(f"claim sys{c}: {res.kvclaims}")

    def run_round(self) -> None:
        e, k = self.engine, self.round
        ids = [f"{k}-{i}" for i in range(self.work.requests)]
        for rid, prompt in zip(ids, self.work.prompts(k)):
            e.submit_request(rid, prompt, max_tokens=self.work.max_tokens, ignore_eos=True)
        while not all(rid in e.results for rid in ids):
            e.step()
        if any(e.results[rid].finish_reason != "length" for rid in ids):
            raise AssertionError(f"round {k}: {[e.results[rid] for rid in ids]}")
        self.cached += sum(e.results[rid].num_cached_tokens for rid in ids)
        e.clear()
        self.round += 1


def run_async(smoke: bool = False) -> list[Ratio]:
    """The same figure with vLLM's async scheduling on both engines (it overlaps scheduling
    with the forward pass, so the integration's bookkeeping may hide behind it)."""
    return run(smoke, async_scheduling=True)


def run(smoke: bool = False, async_scheduling: bool = False) -> list[Ratio]:
    requests, max_tokens, rounds = (8, 4, 3) if smoke else (64, 32, 31)
    work = Workload(requests, max_tokens)
    engines = [  # the claims engine as a server runs it by default: no trace file, no records kept
        VllmEngine(
            integration=integ, U=U, B=B, async_scheduling=async_scheduling, **({"records": False} if integ else {})
        )
        for integ in (False, True)
    ]
    stock, ours = (Driver(engine, work) for engine in engines)
    stock.run_round()
    ours.run_round()
    r, t_stock, t_ours = compare(
        f"vLLM engine{', async scheduling' if async_scheduling else ''}, tiny model on CPU: {requests} requests "
        f"x {max_tokens} tokens per round, {len(work.prefixes)} shared prefixes, {CLAIMED} live hard claims, "
        f"trace off",
        ("stock vLLM", stock.run_round),
        ("vLLM + kvclaims", ours.run_round),
        rounds,
        ">= 0.97",
    )
    r.ratios = [1 / x for x in r.ratios]
    r.unit = "throughput ratio (ours / stock output tokens per s; higher is better)"
    tokens = requests * max_tokens
    scheduler = ours.engine.scheduler
    if not isinstance(scheduler, ClaimsScheduler):
        raise AssertionError(f"the integrated engine runs {type(scheduler).__name__}, not the claims scheduler")
    held = scheduler.book.holders
    r.extra = {
        **{f"{n} tokens/s": round(tokens / statistics.median(t)) for n, t in (("stock", t_stock), ("claims", t_ours))},
        "cached prompt tokens (stock, claims)": [stock.cached, ours.cached],
        "claimed blocks held": len(held),
    }
    return [r]
