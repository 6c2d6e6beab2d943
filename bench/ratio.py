"""Interleaved A/B timing: A B A B ... for several rounds, median of the pairwise ratios.

Every figure of the benchmark suite is a `Ratio`: ours against a baseline that
does the same work, timed alternately in one run so machine noise hits both.
Absolute rates a figure also reports (events/s, steps/s) go in `extra`.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Ratio:
    name: str
    baseline: str
    ours: str
    ratios: list[float]  # ours / baseline per round (time ratio unless stated)
    unit: str = "time ratio (ours / baseline)"
    target: str = ""  # e.g. "<= 1.05"; empty when the figure has none
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def met(self) -> bool | None:
        """Does the median meet the target? None when there is no target."""
        if not self.target:
            return None
        op, bound = self.target.split()
        return self.median <= float(bound) if op == "<=" else self.median >= float(bound)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "baseline": self.baseline,
            "ours": self.ours,
            "unit": self.unit,
            "median": round(self.median, 4),
            "min": round(min(self.ratios), 4),
            "max": round(max(self.ratios), 4),
            "rounds": len(self.ratios),
            "target": self.target,
            "met": self.met,
            **({"extra": self.extra} if self.extra else {}),
        }


def interleaved(
    name: str,
    baseline: tuple[str, Callable[[], None]],
    ours: tuple[str, Callable[[], None]],
    rounds: int = 7,
    sync: Callable[[], None] = lambda: None,
    *,
    target: str = "",
) -> Ratio:
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
    return Ratio(name, baseline[0], ours[0], ratios, target=target)
