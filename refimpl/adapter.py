"""The reference runtime as a RuntimeAdapter: the observation side of the protocol."""

from __future__ import annotations

import json
from typing import Sequence

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
        return chain_hashes(list(tokens), self.B)

    def request_status(self, request_id: str) -> str:
        return self._request(request_id).status

    def hit_blocks(self, request_id: str) -> int:
        return self._request(request_id).hit_blocks

    def resident(self) -> set[str]:
        return set(self.pool.index)

    def verify_prefix(self, tokens: Sequence[int]) -> bool:
        """Each block of the prefix is resident and holds exactly the KV of its tokens under
        the current weights (stale KV fails, as corrupt KV does)."""
        B = self.B
        for i, h in enumerate(self.block_hashes(tokens)):
            slot = self.pool.lookup(h)
            if slot is None or not self.pool.verify(slot, tokens[i * B : (i + 1) * B], i * B, self.weights):
                return False
        return True

    def trace_lines(self, start: int = 0) -> list[str]:
        return [json.dumps(r) for r in self.trace.records[start:]]
