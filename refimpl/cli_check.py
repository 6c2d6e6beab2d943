"""`kvclaims check TRACE.jsonl [--json]`: replay a trace against the contract."""
from __future__ import annotations

import json
import sys

from kvclaims.refimpl.checker import check_file, check_lines, render


def add_arguments(parser) -> None:
    parser.add_argument("trace", help="JSONL trace file, or - for standard input")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args) -> int:
    report = check_lines(sys.stdin) if args.trace == "-" else check_file(args.trace)
    print(json.dumps(report.to_json(), indent=2) if args.json else render(report))
    return 0 if report.ok else 1
