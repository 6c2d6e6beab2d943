"""The trace checker: replays any runtime's JSONL trace against the contract.

It streams the trace line by line, replays every claim event through the
spec's lifecycle table (compiled once into a `(state, event) -> state` dict,
the `transitions` machine's behaviour with guards taken from the trace), and
reports each violation with its line and sequence number instead of stopping:
a malformed line is a finding, never a crash. A block named by `block_evict`
is lost for every claim whose state requires it in that tier (protected states
on the device, offloaded on the host); with no such claim the eviction is
ordinary.

Residency per tier is the trace's own (RKC-TR-9): stores, offloads and restores
add blocks, evictions remove them, and every block a record reuses, copies or
materializes over must be resident then. Operator actions of the spec's
`[invalidation]` start epochs; a request admitted before the latest one stores
nothing (RKC-INV-6).

By default the report keeps every claim's final state and every request's
outcome (RKC-TR-8). Given `on_end`, the checker instead hands each one out as
it ends and keeps only counts, so its memory grows with live claims,
requests and resident blocks, not with the trace (RKC-TR-7); it then forgets
ended ids, so an event for one reads as `unknown_*` and a reused id goes
unnoticed.

A line is decoded by msgspec straight into its kind's Struct (`records`), which
checks the record's shape in the same C pass, and replayed from its attributes; a
line the decoder does not take goes the exact way, `json` and `_shape`, so each
finding, message and line number is that way's (tests/test_checker_typed.py holds
the two together). A file is read a block of lines at a time (`trace.file_blocks`).
"""

from __future__ import annotations

import json
import reprlib
from collections import deque
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import IO, Any, Callable, Iterable

import msgspec
from msgspec import UNSET

from kvclaims.conformance.records import DECODER, FIELDS, OPTIONAL, STRING_LISTS, TYPES, Record, as_text
from kvclaims.errors import IllegalTransition
from kvclaims.model.terms import TIERS
from kvclaims.trace import MAX_LINE, SCHEMA_VERSION, BadLine, Cut, file_blocks, parse_line
from kvclaims.spec import Spec, load
from kvclaims.model.names import EVENT

# The runtime record's fields that name its cache identity (RKC-ID-3): `Report.identity`.
IDENTITY = ("model", "B", "hash", "namespace")
# Finding kind -> the obligation it breaks (spec/TRACE.md), so a violation is attributed
# to exactly the id it breaks (`kvclaims conform`, the stateful machine).
OBLIGATION_OF: dict[str, str] = {
    "malformed_line": "RKC-TR-3",
    "empty_trace": "RKC-TR-7",
    "truncated_tail": "RKC-TR-7",
    "line_too_long": "RKC-TR-7",
    "sequence_gap": "RKC-TR-2",
    "sequence_order": "RKC-TR-2",
    "time_order": "RKC-TR-2",
    "unknown_claim": "RKC-ID-1",
    "chain_changed": "RKC-ID-2",
    "restore_of_resident": "RKC-ID-4",
    "duplicate_claim": "RKC-TR-5",
    "illegal_transition": "RKC-TR-5",
    "event_after_terminal": "RKC-TR-5",
    "state_mismatch": "RKC-TR-5",
    "claimed_block_lost": "RKC-TR-6",
    "refusal_without_attribution": "RKC-TR-4",
    "unknown_request": "RKC-TR-8",
    "duplicate_request": "RKC-TR-8",
    "illegal_request_event": "RKC-TR-8",
    "phantom_block": "RKC-TR-9",
    "stale_store": "RKC-INV-6",
}
_is_str = str.__instancecheck__
_SOURCE = {"host": "device", "device": "host"}  # a copy into a tier reads the other: offload, restore
_UNKNOWN = (None, (), None, None)  # an unknown kind's (fields, optional, record type, replay)
RECENT_EVICTIONS = 256  # per tier: evicted hashes remembered (at least the latest record) to say why one is missing

OnEnd = Callable[[str, str, Any], None]  # ("claim", id, final state) or ("request", id, outcome dict)


@dataclass
class Violation:
    line: int
    seq: int | None
    kind: str
    message: str


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    claims: dict[str, str] = field(default_factory=dict)  # final lifecycle state (not when streamed)
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)  # outcome (not when streamed)
    tally: dict[str, int] = field(default_factory=dict)  # "claim released", "request finished": count
    records: int = 0
    ordinary_evictions: int = 0
    identity: dict[str, Any] | None = None  # the cache identity its first runtime record names (RKC-ID-3)

    @property
    def ok(self) -> bool:
        return not self.violations

    def count(self, what: str) -> int:
        """How many claims or requests the trace holds."""
        return sum(n for k, n in self.tally.items() if k.startswith(what + " "))

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


class Checker:
    def __init__(self, spec: Spec | None = None, on_end: OnEnd | None = None) -> None:
        self.spec = spec or load()
        lc = self.spec.lifecycle
        self.on_end = on_end
        self.after = {(t.source, t.event): t.dest for t in lc.transitions}
        self.allowed = {s: [t.event for t in lc.transitions if t.source == s] for s in lc.states}
        self.terminal = frozenset(lc.terminal)
        self.live: dict[str, str] = {}  # claim -> replayed state
        self.chains: dict[str, list[str]] = {}  # of live claims only
        self.tier_of = needed_tiers(self.spec)
        # `after` as the replay reads it, state -> event -> (state after, whether the tier it
        # needs changes, whether it ends, whether it refuses)
        self.steps: dict[str, dict[str, tuple[str, bool, bool, bool]]] = {s: {} for s in lc.states}
        for (source, event), dest in self.after.items():
            moves = self.tier_of.get(source) != self.tier_of.get(dest)
            self.steps[source][event] = (dest, moves, dest in self.terminal, event == EVENT.refuse)
        self.needed: dict[str, dict[str, set[str]]] = {t: {} for t in TIERS}
        self.refusals = set(self.spec.outcome_names) - {"admit", "wait"}
        self.resident: dict[str, set[str]] = {t: set() for t in TIERS}
        self.on_device = self.resident["device"]
        # recent block_evict records per tier: (line, reason, blocks)
        self.evicted: dict[str, deque[tuple[int, str, list[str]]]] = {t: deque() for t in TIERS}
        self.evicted_held = dict.fromkeys(TIERS, 0)  # how many hashes those hold
        self.invalidations = frozenset(self.spec.invalidations)
        self.epoch, self.invalidated = 0, ""  # invalidations so far; the latest, described
        self.admitted: dict[str, int] = {}  # request -> epoch of its admission
        self.report = Report()
        self.requests = self.report.requests if on_end is None else {}  # live ones only when streamed
        self.last_seq: int | None = None
        self.last_time = 0
        self._line = 0  # of the record being checked, and its seq, for findings
        self._seq: int | None = None
        self._number = 0  # lines read by feed_lines, feed_blocks
        self._before: str | bytes | None = None  # the last of them
        self._held: tuple[int, Cut] | None = None  # one of them cut short, if no line follows it
        self._born = lc.initial
        self._ends = self.spec.request_ends
        self._initial = self.spec.request_initial
        # kind -> what replays its record; a request move or copy is told its kind (and a move its table row)
        replay: dict[str, Callable[[Any], None]] = {
            "claim_submit": self._on_claim_submit,
            "claim": self._on_claim,
            "request_submit": self._on_request_submit,
            **{
                kind: partial(self._on_request, kind, sources, dest, dest in self._ends)
                for kind, (sources, dest) in self.spec.request_moves.items()
            },
            "block_store": self._on_store,
            "block_evict": self._on_evict,
            "block_offload": partial(self._on_copy, "block_offload"),
            "block_restore": partial(self._on_copy, "block_restore"),
            "operator": self._on_operator,
            "runtime": self._on_runtime,
        }
        if "request_admit" in replay:
            replay["request_admit"] = partial(self._on_admit, replay["request_admit"])
        # record type -> what replays it (the spec names no replay for a kind: nothing)
        self.replay: dict[type[Record], Callable[[Any], None]] = {
            TYPES[kind]: replay.get(kind, _nothing) for kind in FIELDS
        }
        # kind -> (required fields, optional fields read, its record's type, what replays it)
        self.kinds = {
            kind: (tuple(fields.items()), tuple(OPTIONAL.get(kind, {}).items()), typ, self.replay[typ])
            for kind, fields in FIELDS.items()
            for typ in (TYPES[kind],)
        }

    # ------------------------------------------------------------------ driving
    def feed(self, line: int, rec: dict[str, Any] | str) -> None:
        """Check one record (or a line's parse error, a str) read at `line`.

        msgspec converts a dict to its kind's Struct, checking in C what `_shape` checks.
        It is looser only where no JSON value goes (an int subclass for an int; a tuple,
        set or list subclass for a list): such a dict, and any it refuses, `_shape`
        judges, and a finding is `_shape`'s."""
        self._line = line
        if not isinstance(rec, dict):
            self._seq = None
            return self._flag(getattr(rec, "kind", "malformed_line"), str(rec))
        seq: Any = rec.get("seq")
        time: Any = rec.get("time")
        kind = rec.get("kind")
        self._seq = seq if type(seq) is int else None
        fields, optional, typ, replay = self.kinds.get(kind, _UNKNOWN) if type(kind) is str else _UNKNOWN
        record: Any = None
        if typ is not None and type(seq) is int and type(time) is int and type(rec.get("schema_version")) is int:
            for name in STRING_LISTS:
                value = rec.get(name)
                if value is not None and type(value) is not list:
                    break
            else:
                try:
                    record = msgspec.convert(rec, typ)
                except Exception:  # ValidationError; a lone surrogate it cannot compare: `_shape` judges
                    pass
        if record is None:
            problem = self._shape(rec, fields, optional, seq, time)
            if problem:
                return self._flag("malformed_line", problem)
            assert typ is not None, "_shape passed a known kind"
            # what msgspec refuses and `_shape` passes (a bool `B`, a `state` not a string), as it is
            record = typ(**{name: rec[name] for name in typ.__struct_fields__ if name in rec})
        self.report.records += 1  # `_record`, inlined: the dict path pays no call a record for it
        last = self.last_seq
        if last is None or seq != last + 1 or time < self.last_time:
            self._sequence(seq, time)
        self.last_seq, self.last_time = seq, time
        replay(record)  # type: ignore[misc]  # a known kind's: not None

    def _record(self, rec: Any) -> None:
        """A record of sound shape, at `self._line`: its place in the sequence (RKC-TR-2), then its replay."""
        seq, time = rec.seq, rec.time
        self.report.records += 1
        last = self.last_seq
        if last is None or seq != last + 1 or time < self.last_time:
            self._sequence(seq, time)
        self.last_seq, self.last_time = seq, time
        self.replay[type(rec)](rec)

    def feed_lines(self, lines: Iterable[str | bytes]) -> None:
        """Check the lines of a whole trace: the report `feed` gives of what `read_lines`
        reads of them, finding for finding, only faster (tests/test_checker_typed.py)."""
        self._each(lines)
        self._end_lines()

    def feed_blocks(self, blocks: Iterable[tuple[list[bytes | BadLine], bool]]) -> None:
        """Check a whole trace read by `trace.file_blocks`: `feed_lines`, with each block's
        lines decoded in one `map`. A block not all ASCII, or with a line the decoder
        refuses, goes line by line (`_each`). The loop is `_record`'s, inlined, its
        sequence state in locals: at a million records a second, a call each is a tenth."""
        decode, replay, report = DECODER.decode, self.replay, self.report
        for lines, ascii in blocks:
            if not lines:
                continue
            try:
                recs = list(map(decode, lines)) if ascii else None
            except Exception:  # a line the exact path must read
                recs = None
            if recs is None:
                self._each(lines)
                continue
            if self._held:
                self._release(last=False)
            number, last, last_time = self._number, self.last_seq, self.last_time
            for rec in recs:
                number += 1
                seq = rec.seq
                time = rec.time
                self._line = number
                self._seq = seq
                if seq - 1 != last or time < last_time:  # `last` None: the first record
                    self.last_seq, self.last_time = last, last_time
                    self._sequence(seq, time)
                last = seq
                last_time = time
                replay[type(rec)](rec)
            report.records += len(recs)
            self._number, self._before, self.last_seq, self.last_time = number, lines[-1], last, last_time
        self._end_lines()

    def _each(self, lines: Iterable[str | bytes]) -> None:
        """Line by line: the typed decoder (`records`) checks a line's shape in C and gives
        the Struct the replay reads; a line it does not take goes the exact way, `parse_line`
        and `feed`, whose finding is the line's."""
        decode = DECODER.decode
        for line in lines:
            self._number += 1
            if self._held:  # a line follows the one cut short: it was not the tail
                self._release(last=False)
            try:
                rec = decode(line if line.isascii() else as_text(line))
            except Exception:  # not the decoder's to judge: the exact path finds what it is
                got = parse_line(line, self._before)
                if type(got) is Cut:
                    self._held = self._number, got
                elif got is not None:
                    self.feed(self._number, got)
            else:
                self._line, self._seq = self._number, rec.seq
                self._record(rec)
            self._before = line

    def _release(self, last: bool) -> None:
        """The line held as cut short: the trace's `truncated_tail` if it is the `last`, else malformed."""
        assert self._held is not None
        number, cut = self._held
        self._held = None
        self.feed(number, cut.finding(last))

    def _end_lines(self) -> None:
        if self._held:
            self._release(last=True)

    def finish(self) -> Report:
        """End of trace: live claims and requests end in the state they are in."""
        if self._line == 0:
            self._line = 1
            self._flag("empty_trace", "the trace has no records, not even the runtime header")
        for cid, state in self.live.items():
            self._end_claim(cid, state)
        for rid, outcome in list(self.requests.items()):
            if outcome["status"] not in self._ends:
                self._end_request(rid, outcome)
        self.report.claims = dict(sorted(self.report.claims.items()))
        return self.report

    def _flag(self, kind: str, message: str) -> None:
        self.report.violations.append(Violation(self._line, self._seq, kind, message))

    def _shape(
        self,
        rec: dict[str, Any],
        fields: tuple[tuple[str, type], ...] | None,
        optional: tuple[tuple[str, type], ...],
        seq: Any,
        time: Any,
    ) -> str | None:
        """RKC-TR-1, RKC-TR-3: what the record lacks of the envelope or of its kind's fields."""
        version = rec.get("schema_version")
        if type(version) is not int or version != SCHEMA_VERSION:
            return f"schema_version must be {SCHEMA_VERSION}, got {version!r}"
        if type(seq) is not int or seq < 0:
            return "seq must be a non-negative integer"
        if type(time) is not int or time < 0:
            return "time must be a non-negative integer"
        if fields is None:
            return f"unknown kind {rec.get('kind')!r}"
        kind = rec["kind"]
        for name, typ in fields:  # an id, a reason, an event: a required string names something
            value = rec.get(name)
            if not isinstance(value, typ) or not value and typ is str:
                return f"{kind}: field {name!r} must be a {_kind_of(typ)}, {_got(rec, name)}"
        for name in STRING_LISTS:
            if name in rec:
                value = rec[name]
                if type(value) is not list or "" in value or not all(map(_is_str, value)):
                    return f"{kind}: field {name!r} must be a list of non-empty strings, {_got(rec, name)}"
        for name, typ in optional:
            value = rec.get(name)
            if value is not None and (not isinstance(value, typ) or not value and typ is str):
                return f"{kind}: field {name!r}, when given, must be a {_kind_of(typ)}, {_got(rec, name)}"
        if "tier" in rec and rec["tier"] not in TIERS:
            return f"{kind}: field 'tier' must be one of {TIERS}"
        return None

    def _sequence(self, seq: int, time: int) -> None:
        """RKC-TR-2, off the fast path: the first record, or anything but seq+1 at a later time."""
        last = self.last_seq
        if last is None:
            if seq > 1:
                self._flag("sequence_gap", f"trace starts at seq {seq}, not 0 or 1")
        elif seq > last + 1:
            self._flag("sequence_gap", f"seq {seq} follows {last}: {seq - last - 1} record(s) missing")
        elif seq == last:
            self._flag("sequence_order", f"duplicate seq {seq}: the record before has it too")
        elif seq < last:
            self._flag("sequence_order", f"seq {seq} follows {last}: out of order")
        if time < self.last_time:
            self._flag("time_order", f"time {time} is before {self.last_time}")

    # ------------------------------------------------------------------ claims
    # The replay reads a record's fields as attributes of its Struct (`records`); an absent
    # optional field is None, an absent `state` or `reason` UNSET.
    def _on_runtime(self, rec: Any) -> None:
        """RKC-ID-3: the cache identity the trace names (the first runtime record's)."""
        if self.report.identity is None:
            self.report.identity = {f: getattr(rec, f) for f in IDENTITY}

    def _on_claim_submit(self, rec: Any) -> None:
        cid = rec.claim
        if cid in self.live or cid in self.report.claims:
            return self._flag("duplicate_claim", f"claim {cid!r} submitted twice")
        self.live[cid] = self._born
        self.chains[cid] = rec.blocks

    def _on_claim(self, rec: Any) -> None:
        """RKC-TR-5: replay the event from the claim's state; cross-check `state`."""
        cid, event = rec.claim, rec.event
        before = self.live.get(cid)
        step = None if before is None else self.steps[before].get(event)
        if step is None:
            return self._bad_event(cid, event, before)
        after, moves, ends, refusing = step
        if refusing and not rec.reason:
            self._flag("refusal_without_attribution", f"claim {cid!r} refused without a reason")
        blocks = rec.blocks
        if blocks is not None and blocks != self.chains[cid]:
            self._flag(
                "chain_changed", f"claim {cid!r} {event!r} names blocks other than the chain it was submitted with"
            )
        state = rec.state
        if state is not UNSET and state != after:
            self._flag("state_mismatch", f"claim {cid!r}: trace says {state!r}, replay gives {after!r}")
        if moves:
            self._move(cid, before, after, event)
        if ends:
            del self.live[cid], self.chains[cid]
            self._end_claim(cid, after)
        else:
            self.live[cid] = after

    def _bad_event(self, cid: str, event: str, state: str | None) -> None:
        if event not in self.spec.lifecycle.events:
            self._flag("malformed_line", f"unknown lifecycle event {event!r}")
        elif cid in self.report.claims:
            self._flag(
                "event_after_terminal",
                f"claim {cid!r}: event {event!r} after terminal state {self.report.claims[cid]!r}",
            )
        elif state is None:
            ended = " (or that ended: ended claims are streamed out and forgotten)" if self.on_end else ""
            self._flag("unknown_claim", f"event {event!r} for claim {cid!r} that was never submitted{ended}")
        else:
            self._flag("illegal_transition", str(IllegalTransition(cid, state, event, self.allowed[state])))

    def _move(self, cid: str, before: str | None, after: str, event: str) -> None:
        """The claim's chain changes the tier it needs: entering one, it must be resident there (RKC-TR-9)."""
        old, new, chain = self.tier_of.get(before), self.tier_of.get(after), self.chains[cid]  # type: ignore[arg-type]
        if old:
            needed = self.needed[old]
            for h in chain:
                holders = needed.get(h)
                if holders is not None:  # None too for a hash the chain repeats
                    holders.discard(cid)
                    if not holders:
                        del needed[h]
        if new:
            if not self.resident[new].issuperset(chain):
                self._need(new, chain, f"claim {cid!r} {event!r} needs")
            needed = self.needed[new]
            for h in chain:
                holders = needed.get(h)
                if holders is None:
                    needed[h] = {cid}
                else:
                    holders.add(cid)

    def _end_claim(self, cid: str, state: str) -> None:
        tally, key = self.report.tally, "claim " + state
        tally[key] = tally.get(key, 0) + 1
        if self.on_end:
            self.on_end("claim", cid, state)
        else:
            self.report.claims[cid] = state

    # ------------------------------------------------------------------ requests
    def _on_request_submit(self, rec: Any) -> None:
        rid = rec.request
        if rid in self.requests:
            return self._flag("duplicate_request", f"request {rid!r} submitted twice")
        self.requests[rid] = {"status": self._initial}

    def _on_request(self, kind: str, sources: tuple[str, ...], dest: str, ends: bool, rec: Any) -> None:
        """RKC-TR-8: the move `kind` of the spec's [requests] table, from `sources` to `dest`."""
        rid = rec.request
        outcome = self.requests.get(rid)
        if outcome is None:
            ended = " (or that ended: ended requests are streamed out and forgotten)" if self.on_end else ""
            return self._flag("unknown_request", f"{kind} for request {rid!r} that was never submitted{ended}")
        if outcome["status"] not in sources:
            return self._flag("illegal_request_event", f"{kind} for request {rid!r} in status {outcome['status']!r}")
        outcome["status"] = dest
        if kind == "request_admit":
            self.admitted[rid] = self.epoch
        elif kind == "request_finish":
            outcome["admit"] = rec.admit
        elif kind == "request_refuse":
            outcome.update(reason=rec.reason, blocking_claims=rec.blocking_claims)
            self._attribution(rid, rec.reason, rec.blocking_claims)
        if ends:
            self._end_request(rid, outcome)

    def _end_request(self, rid: str, outcome: dict[str, Any]) -> None:
        tally, key = self.report.tally, "request " + outcome["status"]
        tally[key] = tally.get(key, 0) + 1
        if self.on_end:
            del self.requests[rid]
            self.admitted.pop(rid, None)
            self.on_end("request", rid, outcome)

    def _attribution(self, rid: str, reason: str, blocking: list[str]) -> None:
        """RKC-TR-4."""
        if reason not in self.refusals:
            return self._flag("refusal_without_attribution", f"request {rid!r}: {reason!r} is not a refusal outcome")
        if reason != "refuse_blocked":
            if blocking:
                self._flag("refusal_without_attribution", f"request {rid!r}: {reason!r} names claims {blocking}")
            return
        if not blocking:
            return self._flag("refusal_without_attribution", f"request {rid!r} refused by claims but names none")
        for cid in blocking:
            if self.tier_of.get(self.live.get(cid)) != "device":  # type: ignore[arg-type]
                self._flag(
                    "refusal_without_attribution",
                    f"request {rid!r} attributed to claim {cid!r}, which protects no blocks",
                )

    # ------------------------------------------------------------------ blocks
    def _on_admit(self, move: Callable[[Any], None], rec: Any) -> None:
        """RKC-TR-9: a request reuses only blocks resident on the device; then the request moves."""
        hits = rec.hit_blocks
        if hits and not self.on_device.issuperset(hits):
            self._need("device", hits, f"request {rec.request!r} reuses")
        move(rec)

    def _on_store(self, rec: Any) -> None:
        """New content is resident; RKC-INV-6: not computed by a request admitted before the latest invalidation."""
        self.resident[rec.tier].update(rec.blocks)
        rid = rec.request
        if rid is not None and self.admitted.get(rid, self.epoch) < self.epoch:
            self._flag(
                "stale_store",
                f"request {rid!r} stores {len(rec.blocks)} block(s) but was admitted "
                f"before the invalidation {self.invalidated}: its KV may be stale",
            )

    def _on_copy(self, kind: str, rec: Any) -> None:
        """RKC-TR-9: an offload or restore copies blocks resident in the other tier into `tier`."""
        tier, blocks, cid = rec.tier, rec.blocks, rec.claim
        source = _SOURCE[tier]
        if not self.resident[source].issuperset(blocks):
            self._need(source, blocks, f"{kind} for claim {cid!r} copies")
        chain = self.chains.get(cid)
        if chain is not None and (blocks != chain if tier == "host" else not set(blocks) <= set(chain)):
            self._flag("chain_changed", f"{kind} for claim {cid!r} copies blocks outside its chain")
        if tier == "device" and not self.on_device.isdisjoint(blocks):
            self._flag(
                "restore_of_resident",
                f"claim {cid!r} restores {sorted(self.on_device & set(blocks))[:3]} already on the device: "
                "a block computed again is not restored",
            )
        self.resident[tier].update(blocks)

    def _on_operator(self, rec: Any) -> None:
        """RKC-INV-6: an action of the spec's [invalidation] starts a new epoch."""
        if rec.action in self.invalidations:
            self.epoch += 1
            self.invalidated = f"at line {self._line} ({rec.action})"

    def _need(self, tier: str, blocks: list[str], what: str) -> None:
        """RKC-TR-9, off the fast path (callers test residency first): a finding per absent block."""
        resident = self.resident[tier]
        for h in dict.fromkeys(blocks):  # a hash a chain repeats is one finding
            if h not in resident:
                self._flag(
                    "phantom_block", f"{what} block {h}, which is not resident on {tier}: {self._why_absent(tier, h)}"
                )

    def _remember(self, tier: str, blocks: list[str], reason: str) -> None:
        """Keep the latest evictions (about RECENT_EVICTIONS hashes a tier, at least the latest
        record) so a finding can say why a block is missing, in memory that does not grow."""
        recent = self.evicted[tier]
        recent.append((self._line, reason, blocks))
        held = self.evicted_held[tier] + len(blocks)
        while held > RECENT_EVICTIONS and len(recent) > 1:
            held -= len(recent.popleft()[2])
        self.evicted_held[tier] = held

    def _why_absent(self, tier: str, h: str) -> str:
        """The latest eviction of `h` among the tier's recent ones; a scan, only on a finding."""
        for line, reason, blocks in reversed(self.evicted[tier]):
            if h in blocks:
                return f"evicted at line {line} ({reason})"
        return f"never stored there, or evicted before the last {RECENT_EVICTIONS} blocks evicted from it"

    def _on_evict(self, rec: Any) -> None:
        """RKC-TR-6: an eviction of a block some claim's state needs in that tier is a loss.
        RKC-TR-9: the blocks leave the tier's residency."""
        tier, blocks, reason = rec.tier, rec.blocks, rec.reason
        self.resident[tier].difference_update(blocks)
        self._remember(tier, blocks, reason)
        needed = self.needed[tier]
        if needed.keys().isdisjoint(blocks):
            self.report.ordinary_evictions += len(blocks)
            return
        for h in blocks:
            if h in needed:
                for cid in sorted(needed[h]):
                    self._flag(
                        "claimed_block_lost",
                        f"block {h} evicted from {tier} ({reason}) while claim {cid!r} "
                        f"is {self.live[cid]!r}, with no lifecycle event first",
                    )
            else:
                self.report.ordinary_evictions += 1


def _kind_of(typ: type) -> str:
    return "non-empty string" if typ is str else typ.__name__


def _got(rec: dict[str, Any], name: str) -> str:
    """What a bad field holds, for the finding (off the fast path)."""
    if name not in rec:
        return "but it is missing"
    return f"got {reprlib.repr(rec[name])} ({type(rec[name]).__name__})"


def _nothing(rec: Any) -> None:
    """The replay of a kind the spec gives none (a contract whose [requests] table lacks it)."""


def needed_tiers(spec: Spec) -> dict[str, str]:
    """Which tier a claim in each state must keep its blocks in (RKC-TR-6): protected
    states on the device, the offload's destination on the host; other states none."""
    lc = spec.lifecycle
    return {**{s: "device" for s in lc.protected}, **dict.fromkeys(lc.dests(EVENT.offload), "host")}


def check_lines(lines: Iterable[str | bytes], spec: Spec | None = None, on_end: OnEnd | None = None) -> Report:
    checker = Checker(spec, on_end)
    checker.feed_lines(lines)
    return checker.finish()


def check_file(path, spec: Spec | None = None, on_end: OnEnd | None = None, max_line: int = MAX_LINE) -> Report:
    with open(path, "rb") as fh:
        return check_stream(fh, spec, on_end, max_line)


def check_stream(
    fh: IO[bytes], spec: Spec | None = None, on_end: OnEnd | None = None, max_line: int = MAX_LINE
) -> Report:
    """`check_file` of an open binary stream (a file, or a pipe: its lines are checked as
    they arrive)."""
    checker = Checker(spec, on_end)
    checker.feed_blocks(file_blocks(fh, max_line))
    return checker.finish()


def render(report: Report) -> str:
    lines = [
        f"{report.records} records, {report.count('claim')} claims, {report.count('request')} requests, "
        f"{report.ordinary_evictions} ordinary evictions, {len(report.violations)} violations"
    ]
    lines += [f"  {where(v)}: {v.kind}: {v.message}" for v in report.violations]
    lines += [f"  claim {c}: {s}" for c, s in report.claims.items()]
    lines += [f"  request {r}: {json.dumps(o, sort_keys=True)}" for r, o in report.requests.items()]
    return "\n".join(lines)


def where(v: Violation) -> str:
    return f"line {v.line}" if v.seq is None else f"line {v.line} seq {v.seq}"
