"""A runtime's answers since the last check, against the oracle's: nothing it says goes unread.

The stateful machine drives a runtime and the oracle (`kvclaims.model.adoption.AdoptingPool`)
in lockstep. After every step, `Comparison.check` takes the new trace records (the machine
reads the trace once, for its checker too), reads the adapter's queries and compares them
with what the oracle predicted for that step:

- the block table: every block that left it is named by a device `block_evict` (RKC-TR-6),
  every block that entered by a `block_store` or `block_restore` (RKC-TR-9), and the table
  is the oracle's prediction, which adopts only what the contract leaves to the runtime;
- the claim events: each claim's events in the oracle's order, and claims yield in the
  oracle's order (a loss event: RKC-RT-1; any other: RKC-TR-5);
- the hits: each `request_admit`'s `hit_blocks` and the adapter's `hit_blocks(id)` are the
  oracle's (RKC-TR-8).

Each mismatch is a `ContractViolation` whose message leads with the obligation it breaks.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from kvclaims.errors import InconsistentCounts
from kvclaims.conformance.adapter import RuntimeAdapter
from kvclaims.model.adoption import AdoptingPool
from kvclaims.model.feasibility import PoolCounts
from kvclaims.model.names import EVENT

Record = Mapping[str, Any]
YIELDS = (EVENT.demote, EVENT.offload)  # how a non-blocking claim gives way under pressure (RKC-RT-1)


class ContractViolation(AssertionError):
    """The runtime broke the contract; the message names the obligation."""


def violated_obligation(exc: BaseException) -> str | None:
    """The obligation a violation names first (its message's leading id), or None: a
    crash, or a disagreement with the model that no single obligation owns. A runtime whose
    own block classes stop summing to U broke block conservation, wherever that surfaced."""
    if isinstance(exc, InconsistentCounts):
        return "RKC-INV-3"
    match = re.match(r"(RKC-[A-Z]+-\d+):", str(exc)) if isinstance(exc, ContractViolation) else None
    return match.group(1) if match else None


def device_moves(records: Iterable[Record]) -> tuple[dict[str, str], set[str]]:
    """The device-table moves the records name: evicted hash -> the reason of its latest
    eviction, and the hashes stored or restored."""
    evicted: dict[str, str] = {}
    entered: set[str] = set()
    for rec in records:
        if rec.get("tier") != "device":
            continue
        if rec.get("kind") == "block_evict":
            evicted.update(dict.fromkeys(rec.get("blocks", []), rec.get("reason", "")))
        elif rec.get("kind") in ("block_store", "block_restore"):
            entered.update(rec.get("blocks", []))
    return evicted, entered


def check_table_moves(before: Collection[str], after: Collection[str], records: Iterable[Record]) -> None:
    """Every block that left the device table between two checks is named by a `block_evict`
    (RKC-TR-6); every block that entered it, by a `block_store` or `block_restore` (RKC-TR-9)."""
    evicted, entered = device_moves(records)
    for h in sorted(set(before) - set(after) - set(evicted)):
        raise ContractViolation(f"RKC-TR-6: block {h} left the device table with no block_evict record")
    for h in sorted(set(after) - set(before) - entered):
        raise ContractViolation(f"RKC-TR-9: block {h} entered the device table with no block_store or block_restore")


def check_prediction(model: AdoptingPool, resident: set[str], counts: PoolCounts, records: Iterable[Record]) -> None:
    """The block table is the oracle's prediction once the oracle adopts the LRU evictions the
    records name (and its profile's quirks); a predicted block gone with no record is a silent
    drop (RKC-TR-6), one write no-admit dropped though something holds it breaks RKC-RT-7."""
    evicted, _ = device_moves(records)
    diff = model.sync(resident, counts, {h for h, why in evicted.items() if why == "lru"})
    for h in sorted(diff.vanished):
        if h not in evicted:
            raise ContractViolation(f"RKC-TR-6: block {h} left the device table with no block_evict record")
        if evicted[h] == "no_admit":
            raise ContractViolation(f"RKC-RT-7: write no-admit dropped block {h}, which is held or was reused")
    if diff:
        raise ContractViolation(
            f"the block table differs from the oracle's: unpredicted {sorted(diff.unpredicted)}, "
            f"evicted though predicted resident {sorted(diff.vanished)}"
        )


def check_claim_events(want: Sequence[tuple[str, str]], records: Iterable[Record], loss: Collection[str]) -> None:
    """The trace's claim events are the oracle's: per claim in order, and yields across claims
    in order. A mismatch over a `loss` event breaks RKC-RT-1, any other RKC-TR-5."""
    got = [(rec["claim"], rec["event"]) for rec in records if rec.get("kind") == "claim"]
    for cid in sorted({c for c, _ in got} | {c for c, _ in want}):
        g, w = [e for c, e in got if c == cid], [e for c, e in want if c == cid]
        if g != w:
            i = next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), min(len(g), len(w)))
            oid = "RKC-RT-1" if {*g[i : i + 1], *w[i : i + 1]} & set(loss) else "RKC-TR-5"
            raise ContractViolation(f"{oid}: claim {cid}'s events are {g}, the oracle expects {w}")
    g_yields, w_yields = [x for x in got if x[1] in YIELDS], [x for x in want if x[1] in YIELDS]
    if g_yields != w_yields:
        raise ContractViolation(f"RKC-RT-1: claims yield as {g_yields}, the oracle's order is {w_yields}")


def check_admitted_hits(model: AdoptingPool, records: Iterable[Record]) -> list[str]:
    """Each `request_admit` names the oracle's hits, in chain order (RKC-TR-8); returns the
    requests admitted."""
    admitted = []
    own = model.profile.restore_requests
    for rec in records:
        if rec.get("kind") != "request_admit" or (own and rec["request"].startswith(own)):
            continue  # (a runtime's own restore request: the oracle follows its claim)
        rid = rec["request"]
        r = model.requests.get(rid)
        want = [] if r is None else list(r.chain[: r.hits])
        if list(rec.get("hit_blocks", [])) != want:
            raise ContractViolation(
                f"RKC-TR-8: request_admit of {rid} names {len(rec.get('hit_blocks', []))} hit blocks "
                f"{rec.get('hit_blocks', [])}, the oracle reuses {len(want)}: {want}"
            )
        admitted.append(rid)
    return admitted


def check_hit_queries(rt: RuntimeAdapter, model: AdoptingPool, admitted: Iterable[str]) -> None:
    """The adapter's `hit_blocks(id)` of each admitted request is the oracle's (RKC-TR-8)."""
    for rid in admitted:
        if rt.hit_blocks(rid) != model.requests[rid].hits:
            raise ContractViolation(
                f"RKC-TR-8: hit_blocks({rid!r}) is {rt.hit_blocks(rid)}, the oracle's is {model.requests[rid].hits}"
            )


class Comparison:
    """One runtime against its oracle, from their first step on: what it reported since the
    last `check` (the oracle's events and the table it saw)."""

    def __init__(self, rt: RuntimeAdapter, model: AdoptingPool) -> None:
        self.rt, self.model = rt, model
        self.seen = len(model.events)
        self.table = frozenset(rt.resident())
        self.admitted: list[str] = []
        self.loss = frozenset(model.spec.lifecycle.loss_events)

    def check(self, records: Sequence[Record]) -> None:
        """After a step, before the caller compares counts: claim events, hits, the block
        table (adopting into the oracle what the contract leaves to the runtime). `records`:
        the trace's records since the last check (the caller reads the trace once, for its
        checker too)."""
        check_claim_events(self.model.events[self.seen :], records, self.loss)
        self.seen = len(self.model.events)
        self.admitted += check_admitted_hits(self.model, records)
        check_hit_queries(self.rt, self.model, self.admitted)
        # An ended request's hits were compared once more as it ended; a long life drops it.
        self.admitted = [rid for rid in self.admitted if rid in self.model.running]
        resident = self.rt.resident()
        check_table_moves(self.table, resident, records)
        check_prediction(self.model, resident, self.rt.counts(), records)
        self.table = frozenset(resident)
