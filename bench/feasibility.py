"""Feasibility decision time against the number of live claims (figure 4).

Two reference runtimes over the same pool size: one with 10 live claims, one
grown to 10^2 ... 10^5. At each size both decide the same batch of prompts
(dry runs, `Runtime.feasibility`), alternately; the figure is the time ratio
big / small. Half the claims are hard and blocking, half soft, so the pool has
protected and yielding blocks. Every outcome is chosen from class counts the
pool keeps incrementally, so the ratio should stay near 1 (the outcomes seen
are reported). Only a refusal that must name blocking claims
(`refuse_blocked`) also walks the protected blocks, to attribute; that cost
grows with what it must name and is not part of this figure.
"""

from __future__ import annotations

from kvclaims.bench.ratio import Ratio, interleaved
from kvclaims.refimpl.runtime import Runtime

SMALL = 10


def _grow(rt: Runtime, upto: int) -> None:
    """Add claims c<i> on one-block prompts [i] until `upto` are live."""
    for i in range(len(rt.claims), upto):
        rt.submit_request(f"w{i}", [i])
        rt.finish(f"w{i}")
        rt.submit_claim(f"c{i}", [i], strength="hard" if i % 2 else "soft")


def run(smoke: bool = False) -> list[Ratio]:
    sizes = (100, 1000) if smoke else (100, 1000, 10_000, 100_000)
    U = 2 * sizes[-1] + 64
    make = lambda: Runtime(U, 1, 0, heads=1, head_dim=1, device="cpu")  # noqa: E731
    small, big = make(), make()
    _grow(small, SMALL)
    # Prompts: a claimed prefix plus new blocks, and wholly new ones; none fits beyond the pool.
    prompts = [[i % SMALL, 10**7 + i, 10**7 + i + 1] for i in range(500)] + [[10**8 + i] * 4 for i in range(500)]

    def batch(rt: Runtime):
        return lambda: [rt.feasibility(p) for p in prompts]

    out = []
    for n in sizes:
        _grow(big, n)
        r = interleaved(
            f"feasibility decision, {n} live claims vs {SMALL}",
            (f"{SMALL} live claims", batch(small)),
            (f"{n} live claims", batch(big)),
            rounds=3 if smoke else 7,
            target="<= 1.2",
        )
        r.extra = {
            "live_claims": n,
            "decisions_per_round": len(prompts),
            "outcomes": sorted({big.feasibility(p).outcome for p in prompts}),
            "pool_blocks": U,
        }
        out.append(r)
    return out
