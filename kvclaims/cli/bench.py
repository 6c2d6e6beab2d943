"""`kvclaims bench [--only FIGURE] [--smoke] [--json]`: the benchmark suite's figures, as a
table or as JSON (the suite itself: `kvclaims.bench.suite`). Exit status 0 whether or not
targets are met."""

from __future__ import annotations

import argparse
import json
import sys

from kvclaims.bench.suite import FIGURES, markdown, run_figures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", action="append", choices=list(FIGURES), help="run only this figure group")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmarks run")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    result = run_figures(args.only or list(FIGURES), args.smoke, log=lambda m: print(f"bench: {m}", file=sys.stderr))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("machine: " + ", ".join(f"{k}={v}" for k, v in result["machine"].items()))
        print(markdown(result))
        for f in result["figures"]:
            if f.get("extra"):
                print(f"  {f['name']}: {json.dumps(f['extra'])}")
    return 0
