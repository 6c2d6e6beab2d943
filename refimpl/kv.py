"""Block hashing, deterministic KV content and checksums.

Content is an exact integer function of (token id, position, weights version)
cast to float32, so the same tokens give bit-identical KV on any device and a
reused block can be verified against a fresh computation. The weights version
counts the invalidations that change every block's KV (the spec's
`[invalidation] weights`, a prefix-cache reset): KV computed before one differs
from KV computed after it, so stale KV fails verification as corrupt KV does.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch

from kvclaims.blockcopy import digests

ROOT_HASH = "0" * 32
# What names this runtime's cache (RKC-ID-3): KV from tokens and positions (no model
# weights), blocks named by `block_hash`, one namespace.
CACHE_IDENTITY = {"model": "kvclaims.refimpl.kv", "hash": "blake2b-128 chain", "namespace": "none"}


def block_hash(parent: str, tokens: Sequence[int]) -> str:
    """vLLM-style chained hash: covers the parent hash and the block's token ids."""
    h = hashlib.blake2b(parent.encode(), digest_size=16)
    h.update(",".join(str(int(t)) for t in tokens).encode())
    return h.hexdigest()


def chain_hashes(tokens: Sequence[int], B: int) -> list[str]:
    """Hashes of the full blocks of `tokens` (a trailing partial block has none)."""
    out, parent = [], ROOT_HASH
    for i in range(0, len(tokens) - len(tokens) % B, B):
        parent = block_hash(parent, tokens[i : i + B])
        out.append(parent)
    return out


def content(
    tokens: Sequence[int], start: int, heads: int, head_dim: int, device: torch.device, weights: int = 0
) -> torch.Tensor:
    """KV `[2, len(tokens), heads, head_dim]` for tokens at positions start, start+1, ...
    under weights version `weights` (versions differ unless 65521 apart, the modulus)."""
    tok = torch.tensor(list(tokens), dtype=torch.int64, device=device).view(1, -1, 1, 1)
    pos = torch.arange(start, start + len(tokens), device=device).view(1, -1, 1, 1)
    kv = torch.arange(2, device=device).view(2, 1, 1, 1)
    hd = torch.arange(heads * head_dim, device=device).view(1, 1, heads, head_dim)
    code = (tok * 1000003 + pos * 7919 + kv * 104729 + hd * 31 + weights * 15485863) % 65521
    return code.to(torch.float32) / 65536.0  # a power of two: exact on every device


def checksums(blocks: torch.Tensor) -> list[str]:
    """Digests of `blocks[n, ...]`: xxh3-128 of each block's bytes (any dtype), 32 hex chars.

    One function of the bytes on every device, computed in host memory (a CUDA tensor is
    copied to the host first): the host tier digests its copies with the same function
    on the CPU side of each transfer, so a copy's digest equals the one recorded at
    materialization exactly when its bytes do (`kvclaims.blockcopy` says why that is
    sound on CPU and CUDA alike).
    """
    return digests([blocks.detach().contiguous()]) if len(blocks) else []


def checksum(block: torch.Tensor) -> str:
    """The digest of one block (see `checksums`)."""
    return checksums(block.unsqueeze(0))[0]
