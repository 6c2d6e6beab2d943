"""`kvclaims litmus --runtime refimpl [--json]`: run the litmus suite."""
from __future__ import annotations

import json

from kvclaims.refimpl.litmus import SCENARIOS, run_scenario


def add_arguments(parser) -> None:
    parser.add_argument("--runtime", choices=["refimpl"], default="refimpl", help="runtime under test")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run only this scenario")
    parser.add_argument("--json", action="store_true", help="print results as JSON")


def run(args) -> int:
    results = [run_scenario(n, args.device) for n in (args.only or SCENARIOS)]
    if args.json:
        print(json.dumps({"runtime": args.runtime, "passed": all(r.passed for r in results),
                          "scenarios": [r.to_json() for r in results]}, indent=2))
    else:
        for r in results:
            print(f"{'PASS' if r.passed else 'FAIL'}  {r.name}: {r.expected}")
            for f in r.failures:
                print(f"      {f}")
    return 0 if all(r.passed for r in results) else 1
