"""The event trace: one ordered stream of JSON objects, one per line (spec/TRACE.md).

`TraceWriter` stamps schema version, sequence number and logical time; it keeps
the records in memory unless told not to, and streams each one to a sink,
flushed, so a process killed mid-trace loses at most the record being written.
`file_lines` and `read_lines` yield `(line_number, record_or_BadLine)` lazily so
a checker runs in constant memory over traces of any length and any garbage;
`file_blocks` gives the same lines a block at a time, and `parse_line` reads one
line as `read_lines` does, for a checker that decodes most lines its own way.
"""

from __future__ import annotations

import json
import json.scanner
import os
import stat
import sys
from io import BytesIO
from typing import IO, Any, Callable, Iterable, Iterator, cast

from kvclaims.errors import BadArgument

if sys.platform != "win32":
    import fcntl
else:  # not POSIX: O_EXCL alone guards new files
    fcntl = None

SCHEMA_VERSION = 1
MAX_LINE = 8 << 20  # bytes; a longer line is reported, never read into memory whole

# typeshed types make_scanner's argument as its own class; at run time it takes the decoder
_scan: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
_EOL = ("\n", "\r\n")


class TraceWriter:
    """`keep=False` keeps no records (only the sink has them): constant memory on long runs.
    With neither records kept nor a sink the trace is off (`recording` false): `emit`
    only counts, and a runtime may skip building what only a record would hold."""

    def __init__(self, sink: IO[str] | None = None, *, keep: bool = True) -> None:
        self.records: list[dict[str, Any]] = []
        self.sink, self.keep = sink, keep
        self.seq = 0
        self.time = 0

    @property
    def recording(self) -> bool:
        return self.keep or self.sink is not None

    def emit(self, kind: str, **fields: Any) -> None:
        if not self.recording:
            self.seq += 1
            return
        rec = {"schema_version": SCHEMA_VERSION, "seq": self.seq, "time": self.time, "kind": kind, **fields}
        self.seq += 1
        if self.keep:
            self.records.append(rec)
        if self.sink is not None:
            self.sink.write(json.dumps(rec) + "\n")
            self.sink.flush()

    def lines(self) -> list[str]:
        return [json.dumps(r) for r in self.records]

    def write(self, path) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.writelines(line + "\n" for line in self.lines())


def open_trace_file(path: str | os.PathLike[str], *, field: str = "trace") -> IO[str]:
    """A new trace file at `path`, for writing: a trace is evidence, so an existing one is
    never truncated or appended to. An existing non-empty file is a `BadArgument` in
    `field`. An existing empty file (made beforehand, or by a start that died before its
    first record) is reused. The file is created with ``O_EXCL`` and held with an
    exclusive ``flock`` for as long as it is open, so of two processes racing for one
    path exactly one wins: the other gets the error. A path that is not a regular file
    (``/dev/stderr``, a FIFO) holds nothing to clobber and is opened as it is."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BadArgument(
                    field, f"{os.fsdecode(path)} is held by another trace writer; give each writer its own trace file"
                ) from None
            size = os.fstat(fd).st_size  # under the lock: no writer can start now
            if size:
                raise BadArgument(
                    field,
                    f"{os.fsdecode(path)} already holds a trace ({size} bytes); "
                    f"a trace is never overwritten: move it away or name a new file",
                )
        return os.fdopen(fd, "w", encoding="utf-8", buffering=1)
    except BaseException:
        os.close(fd)
        raise


class BadLine(str):
    """Why a line is not a record: the message, and the finding's `kind`.

    A str, so callers that only test `isinstance(x, str)` or print it keep working.
    """

    kind: str

    def __new__(cls, kind: str, message: str) -> "BadLine":
        self = super().__new__(cls, message)
        self.kind = kind
        return self


def file_lines(fh: IO[bytes], limit: int = MAX_LINE) -> Iterator[bytes | BadLine]:
    """The lines of a binary stream. A line over `limit` bytes comes as a `line_too_long`
    BadLine; the rest of it is skipped in small pieces, so it never sits in memory whole."""
    read = fh.readline
    while line := read(limit + 1):
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
        else:
            yield _too_long(limit, len(line) + _skip_rest(read))


def file_blocks(
    fh: IO[bytes], limit: int = MAX_LINE, size: int = 1 << 16
) -> Iterator[tuple[list[bytes | BadLine], bool]]:
    """The lines `file_lines` gives, about `size` bytes of them at a time, and whether
    those bytes are all ASCII (what a decoder that skips fields unread may take unchecked).

    One read, one split and one ASCII test per block cost a line less than a `readline`
    each, which is much of what a fast check spends a line. From a pipe, `read1` returns
    what it holds, so lines come as they are written. The line a read cuts is completed
    by `readline`, bounded as in `file_lines`: no line over `limit` sits in memory whole.
    """
    read = fh.read if fh.seekable() else getattr(fh, "read1", fh.read)
    readline = fh.readline
    while block := read(size):
        ascii = block.isascii()
        lines = cast("list[bytes | BadLine]", BytesIO(block).readlines())  # at b"\n" only, unlike bytes.splitlines
        if not block.endswith(b"\n"):  # the read cut its last line: the rest of it
            rest = readline(limit + 1)
            ascii = ascii and rest.isascii()
            cut = cast(bytes, lines[-1])
            ended, length = rest.endswith(b"\n"), len(cut) + len(rest)
            if length - ended > limit:
                lines[-1] = _too_long(limit, length + (0 if ended else _skip_rest(readline)))
            else:
                lines[-1] = cut + rest
        if len(block) > limit:  # a limit under the block size: lines within it may be over too
            lines = [
                _too_long(limit, len(x)) if type(x) is bytes and len(x) - x.endswith(b"\n") > limit else x
                for x in lines
            ]
        yield lines, ascii


def _too_long(limit: int, length: int) -> BadLine:
    return BadLine("line_too_long", f"line longer than {limit} bytes ({length} bytes); not parsed")


def _skip_rest(read: Callable[[int], bytes], piece: int = 1 << 16) -> int:
    skipped = 0
    while chunk := read(piece):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped


def read_lines(lines: Iterable[str | bytes]) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    """Parse JSONL lazily: a dict per good line, a BadLine per bad one; blank lines skipped.

    The last line of a newline-ended stream, with no newline and not JSON, is a
    `truncated_tail` (the writer died mid-record), not a `malformed_line`: no
    prefix of a JSON object is one, so a cut record never passes for a whole one.
    """
    held: tuple[int, Cut] | None = None  # a line cut short: the tail, if nothing follows it
    before: str | bytes | None = None
    for number, line in enumerate(lines, start=1):
        if held:
            yield held[0], held[1].finding(last=False)
            held = None
        rec = parse_line(line, before)
        if isinstance(rec, Cut):
            held = number, rec
        elif rec is not None:
            yield number, rec
        before = line
    if held:
        yield held[0], held[1].finding(last=True)


class Cut(str):
    """Why a line cut short (no newline, in a stream whose lines have one) is not JSON: a
    `truncated_tail` if it is the last line, else a `malformed_line` (`finding`)."""

    def finding(self, last: bool) -> BadLine:
        if not last:
            return BadLine("malformed_line", self)
        return BadLine(
            "truncated_tail",
            f"the trace ends mid-record: its last line has no newline and is {self}; the lines before it were checked",
        )


def parse_line(line: str | bytes, before: str | bytes | None) -> dict[str, Any] | BadLine | Cut | None:
    """One line of `read_lines` (`before`: the line before it, or None): its record, why it
    is not one (a `Cut` when it may be the trace's cut tail), or None for a blank line."""
    if type(line) is BadLine:
        return line
    try:
        rec = loads(line)
    except (ValueError, RecursionError) as exc:
        if not line.strip():
            return None
        return Cut(_why(exc)) if _cut_short(line, before) else BadLine("malformed_line", _why(exc))
    return rec if type(rec) is dict else BadLine("malformed_line", f"not a JSON object: {type(rec).__name__}")


def _cut_short(line: str | bytes, before: str | bytes | None) -> bool:
    """No newline, in a stream whose lines have one (lists of bare lines have none)."""
    if isinstance(line, bytes):
        return not line.endswith(b"\n") and (not isinstance(before, bytes) or before.endswith(b"\n"))
    return not line.endswith("\n") and (not isinstance(before, str) or before.endswith("\n"))


def _why(exc: ValueError | RecursionError) -> str:
    """What is wrong with an unparsable line, and at which column (1-based, in bytes for UTF-8)."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8: {exc.reason} 0x{exc.object[exc.start]:02x} at column {exc.start + 1}"
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON: {exc.msg.removesuffix(' at')} at column {exc.colno}"
    return f"not JSON: {exc}"


def loads(line: str | bytes) -> Any:
    """`json.loads` of one UTF-8 line. A plain `{...}` line goes straight to the C
    scanner, skipping `json.loads`'s wrappers (twice as fast); anything else gets
    `json.loads` itself, so what is accepted and every error message are its own."""
    text = line.decode() if isinstance(line, bytes) else line
    try:
        obj, end = _scan(text, 0)
        if end == len(text) or text[end:] in _EOL:
            return obj
    except StopIteration:
        pass
    return json.loads(text)
