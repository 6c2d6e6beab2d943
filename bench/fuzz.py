"""Stateful testing throughput on the reference runtime (figure 7).

`kvclaims fuzz` drives the runtime and the oracle in lockstep and checks the
contract after every step. Three figures:

- its cost over the runtime's own: a fuzz run records every adapter call it makes
  (through a recording adapter), then the same calls are replayed on fresh runtimes
  with no Hypothesis, oracle or checks. Ratio: fuzz / replay time, pairwise per round;
- one worker's steps per CPU-second (a plain run, in this process) against the
  target, 3,000 (issue 18), so a busy machine does not count; wall rates in `extra`;
- scaling: `kvclaims fuzz --workers 2` against `--workers 1`, steps/s as the command
  reports them. Run as commands (a figure runs in a pool's daemon process, which may
  start no workers of its own), so the workers' start-up counts, as it does for a user.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from kvclaims.bench.ratio import Ratio
from kvclaims.errors import KVClaimsError
from kvclaims.conformance.fuzz import fuzz
from kvclaims.refimpl.adapter import RefimplAdapter

TARGET = 3_000  # steps per second on one core (issue 18)
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


def steps_per_second(steps: int, seed: int, workers: int) -> float:
    """`kvclaims fuzz --workers N --json`'s own rate, run as a command."""
    argv = ["fuzz", "--steps", str(steps), "--seed", str(seed), "--workers", str(workers), "--json"]
    done = subprocess.run([sys.executable, "-m", "kvclaims.cli", *argv], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)["steps_per_second"]


def run(smoke: bool = False) -> list[Ratio]:
    steps, rounds = (300, 2) if smoke else (4000, 5)
    wide, wide_rounds = (400, 1) if smoke else (20_000, 3)  # a scaling run's steps; its rounds
    ratios, cpu, wall = [], [], []
    for i in range(rounds):
        LOG.clear()
        t0 = time.perf_counter()
        fuzz(Recorded, steps, seed_value=1000 + i)
        fuzz_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        replay()
        ratios.append(fuzz_s / (time.perf_counter() - t0))
        w, c = time.perf_counter(), time.process_time()
        done = fuzz(RefimplAdapter, steps, seed_value=1000 + i)["steps"]
        cpu.append(done / (time.process_time() - c))
        wall.append(done / (time.perf_counter() - w))
    rates: dict[int, list[float]] = {1: [], 2: []}
    for i in range(wide_rounds):
        for workers in rates:
            rates[workers].append(steps_per_second(wide, 2000 + i, workers))
    return [
        Ratio(
            "stateful testing (kvclaims fuzz) on the refimpl, faults on",
            "the same runtime calls replayed without Hypothesis, oracle or checks",
            "kvclaims fuzz",
            ratios,
            extra={"steps_per_round": steps},
        ),
        Ratio(
            "kvclaims fuzz throughput on the refimpl, one worker",
            f"the figure's target, {TARGET:,} steps/s",
            "kvclaims fuzz",
            [x / TARGET for x in cpu],
            unit=f"steps per CPU-second / {TARGET:,}",
            target=">= 1",
            extra={
                "steps_per_cpu_s": round(statistics.median(cpu)),
                "steps_per_s": round(statistics.median(wall)),
                "steps_per_round": steps,
            },
        ),
        Ratio(
            f"kvclaims fuzz scaling, {wide:,} steps",
            "kvclaims fuzz --workers 1",
            "kvclaims fuzz --workers 2",
            [two / one for one, two in zip(rates[1], rates[2])],
            unit="throughput ratio (steps/s, 2 workers / 1; higher is better)",
            extra={
                "cpus": os.cpu_count(),
                "steps_per_s": {n: round(statistics.median(r)) for n, r in rates.items()},
                "steps_per_run": wide,
            },
        ),
    ]
