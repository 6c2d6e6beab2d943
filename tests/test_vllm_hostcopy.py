"""`HostCopies`, the data path of the claims host tier (`kvclaims.vllm.hostcopy`), alone: torch
only, no engine. A host copy is only worth restoring if it is the block's exact bytes, and a
bad one must never reach the device (RKC-RT-2: corrupt KV is never served). So: a store and
a load restore the exact bytes into other device rows; a corrupted chunk is not written and
is named as a bad block while the good ones in the same call are written; the checksum sees
a single byte; bad shapes are refused at construction; and vLLM's canonical tensors, which
may be strided views of a larger cache, work as they are.

Every test runs on the CPU and, where `torch.cuda.is_available()`, again with the device
tensors on CUDA, where the host rows must be pinned (vLLM copies to and from them).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from kvclaims.vllm.hostcopy import DIGEST_BYTES, HostCopies  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
BLOCKS, PAGES = 8, (64, 48)  # device blocks; page bytes of each KV tensor (two tensors: K and V, say)


def kv(device: str, seed: int = 0, blocks: int = BLOCKS, pages=PAGES) -> list[torch.Tensor]:
    """Canonical device KV tensors, (blocks, page bytes) int8, filled with random bytes."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(-128, 128, (blocks, p), dtype=torch.int8, generator=g).to(device) for p in pages]


def rows(tensors, ids) -> list[bytes]:
    """The bytes of rows `ids` of every tensor, tensor by tensor."""
    return [t[i].cpu().numpy().tobytes() for t in tensors for i in ids]


@pytest.mark.obligation("RKC-RT-2")
@pytest.mark.parametrize("device", DEVICES)
def test_store_then_load_restores_the_exact_bytes_elsewhere(device):
    dev = kv(device)
    hc = HostCopies(dev, num_chunks=4)
    assert hc.num_chunks == 4 and [h.shape for h in hc.host] == [(4, p) for p in PAGES]
    assert all(h.device.type == "cpu" and h.is_pinned() == (device == "cuda") for h in hc.host)
    original = [t.clone() for t in dev]
    # Out of order on both sides: block 3 -> chunk 2, block 0 -> chunk 0, block 6 -> chunk 3.
    digests = hc.store([3, 0, 6], [2, 0, 3])
    assert sorted(digests) == [0, 2, 3] and all(len(d) == 2 * DIGEST_BYTES for d in digests.values())
    assert digests == {c: hc.digest(c) for c in (0, 2, 3)}
    assert rows(hc.host, [2, 0, 3]) == rows(original, [3, 0, 6])
    assert dev[0].device.type == device and all(torch.equal(a, b) for a, b in zip(dev, original)), "a store reads only"

    bad = hc.load([3, 2, 0], [1, 5, 7], [digests[3], digests[2], digests[0]])
    assert bad == []
    assert rows(dev, [1, 5, 7]) == rows(original, [6, 3, 0])
    untouched = [0, 2, 3, 4, 6]
    assert rows(dev, untouched) == rows(original, untouched), "a load writes only its own blocks"


@pytest.mark.obligation("RKC-RT-2")
@pytest.mark.parametrize("device", DEVICES)
def test_a_corrupted_chunk_is_not_written_the_good_ones_are(device):
    dev = kv(device)
    hc = HostCopies(dev, num_chunks=3)
    original = [t.clone() for t in dev]
    digests = hc.store([1, 2, 3], [0, 1, 2])
    hc.corrupt(1)
    assert hc.digest(1) != digests[1]
    bad = hc.load([0, 1, 2], [5, 6, 7], [digests[0], digests[1], digests[2]])
    assert bad == [6], "the corrupted chunk's device block is reported, and only it"
    assert rows(dev, [5, 7]) == rows(original, [1, 3]), "the good blocks of the same call are written"
    assert rows(dev, [6]) == rows(original, [6]), "the bad block keeps what it had: the corrupt copy is never served"

    # Every block of a call bad: nothing written, each named.
    hc.corrupt(0)
    hc.corrupt(2)
    assert hc.load([0, 1, 2], [4, 6, 0], [digests[0], digests[1], digests[2]]) == [4, 6, 0]
    assert rows(dev, [4, 6, 0]) == rows(original, [4, 6, 0])

    # A checksum that is not the stored one (say a stale expectation) fails the same way.
    clean = HostCopies(kv(device, seed=3), num_chunks=1)
    d = clean.store([0], [0])[0]
    assert clean.load([0], [1], ["0" * len(d)]) == [1]


@pytest.mark.parametrize("device", DEVICES)
def test_the_digest_changes_with_one_byte_of_any_tensor(device):
    hc = HostCopies(kv(device), num_chunks=2)
    hc.store([4, 4], [0, 1])
    assert hc.digest(0) == hc.digest(1), "same bytes, same checksum"
    before = hc.digest(0)
    for t, (r, col) in ((0, (0, 0)), (1, (0, PAGES[1] - 1))):  # the first byte of K, the last of V
        hc.host[t][r, col] ^= 1
        assert hc.digest(0) != before, f"a flipped byte of tensor {t} is seen"
        hc.host[t][r, col] ^= 1
        assert hc.digest(0) == before
    hc.corrupt(0)
    assert hc.digest(0) != before and hc.digest(1) == before, "corrupt touches only its own chunk"


@pytest.mark.parametrize(
    "device, chunks, why",
    [
        (lambda: [torch.zeros((4, 8), dtype=torch.float32)], 2, "not int8"),
        (lambda: [torch.zeros((4, 8), dtype=torch.int8), torch.zeros((4, 8), dtype=torch.uint8)], 2, "one not int8"),
        (lambda: [torch.zeros((4, 2, 8), dtype=torch.int8)], 2, "3-D"),
        (lambda: [torch.zeros(32, dtype=torch.int8)], 2, "1-D"),
        (lambda: [torch.zeros((4, 8), dtype=torch.int8)], 0, "zero chunks"),
        (lambda: [torch.zeros((4, 8), dtype=torch.int8)], -1, "negative chunks"),
        (lambda: [], 2, "no tensors"),
    ],
)
def test_bad_inputs_are_refused(device, chunks, why):
    with pytest.raises(ValueError):
        HostCopies(device(), chunks)


def strided(device: str, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A (BLOCKS, 32) int8 view that is not contiguous, and the storage it views."""
    g = torch.Generator().manual_seed(7)
    if how == "interleaved":  # K and V of a block side by side: take one half of each row
        base = torch.randint(-128, 128, (BLOCKS, 2, 32), dtype=torch.int8, generator=g).to(device)
        return base[:, 1, :], base
    if how == "transposed":  # block-minor storage
        base = torch.randint(-128, 128, (32, BLOCKS), dtype=torch.int8, generator=g).to(device)
        return base.t(), base
    assert how == "every-other-block"
    base = torch.randint(-128, 128, (2 * BLOCKS, 32), dtype=torch.int8, generator=g).to(device)
    return base[::2], base


@pytest.mark.parametrize("how", ["interleaved", "transposed", "every-other-block"])
@pytest.mark.parametrize("device", DEVICES)
def test_strided_device_views_work_in_place(device, how):
    view, base = strided(device, how)
    assert not view.is_contiguous() and view.shape == (BLOCKS, 32)
    before_view, before_base = view.clone(), base.clone()
    hc = HostCopies([view], num_chunks=2)
    digests = hc.store([2, 5], [0, 1])
    assert rows(hc.host, [0, 1]) == rows([before_view], [2, 5])
    assert hc.load([1, 0], [0, 7], [digests[1], digests[0]]) == []
    assert rows([view], [0, 7]) == rows([before_view], [5, 2]), "the view itself is written, not a copy of it"
    expected = before_view.clone()
    expected[[0, 7]] = before_view[[5, 2]]
    assert torch.equal(view, expected)
    # What the view does not cover is untouched.
    mask = torch.ones_like(base, dtype=torch.bool)
    if how == "interleaved":
        mask[:, 1, :] = False
    elif how == "transposed":
        mask.t()[[0, 7]] = False
    else:
        mask[[0, 14]] = False
    assert torch.equal(base[mask], before_base[mask])
