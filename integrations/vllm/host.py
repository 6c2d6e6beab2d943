"""Claims over vLLM's host tier (`kvclaims.vllm.hosttier`): the claim book's `HostSide`.

A claim's host copy is vLLM's own: the connector offers every computed prompt block to
the host, and the store completes one engine step after the compute. So a claim's
checksums are those its blocks' copies were stored with (recorded at materialization
when the copy already exists, else bound when it completes), and the claim may offload
only once every block of its chain has a verified copy there (`room`); until then
pressure demotes it, as for a claim with no host tier. An offloaded claim pins its
chunks, so vLLM's host LRU cannot drop them while it is offloaded.

Restore is vLLM's load path: a request whose prompt starts with an offloaded claim's
chain loads the missing blocks from the host (the worker copies only blocks whose
checksum matches). When the load completes, the claim is restored (`block_restore`,
`restore`) and holds its blocks again, before the request is admitted, so its `hit`
follows. When a block fails its check, vLLM's invalid-KV-load path runs and the claim
owning the chain fails closed first (`fail`, reason ``checksum_mismatch``): the bad
blocks were never indexed, so nothing reuses them, and the bad copy is dropped from the
host so a retry recomputes (`hosttier.ClaimsConnectorScheduler`).

The trace shows the claim-visible host tier, as the reference runtime's: copies enter
with a claim's `block_offload` and leave (`block_evict`, tier ``host``) when no claim
pins them any more; vLLM's unclaimed host cache is not traced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from vllm.v1.core import kv_cache_utils as kvu
from vllm.v1.core.kv_cache_utils import KVCacheBlock
from vllm.v1.kv_offload.base import OffloadKey, make_offload_key
from vllm.v1.request import Request

from kvclaims.errors import NoRoom
from kvclaims.model.claim import Claim
from kvclaims.model.names import EVENT
from kvclaims.vllm.hosttier import ClaimsConnectorScheduler
from kvclaims.vllm.pool import GROUP, hexid

if TYPE_CHECKING:
    from kvclaims.vllm.scheduler import ClaimsScheduler


class VllmHostSide:
    """The book's `HostSide` over the claims host manager (scheduler process)."""

    def __init__(self, sched: ClaimsScheduler, connector: ClaimsConnectorScheduler) -> None:
        self.sched, self.connector, self.manager = sched, connector, connector.host
        self.manager.listener = self
        self.pinned: dict[str, list[OffloadKey]] = {}  # offloaded claim -> the keys it pins
        self.protected = sched.book.protected
        self.offloaded_states = sched.book.spec.lifecycle.dests(EVENT.offload)

    def _keys(self, c: Claim) -> list[OffloadKey]:
        return [make_offload_key(h, GROUP) for h in self.sched.book.entries[c.id].key]

    # ------------------------------------------------------------------ HostSide
    def digests(self, blocks: Sequence[KVCacheBlock]) -> list[str]:
        """The checksums of the blocks' host copies, "" where none is stored yet."""
        out = []
        for b in blocks:
            assert b.block_hash is not None, f"block {b.block_id} is not indexed"
            out.append(self.manager.digest.get(make_offload_key(kvu.get_block_hash(b.block_hash), GROUP), ""))
        return out

    def room(self, c: Claim) -> bool:
        """Every block of `c` has a verified host copy of the claim's own KV: stored with the
        checksum the claim recorded. (A copy stored from another request's second copy of a
        block may differ in its last bits, a recomputed block's floating-point noise: it is
        no copy of this claim's KV, so the claim cannot offload yet; nothing fails.)"""
        if not c.checksums or not all(c.checksums.values()):
            return False
        digest = self.manager.digest
        return all(self.manager.ready(k) and digest[k] == c.checksums[h] for h, k in zip(c.chain, self._keys(c)))

    def copy_out(self, c: Claim, blocks: Sequence[KVCacheBlock]) -> dict[str, str]:
        """The copies exist already (vLLM stored them): pin them for `c` and return their
        checksums. Raises NoRoom, nothing pinned, when one is missing."""
        keys = self._keys(c)
        if not self.room(c):
            raise NoRoom(f"claim {c.id!r}: not every block has a verified host copy of its KV")
        self.manager.pin(keys)
        self.pinned[c.id] = keys
        return {h: self.manager.digest[k] for h, k in zip(c.chain, keys)}

    def offloaded(self, c: Claim) -> None:
        """The device copies (second copies too) nothing else references leave the prefix
        cache, so a reuse loads them through the connector; but for those the request
        that made `c` yield is about to reuse."""
        pool = self.sched.pool
        ids = {i for i in pool.copies(c.chain) if pool.bp.blocks[i].ref_cnt == 0} - self.sched.reusing
        if ids:
            self.sched.kv_cache_manager.evict_blocks(ids)
        self.sched._sync(EVENT.offload)

    def drop(self, c: Claim, reason: str) -> None:
        """`c` unpins its copies; those no other claim pins leave the traced host tier. They
        stay in vLLM's host cache, unclaimed, but for a failed claim's and those a fault was
        injected into (a released copy's fault goes with it, as in the reference runtime)."""
        keys = self.pinned.pop(c.id, None)
        if keys is None:
            return
        self.manager.unpin(keys)
        gone = [h for h, k in zip(c.chain, keys) if k not in self.manager.pins]
        unpinned = [k for k in keys if k not in self.manager.pins]
        self.manager.invalidate([k for k in unpinned if reason == EVENT.fail or k in self.manager.faulted])
        if gone:
            self.sched.trace.emit("block_evict", blocks=gone, tier="host", reason=reason)

    # ------------------------------------------------------------------ HostListener
    def host_stored(self, keys: list[OffloadKey]) -> None:
        """Copies completed: bind their checksums to materialized claims that materialized
        before them (a claim's checksum of a block, once bound, never changes)."""
        stored = set(keys)
        for c in self.sched.book.in_states(*self.protected):
            if c.checksums and not all(c.checksums.values()):
                for h, k in zip(c.chain, self._keys(c)):
                    if not c.checksums[h] and k in stored:
                        c.checksums[h] = self.manager.digest[k]

    def host_evicted(self, keys: list[OffloadKey]) -> None:
        """vLLM's host LRU took unpinned copies: nothing a claim relies on (pins)."""
        assert not set(keys) & self.manager.pins.keys(), "a pinned host copy was evicted"

    # ------------------------------------------------------------------ claims
    def restore_for(self, request: Request) -> set[str]:
        """A load for `request` completed: offloaded claims whose chain its prompt starts
        with, and whose blocks it loaded, are restored and hold their blocks again. Returns
        the hashes traced as restored."""
        loaded = set(self.connector.loading.pop(request.request_id, ()))
        restored: set[str] = set()
        for c in self._restorable(request):
            if not loaded.isdisjoint(self._keys(c)):
                restored |= self.restore(c, loaded)
        return restored

    def _restorable(self, request: Request) -> list[Claim]:
        """The offloaded claims `request` would restore: those whose chain its prompt starts
        with, or only the one an owner's restore request is for."""
        book, hashes = self.sched.book, request.block_hashes
        only = self.sched.restoring.get(request.request_id)
        return [
            c
            for c in book.in_states(*self.offloaded_states)
            if (only is None or c.id == only) and list(hashes[: len(c.chain)]) == list(book.entries[c.id].key)
        ]

    def restore(self, c: Claim, loaded: set[OffloadKey]) -> set[str]:
        """`c`'s chain is resident again, the blocks of `loaded` copied back from the host
        (each checked against its stored checksum by the worker): `c` is restored and
        holds it, or fails closed if a checksum is not the claim's. Nothing happens while
        its chain is not wholly resident or the reserve does not allow it back."""
        book, keys = self.sched.book, self._keys(c)
        blocks = self.sched.pool.resident(book.entries[c.id].key)
        if blocks is None or not book.restore_fits(c):
            return set()
        arrived = {h: self.manager.digest.get(k, "") for h, k in zip(c.chain, keys)}
        if not book.matches(arrived, c):
            book.end(c, EVENT.fail, reason="checksum_mismatch")
            return set()
        restored = [h for h, k in zip(c.chain, keys) if k in loaded]
        self.sched.trace.emit("block_restore", claim=c.id, blocks=restored, tier="device")
        book.fire(c, EVENT.restore, {"arrived": arrived})
        book.hold(c, blocks)
        self.drop(c, EVENT.restore)
        return set(restored)

    def load_failed(self, request: Request, invalid_block_ids: set[int]) -> None:
        """Blocks `request` was loading failed their check: every offloaded claim whose
        chain has one of them fails closed (vLLM then truncates or fails the request)."""
        self.connector.loading.pop(request.request_id, None)
        ids = self.sched.kv_cache_manager.get_block_ids(request.request_id)[GROUP]
        hashes = request.block_hashes
        bad = {hexid(hashes[i]) for i, b in enumerate(ids[: len(hashes)]) if b in invalid_block_ids}
        for c in self._restorable(request):
            if bad.intersection(c.chain):
                self.sched.book.end(c, EVENT.fail, reason="checksum_mismatch")

    def pinned_key(self, h: str) -> OffloadKey | None:
        """The host key of block `h` (hex) if an offloaded claim pins its copy."""
        book = self.sched.book
        for cid, keys in self.pinned.items():
            for hh, k in zip(book.claims[cid].chain, keys):
                if hh == h:
                    return k
        return None

    def claimed_keys(self, keys: list[OffloadKey]) -> list[OffloadKey]:
        """`host_tier="claims"`: of the blocks vLLM offers the host, those of live claims
        that name the host tier (the contract's host tier holds claims only)."""
        book = self.sched.book
        wanted = {k for c in book.in_states(*book.spec.lifecycle.live) if c.host_allowed for k in self._keys(c)}
        return [k for k in keys if k in wanted]

    def claims_only(self, request: Request, computed: int) -> int:
        """`host_tier="claims"`: a request loads from the host only the whole chain of an
        offloaded claim its prompt starts with (as the reference runtime restores);
        tokens it may load past `computed`."""
        book, hashes, B = self.sched.book, request.block_hashes, self.sched.block_size
        best = 0
        for c in self.offloaded_claims():
            chain = book.entries[c.id].key
            if (
                len(chain) * B > best
                and list(hashes[: len(chain)]) == list(chain)
                and book.restore_fits(c)
                and self.sched.pool.resident(chain) is None  # (a resident chain restores from the device)
            ):
                best = len(chain) * B
        return max(0, best - computed)

    def restore_resident(self, request: Request, hits: int) -> None:
        """`host_tier="claims"`: offloaded claims whose chain `request` extends past its hits
        and whose blocks are all on the device come back from there, as the reference
        runtime restores them (no load)."""
        book = self.sched.book
        for c in self._restorable(request):
            if len(c.chain) > hits and self.sched.pool.resident(book.entries[c.id].key) is not None:
                self.restore(c, set())

    def offloaded_claims(self) -> list[Claim]:
        return self.sched.book.in_states(*self.offloaded_states)

    def check_valid(self) -> None:
        """Each offloaded claim pins exactly its chain; pins are the manager's references."""
        self.manager.check_valid()
        expected: dict[OffloadKey, int] = {}
        for c in self.offloaded_claims():
            assert self.pinned.get(c.id) == self._keys(c), f"offloaded claim {c.id} does not pin its chain"
        for keys in self.pinned.values():
            for k in keys:
                expected[k] = expected.get(k, 0) + 1
        assert expected == self.manager.pins, "host pins differ from the offloaded claims' chains"
