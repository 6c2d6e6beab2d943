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
from functools import lru_cache
from typing import Sequence

import torch

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
    """Digests of `blocks[n, ...]`, computed where they lie: one pass, one transfer of n digests.

    Each digest is two random-weighted sums of the blocks' raw 32-bit words,
    modulo 2**64. Integer sums are exact in any order, so the same bytes give
    the same digest on every device; a changed word changes a sum unless its
    weight difference vanishes mod 2**64, which random odd weights prevent for
    single-word changes and make improbable otherwise. It detects corruption,
    not tampering: the host tier is this process's own memory.
    """
    if not len(blocks):
        return []
    out = []
    w = _weights(blocks[0].numel(), blocks.device)
    for chunk in blocks.detach().split(_CHUNK):  # bounds the int64 temporaries
        words = chunk.reshape(len(chunk), -1).view(torch.int32).to(torch.int64)
        out.append(
            words @ w.T
            if words.is_cpu  # CUDA has no int64 matmul; it is bandwidth-bound
            else torch.stack([(words * w[0]).sum(-1), (words * w[1]).sum(-1)], 1)
        )
    return [f"{a & _MASK:016x}{b & _MASK:016x}" for a, b in torch.cat(out).tolist()]


def checksum(block: torch.Tensor) -> str:
    """The digest of one block (see `checksums`)."""
    return checksums(block.unsqueeze(0))[0]


_MASK = (1 << 64) - 1
_CHUNK = 64


@lru_cache(maxsize=8)
def _weights(n: int, device: torch.device) -> torch.Tensor:
    """Two fixed rows of odd 31-bit weights (fixed seed: digests are stable across runs)."""
    g = torch.Generator().manual_seed(0x6B76)
    return (torch.randint(0, 1 << 30, (2, n), generator=g, dtype=torch.int64) * 2 + 1).to(device)
