"""Claims over SGLang's host tier (`kvclaims.sglang.hicache`): the claim book's `HostSide`,
and restores.

- **Offload.** SGLang backs up the claim's path (the pages not yet on the host), the
  copies are checked against the checksums recorded when the claim materialized, a host
  lock ref pins them, and the claim's device pages that nothing else holds are demoted
  (evicted from the device, kept on the host) deepest first, as SGLang evicts.
- **Restore**, by the owner or for a request whose prompt starts with the claim's chain:
  the host copies of the pages missing from the device are checked first, then SGLang
  loads them back. A copy that fails its check fails the claim closed (``fail``, reason
  ``checksum_mismatch``) and nothing is loaded: the request computes those pages.
- **The trace** shows the claim-visible host tier, as the reference runtime's: copies
  enter with a claim's ``block_offload`` and leave (``block_evict``, tier ``host``) when no
  claim pins them any more. A backup SGLang keeps past that is not the contract's: it is
  never loaded, and a later offload writes it again from the device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from kvclaims.errors import NoRoom
from kvclaims.model.claim import Claim
from kvclaims.model.names import EVENT

if TYPE_CHECKING:
    from kvclaims.sglang.claims import RadixClaims


class SglangHostSide:
    """The book's `HostSide` over HiCache, holding at most `capacity` claimed pages."""

    def __init__(self, claims: RadixClaims, capacity: int) -> None:
        assert claims.pool.host is not None, "a host side needs SGLang's host tier"
        self.claims, self.pool, self.tier, self.capacity = claims, claims.pool, claims.pool.host, capacity
        self.owners: dict[str, set[str]] = {}  # host copy (chain hash) -> offloaded claims pinning it
        self.pins: dict[str, tuple[Any, Any]] = {}  # claim -> (its node, its host lock ref's receipt)

    def _key(self, c: Claim) -> list[int]:
        return self.claims.book.entries[c.id].key

    # ------------------------------------------------------------------ HostSide
    def digests(self, blocks: Sequence[int]) -> list[str]:
        return [self.tier.device_digest(page) for page in blocks]

    def room(self, c: Claim) -> bool:
        return len(set(c.chain) - self.owners.keys()) <= self.capacity - len(self.owners)

    def copy_out(self, c: Claim, blocks: Sequence[int]) -> dict[str, str]:
        """SGLang backs up the claim's pages; a copy it kept that no claim pins is written
        again. Returns every page's host checksum; NoRoom when SGLang's host pool is full."""
        pages = dict(zip(c.chain, blocks, strict=True))
        kept = {h: page for h, page in pages.items() if h in self.tier.pages and h not in self.owners}
        if not self.tier.backup(self.pool.match(self._key(c))[1], pages):
            raise NoRoom(f"claim {c.id!r}: SGLang's host pool has no room for its pages")
        self.tier.rewrite(kept)
        return {h: self.tier.host_digest(h) or "" for h in c.chain}

    def offloaded(self, c: Claim) -> None:
        """Pin the copies; the device pages nothing else holds leave, deepest first."""
        key = self._key(c)
        node = self.pool.match(key)[1]
        self.pins[c.id] = (node, self.pool.cache.inc_host_lock_ref(node).to_dec_params())
        for h in c.chain:
            self.owners.setdefault(h, set()).add(c.id)
        self.pool.evict_path(key, 0, keep=self.claims.held_pages())
        self.claims.sync(EVENT.offload)

    def drop(self, c: Claim, reason: str) -> None:
        if c.id not in self.pins:
            return
        node, receipt = self.pins.pop(c.id)
        self.pool.cache.dec_host_lock_ref(node, receipt)
        gone = []
        for h in c.chain:
            self.owners[h].discard(c.id)
            if not self.owners[h]:
                del self.owners[h]
                gone.append(h)
        if gone:
            self.claims.trace.emit("block_evict", blocks=gone, tier="host", reason=reason)

    # ------------------------------------------------------------------ restores
    def restore(self, c: Claim, computes_last: bool = False) -> bool:
        """Bring offloaded `c` back (the caller checked room and reserve): the host copies of
        its pages missing from the device verified, then loaded by SGLang, the claim holding
        its chain again; or failed closed, nothing loaded. `computes_last`: the request it is
        restored for computes the chain's last page again anyway (SGLang computes a prompt's
        last token, `Req.init_next_round_input`), so that page is not loaded and the claim is
        restored when the request has computed it (`finish`, returns False till then)."""
        book, key = self.claims.book, self._key(c)
        have = self.pool.match(key)[0]
        if any(self.tier.host_digest(h) != c.checksums[h] for h in c.chain[have:]):
            book.end(c, EVENT.fail, reason="checksum_mismatch")
            return False
        load = len(c.chain) - computes_last
        if load > have:
            loaded = self.tier.load(self.pool.host_node(key[: load * self.pool.B]))
            assert loaded, f"SGLang could not load claim {c.id}'s pages back: its room was checked"
        stored = self.claims.sync("lru", restore=c.id)
        assert len(stored) == max(0, load - have), f"claim {c.id}: loaded {stored}, {load - have} missing"
        if load < len(c.chain):
            return False
        self.finish(c)
        return True

    def finish(self, c: Claim) -> None:
        """`c`'s chain is on the device again: checked against its checksums, restored, held."""
        blocks = self.claims.side.resident(c, self._key(c))
        assert blocks is not None, f"claim {c.id} is restored with pages missing"
        self.claims.book.fire(c, EVENT.restore, {"arrived": dict(zip(c.chain, self.digests(blocks)))})
        self.claims.book.hold(c, blocks)
        self.drop(c, reason=EVENT.restore)

    def corrupt(self, h: str) -> None:
        self.tier.corrupt(h)
