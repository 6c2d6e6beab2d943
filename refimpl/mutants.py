"""Seeded mutants: the reference runtime with one contract rule broken each.

The stateful suite must catch every one (tests/test_mutants.py); a mutant that
survives means a check that cannot fail. Each overrides one small seam of
`Runtime`, so the bug is exactly the one named.
"""

from __future__ import annotations

from kvclaims.model.feasibility import Decision
from kvclaims.refimpl.adapter import RefimplAdapter
from kvclaims.model.claim import Claim
from kvclaims.refimpl.claims import Request


class EvictHardClaimed(RefimplAdapter):
    """Blocking claims pin nothing: their blocks stay evictable cache."""

    def _hold(self, c: Claim) -> None:
        if not c.blocking:
            super()._hold(c)


class SkipDemotionEvent(RefimplAdapter):
    """Demotion withdraws protection without emitting `demote`."""

    def _demote(self, c: Claim, **fields) -> None:
        self._unhold(c)


class EventAfterReuse(RefimplAdapter):
    """The demoted claim's blocks are evicted first, the `demote` event comes after."""

    def _demote(self, c: Claim, **fields) -> None:
        self._unhold(c)
        self._evict([s for s in map(self.pool.lookup, c.chain) if s in self.pool.lru], "lru")
        self._fire(c, "demote", **fields)


class WrongAttribution(RefimplAdapter):
    """A claim-blocked refusal names every blocking claim, not the minimal set."""

    def _refuse(self, r: Request, d: Decision) -> None:
        if d.outcome == "refuse_blocked":
            d = Decision(d.outcome, tuple(sorted(self._blocking(()))))
        super()._refuse(r, d)


class ServeCorruptRestore(RefimplAdapter):
    """Restores are not verified: a corrupt host copy is served."""

    def _matches(self, arrived: dict[str, str], c: Claim) -> bool:
        return True


class AcceptPastReserve(RefimplAdapter):
    """Hard claims are accepted whatever the reserve says."""

    def _within_reserve(self, c: Claim, new_blocks: int, reserved: int) -> bool:
        return True


class EventAfterTerminal(RefimplAdapter):
    """Hits keep being reported for claims that already ended."""

    def _admit(self, r: Request, hits: list[int], A: int) -> None:
        super()._admit(r, hits, A)
        for c in sorted(self.claims.values(), key=lambda c: c.id):
            if c.fsm.terminal and c.state != "refused" and set(c.chain) <= set(r.hashes[: len(hits)]):
                self.trace.emit("claim", claim=c.id, event="hit", state=c.state, request=r.id)


class ClaimBlockedWaits(RefimplAdapter):
    """A claim-blocked request is left waiting instead of refused."""

    def _refuse(self, r: Request, d: Decision) -> None:
        if d.outcome != "refuse_blocked":
            return super()._refuse(r, d)
        if r.id not in self.waiting:
            self.waiting.append(r.id)
            self.trace.emit("request_wait", request=r.id, new_blocks=0)


class StaleStore(RefimplAdapter):
    """A request running across an invalidation keeps indexing what it computes (RKC-INV-6):
    KV computed over pre-reset KV is served after the reset."""

    def _fresh(self, r: Request) -> bool:
        return True


MUTANTS: dict[str, type[RefimplAdapter]] = {
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
