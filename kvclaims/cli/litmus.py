"""`kvclaims litmus --runtime refimpl|MODULE:CLASS [--json]`: run the litmus suite against a runtime."""

from __future__ import annotations

import argparse
import json

from kvclaims.conformance.adapter import add_runtime_argument
from kvclaims.conformance.fuzz import runtime_factory
from kvclaims.conformance.litmus import SCENARIOS, Result, run_scenario

MARK = {"passed": "PASS", "failed": "FAIL", "not_applicable": "N/A "}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_runtime_argument(parser)
    parser.add_argument(
        "--device",
        default=None,
        help="torch device, passed to the runtime (refimpl default: cuda if available, else cpu)",
    )
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run only this scenario")
    parser.add_argument("--json", action="store_true", help="print results as JSON")


def run(args: argparse.Namespace) -> int:
    """Exit 0 unless a scenario failed: not applicable is reported, never failed nor passed."""
    factory = runtime_factory(args.runtime, **({"device": args.device} if args.device else {}))
    return report(args.runtime, [run_scenario(n, factory) for n in (args.only or SCENARIOS)], args.json)


def report(runtime: str, results: list[Result], as_json: bool) -> int:
    """Print scenario results, one line each with what failed or why not applicable, or as
    JSON; the exit status. (The rejection scenarios report the same way.)"""
    ok = not any(r.status == "failed" for r in results)
    if as_json:
        print(json.dumps({"runtime": runtime, "passed": ok, "scenarios": [r.to_json() for r in results]}, indent=2))
    else:
        for r in results:
            print(f"{MARK[r.status]}  {r.name}: {r.expected}")
            for line in r.failures + ([r.reason] if r.reason else []) + [f"unchecked: {u}" for u in r.unchecked]:
                print(f"      {line}")
    return 0 if ok else 1
