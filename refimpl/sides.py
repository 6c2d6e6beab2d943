"""The reference runtime as the claim book sees it: its device pool and its host tier.

`kvclaims.claimbook.ClaimBook` keeps the claims; these lend it the runtime's blocks.
A block is a slot number of `DevicePool`.
"""

from __future__ import annotations

from typing import Sequence

from kvclaims.errors import NoRoom
from kvclaims.model.claim import Claim
from kvclaims.refimpl.host import HostTier
from kvclaims.refimpl.pool import DevicePool
from kvclaims.trace import TraceWriter
from kvclaims.model.names import EVENT


class DeviceSide:
    def __init__(self, pool: DevicePool) -> None:
        self.pool = pool

    def resident(self, c: Claim, key: list[str]) -> list[int] | None:
        index = self.pool.index
        return [index[h] for h in key] if all(h in index for h in key) else None

    def hold(self, c: Claim, blocks: Sequence[int]) -> None:
        for slot in blocks:
            self.pool.hold(slot, c.id, c.blocking)

    def unhold(self, c: Claim, blocks: Sequence[int]) -> None:
        """Tail first, so LRU evicts a chain's tail before its head."""
        for slot in reversed(blocks):
            self.pool.unhold(slot, c.id, c.blocking)

    def block_id(self, block: int) -> int:
        return block


class HostSide:
    """The host tier: copies out in one batch, verified by checksum (see `HostTier`)."""

    def __init__(self, host: HostTier, pool: DevicePool, trace: TraceWriter) -> None:
        self.host, self.pool, self.trace = host, pool, trace

    def digests(self, blocks: Sequence[int]) -> list[str]:
        return self.pool.digests(blocks)

    def room(self, c: Claim) -> bool:
        return self.host.room(c.chain)

    def copy_out(self, c: Claim, blocks: Sequence[int]) -> dict[str, str]:
        """A copy that cannot be made (allocation or transfer failed) raises NoRoom with the
        tier as it was: the claim's device KV is intact."""
        try:
            copies = self.host.store(c.chain, self.pool.kv, list(blocks), c.id)
        except (RuntimeError, MemoryError) as exc:  # torch's out-of-memory errors are RuntimeErrors
            raise NoRoom(f"claim {c.id!r}: the host tier could not take its blocks: {exc}") from exc
        return dict(zip(c.chain, copies))

    def offloaded(self, c: Claim) -> None:
        """The device copies that nothing else holds leave the cache."""
        p = self.pool
        hashes = p.evict_all([p.index[h] for h in c.chain if p.index.get(h) in p.lru])
        self.trace.emit("block_evict", blocks=hashes, tier="device", reason=EVENT.offload)

    def drop(self, c: Claim, reason: str) -> None:
        gone = [h for h in c.chain if h in self.host.index and self.host.release(h, c.id)]
        if gone:
            self.trace.emit("block_evict", blocks=gone, tier="host", reason=reason)
