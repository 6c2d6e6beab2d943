"""What the oracle adopts from the runtime it is compared with, under the runtime's profile.

The core (`kvclaims.model.pool.PoolModel`) predicts what the contract decides and
settles what it leaves open plainly. `AdoptingPool` follows one runtime instead,
adopting only what the contract leaves to it: from every runtime, which cached
blocks its LRU took, where its trace names the eviction; from a runtime whose
`RuntimeProfile` says so, its recomputed last blocks and its indexed second
copies, with what they do to hits, evictions and write no-admit. Any other
difference from its block table is not adopted but returned (`sync`), for the
caller to report as a violation.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from typing import Collection, Mapping, Sequence

from kvclaims.model.feasibility import PoolCounts
from kvclaims.model.pool import ModelClaim, ModelRequest, PoolModel
from kvclaims.model.profile import RuntimeProfile


@dataclass(frozen=True)
class TableDiff:
    """How a runtime's block table differs from the oracle's prediction, after adoption."""

    unpredicted: frozenset[str]  # resident in the runtime, not in the oracle
    vanished: frozenset[str]  # predicted resident, gone from the runtime

    def __bool__(self) -> bool:
        return bool(self.unpredicted or self.vanished)


@dataclass
class AdoptingPool(PoolModel):
    """The oracle for a runtime with `profile`."""

    profile: RuntimeProfile = field(default_factory=RuntimeProfile)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._lru: dict[str, deque[str]] = {}  # the operation's LRU evictions, per admission
        self._no_copy: set[str] = set()  # claims the runtime demoted for want of a host copy
        self.copies: dict[str, set[str]] = {}  # running request -> hashes it keeps a second copy of

    # --- from every runtime: what its LRU took, and its block table ---------------
    def lru_evicted(self, evictions: Mapping[str, Sequence[str]]) -> None:
        """Before an operation is replayed: the cached blocks the runtime's LRU evicted for
        each admission or growth in it, in order, from its trace."""
        self._lru = {rid: deque(hashes) for rid, hashes in evictions.items()}

    def _take_lru(self, request_id: str, need: int) -> None:
        """All the request's reported evictions are gone, however many it needed: the contract
        leaves to the runtime which cached blocks go, and when (before a claim yields, say)."""
        super()._take_lru(request_id, need)
        self.resident -= set(self._lru.pop(request_id, ())) & self._cached()

    def _evict_lru(self, request_id: str) -> None:
        """The next eviction the trace reports for the request; with none, a copied original
        the runtime took (`_drop_copied_original`)."""
        if self._lru.get(request_id):
            self.resident.discard(self._lru[request_id].popleft())
        elif not self._drop_copied_original():
            raise AssertionError(f"admitting {request_id} needs an LRU eviction the runtime's trace does not report")

    def sync(self, resident: set[str], counts: PoolCounts, lru: Collection[str] = ()) -> TableDiff:
        """After an operation, adopt from the runtime's block table only what the contract leaves
        to it: cached blocks its LRU took that its trace names (`lru`; owner restores make room
        with no admission to group them by), and what only its `counts` show under its profile
        (see `_silent_reuses`). Whatever else differs is returned, for the caller to judge."""
        self.resident -= (self.resident - resident) & set(lru) & self._cached()
        if self.profile.takes_cached_while_free:
            self._silent_reuses(counts)
        return TableDiff(frozenset(resident - self.resident), frozenset(self.resident - resident))

    def demoted(self, claim_ids: Collection[str]) -> None:
        """Before an operation is replayed: the claims its trace demotes. Under
        `copies_with_compute` a claim that could have offloaded but was demoted had no
        complete host copy, which only the runtime knows."""
        self._no_copy = set(claim_ids) if self.profile.copies_with_compute else set()

    # --- under the profile -------------------------------------------------------
    def _host_room(self, c: ModelClaim) -> bool:
        return super()._host_room(c) and c.terms.id not in self._no_copy

    def _offload_fails(self, c: ModelClaim) -> bool:
        """Under `copies_with_compute` a shared copy's corruption is found when it is loaded
        back, not when this claim offloads."""
        return not self.profile.copies_with_compute and super()._offload_fails(c)

    def _hits(self, r: ModelRequest) -> int:
        """Under `recomputes_last_block` a prompt whose every block is cached (none partial)
        hits all but its last."""
        hits = super()._hits(r)
        return hits - 1 if self.profile.recomputes_last_block and 0 < hits == r.blocks else hits

    def _reused(self, r: ModelRequest, hits: int) -> frozenset[str]:
        """Under `recomputes_last_block` the last block of a prompt whose every block is cached
        is computed again only for the last token's logits: a claim on exactly that prompt
        is reused all the same (its replay is a hit)."""
        if self.profile.recomputes_last_block and 0 < hits == r.blocks - 1 == len(r.chain) - 1:
            if super()._hits(r) == r.blocks:
                return frozenset(r.chain)
        return super()._reused(r, hits)

    def _drops(self, hashes: set[str]) -> set[str]:
        """In a radix tree (`keeps_parents`) a block stays while a block after it on a chain
        that runs through it stays: write no-admit and an offload drop the rest."""
        drops = super()._drops(hashes)
        if not self.profile.keeps_parents:
            return drops
        chains = [r.chain for r in self.requests.values()] + [c.terms.chain for c in self.claims.values()]
        kept = True
        while kept:
            kept = False
            for h in sorted(drops):
                if any(h in ch and set(ch[ch.index(h) + 1 :]) & (self.resident - drops) for ch in chains):
                    drops.discard(h)
                    kept = True
        return drops

    def _recomputed(self, request_id: str, hashes: set[str]) -> None:
        """Still the request's own blocks, but indexed as second copies where the runtime keeps
        them; given back at once where it shares the indexed copy (`shares_recomputed`)."""
        if self.profile.shares_recomputed:
            return
        super()._recomputed(request_id, hashes)
        if self.profile.keeps_duplicate_copies and hashes:
            self.copies.setdefault(request_id, set()).update(hashes)

    def _orphan(self, hashes: set[str]) -> None:
        """An operator action unindexes every copy of `hashes`."""
        super()._orphan(hashes)
        for held in self.copies.values():
            held -= hashes

    def _end_request(self, request_id: str, allowed: tuple[str, ...], status: str) -> None:
        super()._end_request(request_id, allowed, status)
        self.copies.pop(request_id, None)

    def _unindex(self, h: str) -> None:
        """Where a running request keeps a second copy of `h`, the hash stays indexed in it."""
        if not self._promote(h):
            super()._unindex(h)

    def _promote(self, h: str) -> bool:
        """The indexed copy of `h` left; a running request's second copy (if any) is now it."""
        for rid, held in sorted(self.copies.items()):
            if h in held:
                held.discard(h)
                self.requests[rid].orphaned.discard(h)
                self._let_go(rid, {h})
                return True
        return False

    def _drop_copied_original(self) -> bool:
        """The runtime reused an unheld block whose hash a running request's second copy also
        indexes: no hash left, so its trace reports nothing. The copy is the indexed one now."""
        unheld = self.resident - self._running_hashes() - self._claimed()
        copied = sorted(h for held in self.copies.values() for h in held & unheld)
        return bool(copied) and self._promote(copied[0])

    def _silent_reuses(self, counts: PoolCounts) -> None:
        """A runtime that takes cached blocks while free ones remain may have reused copied
        originals with no eviction due (see `_drop_copied_original`): each shows only in its
        counts, as a cached block less and a free one more than predicted."""
        mine = self.counts()
        reused = mine.cached - counts.cached
        if reused > 0 and counts == replace(mine, cached=counts.cached, free=mine.free + reused):
            for _ in range(reused):
                self._drop_copied_original()
