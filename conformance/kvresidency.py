"""Their traces, our checker: import a kv-residency JSONL trace (the follow-up paper's
telemetry, gustavgauge/kv-residency-vllm-arbiter, Apache-2.0) into our trace model
(spec/TRACE.md) and replay it with our `Checker`, unchanged.

Their schema is one JSON object per line: `schema_version`, `timestamp_ns`, `run_id`,
`event`, `request_id`, `claim_id`, `prefix_id`, `policy`, `usable_blocks`, and each event's
own fields. `TABLE` maps each of their event kinds to our records and names the fields of
theirs it reads; a kind it lacks is reported, never dropped silently. What their schema
lacks (block hashes where they give ids or counts, request submission and completion,
prefix hits, cache identity) is listed as *unknown* and never invented; what the importer
fills in from a named source (a request's first record submits it, a claim's chain from its
per-block records) is listed as *derived*. `Identity` holds the facts an obligation bundle
needs beyond the checker's verdict. docs/kv-residency.md explains every row.

A claim's chain is named by records that follow its acceptance, so a trace is read whole
before it is translated: the importer holds one trace in memory (our own format streams).
Their `timestamp_ns` becomes our `time`; our `seq` numbers the records we write, and every
record carries the line of theirs it comes from, so each finding points into their file.
"""

from __future__ import annotations

import reprlib
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from typing import IO, Any, Callable, Iterable

from kvclaims.conformance.checker import Checker, OnEnd, Report
from kvclaims.model.names import EVENT
from kvclaims.spec import Spec
from kvclaims.trace import MAX_LINE, SCHEMA_VERSION, BadLine, file_lines, read_lines

KV_SCHEMA_VERSION = 1  # their `schema_version`
NOTE_LINES = 8  # lines a note keeps; its count says how many there were
DEVICE = "device"  # our tier of vLLM's BlockPool (spec/TRACE.md)
CACHED, UNCACHED = "cached_prefix_reuse", "free_uncached"  # their `victim_reason` values
NO_REQUEST = "unknown"  # their patch's `request_id` when the caller named none
ABORT = "request_abort"
# Their `feasibility` on active_request_refused -> our refusal outcome, or ABORT. Their patch
# (BlockPool.kv_residency_conflict_fields) writes the first when protected resident blocks plus
# the request's blocks exceed usable blocks: our claim-blocked refusal. Their reference hook
# (offload_lifecycle.py, fail_restore) writes the second after a claim's restoration failed:
# a request ended unserved, which our vLLM integration writes as request_abort (vLLM's
# invalid-KV-load end, FINISHED_ERROR); the claim itself is failed by that failure.
FEASIBILITY = {"infeasible_preserve_resident_and_active": "refuse_blocked", "infeasible_restore_claimed_kv": ABORT}
# Fields of theirs that name what a claim is about; a bundle wants each constant.
IDENTITY_FIELDS = (
    "prefix_id",
    "claim_registration",
    "materialization_predicate",
    "predicate_id",
    "reusable_object_id",
    "request_token_map_id",
    "cache_identity",
    "block_ids",
)
CACHE_IDENTITY = ("model", "block_size", "hash_algorithm", "namespace")  # looked up by these names

Check = tuple[str, Callable[[Any], bool]]  # (what the field must be, the test)
STR: Check = ("a non-empty string", lambda v: type(v) is str and v != "")
OPT_STR: Check = ("a non-empty string or null", lambda v: v is None or type(v) is str and v != "")
INT: Check = ("a non-negative integer", lambda v: type(v) is int and v >= 0)
OPT_INT: Check = ("a non-negative integer or null", lambda v: v is None or type(v) is int and v >= 0)
OPT_BOOL: Check = ("a boolean or null", lambda v: v is None or type(v) is bool)
STRS: Check = ("a list of non-empty strings", lambda v: type(v) is list and all(type(x) is str and x for x in v))
ENVELOPE: dict[str, Check] = {"timestamp_ns": INT, "event": STR, "claim_id": OPT_STR}


# ---------------------------------------------------------------------- results
@dataclass
class Note:
    """Something unknown (not checked) or derived (filled in from a named source)."""

    what: str
    why: str
    lines: list[int] = field(default_factory=list)  # the first NOTE_LINES of theirs it concerns
    count: int = 0


@dataclass
class Restore:
    line: int
    claim: str
    from_offload_tier: bool | None  # their `restored_from_offload_tier`
    generation: int | None  # their `offload_generation`
    offloaded: int | None  # the claim's latest offload generation before it (None: never offloaded)


@dataclass
class Reuse:
    line: int
    claim: str
    request: str | None
    restored_before: bool  # a restore from the offload tier since the claim's latest offload


@dataclass
class Failure:
    line: int
    claim: str
    outcome: str | None  # their `claim_scoped_outcome_type`
    names: list[str]  # claims its outcome names: `outcome_claim_id`, then the outcome event's claims
    outcome_line: int | None = None  # the event whose `restoration_failure_event_sequence` is this one's

    @property
    def same_claim(self) -> bool:
        return bool(self.names) and all(n == self.claim for n in self.names)


@dataclass
class Refusal:
    line: int
    request: str
    ours: str  # our refusal outcome or ABORT (their `feasibility` through FEASIBILITY, else theirs as it is)
    feasibility: str
    blocking_claims: list[str]
    shortfall: int | None  # their `capacity_shortfall_blocks`
    derived_shortfall: int | None  # A - (U - protected), from their A and U and our chains


@dataclass
class Identity:
    """What a bundle check needs beyond the checker (the paper's identity requirements)."""

    registered: dict[str, int] = field(default_factory=dict)  # claim -> line of its resident_claim_accepted
    unregistered: list[tuple[int, str, str | None]] = field(default_factory=list)  # (line, event, claim_id)
    claim_fields: dict[str, dict[str, list[Any]]] = field(default_factory=dict)  # claim -> field -> values
    restores: list[Restore] = field(default_factory=list)
    reuses: list[Reuse] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    cache_identity: dict[str, Any] = field(default_factory=lambda: dict.fromkeys(CACHE_IDENTITY))

    @property
    def claims_registered_first(self) -> bool:
        """Every lifecycle event names a claim_id accepted at or before its line."""
        return not self.unregistered

    @property
    def restores_from_offload_tier(self) -> bool:
        return all(r.from_offload_tier is True and r.generation == r.offloaded for r in self.restores)

    @property
    def reuse_follows_restore(self) -> bool:
        return all(r.restored_before for r in self.reuses)

    @property
    def failures_name_same_claim(self) -> bool:
        return all(f.same_claim for f in self.failures)

    @property
    def cache_identity_complete(self) -> bool:
        return None not in self.cache_identity.values()

    def summary(self) -> dict[str, bool]:
        return {
            "claims_registered_first": self.claims_registered_first,
            "restores_from_offload_tier": self.restores_from_offload_tier,
            "reuse_follows_restore": self.reuse_follows_restore,
            "failures_name_same_claim": self.failures_name_same_claim,
            "cache_identity_complete": self.cache_identity_complete,
        }


@dataclass
class Imported:
    records: list[tuple[int, dict[str, Any] | BadLine]] = field(default_factory=list)  # (their line, ours)
    events: dict[str, int] = field(default_factory=dict)  # their event kind -> count
    run_ids: list[str] = field(default_factory=list)
    unknown: dict[str, Note] = field(default_factory=dict)
    derived: dict[str, Note] = field(default_factory=dict)
    identity: Identity = field(default_factory=Identity)
    refusals: list[Refusal] = field(default_factory=list)
    no_admit: list[str] = field(default_factory=list)  # requests whose future reuse was denied

    def to_json(self) -> dict[str, Any]:
        """The import's own report: everything but the records (the checker's report has those)."""
        doc = asdict(replace(self, records=[]))
        del doc["records"]
        doc["unknown"], doc["derived"] = list(doc["unknown"].values()), list(doc["derived"].values())
        doc["identity"]["summary"] = self.identity.summary()
        return doc


# ---------------------------------------------------------------------- the translation
class _Import:
    """One trace's translation: the state the table's rows share."""

    def __init__(self, entries: list[tuple[int, dict[str, Any] | BadLine]]) -> None:
        self.entries = entries
        self.out = Imported()
        self.chains = _chains(entries)
        self.protected: dict[str, set[str] | None] = {}  # claim -> its chain's hashes (None: not all known)
        self.seen: dict[str, int] = {}  # request -> line of its first record
        self.admitted: set[str] = set()
        self.started = False  # our runtime header is written
        self.offloaded: dict[str, int | None] = {}  # claim -> generation of its latest offload
        self.restored: set[str] = set()  # claims restored from the offload tier since their latest offload
        self.by_sequence: dict[int, Failure] = {}  # their `event_sequence` of a restoration failure

    def run(self) -> Imported:
        """Translate every line in order, but for a claim's materialization and the record of
        the block that completed it (`_triggered_by`)."""
        i, entries = 0, self.entries
        while i < len(entries):
            line, ev = entries[i]
            after, nxt = entries[i + 1] if i + 1 < len(entries) else (0, None)
            if isinstance(ev, dict) and isinstance(nxt, dict) and _triggered_by(ev, nxt):
                self.one(after, nxt)
                self.one(line, ev, time=nxt["timestamp_ns"])
                self.derive("claim materialization order", _ORDER_WHY, line)
                i += 2
            else:
                self.one(line, ev)
                i += 1
        self.finish()
        return self.out

    def one(self, line: int, ev: dict[str, Any] | BadLine, time: int | None = None) -> None:
        """One line of theirs: a bad one passes to the checker as a finding, a kind the table
        lacks is noted, any other goes through its row (at `time`, when given, not its own)."""
        if isinstance(ev, BadLine):
            self.out.records.append((line, ev))
            return
        if not self.started:
            self.header(line, ev)
        kind = ev["event"]
        self.out.events[kind] = self.out.events.get(kind, 0) + 1
        row = TABLE.get(kind)
        if row is None:
            return self.unknown(f"event kind {kind!r}", "not in the mapping table: not translated, not checked", line)
        self.identify(line, ev, row)
        row.translate(self, line, ev, ev["timestamp_ns"] if time is None else time)

    def header(self, line: int, ev: dict[str, Any]) -> None:
        """Our `runtime` record, from their first event: which run, and its usable blocks."""
        self.started = True
        usable = {"U": ev["usable_blocks"]} if type(ev.get("usable_blocks")) is int else {}
        self.emit(line, ev["timestamp_ns"], "runtime", runtime="kv-residency", run_id=ev.get("run_id"), **usable)

    def emit(self, line: int, time: int, kind: str, **fields: Any) -> None:
        rec = {"schema_version": SCHEMA_VERSION, "seq": len(self.out.records), "time": time, "kind": kind, **fields}
        self.out.records.append((line, rec))

    def unknown(self, what: str, why: str, line: int | None = None) -> None:
        _add(self.out.unknown, what, why, line)

    def derive(self, what: str, why: str, line: int | None = None) -> None:
        _add(self.out.derived, what, why, line)

    def identify(self, line: int, ev: dict[str, Any], row: Row) -> None:
        """Identity facts: claims named before their acceptance, identity fields per claim,
        cache identity, runs."""
        cid, ident = ev.get("claim_id"), self.out.identity
        if ev["event"] == "resident_claim_accepted" and type(cid) is str:
            ident.registered.setdefault(cid, line)
        if (row.lifecycle or cid is not None) and cid not in ident.registered:
            ident.unregistered.append((line, ev["event"], cid))
        if type(cid) is str:
            fields = ident.claim_fields.setdefault(cid, {})
            for name in IDENTITY_FIELDS:
                if ev.get(name) is not None and ev[name] not in fields.setdefault(name, []):
                    fields[name].append(ev[name])
        for part in CACHE_IDENTITY:
            if ev.get(part) is not None:
                ident.cache_identity[part] = ev[part]
        if type(ev.get("run_id")) is str and ev["run_id"] not in self.out.run_ids:
            self.out.run_ids.append(ev["run_id"])

    def request(self, line: int, ev: dict[str, Any], time: int, admit: bool = False) -> str | None:
        """The request a record is about: its first record submits it, its first allocation
        (or reuse) admits it. Their schema logs neither (derived)."""
        rid = ev.get("request_id")
        if type(rid) is not str or rid in ("", NO_REQUEST):
            return None
        if rid not in self.seen:
            self.seen[rid] = line
            self.emit(line, time, "request_submit", request=rid)
            self.derive("request_submit", _SUBMIT_WHY, line)
        if admit and rid not in self.admitted:
            self.admitted.add(rid)
            self.emit(line, time, "request_admit", request=rid)
            self.derive("request_admit", _ADMIT_WHY, line)
            self.unknown("prefix hits", _HITS_WHY, line)
        return rid

    def chain(self, line: int, cid: str, required: int) -> list[str]:
        """The claim's chain: the hashes of its first `required` logical positions (a few
        missing positions are named; the walk stops there, however large `required`)."""
        known = self.chains.get(cid, {})
        chain = [known[p] for p in sorted(known) if p < required]
        missing = list(islice((p for p in range(required) if p not in known), NOTE_LINES + 1))
        self.protected[cid] = None if missing else set(chain)
        if missing:
            self.unknown(f"chain of claim {cid!r}", _missing_why(missing, required, bool(chain)), line)
        if chain:
            self.derive(f"chain of claim {cid!r}", _CHAIN_WHY, line)
        return chain

    def finish(self) -> None:
        """Notes about the trace as a whole: what never appears in their schema."""
        refused = {r.request for r in self.out.refusals}
        for rid, line in self.seen.items():
            if rid not in refused:
                self.unknown("request completion", _COMPLETION_WHY, line)
        missing = [p for p, v in self.out.identity.cache_identity.items() if v is None]
        if missing and self.out.events:
            self.unknown("cache identity", f"no {', '.join(missing)} in any record" + _CACHE_WHY)


def _add(notes: dict[str, Note], what: str, why: str, line: int | None) -> None:
    n = notes.setdefault(what, Note(what, why))
    n.count += 1
    if line is not None and len(n.lines) < NOTE_LINES and line not in n.lines:
        n.lines.append(line)


def _triggered_by(ev: dict[str, Any], nxt: dict[str, Any]) -> bool:
    """Their hook writes a claim's materialization while it registers the block that
    completes the predicate, before that block's own record (their patch, BlockPool.
    cache_full_blocks: `_kv_residency_register_claim_block`, then `resident_block_materialized`):
    the next record, when it is that claim's block, is translated first."""
    return (
        ev["event"] == "resident_claim_materialized"
        and nxt["event"] == "resident_block_materialized"
        and nxt.get("claim_id") == ev.get("claim_id")
    )


def _chains(entries: list[tuple[int, dict[str, Any] | BadLine]]) -> dict[str, dict[int, str]]:
    """claim -> logical position -> block hash, from its resident_block_materialized records
    (their `claim_id`, `logical_block_position`, `block_hash`); the first hash of a position."""
    chains: dict[str, dict[int, str]] = {}
    for _, ev in entries:
        if isinstance(ev, dict) and ev["event"] == "resident_block_materialized" and ev.get("claim_id"):
            if type(ev.get("block_hash")) is str:
                chains.setdefault(ev["claim_id"], {}).setdefault(ev["logical_block_position"], ev["block_hash"])
    return chains


# ---------------------------------------------------------------------- the rows
def _victim(imp: _Import, line: int, ev: dict[str, Any], time: int) -> None:
    imp.request(line, ev, time, admit=True)
    imp.derive("tier", _TIER_WHY, line)
    if ev["victim_reason"] == CACHED and ev.get("block_hash") is not None:
        imp.emit(line, time, "block_evict", blocks=[ev["block_hash"]], tier=DEVICE, reason=CACHED)
    elif ev["victim_reason"] == CACHED:
        imp.unknown("evicted block", "a cached_prefix_reuse victim with no block_hash: its loss is not checked", line)
    elif ev["victim_reason"] != UNCACHED:
        imp.unknown(f"victim_reason {ev['victim_reason']!r}", "not a reason the table knows: not checked", line)


def _block(imp: _Import, line: int, ev: dict[str, Any], time: int) -> None:
    rid = imp.request(line, ev, time)
    imp.derive("tier", _TIER_WHY, line)
    if ev.get("block_hash") is None:  # (optional: absent or null)
        return imp.unknown("stored block", "a resident_block_materialized with no block_hash", line)
    imp.emit(line, time, "block_store", blocks=[ev["block_hash"]], tier=DEVICE, request=rid)


def _accepted(imp: _Import, line: int, ev: dict[str, Any], time: int) -> None:
    cid = ev["claim_id"]
    imp.emit(line, time, "claim_submit", claim=cid, blocks=imp.chain(line, cid, ev["resident_blocks_required"]))
    imp.emit(line, time, "claim", claim=cid, event=EVENT.accept)
    if ev.get("protection_mode") is not None:
        imp.unknown(f"terms of claim {cid!r}", _TERMS_WHY.format(ev["protection_mode"]), line)


def _claim(event: str) -> Callable[[_Import, int, dict[str, Any], int], None]:
    """A row that is one claim event of ours."""

    def translate(imp: _Import, line: int, ev: dict[str, Any], time: int) -> None:
        imp.emit(line, time, "claim", claim=ev["claim_id"], event=event)

    return translate


def _offloaded(imp: _Import, line: int, ev: dict[str, Any], time: int) -> None:
    imp.offloaded[ev["claim_id"]] = ev.get("offload_generation")
    imp.restored.discard(ev["claim_id"])
    imp.unknown("host copies", _COPIES_WHY, line)
    _claim(EVENT.offload)(imp, line, ev, time)


def _restore_required(imp: _Import, line: int, ev: dict[str, Any], time: int) -> None:
    imp.request(line, ev, time)


def _restored(imp: _Import, line: int, ev: dict[str, Any], time: int) -> None:
    cid, source = ev["claim_id"], ev.get("restored_from_offload_tier")
    imp.request(line, ev, time)
    imp.out.identity.restores.append(Restore(line, cid, source, ev.get("offload_generation"), imp.offloaded.get(cid)))
    if source is not True:
        return imp.unknown("restore not from the offload tier", _RECOMPUTE_WHY, line)
    imp.restored.add(cid)
    imp.unknown("host copies", _COPIES_WHY, line)
    _claim(EVENT.restore)(imp, line, ev, time)


def _reuse(imp: _Import, line: int, ev: dict[str, Any], time: int) -> None:
    cid = ev["claim_id"]
    rid = imp.request(line, ev, time, admit=True)
    imp.out.identity.reuses.append(Reuse(line, cid, rid, cid in imp.restored))
    imp.emit(line, time, "claim", claim=cid, event=EVENT.hit, **({"request": rid} if rid else {}))


def _restoration_failed(imp: _Import, line: int, ev: dict[str, Any], time: int) -> None:
    cid, named = ev["claim_id"], ev.get("outcome_claim_id")
    imp.request(line, ev, time)
    failure = Failure(line, cid, ev.get("claim_scoped_outcome_type"), [named] if named else [])
    imp.out.identity.failures.append(failure)
    if type(ev.get("event_sequence")) is int:
        imp.by_sequence[ev["event_sequence"]] = failure
    _claim(EVENT.fail)(imp, line, ev, time)


def _refused(imp: _Import, line: int, ev: dict[str, Any], time: int) -> None:
    rid, feasibility, blocking = ev["request_id"], ev["feasibility"], ev["blocking_claim_ids"]
    imp.request(line, ev, time)
    ours = FEASIBILITY.get(feasibility, feasibility)
    if feasibility not in FEASIBILITY:
        imp.unknown(f"refusal outcome {feasibility!r}", _OUTCOME_WHY, line)
    if ours == ABORT:
        imp.derive("refusal after a failed restore", _ABORT_WHY, line)
        imp.emit(line, time, ABORT, request=rid)
    else:
        imp.emit(line, time, "request_refuse", request=rid, reason=ours, blocking_claims=blocking)
    derived = _shortfall(imp, ev, blocking)
    imp.out.refusals.append(
        Refusal(line, rid, ours, feasibility, blocking, ev.get("capacity_shortfall_blocks"), derived)
    )
    failure = imp.by_sequence.get(ev.get("restoration_failure_event_sequence", -1))
    if failure is not None:
        failure.outcome_line = line
        failure.names += [n for n in [ev.get("outcome_claim_id"), *blocking] if n]


def _shortfall(imp: _Import, ev: dict[str, Any], blocking: list[str]) -> int | None:
    """How many blocks the request is short even once active requests finish (spec
    [feasibility]): A - (U - protected), A and U theirs (`active_live_blocks_required`,
    `usable_blocks`), protected the blocking claims' chains; None when one is unknown."""
    need, usable = ev.get("active_live_blocks_required"), ev.get("usable_blocks")
    protected: set[str] = set()
    for c in blocking:
        chain = imp.protected.get(c)
        if chain is None:
            return None
        protected |= chain
    if type(need) is not int or type(usable) is not int or not blocking:
        return None
    return need - (usable - len(protected))


def _no_admit(imp: _Import, line: int, ev: dict[str, Any], time: int) -> None:
    rid = imp.request(line, ev, time)
    if rid is not None and rid not in imp.out.no_admit:
        imp.out.no_admit.append(rid)
    imp.unknown("write no-admit", _NO_ADMIT_WHY, line)


def _nothing(imp: _Import, line: int, ev: dict[str, Any], time: int) -> None:
    """A row that writes no record of ours (the table says why)."""


def _counters(imp: _Import, line: int, ev: dict[str, Any], time: int) -> None:
    imp.unknown("claim-less block counters", _COUNTERS_WHY, line)


@dataclass(frozen=True)
class Row:
    ours: str  # what it becomes in our trace (docs/kv-residency.md has the same table)
    fields: dict[str, Check]  # their fields it reads, as they appear in their files
    translate: Callable[[_Import, int, dict[str, Any], int], None]
    lifecycle: bool = False  # a claim lifecycle event: it must name a claim accepted before it


# Their event kind -> our records. Sources: their traces' field names, and for what a record
# means their patch (patches/vllm_resident_claim_prototype.patch: BlockPool) and reference
# hook (src/kv_vllm_arbiter/offload_lifecycle.py), at the commits shared/paper-artifacts cites.
TABLE: dict[str, Row] = {
    "allocation_victim_selected": Row(
        "`block_evict` (device, reason `cached_prefix_reuse`) of `block_hash` when `victim_reason` is "
        "`cached_prefix_reuse`; none for `free_uncached` (no content dropped); the request's first "
        "allocation is its `request_admit`",
        {"request_id": STR, "victim_reason": STR, "block_hash": OPT_STR},
        _victim,
    ),
    "resident_block_materialized": Row(
        "`block_store` (device) of `block_hash`, `request` = `request_id`; with a `claim_id`, one block "
        "of that claim's chain at `logical_block_position`",
        {"request_id": STR, "block_hash": OPT_STR, "claim_id": OPT_STR, "logical_block_position": INT},
        _block,
    ),
    "resident_claim_accepted": Row(
        "`claim_submit` (`claim_id`; the chain: the claim's `block_hash` at positions 0 … "
        "`resident_blocks_required` − 1) and `claim` accept",
        {"claim_id": STR, "resident_blocks_required": INT},
        _accepted,
        lifecycle=True,
    ),
    "resident_claim_materialized": Row(
        "`claim` materialize (after the next record when that is the block that completed it, see below)",
        {"claim_id": STR},
        _claim(EVENT.materialize),
        lifecycle=True,
    ),
    "resident_claim_demoted": Row("`claim` demote", {"claim_id": STR}, _claim(EVENT.demote), lifecycle=True),
    "resident_claim_expired": Row("`claim` expire", {"claim_id": STR}, _claim(EVENT.expire), lifecycle=True),
    "resident_claim_harmed": Row(
        "none: their patch writes it when an allocation broke the claim's predicate; the eviction that "
        "follows is our `claimed_block_lost`",
        {"claim_id": STR},
        _nothing,
        lifecycle=True,
    ),
    "resident_claim_block_lost_after_release": Row(
        "none: the loss is the `allocation_victim_selected` that follows it",
        {"claim_id": STR, "physical_block_id": INT},
        _nothing,
        lifecycle=True,
    ),
    "resident_claim_offloaded": Row(
        "`claim` offload", {"claim_id": STR, "offload_generation": OPT_INT}, _offloaded, lifecycle=True
    ),
    "resident_claim_restore_required": Row(
        "none (the first record of `request_id` submits it)",
        {"claim_id": STR, "request_id": STR},
        _restore_required,
        lifecycle=True,
    ),
    "resident_claim_restored": Row(
        "`claim` restore when `restored_from_offload_tier` is true; else none (a recompute is no restore)",
        {"claim_id": STR, "request_id": STR, "restored_from_offload_tier": OPT_BOOL, "offload_generation": OPT_INT},
        _restored,
        lifecycle=True,
    ),
    "resident_claim_reuse_after_restore": Row(
        "`request_admit` of `request_id` (if not yet) and `claim` hit",
        {"claim_id": STR, "request_id": STR},
        _reuse,
        lifecycle=True,
    ),
    "resident_claim_restoration_failed": Row(
        "`claim` fail",
        {
            "claim_id": STR,
            "request_id": STR,
            "outcome_claim_id": OPT_STR,
            "claim_scoped_outcome_type": OPT_STR,
            "event_sequence": OPT_INT,
        },
        _restoration_failed,
        lifecycle=True,
    ),
    "active_request_refused": Row(
        "`request_refuse` of `request_id`, `blocking_claims` = `blocking_claim_ids`, reason by "
        "`feasibility`: `infeasible_preserve_resident_and_active` → `refuse_blocked`; any other value as "
        "it is (our checker then judges it); `infeasible_restore_claimed_kv` (after a failed restore) → "
        "`request_abort` instead",
        {
            "request_id": STR,
            "feasibility": STR,
            "blocking_claim_ids": STRS,
            "capacity_shortfall_blocks": OPT_INT,
            "active_live_blocks_required": OPT_INT,
            "usable_blocks": OPT_INT,
            "restoration_failure_event_sequence": OPT_INT,
            "outcome_claim_id": OPT_STR,
        },
        _refused,
    ),
    "future_reuse_denied": Row(
        "none: write no-admit of a live request (ours is stated at `request_finish`)", {"request_id": STR}, _no_admit
    ),
    "generic_kv_blocks_offloaded": Row(
        "none: no claim, no block identity", {"generic_offload_blocks": OPT_INT}, _counters, lifecycle=True
    ),
    "generic_kv_blocks_onboarded": Row(
        "none: no claim, no block identity", {"generic_onboard_blocks": OPT_INT}, _counters, lifecycle=True
    ),
}

_ORDER_WHY = (
    "their hook writes a claim's resident_claim_materialized before the record of the block that "
    "completed it (BlockPool.cache_full_blocks registers the block, then writes it); that block is "
    "translated first, the claim's materialize takes its time"
)
_SUBMIT_WHY = "their schema logs no submission: a request is submitted at its first record"
_ADMIT_WHY = "their schema logs no admission: a request is admitted at its first block allocation or reuse"
_HITS_WHY = "their schema logs no prefix-cache hits: request_admit carries no hit_blocks, reuse is not checked"
_TIER_WHY = "their BlockPool records name no tier; vLLM's BlockPool is the device (GPU) KV cache"
_CHAIN_WHY = (
    "resident_claim_accepted names no blocks: the chain is the claim's resident_block_materialized "
    "block_hash by logical_block_position, from records that follow its acceptance"
)
_COMPLETION_WHY = (
    "their schema logs no request end (finish, abort): a request ends in the status its records "
    "give it (running once admitted)"
)
_CACHE_WHY = (
    "; their `cache_identity`, where given, is an opaque label: which model, block size, hash and "
    "namespace a block hash belongs to is unknown"
)
_TERMS_WHY = "protection_mode {!r} is their label; strength, conflict policy and TTL are not in their schema"
_COPIES_WHY = (
    "their offload and restore records give block_ids, not hashes: no block_offload or block_restore "
    "record, so the host tier's residency is not checked"
)
_RECOMPUTE_WHY = "restored_from_offload_tier is not true: a recompute is no restore, so no claim restore is written"
_OUTCOME_WHY = "their feasibility has no counterpart among our refusal outcomes: passed as it is, for the checker"
_ABORT_WHY = (
    "their refusal after resident_claim_restoration_failed (feasibility infeasible_restore_claimed_kv) "
    "ends a request unserved: written as request_abort, as our vLLM integration writes vLLM's "
    "invalid-KV-load end; the claim it names is in identity.failures"
)
_NO_ADMIT_WHY = (
    "future_reuse_denied is write no-admit decided while the request runs; ours states it at "
    "request_finish (admit false), which their schema lacks"
)
_COUNTERS_WHY = "a count of blocks moved, naming no claim and no block: nothing to check"


def _missing_why(missing: list[int], required: int, some: bool) -> str:
    shown = ", ".join(map(str, missing[:NOTE_LINES])) + (", ..." if len(missing) > NOTE_LINES else "")
    what = f"no block_hash for logical positions {shown}" if some else "no per-block record with a block_hash"
    return f"{what} of its {required} (resident_blocks_required): those blocks' residency and loss are not checked"


# ---------------------------------------------------------------------- reading and checking
def _checked(rec: dict[str, Any] | BadLine) -> dict[str, Any] | BadLine:
    """Their envelope and the row's fields, or why the line is not one of their records."""
    if isinstance(rec, BadLine):
        return rec
    if rec.get("schema_version") != KV_SCHEMA_VERSION or type(rec.get("schema_version")) is not int:
        return BadLine(
            "malformed_line",
            f"kv-residency: schema_version must be {KV_SCHEMA_VERSION}, {_got(rec, 'schema_version')}",
        )
    kind = rec.get("event")
    row = TABLE.get(kind) if type(kind) is str else None
    for name, (what, ok) in {**ENVELOPE, **(row.fields if row else {})}.items():
        if not ok(rec.get(name)):
            return BadLine(
                "malformed_line", f"kv-residency {rec.get('event')!r}: {name!r} must be {what}, {_got(rec, name)}"
            )
    return rec


def _got(rec: dict[str, Any], name: str) -> str:
    return f"got {reprlib.repr(rec[name])}" if name in rec else "but it is missing"


def import_lines(lines: Iterable[str | bytes]) -> Imported:
    """Translate one kv-residency trace (its lines) into our records."""
    return _Import([(n, _checked(rec)) for n, rec in read_lines(lines)]).run()


def import_file(path: Any, max_line: int = MAX_LINE) -> Imported:
    with open(path, "rb") as fh:
        return import_stream(fh, max_line)


def import_stream(fh: IO[bytes], max_line: int = MAX_LINE) -> Imported:
    return import_lines(file_lines(fh, max_line))


def check(imported: Imported, spec: Spec | None = None, on_end: OnEnd | None = None) -> Report:
    """Our checker on the translated records, each at the line of theirs it comes from."""
    checker = Checker(spec, on_end)
    for line, rec in imported.records:
        checker.feed(line, rec)
    return checker.finish()


def render(imported: Imported) -> str:
    """What the checker's report does not say: their events, the unknown and the derived,
    the identity facts and each refusal's numbers."""
    events = ", ".join(f"{k} {n}" for k, n in imported.events.items()) or "none"
    lines = [f"kv-residency run {', '.join(imported.run_ids) or '?'}: their events: {events}"]
    for title, notes in (("unknown", imported.unknown), ("derived", imported.derived)):
        lines += [f"  {title}: {n.what}: {n.why}{_where(n)}" for n in notes.values()]
    lines.append("  identity: " + _facts(imported.identity))
    for r in imported.refusals:
        lines.append(
            f"  refusal line {r.line}: request {r.request!r} {r.ours} by {r.blocking_claims} "
            f"(their feasibility {r.feasibility}), shortfall {r.shortfall} (derived {r.derived_shortfall})"
        )
    return "\n".join(lines)


def _facts(ident: Identity) -> str:
    """Each identity fact, yes or no, with how many records it rests on."""
    rests_on = {
        "claims_registered_first": f"{len(ident.registered)} claims, {len(ident.unregistered)} events before",
        "restores_from_offload_tier": f"{len(ident.restores)} restores",
        "reuse_follows_restore": f"{len(ident.reuses)} reuses",
        "failures_name_same_claim": f"{len(ident.failures)} failures",
        "cache_identity_complete": ", ".join(f"{k} {v!r}" for k, v in ident.cache_identity.items()),
    }
    return ", ".join(f"{k} {'yes' if v else 'no'} ({rests_on[k]})" for k, v in ident.summary().items())


def _where(n: Note) -> str:
    if not n.lines:
        return ""
    more = f"; {n.count} in all" if n.count > len(n.lines) else ""
    return f" (line {', '.join(map(str, n.lines))}{more})"
