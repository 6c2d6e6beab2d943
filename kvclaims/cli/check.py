"""`kvclaims check TRACE.jsonl [TRACE.jsonl ...] [--json] [--stream] [--format ours|kv-residency]
[--bundle MODE]`: replay traces against the contract.

Each file is one engine's stream and is checked on its own: claims, blocks and the
logical clock are per engine (vLLM's data-parallel ranks each write one,
`spec/TRACE.md`). Several files get one verdict, each file's report under its name.
Exit 0 when every trace is clean, 1 on any violation; a file that cannot be read is a
usage error (2, one line, from `kvclaims.cli`). `--format kv-residency` reads the follow-up
paper's telemetry instead (`kvclaims.conformance.kvresidency`, docs/kv-residency.md): each
trace is translated into ours and replayed by the same checker; the report adds what their
schema leaves unknown, what the import derived, and the identity facts. `--bundle MODE` also
judges each trace as evidence for a protection mode's bundle (`kvclaims.conformance.bundle`):
exit 0 only when every obligation one trace can show is shown and none is violated.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from contextlib import nullcontext

from kvclaims.conformance import bundle, kvresidency
from kvclaims.conformance.checker import OnEnd, Report, check_file, check_lines, check_stream, render
from kvclaims.errors import BadArgument, KVClaimsError
from kvclaims.spec import load
from kvclaims.trace import file_lines, read_lines

FORMATS = ("ours", "kv-residency")


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
    parser.add_argument(
        "--bundle",
        metavar="MODE",
        choices=sorted(getattr(load().lowering, "modes", {})),
        help="also judge each trace as evidence for this protection mode's bundle (spec [lowering]): "
        "exit 0 only when it shows every obligation one trace can show",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="ours",
        help="the traces' format: ours (spec/TRACE.md, the default) or kv-residency (the follow-up "
        "paper's telemetry, translated into ours; docs/kv-residency.md)",
    )


def run(args: argparse.Namespace) -> int:
    if len(args.trace) > 1 and "-" in args.trace:
        raise KVClaimsError("check: standard input (-) is one trace on its own, not one of several")
    if args.bundle and args.stream:
        raise BadArgument("--bundle", "reads each trace whole: it cannot be combined with --stream")
    on_end = _printer(args.json) if args.stream else None
    check = _kv_residency if args.format == "kv-residency" else _ours
    checked = [(path, *check(path, on_end, bool(args.bundle))) for path in args.trace]
    reports = [(path, r, extra, _judged(args.bundle, r, records, extra)) for path, r, extra, records in checked]
    ok = all(r.ok and (b is None or b.ok) for _, r, _, b in reports)
    if args.json:
        docs = {path: _doc(r, extra, b) for path, r, extra, b in reports}
        doc = docs[reports[0][0]] if len(reports) == 1 else {"ok": ok, "files": docs}
        _print(json.dumps(doc, indent=None if args.stream else 2))
    else:
        for path, report, extra, judged in reports:
            text = render(report) + ("\n" + kvresidency.render(extra) if extra else "")
            text += "\n" + bundle.render(judged) if judged else ""
            _print(text if len(reports) == 1 else f"{path}: {text}")
    return 0 if ok else 1


def _judged(mode: str | None, report: Report, records: list, imported: kvresidency.Imported | None):
    return bundle.judge(mode, report, records, load(), imported) if mode else None


def _doc(report: Report, imported: kvresidency.Imported | None, judged: bundle.BundleVerdict | None) -> dict[str, Any]:
    """One file's report; its `ok` is the file's verdict, the bundle's included."""
    doc = report.to_json() | ({"kv_residency": imported.to_json()} if imported else {})
    return doc | ({"bundle": judged.to_json(), "ok": report.ok and judged.ok} if judged else {})


def _ours(path: str, on_end: OnEnd | None, whole: bool) -> tuple[Report, kvresidency.Imported | None, list]:
    """Our trace, checked; `whole`: its records kept too (a bundle judges them)."""
    if not whole:
        report = check_stream(sys.stdin.buffer, on_end=on_end) if path == "-" else check_file(path, on_end=on_end)
        return report, None, []
    with open(path, "rb") if path != "-" else nullcontext(sys.stdin.buffer) as fh:
        lines = list(file_lines(fh))
    return check_lines(lines), None, [rec for _, rec in read_lines(lines)]


def _kv_residency(path: str, on_end: OnEnd | None, whole: bool) -> tuple[Report, kvresidency.Imported | None, list]:
    """Their trace, translated, replayed by our checker; the import's own report beside it."""
    imported = kvresidency.import_stream(sys.stdin.buffer) if path == "-" else kvresidency.import_file(path)
    return kvresidency.check(imported, on_end=on_end), imported, [rec for _, rec in imported.records]


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
