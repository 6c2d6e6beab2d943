"""The device block pool: real KV tensors, a prefix-hash index, ref counts, LRU.

The pool only stores and moves blocks; who may lose a block (claims, policies,
events) is the runtime's decision. Invariant kept by `settle`: a slot is in
the LRU iff it has a registered hash and nobody (request or claim) holds it.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch

from kvclaims.refimpl.kv import checksum, content


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class DevicePool:
    """`U` usable blocks of `B` tokens; KV lives in `kv[U, 2, B, heads, head_dim]`."""

    def __init__(self, U: int, B: int, heads: int = 2, head_dim: int = 8,
                 device: torch.device | str | None = None) -> None:
        self.U, self.B, self.heads, self.head_dim = U, B, heads, head_dim
        self.device = torch.device(device) if device is not None else default_device()
        self.kv = torch.zeros(U, 2, B, heads, head_dim, device=self.device)
        self.hash_of: list[str | None] = [None] * U
        self.checksums: list[str | None] = [None] * U
        self.refs = [0] * U                      # requests holding the slot
        self.holders: list[set[str]] = [set() for _ in range(U)]  # materialized claims
        self.index: dict[str, int] = {}          # registered hash -> slot
        self.lru: OrderedDict[int, None] = OrderedDict()  # cached slots, oldest first
        self.free: list[int] = list(range(U - 1, -1, -1))  # pop() gives slot 0 first

    def lookup(self, h: str) -> int | None:
        return self.index.get(h)

    def take_free(self) -> int:
        return self.free.pop()

    def write(self, slot: int, tokens: Sequence[int], start: int, offset: int = 0) -> None:
        """Compute KV for `tokens` (absolute positions from `start`) into the slot at `offset`."""
        self.kv[slot, :, offset:offset + len(tokens)] = content(
            tokens, start, self.heads, self.head_dim, self.device)

    def verify(self, slot: int, tokens: Sequence[int], start: int) -> bool:
        """Does the slot hold exactly the KV of `tokens` at positions from `start`?"""
        want = content(tokens, start, self.heads, self.head_dim, self.device)
        return bool(torch.equal(self.kv[slot, :, :len(tokens)], want))

    def register(self, slot: int, h: str) -> bool:
        """Enter a full block in the prefix index and record its checksum (False if h is taken)."""
        if h in self.index:
            return False
        self.index[h], self.hash_of[slot] = slot, h
        self.checksums[slot] = checksum(self.kv[slot])
        return True

    def unregister(self, slot: int) -> str | None:
        """Drop the slot from the prefix index (its content may no longer be served)."""
        h = self.hash_of[slot]
        if h is not None:
            del self.index[h]
        self.hash_of[slot] = self.checksums[slot] = None
        self.lru.pop(slot, None)
        return h

    def evict(self, slot: int) -> str | None:
        """Unregister and return the slot to the free list; returns the hash it held."""
        h = self.unregister(slot)
        self.kv[slot].zero_()
        self.free.append(slot)
        return h

    def held(self, slot: int) -> bool:
        return self.refs[slot] > 0 or bool(self.holders[slot])

    def settle(self, slot: int) -> None:
        """Restore the LRU invariant after refs/holders changed; unheld unhashed slots are freed."""
        if self.held(slot):
            self.lru.pop(slot, None)
        elif self.hash_of[slot] is None:
            if slot not in self.free:
                self.evict(slot)
        elif slot not in self.lru:
            self.lru[slot] = None

    def oldest_cached(self) -> int | None:
        return next(iter(self.lru), None)
