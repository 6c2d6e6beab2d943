"""The host tier: a CPU tensor (pinned when the device is CUDA) holding offloaded blocks.

Copies are verified by checksum on the way out and on the way back; the
checksum compared against is the one recorded when the claim materialized.
"""
from __future__ import annotations

import torch

from kvclaims.refimpl.kv import checksum


class HostTier:
    def __init__(self, capacity: int, block_shape: tuple[int, ...], pin: bool) -> None:
        self.capacity = capacity
        self.kv = torch.zeros(capacity, *block_shape, pin_memory=pin and capacity > 0)
        self.index: dict[str, int] = {}          # hash -> host slot
        self.owners: dict[str, set[str]] = {}    # hash -> claims whose offload holds it
        self.free: list[int] = list(range(capacity - 1, -1, -1))

    def room(self, hashes) -> bool:
        return len([h for h in set(hashes) if h not in self.index]) <= len(self.free)

    def store(self, h: str, block: torch.Tensor, owner: str) -> str:
        """Copy one device block out for `owner`; returns the host copy's checksum."""
        if h not in self.index:
            self.index[h] = self.free.pop()
            self.kv[self.index[h]].copy_(block)
        self.owners.setdefault(h, set()).add(owner)
        return checksum(self.kv[self.index[h]])

    def load_into(self, h: str, target: torch.Tensor) -> str:
        """Copy a host block into `target` (a device block); returns the checksum of what arrived."""
        target.copy_(self.kv[self.index[h]])
        return checksum(target)

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
