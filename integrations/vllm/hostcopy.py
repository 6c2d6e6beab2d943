"""Host copies of KV cache blocks, each with a checksum taken when it is stored and checked
before it is loaded back: the data path of the claims host tier (`kvclaims.vllm.hosttier`).

It knows torch only (no vLLM), so the same code runs on a CPU engine and on a GPU, where
the host buffers are pinned and the copies are device transfers. Copies are synchronous:
a store returns once its bytes and checksums are on the host, a load once its verified
blocks are on the device. (vLLM's CUDA worker overlaps them on side streams; correctness,
not overlap, is what the claims tier adds, and a checksum needs the bytes on the host.)
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch

DIGEST_BYTES = 16  # blake2b-128, hex in traces and claims: collisions need ~2**64 blocks


class HostCopies:
    """One host row per chunk for each of the device KV tensors.

    `device` is vLLM's canonical KV cache layout: tensors of shape (num_blocks,
    page_bytes), int8, possibly strided views; a block's KV is its row in every tensor.
    A chunk here is one block (the tier runs with ``blocks_per_chunk`` 1). Host rows
    are pinned when the device is CUDA."""

    def __init__(self, device: Sequence[torch.Tensor], num_chunks: int) -> None:
        if not device or num_chunks < 1:
            raise ValueError(f"need device KV tensors and at least one host chunk, got {len(device)}, {num_chunks}")
        if any(t.dtype != torch.int8 or t.dim() != 2 for t in device):
            raise ValueError("device KV tensors must be vLLM's canonical (num_blocks, page_bytes) int8 views")
        self.device = list(device)
        pinned = self.device[0].is_cuda
        self.host = [torch.zeros((num_chunks, t.shape[1]), dtype=t.dtype, pin_memory=pinned) for t in self.device]

    @property
    def num_chunks(self) -> int:
        return self.host[0].shape[0]

    def digest(self, chunk: int) -> str:
        """The checksum of one host chunk: blake2b over its row in every tensor, in order."""
        h = hashlib.blake2b(digest_size=DIGEST_BYTES)
        for rows in self.host:
            h.update(rows[chunk].numpy().tobytes())
        return h.hexdigest()

    def store(self, blocks: Sequence[int], chunks: Sequence[int]) -> dict[int, str]:
        """Copy device `blocks` into host `chunks` (pairwise); returns each chunk's checksum."""
        assert len(blocks) == len(chunks), (blocks, chunks)
        for dev, host in zip(self.device, self.host):
            src = torch.as_tensor(list(blocks), dtype=torch.long, device=dev.device)
            host[list(chunks)] = dev.index_select(0, src).to("cpu")
        return {c: self.digest(c) for c in chunks}

    def load(self, chunks: Sequence[int], blocks: Sequence[int], expected: Sequence[str]) -> list[int]:
        """Copy host `chunks` into device `blocks` (pairwise) where the chunk's checksum is
        `expected`; returns the blocks not written (mismatched: never served)."""
        assert len(chunks) == len(blocks) == len(expected), (chunks, blocks, expected)
        good = [i for i, c in enumerate(chunks) if self.digest(c) == expected[i]]
        if good:
            src = [chunks[i] for i in good]
            for dev, host in zip(self.device, self.host):
                dst = torch.as_tensor([blocks[i] for i in good], dtype=torch.long, device=dev.device)
                dev.index_copy_(0, dst, host[src].to(dev.device))
        ok = set(good)
        return [b for i, b in enumerate(blocks) if i not in ok]

    def corrupt(self, chunk: int) -> None:
        """Fault injection: flip one bit of every byte of the chunk's row in the first tensor.
        Its checksum no longer matches; served, it would visibly change the model's output
        (a flipped low bit of one value may not: see the seeded-bug test)."""
        self.host[0][chunk] ^= 0x40
