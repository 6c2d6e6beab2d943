"""`kvclaims fuzz`: the stateful contract test for N steps against any runtime adapter.

A failure prints the shrunk, replayable program and exits 1; otherwise a summary
of what was exercised (the run itself: `kvclaims.conformance.fuzz`). `--workers N`
runs N seeded workers side by side (`fuzz_workers`); a bar with an ETA shows on a
terminal, or with `--progress`, never with `--json`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Callable, Iterator

from kvclaims.conformance.adapter import add_runtime_argument
from kvclaims.conformance.fuzz import (
    SUMMARY,
    check_steps,
    fuzz,
    fuzz_workers,
    runtime_factory,
    violation,
    worker_count,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_runtime_argument(parser)
    parser.add_argument("--steps", type=int, default=10_000, help="steps to run at least (default 10000)")
    parser.add_argument(
        "--life", type=int, default=0, help="of the steps, those of one long-lived example, run last (default 0)"
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes, worker i with seed SEED+i and its share of the steps and of the life (default 1: this one)",
    )
    parser.add_argument("--no-faults", action="store_true", help="no operator actions or injected faults")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--progress", action="store_true", help="a progress bar with an ETA on stderr (default: on a terminal)"
    )


def run(args: argparse.Namespace) -> int:
    check_steps(args.steps, args.life, args.workers)
    factory = runtime_factory(args.runtime)  # a bad --runtime is exit 2, not a violation
    shown = not args.json and (args.progress or sys.stderr.isatty())
    t0 = time.perf_counter()
    try:
        with _bar(args.steps, shown) as progress:
            if args.workers > 1:
                totals = fuzz_workers(
                    args.runtime,
                    args.steps,
                    args.seed,
                    args.workers,
                    faults=not args.no_faults,
                    life=args.life,
                    progress=progress,
                )
            else:
                totals = fuzz(
                    factory,
                    args.steps,
                    args.seed,
                    faults=not args.no_faults,
                    life=args.life,
                    log=lambda m: None if args.json or shown else print(m, file=sys.stderr),
                    progress=progress,
                )
    except Exception as exc:  # the contract was broken, or the runtime crashed: the notes hold the program
        print("\n".join(getattr(exc, "__notes__", [])))
        print(f"\nkvclaims fuzz: VIOLATION: {violation(exc)}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - t0
    summary = {
        "runtime": args.runtime,
        "seed": args.seed,
        "workers": worker_count(args.steps, args.workers),
        "steps": totals["steps"],
        "examples": totals["examples"],
        "life_steps": totals["life steps"],
        "seconds": round(seconds, 1),
        "steps_per_second": round(totals["steps"] / seconds, 1),
        "violations": 0,
        **{name: sum(totals[k] for k in kinds) for name, kinds in SUMMARY.items()},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key:>36}: {value}")
    return 0


@contextlib.contextmanager
def _bar(steps: int, shown: bool) -> Iterator[Callable[[int], object]]:
    """What the run tells the steps it has run so far: a tqdm bar on stderr (its rate and
    ETA), or nothing when not `shown`. Steps past `steps` (examples run to their end) fill it."""
    if not shown:
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(total=steps, unit="step", file=sys.stderr, dynamic_ncols=True) as bar:
        yield lambda n: bar.update(min(n, steps) - bar.n)
