"""Proof time (figure 6): `kvclaims prove`, total and per obligation, against its 10 s budget.

A proof run has no side-by-side baseline that does the same work, so the
ratio is total solver time over the budget the issue sets (<= 1 meets it);
per-obligation seconds (median over rounds) go in `extra`.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from kvclaims.bench.ratio import Ratio
from kvclaims.proofs.result import Stopwatch
from kvclaims.proofs.run import prove_all
from kvclaims.spec import load

BUDGET_S = 10.0


def run(smoke: bool = False) -> list[Ratio]:
    spec = load()
    totals, per = [], defaultdict(list)
    for _ in range(1 if smoke else 3):
        clock = Stopwatch()
        results = prove_all(spec)
        totals.append(clock.seconds())
        if not all(r.proved for r in results):
            raise AssertionError("a proof failed; run `kvclaims prove` for the counterexample")
        by_id: defaultdict[str, float] = defaultdict(float)
        for r in results:
            by_id[r.obligation] += r.seconds
        for oid, s in by_id.items():
            per[oid].append(s)
    return [
        Ratio(
            "kvclaims prove, all obligations",
            f"the {BUDGET_S:g} s budget",
            "total proof time",
            [t / BUDGET_S for t in totals],
            unit="time / budget",
            target="<= 1",
            extra={
                "total_seconds": round(statistics.median(totals), 3),
                "per_obligation_seconds": {k: round(statistics.median(v), 4) for k, v in sorted(per.items())},
            },
        )
    ]
