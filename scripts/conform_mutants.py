"""`kvclaims conform` at its default settings against every seeded mutant of the reference
runtime (`kvclaims.refimpl.mutants`, the old eight and the subtle ones): each must come out
DOES NOT CONFORM, naming the obligation the mutant breaks (`Mutant.obligation`).

    python scripts/conform_mutants.py [NAME ...] [--json OUT]

Prints one line per mutant (verdict, the obligations it was found to violate, the
violation) and exits 1 if any mutant conforms or is blamed on another obligation. Minutes
per mutant that survives long: not a CI test (`tests/test_mutants.py` hunts the same
mutants at CI budget).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from kvclaims.conformance.conform import conform
from kvclaims.refimpl.mutants import MUTANTS, SUBTLE

ALL = {**MUTANTS, **SUBTLE}


def judge(name: str) -> dict:
    cls = ALL[name]
    t0 = time.perf_counter()
    report = conform(f"{cls.__module__}:{cls.__name__}")
    violated = [o["id"] for o in report["obligations"] if o["verdict"] == "violated"]
    failures = [
        e.get("violation", e["name"]) for o in report["obligations"] for e in o["evidence"] if e["result"] == "failed"
    ]
    return {
        "mutant": name,
        "breaks": cls.obligation,
        "conforms": report["conforms"],
        "violated": violated,
        "named": cls.obligation in violated,
        "first violation": failures[0] if failures else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"mutants (default all): {', '.join(sorted(ALL))}")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(ALL))
    if unknown:
        parser.error(f"no such mutant: {', '.join(unknown)}")
    results = []
    for name in args.names or sorted(ALL):
        r = judge(name)
        results.append(r)
        mark = "ok " if r["named"] and not r["conforms"] else "BAD"
        print(
            f"{mark} {name:<24} breaks {r['breaks']:<11} violated {','.join(r['violated']) or '-':<30} "
            f"{r['seconds']:>6}s  {(r['first violation'] or '')[:110]}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0 if all(r["named"] and not r["conforms"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
