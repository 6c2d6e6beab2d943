"""`kvclaims conform`: the whole battery against one runtime, one verdict per obligation
(the battery itself: `kvclaims.conformance.conform`)."""

from __future__ import annotations

import argparse
import json
import sys

from kvclaims.conformance.adapter import add_runtime_argument
from kvclaims.conformance.conform import LIFE, SEEDS, STEPS, conform


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_runtime_argument(parser)
    parser.add_argument("--steps", type=int, default=STEPS, help=f"stateful steps in all (default {STEPS})")
    parser.add_argument("--seed", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument(
        "--seeds", type=int, default=SEEDS, help=f"seeds from --seed, the steps split among them (default {SEEDS})"
    )
    parser.add_argument(
        "--life", type=int, help=f"of the steps, those of one long-lived example (default a third, at most {LIFE})"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    report = conform(args.runtime, args.steps, args.seed, args.seeds, args.life)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print(f"conformance of runtime {args.runtime!r}:")
        for o in report["obligations"]:
            kinds = sorted({f"{e['kind']}:{e['result']}" for e in o["evidence"]})
            print(f"  {o['id']:<12} {o['verdict']:<15} {', '.join(kinds)}")
        for o in report["obligations"]:
            for e in o["evidence"]:
                if e["result"] == "failed":
                    print(
                        f"\n{o['id']} violated by {e['kind']} {e['name']}: "
                        f"{e.get('violation', '')}\n{e.get('program', '')}"
                    )
        print(f"\nstateful evidence: {_gathered(report)}")
        print(f"\nverdict: {'CONFORMS' if report['conforms'] else 'DOES NOT CONFORM'}")
    return 0 if report["conforms"] else 1


def _gathered(report: dict) -> str:
    """How much the stateful suite ran (its evidence is the same for every id it checks)."""
    item = next(e for o in report["obligations"] for e in o["evidence"] if e["kind"] == "stateful")
    if "steps" not in item:
        return f"stopped at a violation (seed {item.get('seed', '?')})" if item["result"] == "failed" else item["until"]
    return (
        f"{item['steps']} steps in {item['examples']} examples ({item['life_steps']} of them in one long-lived"
        f" example), seeds {', '.join(map(str, item['seeds']))}"
    )
