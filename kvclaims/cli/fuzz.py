"""`kvclaims fuzz`: the stateful contract test for N steps against any runtime adapter.

A failure prints the shrunk, replayable program and exits 1; otherwise a summary
of what was exercised (the run itself: `kvclaims.conformance.fuzz`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from kvclaims.conformance.adapter import add_runtime_argument
from kvclaims.conformance.fuzz import SUMMARY, check_steps, fuzz, runtime_factory, violation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_runtime_argument(parser)
    parser.add_argument("--steps", type=int, default=10_000, help="steps to run at least (default 10000)")
    parser.add_argument(
        "--life", type=int, default=0, help="of the steps, those of one long-lived example, run last (default 0)"
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--no-faults", action="store_true", help="no operator actions or injected faults")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    check_steps(args.steps, args.life)
    factory = runtime_factory(args.runtime)  # a bad --runtime is exit 2, not a violation
    t0 = time.perf_counter()
    try:
        totals = fuzz(
            factory,
            args.steps,
            args.seed,
            faults=not args.no_faults,
            life=args.life,
            log=lambda m: print(m, file=sys.stderr) if not args.json else None,
        )
    except Exception as exc:  # the contract was broken, or the runtime crashed: the notes hold the program
        print("\n".join(getattr(exc, "__notes__", [])))
        print(f"\nkvclaims fuzz: VIOLATION: {violation(exc)}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - t0
    summary = {
        "runtime": args.runtime,
        "seed": args.seed,
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
