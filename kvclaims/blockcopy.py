"""Verified copies of KV blocks between a device and host memory: the host tiers' data path.

A block is one row of each of one or more tensors `[num_blocks, ...]` (the refimpl: one
tensor, a block `[2, B, heads, head_dim]`; vLLM: one `(num_blocks, page_bytes)` int8 view
per layer, rows possibly strided); its rows are contiguous bytes. Its digest is xxh3-128
(`xxhash`, 32 hex chars) of those bytes, row after row in tensor order.

Digests are always computed in host memory, on the CPU side of each transfer, where the
bytes pass anyway: after a chunk has landed on the host (`copy_out`), just before it is
read for the device (`copy_in`). So the digest is one function of the bytes on every
device (no device-side hash whose results would have to agree with a host-side one), a
host copy is read once per transfer, and a CUDA device needs nothing but its copies.
What a restore verifies is the host copy as the transfer reads it: host residency, the
bytes' longest exposure, is covered end to end; the host-to-device transfer itself is
trusted as any CUDA copy is (an error raises). Digests of device blocks outside a
transfer (`digests`, at materialization) copy them to the host first on a non-CPU device.

Transfers go in chunks of about `CHUNK_BYTES`, digested while the chunk is in the CPU's
cache (a digest costs no second pass over memory). On CUDA a transfer's chunks are queued
asynchronously (host rows are pinned), and each is digested as soon as it has landed
while the later ones are still in flight.

xxh3 detects corruption and stale copies (a 128-bit collision needs ~2**64 blocks), not
tampering: the host tier is the process's own memory.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
import xxhash

CHUNK_BYTES = 1 << 19  # a transfer's unit, digested while in cache: well within a core's L2
DIGEST_HEX = 32  # xxh3-128, hex

Rows = slice | list[int]  # a chunk's rows: consecutive ones as a slice (one plain copy), else indices


def byte_rows(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor `t[n, ...]` as `[n, bytes per block]` uint8, sharing `t`'s memory (writes
    go through). A block's bytes must be contiguous, unless `t` is 2-D with 1-byte elements
    (vLLM's views may be strided any way)."""
    assert t.device.type == "cpu", t.device
    flat = t.detach() if t.dim() == 2 else t.detach().reshape(len(t), math.prod(t.shape[1:]))
    assert not flat.numel() or flat.data_ptr() == t.data_ptr(), "a block's bytes must be one view of `t`"
    assert flat.stride(-1) == 1 or flat.element_size() == 1, "a block's bytes must be contiguous"
    return flat.view(torch.uint8).numpy()


def digests(tensors: Sequence[torch.Tensor], blocks: Sequence[int] | None = None) -> list[str]:
    """Digests of blocks `blocks` (default: all) of `tensors`; on a non-CPU device the
    blocks are copied to the host first (one transfer per tensor)."""
    ids = list(range(len(tensors[0]))) if blocks is None else list(blocks)
    if not ids:
        return []
    if tensors[0].device.type != "cpu":
        tensors = [(t if blocks is None else t[ids]).cpu() for t in tensors]
        ids = list(range(len(ids)))
    return _digest([byte_rows(t) for t in tensors], ids)


def copy_out(dev: Sequence[torch.Tensor], src: list[int], host: Sequence[torch.Tensor], dst: list[int]) -> list[str]:
    """Copy device blocks `src` of `dev` into host blocks `dst` of `host` (pairwise, tensor by
    tensor); returns each host copy's digest, taken once it landed."""
    if dev[0].device.type != "cpu":
        return _copy_out_torch(dev, src, host, dst)
    h, d, out = [byte_rows(t) for t in host], [byte_rows(t) for t in dev], []
    for s, t in _chunks(src, dst, _per_chunk(host)):  # host memory both sides: copy, digest from cache
        for a, b in zip(h, d):
            a[t] = b[s]
        out += _digest(h, t)
    return out


def copy_in(
    host: Sequence[torch.Tensor],
    src: list[int],
    dev: Sequence[torch.Tensor],
    dst: list[int],
    expected: Sequence[str] | None = None,
) -> list[str]:
    """Copy host blocks `src` of `host` into device blocks `dst` of `dev` (pairwise); returns
    each host block's digest, taken from the bytes the copy reads, just before it reads them.
    With `expected` (a digest per pair), a block whose digest differs is not written."""
    if dev[0].device.type != "cpu":
        return _copy_in_torch(host, src, dev, dst, expected)
    h, d = [byte_rows(t) for t in host], [byte_rows(t) for t in dev]
    out: list[str] = []
    for s, t in _verified(h, src, dst, expected, out):
        for a, b in zip(d, h):
            a[t] = b[s]
    return out


def _copy_out_torch(
    dev: Sequence[torch.Tensor], src: list[int], host: Sequence[torch.Tensor], dst: list[int]
) -> list[str]:
    """`copy_out` from any device: every chunk is queued (asynchronous into pinned host rows
    on CUDA), then each digested as soon as it landed, while later ones are in flight."""
    cuda = dev[0].device.type == "cuda"
    pending: list[tuple[Rows, list[torch.Tensor], torch.cuda.Event | None]] = []
    for s, t in _chunks(src, dst, _per_chunk(host)):
        s, t, staged = _t(s), _t(t), []
        for a, b in zip(host, dev):
            if isinstance(t, slice):  # straight into the host rows
                a[t].copy_(b[s], non_blocking=cuda)
            else:
                staged.append(b[s].to("cpu", non_blocking=cuda))
        done = torch.cuda.Event() if cuda else None
        if done is not None:
            done.record()
        pending.append((t, staged, done))
    h, out = [byte_rows(t) for t in host], []
    for t, staged, done in pending:
        if done is not None:
            done.synchronize()
        for a, rows in zip(host, staged):
            a[t] = rows
        out += _digest(h, t)
    return out


def _copy_in_torch(
    host: Sequence[torch.Tensor],
    src: list[int],
    dev: Sequence[torch.Tensor],
    dst: list[int],
    expected: Sequence[str] | None,
) -> list[str]:
    """`copy_in` to any device: a chunk of consecutive pinned host rows moves asynchronously
    on CUDA, so the next chunk's digest overlaps its transfer."""
    out: list[str] = []
    for s, t in _verified([byte_rows(t) for t in host], src, dst, expected, out):
        for a, b in zip(dev, host):
            a[_t(t)] = b[_t(s)].to(a.device, non_blocking=True)
    if dev[0].device.type == "cuda":
        torch.cuda.current_stream(dev[0].device).synchronize()  # no host row is written under a transfer
    return out


def _verified(
    h: list[np.ndarray], src: list[int], dst: list[int], expected: Sequence[str] | None, out: list[str]
) -> Iterator[tuple[Rows, Rows]]:
    """The chunks of `(src, dst)` to copy, each after its host rows `src` were digested into
    `out`; with `expected`, without the pairs whose digest is not the expected one."""
    at = 0
    for s, t in _chunks(src, dst, _per_chunk_rows(h)):
        got = _digest(h, s)
        if expected is not None and got != list(expected[at : at + len(got)]):
            keep = [i for i, g in enumerate(got) if g == expected[at + i]]
            s, t = [_ids(s)[i] for i in keep], [_ids(t)[i] for i in keep]
        at += len(got)
        out += got
        if not isinstance(s, list) or s:
            yield s, t


def _per_chunk(host: Sequence[torch.Tensor]) -> int:
    """Blocks per chunk: about `CHUNK_BYTES` of them, one at least."""
    return max(1, CHUNK_BYTES // max(1, sum(math.prod(t.shape[1:]) * t.element_size() for t in host)))


def _per_chunk_rows(h: list[np.ndarray]) -> int:
    return max(1, CHUNK_BYTES // max(1, sum(r.shape[1] for r in h)))


def _chunks(src: list[int], dst: list[int], per: int) -> Iterator[tuple[Rows, Rows]]:
    """The pairs `(src[i], dst[i])` in pieces of at most `per`; a side whose rows in a piece
    are consecutive, ascending or descending (vLLM hands out chunks in descending order),
    comes as a slice."""
    assert len(src) == len(dst), (len(src), len(dst))
    for lo in range(0, len(src), per):
        yield _run(src[lo : lo + per]), _run(dst[lo : lo + per])


def _run(rows: list[int]) -> Rows:
    a, n = rows[0], len(rows)
    if rows == list(range(a, a + n)):
        return slice(a, a + n)
    if rows == list(range(a, a - n, -1)):
        return slice(a, a - n if a >= n else None, -1)
    return rows


def _t(rows: Rows) -> Rows:
    """`rows` as torch indexes them (no negative steps)."""
    return rows if not isinstance(rows, slice) or rows.step is None else _ids(rows)


def _ids(rows: Rows) -> list[int]:
    if not isinstance(rows, slice):
        return rows
    step = rows.step or 1
    return list(range(rows.start, -1 if rows.stop is None else rows.stop, step))


def _digest(rows: list[np.ndarray], which: Rows) -> list[str]:
    """The digest of each block `which` of the byte rows `rows` (one array per tensor)."""
    if any(r.strides[-1] != 1 for r in rows):  # a strided view's rows: hashed from a contiguous copy
        return _digest([np.ascontiguousarray(r[which]) for r in rows], slice(0, len(_ids(which))))
    if len(rows) == 1:
        one = xxhash.xxh3_128_hexdigest
        r = rows[0]
        return [one(b) for b in r[which]] if isinstance(which, slice) else [one(r[i]) for i in which]
    out = []
    for i in _ids(which):
        x = xxhash.xxh3_128()
        for r in rows:
            x.update(r[i])
        out.append(x.hexdigest())
    return out
