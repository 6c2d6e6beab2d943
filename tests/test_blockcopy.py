"""`kvclaims.blockcopy`, the host tiers' data path, alone: copies in cache-sized chunks with a
digest per block taken on the host side of each transfer. A digest is a function of the bytes
only (the host copy's digest equals the device block's exactly when the bytes do), a copy
moves exactly its blocks in any index order (ascending and descending runs go as slices,
the rest by index), and a load with expected digests writes only the blocks that match.

The torch path (`_copy_out_torch`, `_copy_in_torch`: what a CUDA device takes, minus the
asynchrony) is checked against the host-memory path on CPU tensors, and on CUDA where a
device is available.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvclaims import blockcopy
from kvclaims.blockcopy import DIGEST_HEX, copy_in, copy_out, digests

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
SHAPE = (2, 4, 2, 8)  # a refimpl block: [2, B, heads, head_dim], 512 bytes in float32


def blocks(n: int, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *SHAPE), generator=g).to(device)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of two blocks, so every copy here spans several chunks and a partial last one."""
    monkeypatch.setattr(blockcopy, "CHUNK_BYTES", 2 * 512)


def test_a_digest_is_a_function_of_the_bytes_alone():
    a = blocks(3)
    d = digests([a])
    assert all(len(x) == DIGEST_HEX for x in d) and len(set(d)) == 3
    assert digests([a.clone()]) == d and digests([a], [2, 0]) == [d[2], d[0]]
    assert digests([a.view(torch.int32)]) == d, "the bytes, not the dtype, are digested"
    b = a.clone()
    b.view(torch.uint8)[1, 0, 0, 0, 0] ^= 1  # one bit of block 1
    changed = digests([b])
    assert changed[0] == d[0] and changed[2] == d[2] and changed[1] != d[1]


def test_a_block_of_several_tensors_is_digested_tensor_by_tensor():
    k, v = torch.randint(-128, 128, (4, 16), dtype=torch.int8), torch.randint(-128, 128, (4, 8), dtype=torch.int8)
    whole = torch.cat([k, v], 1)
    assert digests([k, v]) == digests([whole]), "the rows' bytes in tensor order"
    assert digests([v, k]) != digests([whole])


@pytest.mark.parametrize("order", ["ascending", "descending", "scattered"])
@pytest.mark.parametrize("path", ["host memory", "torch"])
def test_a_round_trip_moves_exactly_its_blocks_and_digests_them(order, path, small_chunks):
    dev, host = blocks(9), torch.zeros((7, *SHAPE))
    before = dev.clone()
    src = {"ascending": [1, 2, 3, 4, 5], "descending": [8, 7, 6, 5, 4], "scattered": [3, 0, 8, 5, 1]}[order]
    dst = {"ascending": [2, 3, 4, 5, 6], "descending": [6, 5, 4, 3, 2], "scattered": [6, 0, 4, 1, 2]}[order]
    out, back = (copy_out, copy_in) if path == "host memory" else (blockcopy._copy_out_torch, _copy_in_torch)
    got = out([dev], src, [host], dst)
    assert got == digests([before], src) == digests([host], dst), "the copies' digests, taken where they landed"
    assert torch.equal(host[dst], before[src]) and torch.equal(dev, before), "a store reads only"
    untouched = [i for i in range(7) if i not in dst]
    assert not host[untouched].any(), "a store writes only its own host rows"

    target = [0, 1, 2, 3, 4] if order != "scattered" else [7, 2, 5, 0, 4]
    assert back([host], dst, [dev], target) == got, "a load digests what it reads"
    assert torch.equal(dev[target], before[src])
    others = [i for i in range(9) if i not in target]
    assert torch.equal(dev[others], before[others]), "a load writes only its own blocks"


def _copy_in_torch(host, src, dev, dst, expected=None):
    return blockcopy._copy_in_torch(host, src, dev, dst, expected)


@pytest.mark.parametrize("path", ["host memory", "torch"])
def test_a_load_with_expected_digests_writes_only_the_blocks_that_match(path, small_chunks):
    dev, host = blocks(6), torch.zeros((6, *SHAPE))
    before = dev.clone()
    want = copy_out([dev], [0, 1, 2, 3, 4], [host], [0, 1, 2, 3, 4])
    host[1] += 1.0  # a corrupt copy
    want[3] = "0" * DIGEST_HEX  # a stale expectation
    back = copy_in if path == "host memory" else _copy_in_torch
    got = back([host], [0, 1, 2, 3, 4], [dev], [5, 4, 3, 2, 1], want)
    assert [g == w for g, w in zip(got, want)] == [True, False, True, False, True]
    assert torch.equal(dev[5], before[0]) and torch.equal(dev[3], before[2]) and torch.equal(dev[1], before[4])
    assert torch.equal(dev[4], before[4]) and torch.equal(dev[2], before[2]), "a mismatched block is not written"
    assert back([host], [1], [dev], [0], [want[1]]) != [want[1]] and torch.equal(dev[0], before[0])


def test_strided_one_byte_views_are_written_in_place(small_chunks):
    base = torch.randint(-128, 128, (16, 6), dtype=torch.int8)
    view = base.t()  # (6 blocks, 16 bytes), block-minor
    before = base.clone()
    host = torch.zeros((6, 16), dtype=torch.int8)
    got = copy_out([view], [5, 0, 3], [host], [0, 1, 2])
    assert got == digests([before.t()], [5, 0, 3]) and torch.equal(host[:3], before.t()[[5, 0, 3]])
    assert copy_in([host], [0, 1], [view], [1, 2], got[:2]) == got[:2]
    assert torch.equal(view[1], before.t()[5]) and torch.equal(view[2], before.t()[0])
    assert torch.equal(view[[0, 3, 4, 5]], before.t()[[0, 3, 4, 5]])


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_any_pairing_round_trips(data):
    n = data.draw(st.integers(1, 12))
    src = data.draw(st.permutations(range(12)))[:n]
    dst = data.draw(st.permutations(range(12)))[:n]
    per = data.draw(st.integers(1, 5))
    old, blockcopy.CHUNK_BYTES = blockcopy.CHUNK_BYTES, per * 512
    try:
        dev, host = blocks(12, seed=n), torch.zeros((12, *SHAPE))
        before = dev.clone()
        got = copy_out([dev], src, [host], dst)
        assert got == digests([before], src) and torch.equal(host[dst], before[src])
        assert blockcopy._copy_out_torch([dev], src, [host], dst) == got
        dev.zero_()
        assert copy_in([host], dst, [dev], src, got) == got and torch.equal(dev[src], before[src])
    finally:
        blockcopy.CHUNK_BYTES = old


@CUDA
def test_cuda_round_trip_through_pinned_host_rows(small_chunks):
    dev, host = blocks(8, device="cuda"), torch.zeros((8, *SHAPE), pin_memory=True)
    before = dev.cpu()
    got = copy_out([dev], [7, 6, 5, 1], [host], [0, 1, 2, 5])
    assert got == digests([before], [7, 6, 5, 1]) == digests([dev], [7, 6, 5, 1]), "one digest on every device"
    dev.zero_()
    assert copy_in([host], [0, 1, 2, 5], [dev], [7, 6, 5, 1], got) == got
    assert torch.equal(dev.cpu()[[7, 6, 5, 1]], before[[7, 6, 5, 1]])
