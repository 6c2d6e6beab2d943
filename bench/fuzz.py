"""Stateful testing throughput on the reference runtime (figure 7).

`kvclaims fuzz` drives the runtime and the oracle in lockstep and checks the
contract after every step. Its cost over the runtime's own is the figure: a
fuzz run records every adapter call it makes (through a recording adapter),
then the same calls are replayed on fresh runtimes with no Hypothesis, oracle
or checks. Ratio: fuzz / replay
time, pairwise per round; fuzz steps per second go in `extra`.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from kvclaims.bench.ratio import Ratio
from kvclaims.errors import KVClaimsError
from kvclaims.conformance.fuzz import fuzz
from kvclaims.refimpl.adapter import RefimplAdapter

Call = tuple[str, tuple, dict]
LOG: list[tuple[dict[str, Any], list[Call]]] = []  # per runtime made: its shape and top-level calls


class Recorded(RefimplAdapter):
    """The reference adapter, logging every public call the test makes (not nested ones)."""

    def __init__(self, **shape: Any) -> None:
        self._calls: list[Call] = []
        self._depth = 0
        super().__init__(**shape)
        LOG.append((shape, self._calls))

    def __getattribute__(self, name: str):
        attr = super().__getattribute__(name)
        if name.startswith("_") or not callable(attr) or isinstance(attr, type):
            return attr

        def call(*args, **kwargs):
            if self._depth == 0:
                self._calls.append((name, args, kwargs))
            self._depth += 1
            try:
                return attr(*args, **kwargs)
            finally:
                self._depth -= 1

        return call


def replay() -> None:
    """Every logged call again, on fresh plain runtimes; rejections are part of the work."""
    for shape, calls in LOG:
        rt = RefimplAdapter(**shape)
        for name, args, kwargs in calls:
            try:
                getattr(rt, name)(*args, **kwargs)
            except KVClaimsError:
                pass


def run(smoke: bool = False) -> list[Ratio]:
    steps, rounds = (300, 2) if smoke else (4000, 5)
    ratios, rates = [], []
    for i in range(rounds):
        LOG.clear()
        t0 = time.perf_counter()
        done = fuzz(Recorded, steps, seed_value=1000 + i)["steps"]
        fuzz_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        replay()
        ratios.append(fuzz_s / (time.perf_counter() - t0))
        rates.append(done / fuzz_s)
    return [
        Ratio(
            "stateful testing (kvclaims fuzz) on the refimpl, faults on",
            "the same runtime calls replayed without Hypothesis, oracle or checks",
            "kvclaims fuzz",
            ratios,
            extra={"fuzz_steps_per_second": round(statistics.median(rates), 1), "steps_per_round": steps},
        )
    ]
