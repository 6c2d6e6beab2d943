"""vLLM's side of the claim book (`kvclaims.claimbook.ClaimBook`): its block pool, and
claim operations as the integration receives them (`xargs.ClaimOp`).

A claim holds a block the way a running request does, by a reference in vLLM's own
block pool (`pool.PoolView.hold`), so vLLM's LRU eviction never takes it. Every rule
of the claim itself (lifecycle, reserve, quota, ownership, sweeps, yield order) is the
book's, shared with every runtime under the protocol.
"""

from __future__ import annotations

from typing import Sequence

from vllm.v1.core.kv_cache_utils import BlockHash, KVCacheBlock

from kvclaims.claimbook import ANONYMOUS, ClaimBook
from kvclaims.errors import DuplicateId, InvalidField, InvalidInput
from kvclaims.model.claim import Claim
from kvclaims.vllm.pool import PoolView, hexid
from kvclaims.vllm.xargs import ClaimOp


class VllmSide:
    """The book's `Side` over vLLM's block pool; a claim's chain is vLLM's raw block hashes."""

    def __init__(self, pool: PoolView) -> None:
        self.pool = pool

    def resident(self, c: Claim, key: Sequence[BlockHash]) -> list[KVCacheBlock] | None:
        return self.pool.resident(key)

    def hold(self, c: Claim, blocks: Sequence[KVCacheBlock]) -> None:
        self.pool.hold(blocks)

    def unhold(self, c: Claim, blocks: Sequence[KVCacheBlock]) -> None:
        self.pool.unhold(blocks)

    def block_id(self, block: KVCacheBlock) -> int:
        return block.block_id


def check_new(book: ClaimBook, B: int, op: ClaimOp, full_blocks: int, prefix: int | None = None) -> None:
    """Can `op` be submitted to `book` (a pool of blocks of `B` tokens)? A request's claim
    (`prefix` None) is on the first `op.blocks` (default all) of its prompt's
    `full_blocks`: a trailing partial block is simply not claimed. A claim made in process
    names its prefix, `prefix` tokens, which must be whole blocks, as for every runtime
    (RKC-RT-4). Either way at most U blocks: a longer chain could never be resident.
    Raises DuplicateId, InvalidField or InvalidInput; changes nothing."""
    if op.claim_id in book.claims:
        raise DuplicateId(f"claim {op.claim_id!r} already exists")
    where = f"claim {op.claim_id!r}"
    if prefix is not None and (prefix < 1 or prefix % B):
        raise InvalidField(where, "prefix", f"must be whole blocks of {B} tokens, got {prefix} tokens")
    if full_blocks < 1 or (op.blocks or 0) > full_blocks:
        raise InvalidInput(
            f"{where}: the prompt has {full_blocks} full blocks of {B} tokens; cannot claim {op.blocks or 'them'}"
        )
    if (op.blocks or full_blocks) > book.U:
        raise InvalidField(
            where,
            "prefix",
            f"has {op.blocks or full_blocks} blocks, more than the pool's {book.U}: it could never be resident",
        )


def submit(
    book: ClaimBook,
    op: ClaimOp,
    chain: list[BlockHash],
    *,
    request: str | None = None,
    tenant: str = ANONYMOUS,
    deadline: float | None = None,
) -> str:
    """Submit `op` on `chain` (vLLM's hashes of the prompt's full blocks, cut to
    `op.blocks`); returns the claim's state. Its claim_submit record names the request
    that carried it (None: made in process), its tenant and, with a wall-clock TTL, the
    TTL and its `deadline` (Unix seconds)."""
    chain = chain[: op.blocks] if op.blocks else chain
    return book.submit(
        op.claim_id,
        [hexid(h) for h in chain],
        chain,
        strength=op.strength,
        priority=op.priority,
        ttl=op.ttl,
        tiers=op.tiers,
        policy=op.policy,
        tenant=tenant,
        record={"request": request, "tenant": tenant}
        | ({"ttl_s": op.ttl_s, "deadline": deadline} if op.ttl_s is not None else {}),
    )
