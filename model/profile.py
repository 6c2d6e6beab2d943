"""What a runtime does where the contract leaves it free: the profile its adapter declares.

The oracle's core predicts the contract's plain behaviour, which the reference
runtime has; `kvclaims.model.adoption` reads a runtime's profile to follow its
own ways instead. A field is a fact about the runtimes that set it, with where
it comes from; only what the adoption reads is a field.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RuntimeProfile:
    """Defaults: the contract's plain behaviour (the reference runtime's)."""

    recomputes_last_block: bool = False
    """A prompt whose every block is cached still computes its last block, to get its last
    token's logits, so that block is no hit; a claim on exactly that prompt is still reused
    (its replay is the claim's ``hit``). vLLM: `KVCacheManager.get_computed_blocks` caps a
    hit at `num_tokens - 1` tokens (vllm/v1/core/kv_cache_manager.py)."""

    evicts_whole_nodes: bool = False
    """LRU eviction frees whole nodes of a radix tree, and may free more cached blocks than an
    admission needs (a 60-block prefix in one node goes whole for a 50-block shortfall). The
    oracle adopts every eviction the trace reports for an admission anyway; litmus expects
    at least what is needed. SGLang: `UnifiedRadixCache.evict_for_alloc` evicts LRU leaves
    whole, for the new pages plus a spare page per request (sglang/srt/mem_cache/allocation.py,
    `alloc_paged_token_slots_extend`)."""

    keeps_parents: bool = False
    """Blocks form a radix tree: a block's KV is found only through the blocks before it, so
    the table drops no block while a block after it (on a prefix through it) stays; write
    no-admit and an offload keep a block that a cached later block needs. SGLang: a radix node is
    evicted only as a leaf (`UnifiedRadixCache._evict_device_leaf`)."""

    shares_recomputed: bool = False
    """A block a request computes again while its hash is indexed is given back at once, the
    request holding the indexed copy instead (the plain behaviour: the new copy stays the
    request's own, unindexed, until it ends). SGLang: the checkpoint of a computed prefill
    inserts it into the radix tree, whose `insert` finds the key and frees the duplicate
    pages, the request's row now pointing at the tree's (sglang/srt/mem_cache/common.py
    `checkpoint_kv_cache`)."""

    keeps_duplicate_copies: bool = False
    """A block computed while its hash is indexed is indexed too, as a second copy that can
    outlive the first (the plain behaviour keeps it unindexed, its request's own). Dropping
    one of two copies loses no hash, so the runtime's trace reports nothing. vLLM:
    `BlockHashToBlockMap.insert` maps a hash to several blocks (vllm/v1/core/block_pool.py);
    the integration's `IndexLog` reports a hash removed only when no copy is left."""

    takes_cached_while_free: bool = False
    """A new block may reuse a cached one while free blocks remain (the plain behaviour takes
    free blocks first). vLLM: free and cached blocks wait in one LRU queue
    (`FreeKVCacheBlockQueue`, vllm/v1/core/kv_cache_utils.py) whose head
    `BlockPool.get_new_blocks` pops (vllm/v1/core/block_pool.py)."""

    copies_with_compute: bool = False
    """A claim's host copy is made when a request computes or reuses its blocks, complete an
    engine step later, not when the claim offloads: a claim whose copy is not complete cannot
    offload (it demotes under pressure; an owner's offload raises NoRoom), which only the
    runtime knows; and a copy is checked against the checksum it was stored with when it is
    loaded back, not when another claim that shares it offloads. vLLM:
    `OffloadingConnectorScheduler._build_store_jobs` offers the computed prompt blocks and
    `complete_store` comes with the next step's output
    (vllm/distributed/kv_transfer/kv_connector/v1/offloading/scheduler.py)."""

    restore_requests: str = ""
    """An owner's restore runs as a request of the runtime's own for the claim's prefix,
    whose id starts with this (empty: restores need none); the oracle follows the claim, not
    that request. vLLM loads from its host tier only for a request
    (`OffloadingConnectorScheduler.update_state_after_alloc`)."""
