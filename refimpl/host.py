"""The host tier: a CPU tensor (pinned when the device is CUDA) holding offloaded blocks.

Copies are verified by checksum on the way out and on the way back; the
checksum compared against is the one recorded when the claim materialized.
A claim's blocks move as one batch: one gather, one transfer, one digest pass.
"""

from __future__ import annotations

from typing import Sequence

import torch

from kvclaims.refimpl.kv import checksums


class HostTier:
    def __init__(self, capacity: int, block_shape: tuple[int, ...], pin: bool) -> None:
        self.capacity = capacity
        self.kv = torch.zeros(capacity, *block_shape, pin_memory=pin and capacity > 0)
        self.index: dict[str, int] = {}  # hash -> host slot
        self.owners: dict[str, set[str]] = {}  # hash -> claims whose offload holds it
        self.free: list[int] = list(range(capacity - 1, -1, -1))

    def room(self, hashes) -> bool:
        return len([h for h in set(hashes) if h not in self.index]) <= len(self.free)

    def store(self, hashes: Sequence[str], blocks: torch.Tensor, owner: str) -> list[str]:
        """Copy device `blocks` (one per hash) out for `owner`; returns the host copies' checksums.

        A hash already on the host is shared, not copied again; its existing copy
        is what gets verified.
        """
        fresh = [i for i, h in enumerate(hashes) if h not in self.index]
        if fresh:  # copy first, index after: a failed copy leaves the tier as it was
            slots = self.free[len(self.free) - len(fresh) :][::-1]
            self.kv[slots] = blocks[fresh].cpu()
            del self.free[len(self.free) - len(fresh) :]
            self.index.update((hashes[i], s) for i, s in zip(fresh, slots))
        for h in hashes:
            self.owners.setdefault(h, set()).add(owner)
        return checksums(self.kv[[self.index[h] for h in hashes]])

    def load(self, hashes: Sequence[str], kv: torch.Tensor, slots: Sequence[int]) -> None:
        """Copy the host blocks of `hashes` into `kv[slots]` (device blocks), in one transfer."""
        kv[list(slots)] = self.kv[[self.index[h] for h in hashes]].to(kv.device)

    def release(self, h: str, owner: str) -> bool:
        """`owner` gives up its copy; returns True if the block left the host tier."""
        self.owners[h].discard(owner)
        if self.owners[h]:
            return False
        del self.owners[h]
        slot = self.index.pop(h)
        self.kv[slot].zero_()
        self.free.append(slot)
        return True

    def corrupt(self, h: str) -> None:
        """Test hook: flip the content of a host copy (a stale or corrupt host block)."""
        self.kv[self.index[h]] += 1.0
