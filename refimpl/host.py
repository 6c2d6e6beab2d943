"""The host tier: a CPU tensor (pinned when the device is CUDA) holding offloaded blocks.

Copies are verified by checksum against the one recorded when the claim materialized.
The checksum (`kv.checksums`, `kvclaims.blockcopy`: xxh3-128 of a block's bytes) is
taken in host memory on the CPU side of each transfer, where the bytes pass anyway:
after a block lands on the host (offload), as it leaves the host (restore). A transfer
moves a claim's blocks in cache-sized chunks, each digested while in cache.
"""

from __future__ import annotations

from typing import Sequence

import torch

from kvclaims.blockcopy import copy_in, copy_out, digests


class HostTier:
    def __init__(self, capacity: int, block_shape: tuple[int, ...], pin: bool) -> None:
        self.capacity = capacity
        self.kv = torch.zeros(capacity, *block_shape, pin_memory=pin and capacity > 0)
        self.index: dict[str, int] = {}  # hash -> host slot
        self.owners: dict[str, set[str]] = {}  # hash -> claims whose offload holds it
        self.free: list[int] = list(range(capacity - 1, -1, -1))

    def room(self, hashes) -> bool:
        return len([h for h in set(hashes) if h not in self.index]) <= len(self.free)

    def store(self, hashes: Sequence[str], kv: torch.Tensor, slots: Sequence[int], owner: str) -> list[str]:
        """Copy device blocks `kv[slots]` (one per hash) out for `owner`; returns the host
        copies' checksums, taken on the host after each copy landed.

        A hash already on the host is shared, not copied again; its existing copy is
        what gets digested. Copy first, index after: a copy that fails (raises) leaves
        the tier as it was (what it wrote went to free slots).
        """
        fresh = [i for i, h in enumerate(hashes) if h not in self.index]
        rows = self.free[len(self.free) - len(fresh) :][::-1]
        copied = copy_out([kv], [slots[i] for i in fresh], [self.kv], rows) if fresh else []
        del self.free[len(self.free) - len(fresh) :]
        self.index.update((hashes[i], s) for i, s in zip(fresh, rows))
        for h in hashes:
            self.owners.setdefault(h, set()).add(owner)
        got = dict(zip((hashes[i] for i in fresh), copied))
        shared = [h for h in hashes if h not in got]
        got.update(zip(shared, self.digests(shared)))
        return [got[h] for h in hashes]

    def load(self, hashes: Sequence[str], kv: torch.Tensor, slots: Sequence[int]) -> list[str]:
        """Copy the host blocks of `hashes` into device blocks `kv[slots]`; returns the
        checksums of the host copies, taken as each left the host (the bytes the transfer
        read). The caller compares them before the device blocks may be used."""
        return copy_in([self.kv], [self.index[h] for h in hashes], [kv], list(slots))

    def digests(self, hashes: Sequence[str]) -> list[str]:
        """Checksums of the host copies of `hashes`, where they lie."""
        return digests([self.kv], [self.index[h] for h in hashes])

    def release(self, h: str, owner: str) -> bool:
        """`owner` gives up its copy; returns True if the block left the host tier. Its slot
        is not wiped: nothing reaches a free slot, and the next store overwrites it whole."""
        self.owners[h].discard(owner)
        if self.owners[h]:
            return False
        del self.owners[h]
        self.free.append(self.index.pop(h))
        return True

    def corrupt(self, h: str) -> None:
        """Test hook: flip the content of a host copy (a stale or corrupt host block)."""
        self.kv[self.index[h]] += 1.0
