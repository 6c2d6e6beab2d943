"""The event trace: one ordered stream of JSON objects, one per line (spec/TRACE.md).

`TraceWriter` stamps schema version, sequence number and logical time; it keeps
the records in memory and optionally streams them to a file. `read_lines`
yields `(line_number, record_or_error)` lazily so a checker runs in constant
memory over traces of any length.
"""
from __future__ import annotations

import json
from typing import IO, Any, Iterable, Iterator

SCHEMA_VERSION = 1


class TraceWriter:
    def __init__(self, sink: IO[str] | None = None) -> None:
        self.records: list[dict[str, Any]] = []
        self.sink = sink
        self.time = 0

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        rec = {"schema_version": SCHEMA_VERSION, "seq": len(self.records),
               "time": self.time, "kind": kind, **fields}
        self.records.append(rec)
        if self.sink is not None:
            self.sink.write(json.dumps(rec) + "\n")
        return rec

    def lines(self) -> list[str]:
        return [json.dumps(r) for r in self.records]

    def write(self, path) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.writelines(line + "\n" for line in self.lines())


def read_lines(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """Parse JSONL lazily: a dict per good line, an error message per bad one; blank lines skipped."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError) as exc:
            yield number, f"not JSON: {exc}"
            continue
        yield number, rec if isinstance(rec, dict) else f"not a JSON object: {type(rec).__name__}"
