"""SGLang's host tier, HiCache (``UnifiedRadixCache.init_hicache``), on a `RadixPool`, for claims.

HiCache does the tier's work: host buffers and their allocator, the backup of a tree
node's pages device -> host through its cache controller, demotion (a backed-up node
evicted from the device stays in the tree, host only), host lock refs, and load-back
host -> device into pages its own allocation finds. Configured as SGLang's scheduler
configures it (``--enable-hierarchical-cache --hicache-io-backend direct
--hicache-mem-layout layer_first``), with two of its knobs set for claims:

- **No write-through.** The contract's host tier holds the copies of offloaded claims,
  so SGLang backs up only what a claim asks for (``build_backup_kv_action`` ->
  ``_execute_and_commit_kv_backup``, the path its write-back eviction takes):
  ``write_through_threshold`` (the hits a node needs before SGLang backs it up on its own)
  is set past any count. Unclaimed pages are evicted from the device as without HiCache.
- **Every claim restore loads.** ``load_back_threshold`` (10 tokens: shorter host hits
  are recomputed) is 1, since a restore is the claim owner's, not a heuristic's. And
  nothing is loaded back but a claim's chain: the adapter decides every load.

What SGLang's tier lacks and the contract needs is added around it, not in it: a
checksum of each page (its K and V bytes, every layer) on the device and on the host,
read from SGLang's own buffers; host copies addressed by chain hash (the host pages
``cache_controller.write`` returns, forgotten on its ``BlockRemoved`` host events); and
fault injection into a host copy.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping, Sequence

import torch

from kvclaims.sglang.standins import host_tier_substitutions

NEVER = 1 << 30  # a hit count no node reaches: SGLang writes nothing through on its own


def hicache_args(U: int, host_pages: int) -> dict[str, Any]:
    """The ``ServerArgs`` of a host tier of at least `U` + `host_pages` pages: room for the
    claims' copies beside the backups SGLang keeps of pages still on the device
    (`HiCacheTier.rewrite`), so its host eviction only ever takes unclaimed host-only pages."""
    return {
        "enable_hierarchical_cache": True,
        "hicache_io_backend": "direct",
        "hicache_mem_layout": "layer_first",
        "hicache_write_policy": "write_through",
        "hicache_ratio": (U + host_pages) / U,
    }


class HiCacheTier:
    """HiCache on `cache` (a ``UnifiedRadixCache`` over `kv`, pages of `B` tokens)."""

    def __init__(self, cache: Any, kv: Any, B: int, server_args: Any, params: Any) -> None:
        host_tier_substitutions()
        self.cache, self.kv, self.B = cache, kv, B
        cache.init_hicache(server_args, params)
        cache.write_through_threshold = NEVER
        cache.load_back_threshold = 1
        self.controller = cache.cache_controller
        self.host = self.controller.mem_pool_host.anchor_entry.host_pool  # its K/V buffers
        self.pages: dict[str, int] = {}  # chain hash -> first host slot of its copy
        self._written: dict[int, int] = {}  # device page -> first host slot, from this backup
        write = self.controller.write

        def recorded(device_indices: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            host = write(device_indices, *args, **kwargs)
            if host is not None:
                self._written.update(zip((device_indices[:: self.B] // self.B).tolist(), host[:: self.B].tolist()))
            return host

        self.controller.write = recorded

    # --- copies ----------------------------------------------------------------------
    def backup(self, node: Any, pages: Mapping[str, int]) -> bool:
        """SGLang backs up the path to `node` (its pages not yet on the host, parents first);
        `pages` (chain hash -> device page) names them. False when its host pool has no room
        left (what it wrote stays, as SGLang leaves it)."""
        self._written = {}
        action = self.cache.tree_core.build_backup_kv_action(node)
        written = self.cache._execute_and_commit_kv_backup(action, write_back=True)
        self.cache.writing_check(write_back=True)
        for h, page in pages.items():
            if page in self._written:
                self.pages[h] = self._written[page]
        return written > 0 or all(h in self.pages for h in pages)

    def rewrite(self, pages: Mapping[str, int]) -> None:
        """Copy the device `pages` (chain hash -> device page) over their existing host
        copies with SGLang's own backup transfer: a copy no claim pins any more is not the
        contract's, and may be stale (a fault left it corrupt)."""
        for h, page in pages.items():
            host, dev = self._slots(self.pages[h]), self._slots(page * self.B)
            self.host.backup_from_device_all_layer(self.kv, host, dev, "direct")

    def forget(self, hashes: Sequence[str]) -> None:
        """SGLang freed these host copies (its ``BlockRemoved`` host events)."""
        for h in hashes:
            self.pages.pop(h, None)

    def load(self, node: Any) -> bool:
        """SGLang loads the host-only pages of the path to `node` back onto the device, its
        allocation evicting LRU pages for them; False when it could not."""
        if not self.cache.load_back(node):
            return False
        self.cache.ready_to_load_host_cache()
        for ack in list(self.controller.ack_load_queue):
            ack.finish_event.synchronize()
        self.cache.loading_check()
        return True

    # --- checksums and faults ------------------------------------------------------
    def device_digest(self, page: int) -> str:
        """The checksum of device page `page`: its K and V bytes, every layer."""
        slots = self._slots(page * self.B)
        return _digest([b[slots] for b in (*self.kv.k_buffer, *self.kv.v_buffer)])

    def host_digest(self, h: str) -> str | None:
        """The checksum of the host copy of `h` (as `device_digest` reads a device page), or
        None when SGLang holds none."""
        if h not in self.pages:
            return None
        slots = self._slots(self.pages[h])
        return _digest([self.host.k_buffer[layer][slots] for layer in range(self.kv.layer_num)]
                       + [self.host.v_buffer[layer][slots] for layer in range(self.kv.layer_num)])  # fmt: skip

    def corrupt(self, h: str) -> None:
        """Flip the host copy of `h` (every layer's K): a fault a load must not pass on."""
        slots = self._slots(self.pages[h])
        for layer in range(self.kv.layer_num):
            self.host.k_buffer[layer][slots] += 1.0

    def _slots(self, first: int) -> torch.Tensor:
        return torch.arange(first, first + self.B, dtype=torch.int64)


def _digest(parts: Sequence[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in parts:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
