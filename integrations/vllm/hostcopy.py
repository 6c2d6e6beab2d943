"""Host copies of KV cache blocks, each with a checksum taken when it is stored and checked
before it is loaded back: the data path of the claims host tier (`kvclaims.vllm.hosttier`).

It knows torch only (no vLLM), so the same code runs on a CPU engine and on a GPU, where
the host buffers are pinned and the copies are device transfers. Copies are synchronous:
a store returns once its bytes and checksums are on the host, a load once its verified
blocks are on the device. (vLLM's CUDA worker overlaps them on side streams; correctness,
not overlap, is what the claims tier adds.) The copies and checksums are
`kvclaims.blockcopy`'s: a chunk's checksum is taken in host memory on the CPU side of each
transfer, in cache-sized pieces, so a checksum costs no second pass over the bytes.
"""

from __future__ import annotations

from typing import Sequence

import torch

from kvclaims.blockcopy import DIGEST_HEX, copy_in, copy_out, digests

DIGEST_BYTES = DIGEST_HEX // 2  # xxh3-128, hex in claims: collisions need ~2**64 blocks


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
        """The checksum of one host chunk: xxh3-128 of its row in every tensor, in order."""
        return digests(self.host, [chunk])[0]

    def store(self, blocks: Sequence[int], chunks: Sequence[int]) -> dict[int, str]:
        """Copy device `blocks` into host `chunks` (pairwise); returns each chunk's checksum,
        taken on the host once its bytes landed."""
        assert len(blocks) == len(chunks), (blocks, chunks)
        return dict(zip(chunks, copy_out(self.device, list(blocks), self.host, list(chunks))))

    def load(self, chunks: Sequence[int], blocks: Sequence[int], expected: Sequence[str]) -> list[int]:
        """Copy host `chunks` into device `blocks` (pairwise) where the chunk's checksum is
        `expected`; returns the blocks not written (mismatched: never served). Each chunk
        is digested as the copy reads it, and written only if it matched."""
        assert len(chunks) == len(blocks) == len(expected), (chunks, blocks, expected)
        got = copy_in(self.host, list(chunks), self.device, list(blocks), expected)
        return [b for b, g, e in zip(blocks, got, expected) if g != e]

    def corrupt(self, chunk: int) -> None:
        """Fault injection: flip one bit of every byte of the chunk's row in the first tensor.
        Its checksum no longer matches; served, it would visibly change the model's output
        (a flipped low bit of one value may not: see the seeded-bug test)."""
        self.host[0][chunk] ^= 0x40
