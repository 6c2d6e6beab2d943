"""`kvclaims check TRACE.jsonl [TRACE.jsonl ...] [--json] [--stream]`: replay traces against
the contract.

Each file is one engine's stream and is checked on its own: claims, blocks and the
logical clock are per engine (vLLM's data-parallel ranks each write one,
`spec/TRACE.md`). Several files get one verdict, each file's report under its name.
Exit 0 when every trace is clean, 1 on any violation; a file that cannot be read is a
usage error (2, one line, from `kvclaims.cli`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kvclaims.conformance.checker import OnEnd, check_file, check_lines, render
from kvclaims.errors import KVClaimsError
from kvclaims.trace import file_lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "trace",
        nargs="+",
        help="JSONL trace file (several: one per engine, each checked on its own), or - for standard input",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--stream",
        action="store_true",
        help="print each claim's final state and each request's outcome as it ends and keep "
        "only counts: memory stays flat on any trace, but an id reused after it ended "
        "goes unnoticed",
    )


def run(args: argparse.Namespace) -> int:
    if len(args.trace) > 1 and "-" in args.trace:
        raise KVClaimsError("check: standard input (-) is one trace on its own, not one of several")
    on_end = _printer(args.json) if args.stream else None
    reports = [
        (
            path,
            check_lines(file_lines(sys.stdin.buffer), on_end=on_end)
            if path == "-"
            else check_file(path, on_end=on_end),
        )
        for path in args.trace
    ]
    ok = all(r.ok for _, r in reports)
    if args.json:
        docs = {path: r.to_json() for path, r in reports}
        doc = reports[0][1].to_json() if len(reports) == 1 else {"ok": ok, "files": docs}
        _print(json.dumps(doc, indent=None if args.stream else 2))
    elif len(reports) == 1:
        _print(render(reports[0][1]))
    else:
        for path, report in reports:
            _print(f"{path}: " + render(report))
    return 0 if ok else 1


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
