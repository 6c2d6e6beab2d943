"""Wall-clock TTLs (``kvclaims_ttl_s``, seconds) mapped onto the contract's logical clock.

The contract's TTL counts ticks of the runtime's logical clock (in vLLM, one tick per
engine step), and that stays the model: the lifecycle, the proofs and the trace checker
know no seconds. But engine steps are no unit for users (300 steps pass in under three
seconds under load, and an idle engine never steps), so a claim may carry a deadline in
seconds as well. The mapping: a claim expires at the first logical tick, or the first
query of claims on its engine, at or after its deadline; its ``expire`` record carries
the deadline (Unix seconds) it was due at. An idle vLLM engine does not step, so the
HTTP front end queries at each deadline it learns of (`kvclaims.vllm.frontend`); an
engine without one expires at its next step or query.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable


class WallClock:
    """Deadlines (Unix seconds) of claims with a wall-clock TTL. `now` is the clock (a test
    may pass its own)."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.now = now
        self.deadlines: dict[str, float] = {}  # live claims' deadlines
        self.history: dict[str, float] = {}  # every claim's deadline, ended or not (what a read reports)

    def add(self, claim_id: str, deadline: float) -> None:
        self.deadlines[claim_id] = self.history[claim_id] = deadline

    def due(self, ended: Callable[[str], bool]) -> list[tuple[str, float]]:
        """Claims whose deadline has passed, by id, with their deadlines, leaving the clock;
        claims `ended` otherwise leave it too, unreported."""
        if not self.deadlines:
            return []
        now = self.now()
        gone = sorted(c for c, d in self.deadlines.items() if d <= now or ended(c))
        return [(c, d) for c, d in ((c, self.deadlines.pop(c)) for c in gone) if not ended(c)]

    def left(self, claim_id: str) -> float | None:
        """Seconds until the claim's deadline (0 once passed); None: it has none."""
        deadline = self.deadlines.get(claim_id)
        return None if deadline is None else max(0.0, deadline - self.now())

    def next(self, live: Iterable[str]) -> float | None:
        """The earliest deadline among the `live` claims (None: none has one)."""
        return min((self.deadlines[c] for c in live if c in self.deadlines), default=None)
