"""SGLang's own prefix cache on CPU, driven as its scheduler drives it, with no model runner.

`RadixPool` builds what SGLang's scheduler builds for an ordinary (full-attention) model
(``mem_cache/registry.create_tree_cache``: a ``UnifiedRadixCache`` over a
``PagedTokenToKVPoolAllocator`` and an ``MHATokenToKVPool``) with `U` pages of `B`
tokens, and runs a request through SGLang's own functions in the scheduler's order
(sglang 0.5.23):

1. ``Req.init_next_round_input``: ``match_prefix`` (a hit is capped at the prompt
   length minus one token, so a whole-page prompt computes its last page again);
2. ``tree_cache.lock(last_node)``, as ``PrefillAdder`` does on admission;
3. ``allocation.alloc_for_extend``: SGLang's evict-then-allocate path, which evicts whole
   unlocked LRU leaves for the new pages plus one spare page per request, and raises
   "Prefill out of memory" when they cannot be had;
4. the forward pass writes the new tokens' K and V (here: values derived from each
   token and position, so reused KV can be checked against its tokens);
5. ``common.checkpoint_kv_cache``: the computed pages enter the tree at once, as SGLang
   does for a chunked prefill, so a running request's pages are reusable as vLLM's are;
6. ``common.release_kv_cache`` when it ends.

Pages are named by SGLang's own chain hashes (``mem_cache/utils.get_hash_str``, the ids
of its KV events), and what enters and leaves the tree comes from its KV events
(``BlockStored``/``BlockRemoved``, enabled with ``enable_kv_cache_events``).
"""

from __future__ import annotations

import io
import logging
import os
import sys
from array import array
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from kvclaims.sglang.hicache import HiCacheTier, hicache_args
from kvclaims.sglang.standins import load

LAYERS, HEAD_DIM = 2, 64  # the KV pool's shape: the smallest that exercises per-layer copies


@dataclass
class Running:
    """A request SGLang admitted: its ``Req``, the pages it hit and the pages it holds."""

    req: Any
    hits: int
    tokens: list[int]  # what it computes: its prompt, then what it generated
    pages: list[int] = field(default_factory=list)
    computed_from: int = 0  # its first page it computes: past its hits and what was restored for it


class RadixPool:
    def __init__(self, U: int, B: int = 16, host_pages: int = 0) -> None:
        """`host_pages` > 0: with SGLang's host tier (`kvclaims.sglang.hicache`) for claims."""
        load()
        from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator
        from sglang.srt.mem_cache.cache_init_params import CacheInitParams
        from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
        from sglang.srt.mem_cache.registry import TreeCacheBuildContext, create_tree_cache
        from sglang.srt.runtime_context import publish
        from sglang.srt.server_args import ServerArgs

        self.U, self.B = U, B
        tier = hicache_args(U, host_pages) if host_pages else {}
        args = ServerArgs(model_path="dummy", page_size=B, device="cpu", attention_backend="torch_native", **tier)
        publish(args, role="scheduler")  # SGLang's components read their config from it
        size = U * B
        self.r2t = ReqToTokenPool(size=64, max_context_len=size + B, device="cpu", enable_memory_saver=False)
        self.kv = MHATokenToKVPool(
            size=size,
            page_size=B,
            dtype=torch.float32,
            head_num=1,
            head_dim=HEAD_DIM,
            layer_num=LAYERS,
            device="cpu",
            enable_memory_saver=False,
        )
        self.allocator = PagedTokenToKVPoolAllocator(
            size, page_size=B, dtype=torch.float32, device="cpu", kvcache=self.kv, need_sort=False
        )
        params = CacheInitParams(
            disable=False,
            req_to_token_pool=self.r2t,
            token_to_kv_pool_allocator=self.allocator,
            page_size=B,
            enable_kv_cache_events=True,
        )
        self.cache = create_tree_cache(
            TreeCacheBuildContext(
                server_args=args,
                params=params,
                is_hybrid_swa=False,
                is_hybrid_ssm=False,
                enable_hierarchical_cache=False,
                disable_radix_cache=False,
                tp_worker=None,
                model_config=None,
                tp_size=1,
                tp_rank=0,
                tp_group=None,
            )
        )
        self.host = HiCacheTier(self.cache, self.kv, B, args, params) if host_pages else None
        self.names: dict[int, str] = {}  # a KV event's page id -> its chain hash

    # --- names ---------------------------------------------------------------------------
    def page_hashes(self, tokens: Sequence[int]) -> list[str]:
        """SGLang's chain hashes of the full pages of `tokens` (its KV events' page ids)."""
        from sglang.srt.mem_cache.utils import get_hash_str, hash_str_to_int64

        full = len(tokens) // self.B * self.B
        hashes = get_hash_str(list(tokens[:full]), None, page_size=self.B) if full else []
        hashes = [hashes] if isinstance(hashes, str) else list(hashes)
        for h in hashes:
            self.names[hash_str_to_int64(h)] = h
        return hashes

    def events(self) -> tuple[list[str], list[str]]:
        """The pages stored on and removed from the device since the last call, in order, by
        chain hash, from SGLang's KV events (its host tier's removals go to `host`)."""
        from sglang.srt.disaggregation.kv_events import BlockRemoved, BlockStored, StorageMedium

        stored: list[str] = []
        removed: list[str] = []
        for event in self.cache.take_events():
            if not isinstance(event, (BlockStored, BlockRemoved)):
                continue
            pages = [self.names[h] for h in event.block_hashes]
            if event.medium not in (None, StorageMedium.GPU):  # the host tier's
                if isinstance(event, BlockRemoved) and self.host:
                    self.host.forget(pages)
            elif isinstance(event, BlockStored):
                stored += pages
            else:
                removed += pages
        return stored, removed

    # --- the tree ------------------------------------------------------------------------
    def match(self, tokens: Sequence[int]) -> tuple[int, Any]:
        """(pages of `tokens` resident on the device, the tree node where the match ends);
        a match ending inside a node splits it there, so the node's path is exactly them."""
        from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams
        from sglang.srt.mem_cache.radix_cache import RadixKey

        result = self.cache.match_prefix(MatchPrefixParams(key=RadixKey(array("q", tokens))))
        return result.device_prefix_len // self.B, result.last_device_node

    def host_node(self, tokens: Sequence[int]) -> Any:
        """The tree node where `tokens`' match on the device and then the host ends."""
        from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams
        from sglang.srt.mem_cache.radix_cache import RadixKey

        return self.cache.match_prefix(MatchPrefixParams(key=RadixKey(array("q", tokens)))).last_host_node

    def path_pages(self, node: Any) -> list[int]:
        """The device pages on the path from the root to `node`."""
        return (self.cache.path_device_indices(node)[:: self.B] // self.B).tolist()

    def lock(self, node: Any) -> Any:
        return self.cache.lock(node)

    def unlock(self, lock: Any) -> None:
        self.cache.unlock(lock)

    def tree_pages(self) -> set[int]:
        """Every device page the tree holds."""
        walk = self.cache.tree_core.walk_for_kv_canary(False, False)
        return {s // self.B for s in walk.slot_indices.tolist()}

    def free_pages(self) -> int:
        return self.allocator.available_size() // self.B

    # --- requests ------------------------------------------------------------------------
    def admit(self, rid: str, tokens: Sequence[int]) -> Running:
        """Match and lock the request's prefix, as SGLang's admission does."""
        from sglang.srt.managers.schedule_batch import Req
        from sglang.srt.sampling.sampling_params import SamplingParams

        params = SamplingParams(temperature=0, max_new_tokens=1)
        params.normalize(None)
        req = Req(rid=rid, origin_input_text="", origin_input_ids=array("q", tokens), sampling_params=params)
        req.init_next_round_input(self.cache)
        req.extend_end = len(req.full_untruncated_fill_ids)
        req.lock = self.cache.lock(req.last_node)
        hits = req.prefix_len // self.B
        return Running(req, hits, list(tokens), computed_from=hits)

    def prefill(self, r: Running) -> None:
        """SGLang's allocation for the request's new tokens (evicting as it does), their K and
        V written, and the computed pages checkpointed into the tree. Raises RuntimeError
        ("Prefill out of memory") with nothing allocated when the pool cannot cover them."""
        from sglang.srt.mem_cache.allocation import alloc_for_extend
        from sglang.srt.mem_cache.common import checkpoint_kv_cache

        req, seq = r.req, r.req.extend_end
        batch = _Batch(
            reqs=[req],
            device="cpu",
            tree_cache=self.cache,
            req_to_token_pool=self.r2t,
            prefix_lens=[req.prefix_len],
            extend_lens=[req.extend_len],
            seq_lens=torch.tensor([seq], dtype=torch.int64),
            seq_lens_cpu=torch.tensor([seq], dtype=torch.int64),
            extend_num_tokens=req.extend_len,
            hisparse_coordinator=None,
        )
        holds_row = req.kv.holds_kv
        try:
            with _quiet(logging.getLogger("sglang.srt.mem_cache.allocation")), _no_stdout():
                out, _, _ = alloc_for_extend(batch)
        except RuntimeError:
            if req.kv.req_pool_idx is not None and not holds_row:
                self.r2t.free(req)
            raise
        tokens = req.full_untruncated_fill_ids[req.prefix_len : seq]
        for pos, (token, loc) in enumerate(zip(tokens, out.tolist()), start=req.prefix_len):
            for layer in range(LAYERS):
                value = kv_value(token, pos, layer)
                self.kv.k_buffer[layer][loc] = value
                self.kv.v_buffer[layer][loc] = -value
        checkpoint_kv_cache(req, self.cache)
        r.pages = (self.r2t.req_to_token[req.kv.req_pool_idx, :seq][:: self.B] // self.B).tolist()

    def extend(self, r: Running, tokens: list[int]) -> None:
        """The running request computes `tokens` more (generated ones), as SGLang computes a
        later chunk of a prompt: the row it holds grows through the same allocation and the
        new pages are checkpointed into the tree. Raises RuntimeError ("out of memory") with
        the request as it was when the pool cannot cover them."""
        req = r.req
        r.tokens += tokens
        req.output_ids.extend(tokens)
        req.refresh_fill_ids()
        req.extend_end = len(req.full_untruncated_fill_ids)
        try:
            self.prefill(r)
        except RuntimeError:
            del req.output_ids[len(req.output_ids) - len(tokens) :]
            req.full_untruncated_fill_ids = req.origin_input_ids + req.output_ids
            req.extend_end = req.prefix_len
            del r.tokens[len(r.tokens) - len(tokens) :]
            raise

    def release(self, r: Running, keep: bool = True) -> None:
        """The request ends: SGLang's release (`keep`: what it computed stays in the tree)."""
        from sglang.srt.managers.schedule_batch import FINISH_LENGTH
        from sglang.srt.mem_cache.common import release_kv_cache

        req = r.req
        req.output_ids.append(0)
        req.finished_reason = FINISH_LENGTH(length=1)
        if not keep:
            req.skip_radix_cache_insert = True
        release_kv_cache(req, self.cache, checkpoint=keep)

    def evict_path(self, tokens: Sequence[int], start: int, keep: set[int]) -> None:
        """The device pages of `tokens`' path from page `start` on leave the device, deepest
        first, one page at a time through SGLang's own leaf eviction (a match ending at a
        page splits its node there; a backed-up page stays on the host). It stops at a page
        in `keep` (held by a claim or a running request) or one a deeper device page hangs
        from: a radix tree keeps a page's parents."""
        tracker: dict[Any, int] = {c: 0 for c in self.cache.tree_components}
        pages = self.match(tokens)[0]
        for end in range(pages, start, -1):
            if end > 1:
                self.match(tokens[: (end - 1) * self.B])  # (splits its node: the page is a node of its own)
            _, node = self.match(tokens[: end * self.B])
            page = self.path_pages(node)[-1]
            if page in keep or page * self.B + self.B - 1 in self._parent_slots():
                return
            self.cache._evict_device_leaf(node, tracker)

    def _parent_slots(self) -> set[int]:
        """Device slots a device slot of the next position hangs from (SGLang's KV-canary walk)."""
        walk = self.cache.tree_core.walk_for_kv_canary(False, False)
        return set(walk.prev_slot_indices.tolist())

    def drop_admission(self, r: Running) -> None:
        """Undo `admit` for a request that is not allocated for (refused, or waiting)."""
        self.cache.unlock(r.req.lock)
        r.req.lock = None

    def verify(self, tokens: Sequence[int], pages: Sequence[int]) -> bool:
        """Does the KV in `pages` hold exactly what `tokens` computed (position by position)?"""
        for pos, token in enumerate(tokens[: len(pages) * self.B]):
            loc = pages[pos // self.B] * self.B + pos % self.B
            for layer in range(LAYERS):
                if not torch.equal(self.kv.k_buffer[layer][loc], kv_value(token, pos, layer)):
                    return False
        return True


def kv_value(token: int, pos: int, layer: int) -> torch.Tensor:
    """The K a token computes at a position (V is its negative): distinct per token,
    position and layer, so KV reused from another prefix does not verify."""
    base = torch.arange(HEAD_DIM, dtype=torch.float32) * 1e-3
    return (base + float(token % 100_003) + pos * 1e-2 + layer * 1e3).reshape(1, HEAD_DIM)


@contextmanager
def _quiet(log: logging.Logger) -> Iterator[None]:
    """SGLang logs its "out of memory" (and prints the whole tree) before it raises; the
    caller turns that into a wait (as SGLang's scheduler does), so they say nothing new."""
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


@contextmanager
def _no_stdout() -> Iterator[None]:
    """SGLang prints its whole tree before an "out of memory" (the Rust tree core writes to the
    process's stdout, fd 1, past Python's `sys.stdout`): both are muted, or `--json` output
    would carry it."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null, redirect_stdout(io.StringIO()):
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


class _Batch:
    """The ``ScheduleBatch`` fields ``alloc_for_extend`` reads (``prepare_for_extend`` sets them)."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)

    def maybe_evict_swa(self) -> None:
        pass

    def is_dllm(self) -> bool:
        return False
