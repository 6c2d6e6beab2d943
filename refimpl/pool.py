"""The device block pool: real KV tensors, a prefix-hash index, ref counts, LRU.

The pool only stores and moves blocks; who may lose a block (claims, policies,
events) is the runtime's decision. Invariant kept by `settle`: a slot is in
the LRU iff it has a registered hash and nobody (request or claim) holds it.

Block classes (the spec's precedence protected > active > yielding > cached >
free) are kept as running counts, updated whenever a slot changes, so a
feasibility decision reads them in O(1) instead of scanning the pool.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch

from kvclaims.refimpl.kv import checksums, content

CLASSES = ("cached", "yielding", "active", "protected")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class DevicePool:
    """`U` usable blocks of `B` tokens; KV lives in `kv[U, 2, B, heads, head_dim]`."""

    def __init__(
        self, U: int, B: int, heads: int = 2, head_dim: int = 8, device: torch.device | str | None = None
    ) -> None:
        self.U, self.B, self.heads, self.head_dim = U, B, heads, head_dim
        self.device = torch.device(device) if device is not None else default_device()
        self.kv = torch.zeros(U, 2, B, heads, head_dim, device=self.device)
        self.hash_of: list[str | None] = [None] * U
        self.refs = [0] * U  # requests holding the slot
        self.holders: list[set[str]] = [set() for _ in range(U)]  # materialized claims
        self.blockers = [0] * U  # how many of the holders are blocking
        self.index: dict[str, int] = {}  # registered hash -> slot
        self.lru: OrderedDict[int, None] = OrderedDict()  # cached slots, oldest first
        self.free: list[int] = list(range(U - 1, -1, -1))  # pop() gives slot 0 first
        self.is_free = [True] * U
        self.klass: list[str | None] = [None] * U  # None: free or in passing
        self.count = dict.fromkeys(CLASSES, 0)
        self.protected: set[int] = set()

    def lookup(self, h: str) -> int | None:
        return self.index.get(h)

    def take_free(self) -> int:
        slot = self.free.pop()
        self.is_free[slot] = False
        return slot

    def write(self, slot: int, tokens: Sequence[int], start: int, offset: int = 0, weights: int = 0) -> None:
        """Compute KV for `tokens` (absolute positions from `start`) into the slot at `offset`,
        under weights version `weights`."""
        self.kv[slot, :, offset : offset + len(tokens)] = content(
            tokens, start, self.heads, self.head_dim, self.device, weights
        )

    def verify(self, slot: int, tokens: Sequence[int], start: int, weights: int = 0) -> bool:
        """Does the slot hold exactly the KV of `tokens` at positions from `start` under
        weights version `weights`?"""
        want = content(tokens, start, self.heads, self.head_dim, self.device, weights)
        return bool(torch.equal(self.kv[slot, :, : len(tokens)], want))

    def digests(self, slots: Sequence[int]) -> list[str]:
        """Checksums of the slots' current KV, in one pass on the device."""
        return checksums(self.kv[list(slots)]) if slots else []

    def register(self, slot: int, h: str) -> bool:
        """Enter a full block in the prefix index (False if h is taken)."""
        if h in self.index:
            return False
        self.index[h], self.hash_of[slot] = slot, h
        return True

    def unregister(self, slot: int) -> str | None:
        """Drop the slot from the prefix index (its content may no longer be served)."""
        h = self.hash_of[slot]
        if h is not None:
            del self.index[h]
        self.hash_of[slot] = None
        self.lru.pop(slot, None)
        self._reclass(slot)
        return h

    def evict(self, slot: int) -> str | None:
        """Unregister and return the slot to the free list; returns the hash it held."""
        return self.evict_all([slot])[0]

    def evict_all(self, slots: list[int]) -> list[str | None]:
        """`evict` each slot, their KV wiped in one call (an offload evicts a whole chain)."""
        hashes = [self.unregister(s) for s in slots]
        if slots:
            self.kv.index_fill_(0, torch.tensor(slots, device=self.kv.device), 0)
        for s in slots:
            self.free.append(s)
            self.is_free[s] = True
        return hashes

    def held(self, slot: int) -> bool:
        return self.refs[slot] > 0 or bool(self.holders[slot])

    def hold(self, slot: int, claim: str, blocking: bool) -> None:
        if claim not in self.holders[slot]:
            self.holders[slot].add(claim)
            self.blockers[slot] += blocking
        self.settle(slot)

    def unhold(self, slot: int, claim: str, blocking: bool) -> None:
        if claim in self.holders[slot]:
            self.holders[slot].discard(claim)
            self.blockers[slot] -= blocking
        self.settle(slot)

    def settle(self, slot: int) -> None:
        """Restore the LRU invariant after refs/holders changed; unheld unhashed slots are freed."""
        if self.held(slot):
            self.lru.pop(slot, None)
        elif self.hash_of[slot] is None:
            if not self.is_free[slot]:
                self.evict(slot)
        elif slot not in self.lru:
            self.lru[slot] = None
        self._reclass(slot)

    def class_of(self, slot: int) -> str | None:
        """The class the slot's refs, holders and LRU membership give (None: free or in passing)."""
        return (
            "protected"
            if self.blockers[slot]
            else "active"
            if self.refs[slot]
            else "yielding"
            if self.holders[slot]
            else "cached"
            if slot in self.lru
            else None
        )

    def _reclass(self, slot: int) -> None:
        """Move the slot to the class its refs, holders and LRU membership now give."""
        new = self.class_of(slot)
        old = self.klass[slot]
        if new == old:
            return
        if old:
            self.count[old] -= 1
        if new:
            self.count[new] += 1
        self.klass[slot] = new
        (self.protected.add if new == "protected" else self.protected.discard)(slot)

    def check_valid(self) -> None:
        """Walk every structure against the per-slot facts it is derived from; raises
        AssertionError naming what drifted (for tests: it scans the whole pool)."""
        assert all(self.hash_of[slot] == h for h, slot in self.index.items()), "index and hash_of disagree"
        assert sum(h is not None for h in self.hash_of) == len(self.index), "a hashed slot is missing from the index"
        assert len(set(self.free)) == len(self.free), f"a slot is on the free list twice: {self.free}"
        assert set(self.free) == {s for s in range(self.U) if self.is_free[s]}, "free list and is_free disagree"
        for s in range(self.U):
            assert 0 <= self.blockers[s] <= len(self.holders[s]) and self.refs[s] >= 0, f"slot {s}: bad counts"
            assert not (self.is_free[s] and (self.held(s) or self.hash_of[s])), f"free slot {s} is held or hashed"
            cached = self.hash_of[s] is not None and not self.held(s) and not self.is_free[s]
            assert (s in self.lru) == cached, f"slot {s}: in LRU {s in self.lru}, cached {cached}"
            assert self.klass[s] == self.class_of(s), f"slot {s}: class {self.klass[s]}, should be {self.class_of(s)}"
        want = dict.fromkeys(CLASSES, 0)
        for s in range(self.U):
            if self.klass[s]:
                want[self.klass[s]] += 1  # type: ignore[index]
        assert self.count == want, f"class counts {self.count} != the slots' classes {want}"
        assert self.protected == {s for s in range(self.U) if self.klass[s] == "protected"}, "protected set drifted"

    def oldest_cached(self) -> int | None:
        return next(iter(self.lru), None)
