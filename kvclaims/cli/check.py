"""`kvclaims check TRACE.jsonl [--json] [--stream]`: replay a trace against the contract.

Exit 0 when the trace is clean, 1 on any violation; a file that cannot be read
is a usage error (2, one line, from `kvclaims.cli`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kvclaims.conformance.checker import OnEnd, check_file, check_lines, render
from kvclaims.trace import file_lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", help="JSONL trace file, or - for standard input")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--stream",
        action="store_true",
        help="print each claim's final state and each request's outcome as it ends and keep "
        "only counts: memory stays flat on any trace, but an id reused after it ended "
        "goes unnoticed",
    )


def run(args: argparse.Namespace) -> int:
    on_end = _printer(args.json) if args.stream else None
    if args.trace == "-":
        report = check_lines(file_lines(sys.stdin.buffer), on_end=on_end)
    else:
        report = check_file(args.trace, on_end=on_end)
    if args.json:
        _print(json.dumps(report.to_json(), indent=None if args.stream else 2))
    else:
        _print(render(report))
    return 0 if report.ok else 1


def _printer(as_json: bool) -> OnEnd:
    def print_outcome(what: str, ident: str, outcome: Any) -> None:
        if as_json:
            _print(json.dumps({what: ident, "outcome": outcome}, sort_keys=True))
        else:
            _print(f"  {what} {ident}: {outcome if what == 'claim' else json.dumps(outcome, sort_keys=True)}")

    return print_outcome


def _print(text: str) -> None:
    """Print what a trace put in ids and messages, even what stdout cannot encode (lone surrogates)."""
    encoding = sys.stdout.encoding or "utf-8"
    print(text.encode(encoding, "backslashreplace").decode(encoding))
