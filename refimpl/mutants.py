"""Seeded mutants: the reference runtime with one contract rule broken each.

The stateful suite must catch every one (tests/test_mutants.py); a mutant that
survives means a check that cannot fail. Each overrides one small seam of
`Runtime` or of its claim book (`Runtime.Book`), so the bug is exactly the one named,
and names the obligation it breaks (`obligation`).
"""

from __future__ import annotations

from typing import Any, Sequence, cast

from kvclaims.claimbook import ClaimBook
from kvclaims.model.feasibility import Decision
from kvclaims.refimpl.adapter import RefimplAdapter
from kvclaims.model.claim import Claim
from kvclaims.refimpl.claims import Request
from kvclaims.refimpl.sides import DeviceSide
from kvclaims.model.names import EVENT, STATE


class Mutant(RefimplAdapter):
    obligation: str  # the spec id of the rule it breaks


class EvictHardClaimed(Mutant):
    """Blocking claims pin nothing: their blocks stay evictable cache."""

    obligation = "RKC-INV-2"

    class Book(ClaimBook):
        def hold(self, c: Claim, blocks: Sequence[Any]) -> None:
            if not c.blocking:
                super().hold(c, blocks)


class SkipDemotionEvent(Mutant):
    """Demotion withdraws protection without emitting `demote`."""

    obligation = "RKC-RT-1"

    class Book(ClaimBook):
        def demote(self, c: Claim, **fields: Any) -> None:
            self.unhold(c)


class EventAfterReuse(Mutant):
    """The demoted claim's blocks are evicted first, the `demote` event comes after."""

    obligation = "RKC-RT-1"

    class Book(ClaimBook):
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

    class Book(ClaimBook):
        def matches(self, arrived: dict[str, str], c: Claim) -> bool:
            return True


class AcceptPastReserve(Mutant):
    """Hard claims are accepted whatever the reserve says."""

    obligation = "RKC-ACC-1"

    class Book(ClaimBook):
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
