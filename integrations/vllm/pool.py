"""A view of vLLM's own ``BlockPool``: lookups by chain hash, holding blocks, block classes.

Claims hold blocks the way requests do, with a reference (``touch``), so a held
block is out of vLLM's free queue and its allocator cannot evict it. A block's
class follows the contract's precedence (protected > active > yielding > cached
> free): a block is *active* when it has references beyond the claims' own.

Per engine step the view does O(changes) work, never O(pool): a decision that
fits in free and cached blocks is read off vLLM's free-queue count
(`evictable`), and the hashes stored and lost are logged as vLLM's prefix index
changes (`IndexLog`). Only a decision that needs the yielding, active or
protected classes scans the pool (`classes`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import AbstractSet, Hashable, Iterable, Mapping, Sequence

from vllm.utils.hashing import get_hash_fn_by_name
from vllm.v1.core import kv_cache_utils as kvu
from vllm.v1.core.kv_cache_utils import BlockHash, BlockHashWithGroupId, KVCacheBlock
from vllm.v1.kv_cache_interface import FullAttentionSpec, MLAAttentionSpec, UniformTypeKVCacheSpecs

from kvclaims.errors import BadArgument, InvalidInput
from kvclaims.model.feasibility import PoolCounts

GROUP = 0  # the integration supports models with one KV cache group
# Group specs whose manager (vLLM's FullAttentionManager) keeps a block for every token;
# subclasses that drop blocks (RSWASpec, SinkFullAttentionSpec, ...) are not among them.
FULL_ATTENTION = (FullAttentionSpec, MLAAttentionSpec)
FULL_LAYER_TYPES = {"attention", "full_attention"}  # hf `layer_types` of such layers


@lru_cache(maxsize=1 << 16)
def hexid(h: BlockHash | int) -> str:
    """A block hash as the trace writes it: the form vLLM's KV events carry, in hex.
    Cached: requests bring and hit mostly the same hot prefixes (and vLLM fixes the
    form once its engine has started)."""
    v = kvu.maybe_convert_block_hash(h) if isinstance(h, bytes) else h
    return v.hex() if isinstance(v, bytes) else f"{v:016x}"


class HexForm:
    """The trace's hex of vLLM block hashes, a batch at a time with no call per hash (what
    `hexid` gives one by one). vLLM's external form is the hash, or with int hashes (its
    default) the hash's low 64 bits (``maybe_convert_block_hash``), i.e. its last 8
    bytes. The form is fixed once vLLM's engine has started, so it is read once, when a
    pool is first watched."""

    def __init__(self) -> None:
        self.tail = 8 if isinstance(kvu.maybe_convert_block_hash(BlockHash(bytes(8))), int) else 0

    def hashes(self, hashes: Sequence[BlockHash]) -> list[str]:
        t = self.tail
        return [h[-t:].hex() for h in hashes] if t else [h.hex() for h in hashes]

    def keys(self, keys: Sequence[BlockHashWithGroupId]) -> list[str]:
        """Of prefix-index keys: the block hash then 4 bytes of KV cache group id
        (``make_block_hash_with_group_id``)."""
        t = self.tail
        return [k[-4 - t : -4].hex() for k in keys] if t else [k[:-4].hex() for k in keys]


class IndexLog:
    """The changes to one ``BlockPool``'s prefix index, logged a batch at a time: every
    hash stored, and every hash removed that left no indexed copy (a duplicate's removal
    is not a loss; an old copy evicted before its hash is stored again is one).

    It wraps, on the instance, the places a full-attention pool's index changes, each
    called once per batch of blocks, never per block: ``cache_full_blocks`` (the keys
    of the blocks it has just indexed), the free queue's ``popleft_n`` (the blocks
    ``get_new_blocks`` takes, read before vLLM evicts them), ``evict_blocks`` (invalid
    KV) and ``reset_prefix_cache``, which replaces the index (a reset is traced by the
    scheduler itself). Keys stay raw bytes until `drain` turns them to the trace's hex
    in one pass. This is what vLLM's KV events would say without paying for them:
    building the events costs about as much as the allocation they describe
    (`tests/test_vllm_pool.py` checks the two agree). Partial-block promotion and
    copy-on-write moves touch the index too, but only in groups
    `PoolView.check_groups` refuses.
    """

    def __init__(self, bp) -> None:
        self.stored: list[BlockHashWithGroupId] = []
        self.removed: list[BlockHashWithGroupId] = []
        self._bp = bp
        cache_full_blocks, reset, evict_blocks = bp.cache_full_blocks, bp.reset_prefix_cache, bp.evict_blocks

        def logged_cache_full_blocks(request, blocks, num_cached_blocks, num_full_blocks, *args, **kwargs) -> None:
            cache_full_blocks(request, blocks, num_cached_blocks, num_full_blocks, *args, **kwargs)
            self.stored += [b._block_hash for b in blocks[num_cached_blocks:num_full_blocks] if not b.is_null]

        def logged_evict_blocks(block_ids) -> None:
            self._losing([bp.blocks[i] for i in block_ids if 0 <= i < len(bp.blocks)])
            evict_blocks(block_ids)

        def logged_reset_prefix_cache(*args, **kwargs) -> bool:
            ok = reset(*args, **kwargs)
            self._watch_free_queue()
            return ok

        bp.cache_full_blocks, bp.evict_blocks = logged_cache_full_blocks, logged_evict_blocks
        bp.reset_prefix_cache = logged_reset_prefix_cache
        self._watch_free_queue()

    @classmethod
    def of(cls, bp) -> IndexLog:
        """The pool's log, installed on first use (views of one pool share it)."""
        if "_kvclaims_log" not in vars(bp):
            bp._kvclaims_log = cls(bp)
        return bp._kvclaims_log

    def _watch_free_queue(self) -> None:
        queue = self._bp.free_block_queue
        if "popleft_n" in vars(queue):
            return
        popleft_n = queue.popleft_n

        def logged_popleft_n(n: int) -> list[KVCacheBlock]:
            blocks = popleft_n(n)
            self._losing(blocks)
            return blocks

        queue.popleft_n = logged_popleft_n

    def _losing(self, blocks: list[KVCacheBlock]) -> None:
        """Log the hashes `blocks`, about to leave the index in this order, leave with no
        indexed copy: a hash the block alone indexes, and a hash whose every copy is
        among `blocks` (at its last copy, where vLLM's own removal empties the entry).
        Reads the index's own table (``BlockHashToBlockMap._cache``: a block, or a dict
        of duplicate copies by block id) and a block's key as its field
        (``KVCacheBlock._block_hash``: the ``block_hash`` property is a call per block)."""
        index = self._bp.cached_block_hash_to_block._cache
        keyed = [(b, k) for b in blocks if (k := b._block_hash) is not None]
        lost = [k for b, k in keyed if index.get(k) is b]
        if len(lost) < len(keyed):  # hashes with duplicate copies among them
            ids, left = {b.block_id for b in blocks}, dict[BlockHashWithGroupId, int]()
            lost = []
            for b, k in keyed:
                copies = index.get(k)
                if copies is b:
                    lost.append(k)
                elif isinstance(copies, dict) and ids.issuperset(copies):
                    left[k] = left.get(k, len(copies)) - 1
                    if not left[k]:
                        lost.append(k)
        self.removed += lost

    def drain(self) -> tuple[list[BlockHashWithGroupId], list[BlockHashWithGroupId]]:
        """Index keys stored and lost since the last call."""
        out = self.stored, self.removed
        self.stored, self.removed = [], []
        return out


class PoolView:
    """`log`: watch vLLM's prefix index (`IndexLog`, installed once per pool); without, the
    view reports no index changes (a trace that is off needs none)."""

    def __init__(self, kv_cache_manager, block_size: int, hash_algo: str, *, log: bool = True) -> None:
        self.check_groups(kv_cache_manager)
        self.bp = kv_cache_manager.block_pool
        self.B = block_size
        self.withheld: list[KVCacheBlock] = []
        self.unready: set[BlockHashWithGroupId] = set()  # index keys stored by a step whose output is still due
        self._hash_fn = get_hash_fn_by_name(hash_algo)
        self.hex = HexForm()
        self._log: IndexLog | None = IndexLog.of(self.bp) if log else vars(self.bp).get("_kvclaims_log")
        self.drain_events()  # earlier changes are not this view's

    @staticmethod
    def check_groups(kv_cache_manager) -> None:
        """The pool is one full-attention KV cache group, the only kind whose blocks vLLM
        keeps for every token of a prefix: a sliding-window group frees the blocks that
        leave the window, so a claim on them would never materialize, yet reserve its
        blocks. Anything else is refused, its kind named (``SlidingWindowSpec``, ...)."""
        groups = kv_cache_manager.kv_cache_config.kv_cache_groups
        kinds = [_kind(g.kv_cache_spec) for g in groups]
        if len(groups) != 1 or not _full_attention(groups[0].kv_cache_spec):
            raise BadArgument(
                "model",
                f"kvclaims cannot protect this model's KV cache: its KV cache groups "
                f"are {kinds or 'none'}; it needs one full-attention group "
                f"({FULL_ATTENTION[0].__name__})",
            )

    @staticmethod
    def check_model(vllm_config) -> None:
        """`check_groups` as far as the config tells before the model loads: refuses a model
        every layer of which has a sliding window (`SlidingWindowSpec`), a hybrid
        (Mamba, linear attention), an attention-free one, and, unless vLLM's hybrid
        allocator is off (then every layer gets a full-attention group), one whose
        layer types mix kinds. What it passes, `check_groups` decides at engine start."""
        mc, cc = vllm_config.model_config, vllm_config.cache_config
        layer_types = sorted(set(getattr(mc.hf_text_config, "layer_types", None) or ()))
        if cc.sliding_window is not None:
            kind = (
                f"SlidingWindowSpec (sliding_window={cc.sliding_window} on every layer; "
                f"--disable-sliding-window runs it as full attention, up to the window's length)"
            )
        elif mc.is_attention_free:
            kind = "none (an attention-free model)"
        elif mc.is_hybrid:
            kind = f"hybrid (layer types {layer_types or 'not given'}: Mamba or linear-attention state)"
        elif set(layer_types) - FULL_LAYER_TYPES and not vllm_config.scheduler_config.disable_hybrid_kv_cache_manager:
            kind = f"one per layer type {layer_types} (e.g. SlidingWindowSpec)"
        else:
            return
        raise BadArgument(
            "model",
            f"kvclaims cannot protect this model's KV cache: its KV cache groups "
            f"would be {kind}; it needs one full-attention group "
            f"({FULL_ATTENTION[0].__name__})",
        )

    @property
    def U(self) -> int:
        """Usable blocks: all but vLLM's null block and the withheld ones."""
        return self.bp.num_gpu_blocks - 1 - len(self.withheld)

    def withhold(self, n: int) -> None:
        """Shrink the pool to U - n by taking n free blocks out of vLLM's free queue, as if
        the engine had been started with fewer blocks (a runtime adapter's pool shapes)."""
        if not 0 <= n < self.U or self.bp.get_num_free_blocks() < self.U:
            raise InvalidInput(f"cannot withhold {n} of {self.U} blocks unless all are free")
        queue = self.bp.free_block_queue
        self.withheld += type(queue).popleft_n(queue, n)  # vLLM's own: withheld blocks stay indexed

    def unwithhold(self) -> None:
        self.bp.free_block_queue.append_n(self.withheld)
        self.withheld = []

    # --- lookups ------------------------------------------------------------
    def block(self, h: BlockHash) -> KVCacheBlock | None:
        found = self.bp.get_cached_block(h, [GROUP])
        return found[0] if found else None

    def resident(self, chain: Sequence[BlockHash]) -> list[KVCacheBlock] | None:
        """The chain's indexed blocks, or None if one is missing or its KV is still being
        computed (`unready`: async scheduling indexes blocks when it schedules them)."""
        if self.unready and not self.unready.isdisjoint(kvu.make_block_hash_with_group_id(h, GROUP) for h in chain):
            return None
        blocks = []
        for h in chain:
            b = self.block(h)
            if b is None:
                return None
            blocks.append(b)
        return blocks

    def chain(self, tokens: Sequence[int]) -> list[BlockHash]:
        """vLLM's own chain hashes for the full blocks of `tokens` (plain text requests)."""
        out: list[BlockHash] = []
        for i in range(len(tokens) // self.B):
            out.append(
                kvu.hash_block_tokens(self._hash_fn, out[-1] if out else None, tokens[i * self.B : (i + 1) * self.B])
            )
        return out

    # --- holding ------------------------------------------------------------
    def hold(self, blocks: Sequence[KVCacheBlock]) -> None:
        self.bp.touch(blocks)

    def unhold(self, blocks: Sequence[KVCacheBlock]) -> None:
        """Drop the holds tail first, so LRU eviction takes a chain's tail first."""
        self.bp.free_blocks(reversed(blocks))

    # --- classes ------------------------------------------------------------
    def evictable(self, hits: Sequence[KVCacheBlock] = ()) -> int:
        """``free + cached`` of `classes` excluding `hits` (a request's own prefix hits),
        without the scan. A block is free or cached exactly when nothing references it
        (a claim's hold is a reference), which is when it sits in vLLM's free queue
        (withheld blocks and the null block are outside it); the request's own hits
        among them are outside the pool it competes for."""
        return self.bp.get_num_free_blocks() - sum(b.ref_cnt == 0 for b in hits)

    def classes(
        self, holders: Mapping[Hashable, Iterable[str]], blocking: set[str], exclude: AbstractSet[int] = frozenset()
    ) -> tuple[PoolCounts, dict[str, frozenset[str]]]:
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
        indexed = [b for b in self.bp.blocks if b.block_hash is not None]
        return {b.block_id for b, h in zip(indexed, self.hex.keys([b.block_hash for b in indexed])) if h in wanted}

    def cached_hashes(self, ids: Iterable[int] | None = None) -> list[str]:
        """Hashes of the indexed blocks among `ids` (default: all blocks)."""
        blocks = self.bp.blocks if ids is None else [self.bp.blocks[i] for i in sorted(ids)]
        return self.hex.keys([b.block_hash for b in blocks if b.block_hash is not None])

    # --- index changes -----------------------------------------------------
    def drain_events(self) -> tuple[list[BlockHashWithGroupId], list[BlockHashWithGroupId]]:
        """Index keys stored and lost since the last call, in order (see `IndexLog`; `hex`
        names them as the trace does). A view that does not log still empties a log an
        earlier view of the pool installed."""
        return ([], []) if self._log is None else self._log.drain()


def _specs(spec) -> list:
    """A group's layer specs (a group of layers with different page sizes wraps them)."""
    return list(spec.kv_cache_specs.values()) if isinstance(spec, UniformTypeKVCacheSpecs) else [spec]


def _full_attention(spec) -> bool:
    return all(type(s) in FULL_ATTENTION for s in _specs(spec))


def _kind(spec) -> str:
    names = sorted({type(s).__name__ for s in _specs(spec)})
    return names[0] if len(names) == 1 else "+".join(names)
