"""`kvclaims rejections --runtime refimpl|vllm|MODULE:CLASS [--json]`: the protocol's bad-input
scenarios against a runtime, reported as the litmus suite reports its own."""
from __future__ import annotations

import json

from kvclaims.fuzz import runtime_factory
from kvclaims.refimpl.cli_litmus import MARK
from kvclaims.rejections import REJECTIONS, run_rejection


def add_arguments(parser) -> None:
    parser.add_argument("--runtime", default="refimpl",
                        help="'refimpl', 'vllm' or MODULE:CLASS implementing kvclaims.adapter.RuntimeAdapter")
    parser.add_argument("--only", action="append", choices=sorted(REJECTIONS), help="run only this scenario")
    parser.add_argument("--json", action="store_true", help="print results as JSON")


def run(args) -> int:
    """Exit 0 unless a scenario failed: not applicable is reported, never failed nor passed."""
    factory = runtime_factory(args.runtime)
    return report(args.runtime, [run_rejection(n, factory) for n in (args.only or REJECTIONS)], args.json)


def report(runtime: str, results: list, as_json: bool) -> int:
    """Print scenario results (litmus `Result`s), one line each with what failed or why not
    applicable, or as JSON; the exit status."""
    ok = not any(r.status == "failed" for r in results)
    if as_json:
        print(json.dumps({"runtime": runtime, "passed": ok, "scenarios": [r.to_json() for r in results]},
                         indent=2))
    else:
        for r in results:
            print(f"{MARK[r.status]}  {r.name}: {r.expected}")
            for line in r.failures + ([r.reason] if r.reason else []) + [f"unchecked: {u}" for u in r.unchecked]:
                print(f"      {line}")
    return 0 if ok else 1
