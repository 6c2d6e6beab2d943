"""An owner's stream of its claims' lifecycle events, read from the trace files.

The front end serves ``GET /v1/kvclaims/events`` as server-sent events, so a claim's
owner learns of a ``demote``, ``expire``, ``harm`` or ``fail`` when it happens instead
of polling ``/v1/kvclaims/claims``. The events come from the trace (spec/TRACE.md):
the scheduler that fires them runs in vLLM's engine-core process (one per
data-parallel rank) and the front end in the API server process, and the trace is
already the one record of every claim event across those processes, written and
flushed line by line as it happens. Tailing it needs no new channel between them, and
what a stream says is exactly what the trace says.

The cost: a record names its claim, not its tenant; only the claim's ``claim_submit``
does. So every new stream reads each rank's file from its start to learn which claims
are the tenant's, even when it only sends what is written from now on; that is a read
of the whole trace per connection (lines that cannot be a claim record are skipped
before they are parsed). Afterwards each poll reads only the bytes appended since the
last one. What a stream keeps is the ids of its tenant's live claims (a claim is
forgotten when it reaches a terminal state) and at most one unfinished line per file,
so its memory follows the number of claims, not the trace's length.

Ownership is the security boundary: an event goes only to the tenant its claim's
latest ``claim_submit`` names (no ``tenant``, or null: ``anonymous``), on the same
rank. A record that does not read as a claim record (not JSON, a wrong
``schema_version``, a missing field, an event the spec does not define) is skipped;
judging traces is the checker's job. A ``claim_submit`` that names another tenant, or
that cannot be read as the tenant's, takes the claim away from the stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import AsyncGenerator, Iterable, Sequence
from pathlib import Path
from typing import IO

from kvclaims.claimbook import ANONYMOUS
from kvclaims.model.names import EVENT
from kvclaims.spec import load
from kvclaims.trace import MAX_LINE, SCHEMA_VERSION, loads

SUBMIT = "submit"  # the SSE event name of a claim_submit record
KEEPALIVE = b": keepalive\n\n"
CHUNK = 1 << 18  # bytes read from one file per poll: a long trace is caught up on in slices (~3 ms each)

_SUBMIT_KIND, _CLAIM_KIND = "claim_submit", "claim"
_LIFECYCLE = load().lifecycle
_TERMINAL = frozenset(_LIFECYCLE.terminal)
# events that always end a claim, for a record with no `state`
_ENDING = frozenset(e for e in _LIFECYCLE.events if _LIFECYCLE.dests(e) and _LIFECYCLE.dests(e) <= _TERMINAL)

_Identity = tuple[int, int]  # (st_dev, st_ino): which file a path names


def trace_paths(template: str | os.PathLike[str], dp_size: int) -> list[Path]:
    """The trace files of `dp_size` data-parallel engines configured with `template`
    (``{dp_rank}`` replaced by each rank, as the scheduler does); rank r's at index r."""
    text = os.fspath(template)
    if "{dp_rank}" not in text:  # one engine (the scheduler refuses more without it)
        return [Path(text)]
    return [Path(text.replace("{dp_rank}", str(r))) for r in range(dp_size)]


class _Tail:
    """One rank's trace file as one stream reads it: from a remembered offset, whole
    lines only (an unfinished last line is kept until its newline comes)."""

    def __init__(self, rank: int, path: Path, since: tuple[_Identity, int] | None) -> None:
        self.rank, self.path = rank, path
        self.since = since  # the file and its size when the stream began; None: every record is new
        self.fh: IO[bytes] | None = None
        self.identity: _Identity | None = None
        self.new_from = 0  # a line ending at or before this offset was written before the stream began
        self.offset = 0  # bytes consumed
        self.partial = bytearray()  # the unfinished last line
        self.skipping = False  # inside a line longer than MAX_LINE: dropped up to its newline
        self.owned: set[str] = set()  # the tenant's live claims on this rank

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None

    def _open(self) -> bool:
        try:
            fh = open(self.path, "rb", buffering=0)  # held open across polls; close() closes it
        except OSError:  # not there yet (or not readable yet): waited for
            return False
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            fh.close()  # a FIFO or a device holds no trace to tail
            return False
        self.fh, self.identity = fh, (st.st_dev, st.st_ino)
        self.new_from = self.since[1] if self.since is not None and self.since[0] == self.identity else 0
        return True

    def _restart(self) -> None:
        """A new trace at the path (the old one truncated, or moved away and a new one
        made): read it from its start; its claims are not the old one's."""
        self.close()
        self.since, self.offset, self.new_from, self.skipping = None, 0, 0, False
        self.partial.clear()
        self.owned.clear()

    def read(self) -> tuple[list[tuple[bool, bytes]], bool]:
        """The whole lines in up to CHUNK new bytes, each with whether it was written
        before the stream began, and whether more bytes are waiting."""
        if self.fh is None and not self._open():
            return [], False
        assert self.fh is not None
        size = os.fstat(self.fh.fileno()).st_size
        if size < self.offset:
            self._restart()
            return self.read()
        if size == self.offset:
            try:
                st = os.stat(self.path)
            except OSError:  # moved away, no new file yet
                return [], False
            if (st.st_dev, st.st_ino) != self.identity and st.st_size > 0:
                self._restart()
                return self.read()
            return [], False
        self.fh.seek(self.offset)
        data = self.fh.read(min(CHUNK, size - self.offset))
        start, self.offset = self.offset, self.offset + len(data)
        lines: list[tuple[bool, bytes]] = []
        pos = 0
        while (nl := data.find(b"\n", pos)) >= 0:
            piece = data[pos : nl + 1]
            pos = nl + 1
            if self.skipping:
                self.skipping = False
                continue
            line = bytes(self.partial + piece) if self.partial else piece
            self.partial.clear()
            if len(line) <= MAX_LINE:
                lines.append((start + pos <= self.new_from, line))
        if not self.skipping:
            if len(self.partial) + len(data) - pos > MAX_LINE:
                self.partial.clear()
                self.skipping = True
            else:
                self.partial += data[pos:]
        return lines, self.offset < size

    def message(self, line: bytes, past: bool, tenant: str, claims: frozenset[str] | None) -> bytes | None:
        """The SSE message for `line` if it is an event of one of the tenant's claims
        written after the stream began; learns (and forgets) the tenant's claims."""
        if b"claim" not in line and b"\\u" not in line:
            return None  # no claim record spells its kind without these bytes
        try:
            rec = loads(line)
        except (ValueError, RecursionError):
            return None
        if type(rec) is not dict:
            return None
        kind, cid = rec.get("kind"), rec.get("claim")
        if kind not in (_SUBMIT_KIND, _CLAIM_KIND) or type(cid) is not str:
            return None
        well_formed = rec.get("schema_version") == SCHEMA_VERSION and type(rec.get("seq")) is int and cid != ""
        if kind == _SUBMIT_KIND:
            owner = rec.get("tenant", ANONYMOUS)
            if well_formed and (ANONYMOUS if owner is None else owner) == tenant and (claims is None or cid in claims):
                self.owned.add(cid)
            else:
                self.owned.discard(cid)
                return None
            event = SUBMIT
        else:
            name, state = rec.get("event"), rec.get("state")
            if cid not in self.owned or not well_formed or type(name) is not str or name not in EVENT:
                return None
            if state is not None and type(state) is not str:
                return None
            event = name
            if state in _TERMINAL or (state is None and event in _ENDING):
                self.owned.discard(cid)
        if past:
            return None
        try:
            data = json.dumps({**rec, "dp_rank": self.rank}, separators=(",", ":"), allow_nan=False)
        except ValueError:  # NaN or Infinity: not JSON to a client
            return None
        # json.dumps escapes every control character (and, ASCII-only, U+2028/9): one line
        return f"id: {self.rank}:{rec['seq']}\nevent: {event}\ndata: {data}\n\n".encode()


def _snapshot(path: Path) -> tuple[_Identity, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino), st.st_size


class ClaimEvents:
    """Tails the engines' trace files (rank r's file at paths[r]) and yields the lifecycle
    events of one tenant's claims. One instance serves any number of streams; each
    stream reads the files on its own."""

    def __init__(
        self, paths: Sequence[str | os.PathLike[str]], *, poll_s: float = 0.05, keepalive_s: float = 15.0
    ) -> None:
        if not poll_s > 0 or not keepalive_s > 0:
            raise ValueError(f"poll_s and keepalive_s must be positive (got {poll_s}, {keepalive_s})")
        self.paths = [Path(p) for p in paths]
        self.poll_s, self.keepalive_s = poll_s, keepalive_s

    def stream(
        self, tenant: str, *, replay: bool = False, claims: Iterable[str] | None = None
    ) -> AsyncGenerator[bytes, None]:
        """SSE messages (bytes, UTF-8) for `tenant`'s claims (only those in `claims` if
        given): from now on (records written after this call), or from each file's start
        with replay=True. Ownership comes from each claim's claim_submit `tenant` (absent
        or null: "anonymous"), so every file is read from its start to learn owners even
        when not replaying. A file that does not exist yet is waited for; one replaced by
        a new trace (truncated, or moved away and made anew) is read from its start. A
        partial last line (the writer mid-line) is kept until completed.

        Each message: ``id: <rank>:<seq>``, ``event: <lifecycle event, or "submit" for
        claim_submit>``, ``data: <one-line JSON: the record's fields plus "dp_rank">``, a
        blank line. A comment ``: keepalive`` every keepalive_s with nothing to send.
        Events of one rank come in trace order; ranks are interleaved as they are read.

        Where "now" is is fixed by this call (not by the first iteration). Use it as
        ``async for message in events.stream(tenant)``; closing the generator (``aclose``)
        or cancelling the task iterating it closes the files."""
        if isinstance(claims, str):
            raise TypeError("claims is a collection of claim ids, not one id")
        since = [None if replay else _snapshot(p) for p in self.paths]
        tails = [_Tail(rank, path, s) for rank, (path, s) in enumerate(zip(self.paths, since))]
        return self._run(tenant, tails, None if claims is None else frozenset(claims))

    async def _run(self, tenant: str, tails: list[_Tail], claims: frozenset[str] | None) -> AsyncGenerator[bytes, None]:
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        try:
            while True:
                more = False
                for tail in tails:
                    lines, waiting = tail.read()
                    more |= waiting
                    for past, line in lines:
                        message = tail.message(line, past, tenant, claims)
                        if message is not None:
                            yield message
                            quiet_since = loop.time()
                if loop.time() - quiet_since >= self.keepalive_s:
                    yield KEEPALIVE
                    quiet_since = loop.time()
                await asyncio.sleep(0 if more else self.poll_s)
        finally:
            for tail in tails:
                tail.close()
