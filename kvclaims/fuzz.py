"""`kvclaims fuzz`: the stateful contract test for N steps against any runtime adapter.

Steps run in batches of Hypothesis examples, each batch with its own seed
derived from --seed, so a run is reproducible. A failure prints the shrunk,
replayable program and exits 1; otherwise a summary of what was exercised.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from functools import partial

from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis.stateful import run_state_machine_as_test

from kvclaims.adapter import load_adapter
from kvclaims.stateful import machine_for

STEPS_PER_EXAMPLE = 50
EXAMPLES_PER_BATCH = 200
SUMMARY = {  # summary line -> trace record kinds (claim events as claim:<event>)
    "conflicts (claim-blocked refusals)": ("request_refuse:refuse_blocked",),
    "refusals": ("request_refuse:refuse_blocked", "request_refuse:refuse_too_large"),
    "waits": ("request_wait",),
    "evictions": ("block_evict",),
    "demotions": ("claim:demote",),
    "offloads": ("claim:offload",),
    "restores": ("claim:restore",),
    "harms": ("claim:harm",),
    "fail-closed": ("claim:fail",),
    "claims": ("claim_submit",),
    "requests": ("request_submit",),
}


def fuzz(runtime: str, steps: int, seed_value: int, *, faults: bool = True,
         log=lambda msg: None) -> Counter:
    """Run at least `steps` steps; raises the failing example's error on a violation."""
    totals: Counter = Counter()
    factory = partial(load_adapter, runtime)
    if not faults:
        factory = _without_faults(factory)

    class Counted(machine_for(factory)):
        def teardown(self) -> None:
            totals.update(self.stats)
            totals["steps"] += self.steps
            totals["examples"] += 1

    batch = 0
    while totals["steps"] < steps:
        machine = seed(seed_value * 1_000_003 + batch)(Counted)
        run_state_machine_as_test(machine, settings=settings(
            max_examples=min(EXAMPLES_PER_BATCH, -(-(steps - totals["steps"]) // STEPS_PER_EXAMPLE)),
            stateful_step_count=STEPS_PER_EXAMPLE,
            deadline=None, database=None, derandomize=False, report_multiple_bugs=False,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate, Phase.shrink]))
        batch += 1
        log(f"batch {batch}: {totals['steps']} steps")
    return totals


def _without_faults(factory):
    def make(**shape):
        runtime = factory(**shape)
        runtime.capabilities = runtime.capabilities - {"reset_cache", "evict_blocks",
                                                       "device_fault", "host_fault"}
        return runtime
    return make


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runtime", default="refimpl", help="refimpl, vllm or MODULE:CLASS (default refimpl)")
    parser.add_argument("--steps", type=int, default=10_000, help="steps to run at least (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--no-faults", action="store_true", help="no operator actions or injected faults")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    if args.steps < 1:
        print("kvclaims fuzz: error: --steps must be at least 1", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        totals = fuzz(args.runtime, args.steps, args.seed, faults=not args.no_faults,
                      log=lambda m: print(m, file=sys.stderr) if not args.json else None)
    except AssertionError as exc:  # the contract was broken; the notes hold the program
        print("\n".join(getattr(exc, "__notes__", [])))
        print(f"\nkvclaims fuzz: VIOLATION: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - t0
    summary = {"runtime": args.runtime, "seed": args.seed, "steps": totals["steps"],
               "examples": totals["examples"], "seconds": round(seconds, 1),
               "steps_per_second": round(totals["steps"] / seconds, 1), "violations": 0,
               **{name: sum(totals[k] for k in kinds) for name, kinds in SUMMARY.items()}}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key:>36}: {value}")
    return 0
