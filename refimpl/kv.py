"""Block hashing, deterministic KV content and checksums.

Content is an exact integer function of (token id, position) cast to float32,
so the same tokens give bit-identical KV on any device and a reused block can
be verified against a fresh computation.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch

ROOT_HASH = "0" * 32


def block_hash(parent: str, tokens: Sequence[int]) -> str:
    """vLLM-style chained hash: covers the parent hash and the block's token ids."""
    h = hashlib.blake2b(parent.encode(), digest_size=16)
    h.update(",".join(str(int(t)) for t in tokens).encode())
    return h.hexdigest()


def chain_hashes(tokens: Sequence[int], B: int) -> list[str]:
    """Hashes of the full blocks of `tokens` (a trailing partial block has none)."""
    out, parent = [], ROOT_HASH
    for i in range(0, len(tokens) - len(tokens) % B, B):
        parent = block_hash(parent, tokens[i:i + B])
        out.append(parent)
    return out


def content(tokens: Sequence[int], start: int, heads: int, head_dim: int,
            device: torch.device) -> torch.Tensor:
    """KV `[2, len(tokens), heads, head_dim]` for tokens at positions start, start+1, ..."""
    tok = torch.tensor(list(tokens), dtype=torch.int64, device=device).view(1, -1, 1, 1)
    pos = torch.arange(start, start + len(tokens), device=device).view(1, -1, 1, 1)
    kv = torch.arange(2, device=device).view(2, 1, 1, 1)
    hd = torch.arange(heads * head_dim, device=device).view(1, 1, heads, head_dim)
    code = (tok * 1000003 + pos * 7919 + kv * 104729 + hd * 31) % 65521
    return code.to(torch.float32) / 65536.0   # a power of two: exact on every device


def checksum(block: torch.Tensor) -> str:
    """Digest of a block's exact bytes (copied off the device first)."""
    raw = block.detach().to("cpu").contiguous().numpy()
    return hashlib.blake2b(memoryview(raw).cast("B"), digest_size=16).hexdigest()
