"""The trace checker: replays any runtime's JSONL trace against the contract.

It streams the trace line by line (memory grows with live claims and
requests, not with trace length), drives every claim event through the
spec's lifecycle machine, and reports each violation with its line and
sequence number instead of stopping: a malformed line is a finding, never a
crash. A block named by `block_evict` is lost for every claim whose state
requires it in that tier (protected states on the device, offloaded on the
host); with no such claim the eviction is ordinary.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from kvclaims.errors import IllegalTransition
from kvclaims.model.lifecycle import ClaimFSM, Lifecycle
from kvclaims.model.terms import TIERS
from kvclaims.refimpl.trace import SCHEMA_VERSION, read_lines
from kvclaims.spec import Spec, load

# kind -> required fields and their types (spec/TRACE.md, RKC-TR-3).
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
# Request status each request event requires, and the status it leads to.
REQUEST_MOVES: dict[str, tuple[tuple[str, ...], str]] = {
    "request_wait": (("submitted",), "waiting"),
    "request_admit": (("submitted", "waiting"), "running"),
    "request_grow": (("running",), "running"),
    "request_refuse": (("submitted", "waiting", "running"), "refused"),
    "request_finish": (("running",), "finished"),
    "request_abort": (("submitted", "waiting", "running"), "aborted"),
}


@dataclass
class Violation:
    line: int
    seq: int | None
    kind: str
    message: str


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    claims: dict[str, str] = field(default_factory=dict)           # final lifecycle state
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: int = 0
    ordinary_evictions: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


class Checker:
    def __init__(self, spec: Spec | None = None) -> None:
        self.spec = spec or load()
        lc = self.spec.lifecycle
        self.lifecycle = Lifecycle(self.spec)
        self.live: dict[str, ClaimFSM] = {}
        self.chains: dict[str, list[str]] = {}     # of live claims only
        # Which tier a claim in a given state must keep its blocks in.
        self.tier_of = {s: "device" for s in lc.protected}
        self.tier_of.update({t.dest: "host" for t in lc.transitions if t.event == "offload"})
        self.needed: dict[str, defaultdict[str, set[str]]] = {t: defaultdict(set) for t in TIERS}
        self.refusals = set(self.spec.outcome_names) - {"admit", "wait"}
        self.report = Report()
        self.last_seq: int | None = None
        self.last_time: int | None = None

    # ------------------------------------------------------------------ driving
    def feed(self, line: int, rec: dict[str, Any] | str) -> None:
        self._line = line
        self._seq = rec.get("seq") if isinstance(rec, dict) and _is_int(rec.get("seq")) else None
        if isinstance(rec, str):
            return self._flag("malformed_line", rec)
        problem = self._shape(rec)
        if problem:
            return self._flag("malformed_line", problem)
        self.report.records += 1
        self._sequence(rec["seq"], rec["time"])
        getattr(self, "_on_" + rec["kind"].split("_")[0])(rec)

    def finish(self) -> Report:
        self.report.claims.update({c: f.state for c, f in self.live.items()})
        self.report.claims = dict(sorted(self.report.claims.items()))
        return self.report

    def _flag(self, kind: str, message: str) -> None:
        self.report.violations.append(Violation(self._line, self._seq, kind, message))

    def _shape(self, rec: dict[str, Any]) -> str | None:
        if rec.get("schema_version") != SCHEMA_VERSION:
            return f"schema_version must be {SCHEMA_VERSION}, got {rec.get('schema_version')!r}"
        for name in ("seq", "time"):
            if not _is_int(rec.get(name)) or rec[name] < 0:
                return f"{name} must be a non-negative integer"
        kind = rec.get("kind")
        if not isinstance(kind, str) or kind not in FIELDS:
            return f"unknown kind {kind!r}"
        for name, typ in FIELDS[kind].items():
            if not isinstance(rec.get(name), typ):
                return f"{kind}: field {name!r} must be a {typ.__name__}"
        for name in ("blocks", "blocking_claims"):
            if name in rec and not (isinstance(rec[name], list) and all(isinstance(x, str) for x in rec[name])):
                return f"{kind}: {name} must be a list of strings"
        if "tier" in rec and rec["tier"] not in TIERS:
            return f"{kind}: tier must be one of {TIERS}"
        return None

    def _sequence(self, seq: int, time: int) -> None:
        if self.last_seq is None and seq > 1:
            self._flag("sequence_gap", f"trace starts at seq {seq}, not 0 or 1")
        elif self.last_seq is not None and seq != self.last_seq + 1:
            what = "sequence_gap" if seq > self.last_seq else "sequence_order"
            self._flag(what, f"seq {seq} follows {self.last_seq}")
        if self.last_time is not None and time < self.last_time:
            self._flag("time_order", f"time {time} is before {self.last_time}")
        self.last_seq, self.last_time = seq, time

    # ------------------------------------------------------------------ kinds
    def _on_runtime(self, rec: dict) -> None:
        """The header: nothing to replay."""

    def _on_operator(self, rec: dict) -> None:
        """Operator actions announce what follows; their effects are their own events."""

    def _on_claim(self, rec: dict) -> None:
        cid = rec["claim"]
        if rec["kind"] == "claim_submit":
            if cid in self.live or cid in self.report.claims:
                return self._flag("duplicate_claim", f"claim {cid!r} submitted twice")
            self.chains[cid] = rec["blocks"]
            self.live[cid] = self.lifecycle.claim(cid)
            return
        event = rec["event"]
        if event not in self.spec.lifecycle.events:
            return self._flag("malformed_line", f"unknown lifecycle event {event!r}")
        if cid in self.report.claims:
            return self._flag("event_after_terminal",
                              f"claim {cid!r}: event {event!r} after terminal state {self.report.claims[cid]!r}")
        if cid not in self.live:
            return self._flag("unknown_claim", f"event {event!r} for claim {cid!r} that was never submitted")
        fsm = self.live[cid]
        before = fsm.state
        try:
            after = fsm.fire(event, unchecked_guards=True)
        except IllegalTransition as exc:
            return self._flag("illegal_transition", str(exc))
        if event == "refuse" and not rec.get("reason"):
            self._flag("refusal_without_attribution", f"claim {cid!r} refused without a reason")
        if "state" in rec and rec["state"] != after:
            self._flag("state_mismatch", f"claim {cid!r}: trace says {rec['state']!r}, replay gives {after!r}")
        self._move(cid, before, after)
        if fsm.terminal:
            self.report.claims[cid] = self.live.pop(cid).state
            del self.chains[cid]

    def _move(self, cid: str, before: str, after: str) -> None:
        old, new = self.tier_of.get(before), self.tier_of.get(after)
        if old == new:
            return
        for h in self.chains[cid]:
            if old:
                self.needed[old][h].discard(cid)
                if not self.needed[old][h]:
                    del self.needed[old][h]
            if new:
                self.needed[new][h].add(cid)

    def _on_request(self, rec: dict) -> None:
        rid, kind = rec["request"], rec["kind"]
        reqs = self.report.requests
        if kind == "request_submit":
            if rid in reqs:
                return self._flag("duplicate_request", f"request {rid!r} submitted twice")
            reqs[rid] = {"status": "submitted"}
            return
        if rid not in reqs:
            return self._flag("unknown_request", f"{kind} for request {rid!r} that was never submitted")
        sources, dest = REQUEST_MOVES[kind]
        if reqs[rid]["status"] not in sources:
            return self._flag("illegal_request_event", f"{kind} for request {rid!r} in status {reqs[rid]['status']!r}")
        reqs[rid]["status"] = dest
        if kind == "request_finish":
            reqs[rid]["admit"] = rec["admit"]
        if kind == "request_refuse":
            reqs[rid].update(reason=rec["reason"], blocking_claims=rec["blocking_claims"])
            self._attribution(rid, rec["reason"], rec["blocking_claims"])

    def _attribution(self, rid: str, reason: str, blocking: list[str]) -> None:
        if reason not in self.refusals:
            return self._flag("refusal_without_attribution", f"request {rid!r}: {reason!r} is not a refusal outcome")
        if reason != "refuse_blocked":
            if blocking:
                self._flag("refusal_without_attribution", f"request {rid!r}: {reason!r} names claims {blocking}")
            return
        if not blocking:
            return self._flag("refusal_without_attribution", f"request {rid!r} refused by claims but names none")
        for cid in blocking:
            if self.tier_of.get(self.live[cid].state if cid in self.live else None) != "device":
                self._flag("refusal_without_attribution",
                           f"request {rid!r} attributed to claim {cid!r}, which protects no blocks")

    def _on_block(self, rec: dict) -> None:
        if rec["kind"] != "block_evict":
            return
        needed = self.needed[rec["tier"]]
        for h in rec["blocks"]:
            if h in needed:
                for cid in sorted(needed[h]):
                    self._flag("claimed_block_lost",
                               f"block {h} evicted from {rec['tier']} ({rec['reason']}) while claim {cid!r} "
                               f"is {self.live[cid].state!r}, with no lifecycle event first")
            else:
                self.report.ordinary_evictions += 1


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_lines(lines: Iterable[str], spec: Spec | None = None) -> Report:
    checker = Checker(spec)
    for number, rec in read_lines(lines):
        checker.feed(number, rec)
    return checker.finish()


def check_file(path, spec: Spec | None = None) -> Report:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return check_lines(fh, spec)


def render(report: Report) -> str:
    lines = [f"{report.records} records, {len(report.claims)} claims, {len(report.requests)} requests, "
             f"{report.ordinary_evictions} ordinary evictions, {len(report.violations)} violations"]
    lines += [f"  line {v.line} seq {v.seq}: {v.kind}: {v.message}" for v in report.violations]
    lines += [f"  claim {c}: {s}" for c, s in report.claims.items()]
    lines += [f"  request {r}: {json.dumps(o, sort_keys=True)}" for r, o in report.requests.items()]
    return "\n".join(lines)
