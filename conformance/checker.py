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
"""

from __future__ import annotations

import json
import reprlib
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

from kvclaims.errors import IllegalTransition
from kvclaims.model.terms import TIERS
from kvclaims.trace import MAX_LINE, SCHEMA_VERSION, file_lines, read_lines
from kvclaims.spec import Spec, load
from kvclaims.model.names import EVENT

# kind -> required fields and their types (spec/TRACE.md, RKC-TR-3); a required string is non-empty.
FIELDS: dict[str, dict[str, type]] = {
    "runtime": {},
    "claim_submit": {"claim": str, "blocks": list},
    "claim": {"claim": str, "event": str},
    "request_submit": {"request": str},
    "request_admit": {"request": str},
    "request_wait": {"request": str},
    "request_grow": {"request": str},
    "request_refuse": {"request": str, "reason": str, "blocking_claims": list},
    "request_finish": {"request": str, "admit": bool},
    "request_abort": {"request": str},
    "block_store": {"blocks": list, "tier": str},
    "block_evict": {"blocks": list, "tier": str, "reason": str},
    "block_offload": {"blocks": list, "tier": str, "claim": str},
    "block_restore": {"blocks": list, "tier": str, "claim": str},
    "operator": {"action": str},
}
# kind -> optional fields the checker reads (spec/TRACE.md, RKC-TR-3), checked unless absent or null.
OPTIONAL: dict[str, dict[str, type]] = {
    "block_store": {"request": str},
    "claim": {"blocks": list},
    "runtime": {"model": str, "hash": str, "namespace": str, "B": int},
}
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
_STRING_LISTS = ("blocks", "blocking_claims", "hit_blocks")  # lists of non-empty strings wherever present
_is_str = str.__instancecheck__
_SOURCE = {"host": "device", "device": "host"}  # a copy into a tier reads the other: offload, restore
_UNKNOWN = (None, (), None)  # an unknown kind's (fields, optional, replay)
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
        self._line = 0
        self._seq: int | None = None
        replay = {
            "claim_submit": self._on_claim_submit,
            "claim": self._on_claim,
            "request_submit": self._on_request_submit,
            **dict.fromkeys(self.spec.request_moves, self._on_request),
            "request_admit": self._on_admit,
            "block_store": self._on_store,
            "block_evict": self._on_evict,
            "block_offload": self._on_copy,
            "block_restore": self._on_copy,
            "operator": self._on_operator,
            "runtime": self._on_runtime,
        }
        # kind -> (required fields, optional fields read, what replays it; None: nothing to replay)
        self.kinds = {
            kind: (tuple(fields.items()), tuple(OPTIONAL.get(kind, {}).items()), replay.get(kind))
            for kind, fields in FIELDS.items()
        }

    # ------------------------------------------------------------------ driving
    def feed(self, line: int, rec: dict[str, Any] | str) -> None:
        """Check one record (or a line's parse error, a str) read at `line`."""
        self._line = line
        if not isinstance(rec, dict):
            self._seq = None
            return self._flag(getattr(rec, "kind", "malformed_line"), str(rec))
        seq, time, kind = rec.get("seq"), rec.get("time"), rec.get("kind")
        self._seq = seq if type(seq) is int else None
        fields, optional, replay = self.kinds.get(kind, _UNKNOWN) if type(kind) is str else _UNKNOWN
        problem = self._shape(rec, fields, optional, seq, time)
        if problem:
            return self._flag("malformed_line", problem)
        assert type(seq) is int and type(time) is int, "_shape passed them as non-negative ints"
        self.report.records += 1
        last = self.last_seq
        if last is None or seq != last + 1 or time < self.last_time:
            self._sequence(seq, time)
        self.last_seq, self.last_time = seq, time
        if replay is not None:
            replay(rec)

    def finish(self) -> Report:
        """End of trace: live claims and requests end in the state they are in."""
        if self._line == 0:
            self._line = 1
            self._flag("empty_trace", "the trace has no records, not even the runtime header")
        for cid, state in self.live.items():
            self._end_claim(cid, state)
        for rid, outcome in list(self.requests.items()):
            if outcome["status"] not in self.spec.request_ends:
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
        for name in _STRING_LISTS:
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
    def _on_runtime(self, rec: dict) -> None:
        """RKC-ID-3: the cache identity the trace names (the first runtime record's)."""
        if self.report.identity is None:
            self.report.identity = {f: rec.get(f) for f in IDENTITY}

    def _on_claim_submit(self, rec: dict) -> None:
        cid = rec["claim"]
        if cid in self.live or cid in self.report.claims:
            return self._flag("duplicate_claim", f"claim {cid!r} submitted twice")
        self.live[cid] = self.spec.lifecycle.initial
        self.chains[cid] = rec["blocks"]

    def _on_claim(self, rec: dict) -> None:
        """RKC-TR-5: replay the event from the claim's state; cross-check `state`."""
        cid, event = rec["claim"], rec["event"]
        before = self.live.get(cid)
        after = None if before is None else self.after.get((before, event))
        if after is None:
            return self._bad_event(cid, event, before)
        if event == EVENT.refuse and not rec.get("reason"):
            self._flag("refusal_without_attribution", f"claim {cid!r} refused without a reason")
        if rec.get("blocks") is not None and rec["blocks"] != self.chains[cid]:
            self._flag(
                "chain_changed", f"claim {cid!r} {event!r} names blocks other than the chain it was submitted with"
            )
        if "state" in rec and rec["state"] != after:
            self._flag("state_mismatch", f"claim {cid!r}: trace says {rec['state']!r}, replay gives {after!r}")
        if self._tier(before) != self._tier(after):
            self._move(cid, before, after, event)
        if after in self.terminal:
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

    def _tier(self, state: str | None) -> str | None:
        """The tier a claim in `state` (None: no live claim) keeps its blocks in, if any."""
        return None if state is None else self.tier_of.get(state)

    def _move(self, cid: str, before: str | None, after: str, event: str) -> None:
        """The claim's chain changes the tier it needs: entering one, it must be resident there (RKC-TR-9)."""
        old, new = self._tier(before), self._tier(after)
        if new and not self.resident[new].issuperset(self.chains[cid]):
            self._need(new, self.chains[cid], f"claim {cid!r} {event!r} needs")
        for h in self.chains[cid]:
            holders = self.needed[old].get(h) if old else None
            if old and holders is not None:  # None too for a hash the chain repeats
                holders.discard(cid)
                if not holders:
                    del self.needed[old][h]
            if new:
                self.needed[new].setdefault(h, set()).add(cid)

    def _count(self, outcome: str) -> None:
        self.report.tally[outcome] = self.report.tally.get(outcome, 0) + 1

    def _end_claim(self, cid: str, state: str) -> None:
        self._count("claim " + state)
        if self.on_end:
            self.on_end("claim", cid, state)
        else:
            self.report.claims[cid] = state

    # ------------------------------------------------------------------ requests
    def _on_request_submit(self, rec: dict) -> None:
        rid = rec["request"]
        if rid in self.requests:
            return self._flag("duplicate_request", f"request {rid!r} submitted twice")
        self.requests[rid] = {"status": self.spec.request_initial}

    def _on_request(self, rec: dict) -> None:
        rid, kind = rec["request"], rec["kind"]
        outcome = self.requests.get(rid)
        if outcome is None:
            ended = " (or that ended: ended requests are streamed out and forgotten)" if self.on_end else ""
            return self._flag("unknown_request", f"{kind} for request {rid!r} that was never submitted{ended}")
        sources, dest = self.spec.request_moves[kind]
        if outcome["status"] not in sources:
            return self._flag("illegal_request_event", f"{kind} for request {rid!r} in status {outcome['status']!r}")
        outcome["status"] = dest
        if kind == "request_admit":
            self.admitted[rid] = self.epoch
        elif kind == "request_finish":
            outcome["admit"] = rec["admit"]
        elif kind == "request_refuse":
            outcome.update(reason=rec["reason"], blocking_claims=rec["blocking_claims"])
            self._attribution(rid, rec["reason"], rec["blocking_claims"])
        if dest in self.spec.request_ends:
            self._end_request(rid, outcome)

    def _end_request(self, rid: str, outcome: dict[str, Any]) -> None:
        self._count("request " + outcome["status"])
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
            if self._tier(self.live.get(cid)) != "device":
                self._flag(
                    "refusal_without_attribution",
                    f"request {rid!r} attributed to claim {cid!r}, which protects no blocks",
                )

    # ------------------------------------------------------------------ blocks
    def _on_admit(self, rec: dict) -> None:
        """RKC-TR-9: a request reuses only blocks resident on the device."""
        hits = rec.get("hit_blocks")
        if hits and not self.on_device.issuperset(hits):
            self._need("device", hits, f"request {rec['request']!r} reuses")
        self._on_request(rec)

    def _on_store(self, rec: dict) -> None:
        """New content is resident; RKC-INV-6: not computed by a request admitted before the latest invalidation."""
        self.resident[rec["tier"]].update(rec["blocks"])
        rid = rec.get("request")
        if rid is not None and self.admitted.get(rid, self.epoch) < self.epoch:
            self._flag(
                "stale_store",
                f"request {rid!r} stores {len(rec['blocks'])} block(s) but was admitted "
                f"before the invalidation {self.invalidated}: its KV may be stale",
            )

    def _on_copy(self, rec: dict) -> None:
        """RKC-TR-9: an offload or restore copies blocks resident in the other tier into `tier`."""
        tier, blocks, cid = rec["tier"], rec["blocks"], rec["claim"]
        source = _SOURCE[tier]
        if not self.resident[source].issuperset(blocks):
            self._need(source, blocks, f"{rec['kind']} for claim {cid!r} copies")
        chain = self.chains.get(cid)
        if chain is not None and (blocks != chain if tier == "host" else not set(blocks) <= set(chain)):
            self._flag("chain_changed", f"{rec['kind']} for claim {cid!r} copies blocks outside its chain")
        if tier == "device" and not self.on_device.isdisjoint(blocks):
            self._flag(
                "restore_of_resident",
                f"claim {cid!r} restores {sorted(self.on_device & set(blocks))[:3]} already on the device: "
                "a block computed again is not restored",
            )
        self.resident[tier].update(blocks)

    def _on_operator(self, rec: dict) -> None:
        """RKC-INV-6: an action of the spec's [invalidation] starts a new epoch."""
        if rec["action"] in self.invalidations:
            self.epoch += 1
            self.invalidated = f"at line {self._line} ({rec['action']})"

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

    def _on_evict(self, rec: dict) -> None:
        """RKC-TR-6: an eviction of a block some claim's state needs in that tier is a loss.
        RKC-TR-9: the blocks leave the tier's residency."""
        tier, blocks = rec["tier"], rec["blocks"]
        self.resident[tier].difference_update(blocks)
        self._remember(tier, blocks, rec["reason"])
        needed = self.needed[tier]
        if needed.keys().isdisjoint(blocks):
            self.report.ordinary_evictions += len(blocks)
            return
        for h in blocks:
            if h in needed:
                for cid in sorted(needed[h]):
                    self._flag(
                        "claimed_block_lost",
                        f"block {h} evicted from {tier} ({rec['reason']}) while claim {cid!r} "
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


def needed_tiers(spec: Spec) -> dict[str, str]:
    """Which tier a claim in each state must keep its blocks in (RKC-TR-6): protected
    states on the device, the offload's destination on the host; other states none."""
    lc = spec.lifecycle
    return {**{s: "device" for s in lc.protected}, **dict.fromkeys(lc.dests(EVENT.offload), "host")}


def check_lines(lines: Iterable[str | bytes], spec: Spec | None = None, on_end: OnEnd | None = None) -> Report:
    checker = Checker(spec, on_end)
    for number, rec in read_lines(lines):
        checker.feed(number, rec)
    return checker.finish()


def check_file(path, spec: Spec | None = None, on_end: OnEnd | None = None, max_line: int = MAX_LINE) -> Report:
    with open(path, "rb") as fh:
        return check_lines(file_lines(fh, max_line), spec, on_end)


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
