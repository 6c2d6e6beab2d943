"""Seeded mutants: the reference runtime with one contract rule broken each.

The stateful suite must catch every one (tests/test_mutants.py); a mutant that
survives means a check that cannot fail. Each overrides one small seam of
`Runtime` or of its claim book (`Runtime.Book`), so the bug is exactly the one named,
and names the obligation it breaks (`obligation`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence, TypeAlias, cast

from kvclaims.claimbook import ClaimBook
from kvclaims.model.feasibility import Decision
from kvclaims.refimpl.adapter import RefimplAdapter
from kvclaims.model.claim import Claim
from kvclaims.refimpl.claims import Request
from kvclaims.refimpl.sides import DeviceSide
from kvclaims.model.names import EVENT, STATE, STATUS


ReferenceBook: TypeAlias = ClaimBook  # the reference runtime's claim book; a mutant's `Book` overrides one seam


class Mutant(RefimplAdapter):
    obligation: str  # the spec id of the rule it breaks


class EvictHardClaimed(Mutant):
    """Blocking claims pin nothing: their blocks stay evictable cache."""

    obligation = "RKC-INV-2"

    class Book(ReferenceBook):
        def hold(self, c: Claim, blocks: Sequence[Any]) -> None:
            if not c.blocking:
                super().hold(c, blocks)


class SkipDemotionEvent(Mutant):
    """Demotion withdraws protection without emitting `demote`."""

    obligation = "RKC-RT-1"

    class Book(ReferenceBook):
        def demote(self, c: Claim, **fields: Any) -> None:
            self.unhold(c)


class EventAfterReuse(Mutant):
    """The demoted claim's blocks are evicted first, the `demote` event comes after."""

    obligation = "RKC-RT-1"

    class Book(ReferenceBook):
        def demote(self, c: Claim, **fields: Any) -> None:
            self.unhold(c)
            pool = cast(DeviceSide, self.side).pool
            gone = [pool.evict(pool.index[h]) for h in c.chain if pool.index.get(h) in pool.lru]
            self.trace.emit("block_evict", blocks=gone, tier="device", reason="lru")
            self.fire(c, EVENT.demote, **fields)


class WrongAttribution(Mutant):
    """A claim-blocked refusal names every blocking claim, not the minimal set."""

    obligation = "RKC-FEAS-6"

    def _refuse(self, r: Request, d: Decision) -> None:
        if d.outcome == "refuse_blocked":
            d = Decision(d.outcome, tuple(sorted(self._blocking(()))))
        super()._refuse(r, d)


class ServeCorruptRestore(Mutant):
    """Restores are not verified: a corrupt host copy is served."""

    obligation = "RKC-RT-2"

    class Book(ReferenceBook):
        def matches(self, arrived: dict[str, str], c: Claim) -> bool:
            return True


class AcceptPastReserve(Mutant):
    """Hard claims are accepted whatever the reserve says."""

    obligation = "RKC-ACC-1"

    class Book(ReferenceBook):
        def within_reserve(self, c: Claim, new_blocks: int, reserved: int) -> bool:
            return True


class EventAfterTerminal(Mutant):
    """Hits keep being reported for claims that already ended."""

    obligation = "RKC-TR-5"

    def _admit(self, r: Request, hits: list[int], A: int) -> None:
        super()._admit(r, hits, A)
        for c in sorted(self.claims.values(), key=lambda c: c.id):
            if c.fsm.terminal and c.state != STATE.refused and set(c.chain) <= set(r.hashes[: len(hits)]):
                self.trace.emit("claim", claim=c.id, event=EVENT.hit, state=c.state, request=r.id)


class ClaimBlockedWaits(Mutant):
    """A claim-blocked request is left waiting instead of refused."""

    obligation = "RKC-RT-3"

    def _refuse(self, r: Request, d: Decision) -> None:
        if d.outcome != "refuse_blocked":
            return super()._refuse(r, d)
        if r.id not in self.waiting:
            self.waiting.append(r.id)
            self.trace.emit("request_wait", request=r.id, new_blocks=0)


class StaleStore(Mutant):
    """A request running across an invalidation keeps indexing what it computes: KV
    computed over pre-reset KV is served after the reset."""

    obligation = "RKC-INV-6"

    def _fresh(self, r: Request) -> bool:
        return True


# --- subtle mutants: each breaks one rule where a narrow suite does not look ---------------


class ClampedPriority(Mutant):
    """Negative priorities yield as if 0: a claim of priority -5 outlives one of priority 0
    under pressure (caught only when priorities are drawn below zero)."""

    obligation = "RKC-RT-1"

    class Book(ReferenceBook):
        def yielding(self, frees: Callable[[Claim, Sequence[Any]], bool]) -> Iterator[Claim]:
            live = [c for c in self.in_states(*self.protected) if not c.blocking]
            for c in sorted(live, key=lambda c: (c.hard, max(c.priority, 0), c.id)):
                if c.state in self.protected and frees(c, self.entries[c.id].blocks):
                    yield c


class PartialTailAfterHit(Mutant):
    """After a prefix hit, a prompt's partial last block is left uncomputed (caught only by
    prompts that end mid-block and a check of the KV a request holds)."""

    obligation = "RKC-RT-6"

    def _compute(self, r: Request, start: int) -> None:
        super()._compute(r, start)
        if r.hit_blocks and start == r.hit_blocks * self.B and len(r.tokens) % self.B:
            self.pool.kv[r.slots[-1]].zero_()


class VerifyAllButLast(Mutant):
    """Restore verifies every block of the chain but its last (caught only when a fault can
    land on any block, not always the first)."""

    obligation = "RKC-RT-2"

    class Book(ReferenceBook):
        def matches(self, arrived: dict[str, str], c: Claim) -> bool:
            last = c.chain[-1]
            return {h: v for h, v in arrived.items() if h != last} == {
                h: v for h, v in c.checksums.items() if h != last
            }


class DecodeWaitsOnClaims(Mutant):
    """A decode growth that claims block is left running, as if it were to wait, instead of
    ending refused (caught only when decode is driven into a claim-blocked pool)."""

    obligation = "RKC-RT-3"

    def _refuse(self, r: Request, d: Decision) -> None:
        if r.status == STATUS.running and d.outcome == "refuse_blocked":
            return
        super()._refuse(r, d)

    def _release(self, r: Request, admit: bool) -> None:
        if r.status != STATUS.running:
            super()._release(r, admit)


class VanishingCache(Mutant):
    """Every tick drops the oldest cached block with no block_evict record (caught only when
    the oracle predicts the resident set instead of adopting the runtime's)."""

    obligation = "RKC-TR-6"

    def step(self, ticks: int = 1) -> None:
        super().step(ticks)
        slot = self.pool.oldest_cached()
        if slot is not None:
            self.pool.evict(slot)


class UnderReportedHits(Mutant):
    """request_admit names one block fewer than the request reused (caught only when the
    trace's hits are compared with the oracle's)."""

    obligation = "RKC-TR-8"

    def _admit(self, r: Request, hits: list[int], A: int) -> None:
        super()._admit(r, hits, A)
        admit = next(x for x in reversed(self.trace.records) if x["kind"] == "request_admit" and x["request"] == r.id)
        admit["hit_blocks"] = admit["hit_blocks"][:-1]  # the record as the trace reads it


class LeakEveryNth(Mutant):
    """Every 64th request to finish leaks a free block: taken from the free list and held by
    nobody, so the pool shrinks slowly (caught only by runs long enough for the leak to
    happen: a short example finishes a few requests)."""

    obligation = "RKC-INV-3"
    EVERY = 64

    def finish(self, request_id: str, admit: bool = True) -> None:
        super().finish(request_id, admit)
        self._finished = getattr(self, "_finished", 0) + 1
        if self._finished % self.EVERY == 0 and self.pool.free:
            self.pool.take_free()  # taken, and held by nobody


class RejectionTouchesLru(Mutant):
    """A restore rejected for want of room first refreshes the LRU order of the claim's
    resident blocks (caught only by a whole-state comparison around rejected calls)."""

    obligation = "RKC-RT-4"

    def restore_claim(self, claim_id: str) -> str:
        if claim_id in self.claims:
            for h in self.claims[claim_id].chain:
                if self.pool.index.get(h) in self.pool.lru:
                    self.pool.lru.move_to_end(self.pool.index[h])
        return super().restore_claim(claim_id)


# Caught by the judge once it looks where they hide (issue: "the judge catches every kind").
SUBTLE: dict[str, type[Mutant]] = {
    "clamped_priority": ClampedPriority,
    "partial_tail_after_hit": PartialTailAfterHit,
    "verify_all_but_last": VerifyAllButLast,
    "decode_waits_on_claims": DecodeWaitsOnClaims,
    "vanishing_cache": VanishingCache,
    "under_reported_hits": UnderReportedHits,
    "leak_every_nth": LeakEveryNth,
    "rejection_touches_lru": RejectionTouchesLru,
}

MUTANTS: dict[str, type[Mutant]] = {
    "evict_hard_claimed": EvictHardClaimed,
    "skip_demotion_event": SkipDemotionEvent,
    "event_after_reuse": EventAfterReuse,
    "wrong_attribution": WrongAttribution,
    "serve_corrupt_restore": ServeCorruptRestore,
    "accept_past_reserve": AcceptPastReserve,
    "event_after_terminal": EventAfterTerminal,
    "claim_blocked_waits": ClaimBlockedWaits,
    "stale_store": StaleStore,
}
