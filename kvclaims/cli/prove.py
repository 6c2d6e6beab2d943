"""`kvclaims prove`: every proof, as a table or as JSON; exit 1 if anything is not proved."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kvclaims.proofs.run import prove_all, report
from kvclaims.spec import load, load_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the JSON report (schema kvclaims.prove/1)")
    parser.add_argument("--spec", type=Path, help="prove another contract file (default: the packaged one)")


def run(args: argparse.Namespace) -> int:
    spec = load_file(args.spec) if args.spec else load()
    results = prove_all(spec)
    doc = report(spec, results)
    if args.json:
        json.dump(doc, sys.stdout, indent=2, ensure_ascii=False)
        print()
    else:
        rows = [
            (r.obligation, r.name, r.method, "proved" if r.proved else "FAILED", f"{r.seconds:.3f}") for r in results
        ]
        head = ("obligation", "check", "method", "result", "seconds")
        widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(5)]
        for row in [head, *rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        for r in results:
            if not r.proved:
                print(f"\n{r.obligation} {r.name}: NOT PROVED\n{r.detail}")
        tested = [o["id"] for o in doc["obligations"] if o["verdict"] == "tests"]
        if tested:
            print(f"\nverified by the test suite, not by a proof: {', '.join(tested)}")
        print(f"\n{sum(r.proved for r in results)}/{len(results)} proved in {doc['total_seconds']:.2f} s")
    return 0 if doc["proved"] else 1
