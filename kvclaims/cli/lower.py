"""`kvclaims lower [DESCRIPTOR ...] [--json] [--bad-suite]`: the fail-closed lowering relation
(`kvclaims.lowering`) on descriptors, the shipped ones by default.

Each row: runtime, pinned version, mode, class, and for anything short of conformance the
obligations missing or contradicted, and why evidence did not count. Exit 0 once every
descriptor is classified (a class is a finding, not a failure); with ``--bad-suite``, 1
when a bad lowering is not rejected as its case expects.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kvclaims.columns import columns
from kvclaims.errors import BadArgument
from kvclaims.lowering import Verdict, classify_file, shipped
from kvclaims.lowering.suite import run as run_bad_suite
from kvclaims.spec import load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("descriptor", nargs="*", type=Path, help="descriptor TOML files (default: the shipped ones)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument(
        "--bad-suite", action="store_true", help="run the bad-lowering suite: each case must be rejected as expected"
    )


def run(args: argparse.Namespace) -> int:
    spec = load()
    if args.bad_suite:
        if args.descriptor:
            raise BadArgument("--bad-suite", "runs the shipped bad lowerings: give no descriptors with it")
        return _bad_suite(spec, args.json)
    rows = [v for path in (args.descriptor or shipped()) for v in classify_file(path, spec)]
    if args.json:
        print(json.dumps([v.to_json() for v in rows], indent=2))
        return 0
    header = ("runtime", ["version", "mode", "class", "why not stronger"])
    body = [(_name(v), [v.version, v.mode, v.klass, _why(v)]) for v in rows]
    print(columns(f"{len(rows)} rows, fail-closed (spec [lowering]):", [header, *body]))
    return 0


def _name(v: Verdict) -> str:
    return f"{v.runtime} ({v.setup})" if v.setup else v.runtime


def _why(v: Verdict, shown: int = 4) -> str:
    """The first reason a row is not stronger: what rejects it, else what it lacks."""
    if v.klass == "rejected":
        return v.reasons[0]
    if not v.missing:
        return "—"
    discounted = [r for r in v.reasons if "does not count" in r]
    if v.klass == "unknown" and discounted:
        return discounted[0] + (f" (+{len(discounted) - 1} more)" if len(discounted) > 1 else "")
    more = f" (+{len(v.missing) - shown} more)" if len(v.missing) > shown else ""
    return "missing " + ", ".join(v.missing[:shown]) + more


def _bad_suite(spec, as_json: bool) -> int:
    results = run_bad_suite(spec)
    if as_json:
        print(json.dumps([{**r.__dict__, "passed": r.passed} for r in results], indent=2))
    else:
        for r in results:
            print(f"{'PASS' if r.passed else 'FAIL'}  {r.name}: {r.got} ({r.reasons[0] if r.reasons else 'no reason'})")
            if not r.passed:
                print(f"      expected {r.expected}, a reason containing {r.reason!r}")
    return 0 if all(r.passed for r in results) else 1
