"""A view of vLLM's own ``BlockPool``: lookups by chain hash, holding blocks, block classes.

Claims hold blocks the way requests do, with a reference (``touch``), so a held
block is out of vLLM's free queue and its allocator cannot evict it. A block's
class follows the contract's precedence (protected > active > yielding > cached
> free): a block is *active* when it has references beyond the claims' own.
KV events (``BlockRemoved``/``BlockStored``) are read from the pool's queue
without consuming it, so a configured KV-event publisher still gets them all.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping, Sequence

from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored
from vllm.utils.hashing import get_hash_fn_by_name
from vllm.v1.core import kv_cache_utils as kvu
from vllm.v1.core.kv_cache_utils import KVCacheBlock

from kvclaims.errors import InvalidInput
from kvclaims.model.feasibility import PoolCounts

GROUP = 0  # the integration supports models with one KV cache group


def hexid(h: bytes | int) -> str:
    """A block hash as the trace writes it: the form vLLM's KV events carry, in hex."""
    v = kvu.maybe_convert_block_hash(h) if isinstance(h, bytes) else h
    return v.hex() if isinstance(v, bytes) else f"{v:016x}"


class PoolView:
    def __init__(self, kv_cache_manager, block_size: int, hash_algo: str) -> None:
        if len(kv_cache_manager.kv_cache_config.kv_cache_groups) != 1:
            raise InvalidInput("kvclaims supports models with one KV cache group "
                               "(hybrid and sliding-window models are not applicable)")
        self.bp = kv_cache_manager.block_pool
        self.bp.enable_kv_cache_events = True   # read, not consumed: see drain_events
        self.B = block_size
        self.withheld: list[KVCacheBlock] = []
        self._hash_fn = get_hash_fn_by_name(hash_algo)
        self._queue: list = self.bp.kv_event_queue
        self._seen = len(self._queue)           # earlier events are not this view's

    @property
    def U(self) -> int:
        """Usable blocks: all but vLLM's null block and the withheld ones."""
        return self.bp.num_gpu_blocks - 1 - len(self.withheld)

    def withhold(self, n: int) -> None:
        """Shrink the pool to U - n by taking n free blocks out of vLLM's free queue, as if
        the engine had been started with fewer blocks (a runtime adapter's pool shapes)."""
        if not 0 <= n < self.U or self.bp.get_num_free_blocks() < self.U:
            raise InvalidInput(f"cannot withhold {n} of {self.U} blocks unless all are free")
        self.withheld += self.bp.free_block_queue.popleft_n(n)

    def unwithhold(self) -> None:
        self.bp.free_block_queue.append_n(self.withheld)
        self.withheld = []

    # --- lookups ------------------------------------------------------------
    def block(self, h: bytes) -> KVCacheBlock | None:
        found = self.bp.get_cached_block(h, [GROUP])
        return found[0] if found else None

    def resident(self, chain: Sequence[bytes]) -> list[KVCacheBlock] | None:
        blocks = [self.block(h) for h in chain]
        return None if None in blocks else blocks

    def chain(self, tokens: Sequence[int]) -> list[bytes]:
        """vLLM's own chain hashes for the full blocks of `tokens` (plain text requests)."""
        out: list[bytes] = []
        for i in range(len(tokens) // self.B):
            out.append(kvu.hash_block_tokens(self._hash_fn, out[-1] if out else None,
                                             tokens[i * self.B:(i + 1) * self.B]))
        return out

    # --- holding ------------------------------------------------------------
    def hold(self, blocks: Sequence[KVCacheBlock]) -> None:
        self.bp.touch(blocks)

    def unhold(self, blocks: Sequence[KVCacheBlock]) -> None:
        """Drop the holds tail first, so LRU eviction takes a chain's tail first."""
        self.bp.free_blocks(reversed(blocks))

    # --- classes ------------------------------------------------------------
    def classes(self, holders: Mapping[int, Iterable[str]], blocking: set[str],
                exclude: set[int] = frozenset()) -> tuple[PoolCounts, dict[str, frozenset[str]]]:
        """Block classes over the pool without `exclude` (a request's own prefix hits),
        and the hashes each blocking claim protects there."""
        n = {"free": 0, "cached": 0, "yielding": 0, "active": 0, "protected": 0}
        protects: dict[str, set[str]] = {}
        outside = exclude | {b.block_id for b in self.withheld}
        for b in self.bp.blocks:
            if b.is_null or b.block_id in outside:
                continue
            held = list(holders.get(b.block_id, ()))
            blockers = [c for c in held if c in blocking]
            if blockers:
                n["protected"] += 1
                for c in blockers:
                    protects.setdefault(c, set()).add(b.block_id)
            elif b.ref_cnt > len(held):
                n["active"] += 1
            elif held:
                n["yielding"] += 1
            elif b.block_hash is not None and self._first_copy(b):
                n["cached"] += 1
            else:
                n["free"] += 1
        counts = PoolCounts(U=self.U - len(exclude), **n)
        return counts, {c: frozenset(map(str, ids)) for c, ids in protects.items()}

    def _first_copy(self, b: KVCacheBlock) -> bool:
        found = self.bp.cached_block_hash_to_block.get_one_block(b.block_hash)
        return found is None or found.block_id == b.block_id

    def copies(self, hashes: Iterable[str]) -> set[int]:
        """Ids of every indexed block (first copies and duplicates) with one of `hashes`."""
        wanted = set(hashes)
        return {b.block_id for b in self.bp.blocks
                if b.block_hash is not None and hexid(kvu.get_block_hash(b.block_hash)) in wanted}

    def cached_hashes(self, ids: Iterable[int] | None = None) -> list[str]:
        """Hashes of the indexed blocks among `ids` (default: all blocks)."""
        blocks = self.bp.blocks if ids is None else [self.bp.blocks[i] for i in sorted(ids)]
        return [hexid(kvu.get_block_hash(b.block_hash)) for b in blocks if b.block_hash is not None]

    # --- KV events ----------------------------------------------------------
    def drain_events(self) -> tuple[list[str], list[str]]:
        """Hashes stored and hashes removed since the last call. A removal counts when it
        left no indexed copy of its hash (a duplicate's removal is not a loss, but an old
        copy evicted before its hash is stored again is one): found by walking the
        events back from the index as it is now."""
        if self.bp.kv_event_queue is not self._queue:    # taken by update_from_output
            self._queue, self._seen = self.bp.kv_event_queue, 0
        new = self._queue[self._seen:]
        self._seen = len(self._queue)
        copies = Counter(self.cached_hashes()) if any(isinstance(e, BlockRemoved) for e in new) else Counter()
        stored: list[str] = []
        removed: list[str] = []
        for ev in reversed(new):
            if isinstance(ev, BlockStored):
                hexes = [hexid(h) for h in ev.block_hashes]
                stored[:0] = hexes
                copies.subtract(hexes)
            elif isinstance(ev, BlockRemoved):
                for h in reversed([hexid(h) for h in ev.block_hashes]):
                    if copies[h] <= 0:
                        removed.insert(0, h)
                    copies[h] += 1
            elif isinstance(ev, AllBlocksCleared):     # traced by reset_prefix_cache itself
                copies.clear()
        return stored, removed
