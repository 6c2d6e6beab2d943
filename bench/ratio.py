"""Interleaved A/B timing: A B A B ... for several rounds, median of the pairwise ratios."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class Ratio:
    name: str
    baseline: str
    ours: str
    ratios: list[float]           # ours / baseline per round (time ratio unless stated)
    unit: str = "time ratio (ours / baseline)"

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    def to_json(self) -> dict:
        return {"name": self.name, "baseline": self.baseline, "ours": self.ours, "unit": self.unit,
                "median": round(self.median, 4), "min": round(min(self.ratios), 4),
                "max": round(max(self.ratios), 4), "rounds": len(self.ratios)}


def interleaved(name: str, baseline: tuple[str, Callable[[], None]], ours: tuple[str, Callable[[], None]],
                rounds: int = 7, sync: Callable[[], None] = lambda: None) -> Ratio:
    """Time `baseline` and `ours` alternately; each call does the same work."""
    ratios = []
    for _ in range(rounds):
        times = []
        for fn in (baseline[1], ours[1]):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        ratios.append(times[1] / times[0])
    return Ratio(name, baseline[0], ours[0], ratios)
