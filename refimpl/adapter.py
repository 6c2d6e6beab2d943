"""The reference runtime as a RuntimeAdapter: the observation side of the protocol."""

from __future__ import annotations

import copyreg
import io
import json
import pickle
from functools import lru_cache
from typing import Hashable, Sequence

import torch

from kvclaims.conformance.adapter import CAPABILITIES, RuntimeProfile
from kvclaims.refimpl.kv import chain_hashes
from kvclaims.refimpl.runtime import Runtime


class RefimplAdapter(Runtime):
    """Runtime plus the queries a test needs: hashes, the real block table, content, trace."""

    capabilities = frozenset(CAPABILITIES)
    profile = RuntimeProfile()  # the contract's plain behaviour, which the oracle's core predicts

    def __init__(self, U: int, B: int, R: int = 0, host_blocks: int = 0, **kwargs) -> None:
        super().__init__(U, B, R, host_blocks=host_blocks, **kwargs)
        self.host_blocks = host_blocks

    def block_hashes(self, tokens: Sequence[int]) -> list[str]:
        return list(_chain(tuple(tokens), self.B))

    def request_status(self, request_id: str) -> str:
        return self._request(request_id).status

    def hit_blocks(self, request_id: str) -> int:
        return self._request(request_id).hit_blocks

    def resident(self) -> set[str]:
        return set(self.pool.index)

    def verify_prefix(self, tokens: Sequence[int]) -> bool:
        """Each block of the prefix is resident and holds exactly the KV of its tokens under
        the current weights (stale KV fails, as corrupt KV does)."""
        hashes, index = self.block_hashes(tokens), self.pool.index
        return all(h in index for h in hashes) and self._holds(
            [index[h] for h in hashes], tokens[: len(hashes) * self.B], self.weights
        )

    def trace_lines(self, start: int = 0) -> list[str]:
        return [json.dumps(r) for r in self.trace.records[start:]]

    def state_digest(self) -> Hashable:
        """The whole runtime, as a rejected call must leave it (RKC-RT-4): the block table down
        to LRU and free-list order and KV bytes, the host tier, claims, requests and the
        waiting order, the claim book's entries, holds and indexes, the epochs, the trace's
        clock. Pickled: C-speed over a long life's thousands of requests, and equal exactly
        when nothing was touched (a call that changes a set and changes it back may reorder
        it; a rejected call validates before it touches anything). A tensor goes in as its
        dtype, shape and bytes: torch's own pickling took most of the time."""
        book = self.book
        out = io.BytesIO()
        pickler = pickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL)
        pickler.dispatch_table = {**copyreg.dispatch_table, torch.Tensor: _tensor_bytes}
        pickler.dump(
            {
                "pool": vars(self.pool),
                "host": vars(self.host),
                "claims": {
                    cid: ({k: v for k, v in vars(c).items() if k != "fsm"}, c.state) for cid, c in self.claims.items()
                },
                "requests": self.requests,
                "queue": self.waiting,
                "book": (book.entries, book.holders, book._by_state, book._by_tail, book.ledger, book._tenant_ledgers),
                "deadlines": (book.live, book._deadlines),
                "epochs": (self.epoch, self.weights),
                "trace": (self.trace.seq, self.trace.time, len(self.trace.records)),
            }
        )
        return out.getvalue()


@lru_cache(maxsize=4096)
def _chain(tokens: tuple[int, ...], B: int) -> tuple[str, ...]:
    """`chain_hashes`, memoized: a test hashes each live claim's prefix after every step."""
    return tuple(chain_hashes(list(tokens), B))


def _tensor_bytes(t: torch.Tensor) -> tuple:
    """A tensor's pickle for `state_digest`: its dtype, shape and raw bytes (never loaded)."""
    data = t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
    return tuple, ((str(t.dtype), tuple(t.shape), data),)
