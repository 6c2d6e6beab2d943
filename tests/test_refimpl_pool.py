"""The device pool, host tier and KV content of the reference runtime (RKC-RT-6)."""

import pytest
import torch

from kvclaims.refimpl.host import HostTier
from kvclaims.refimpl.kv import chain_hashes, checksum, content
from kvclaims.refimpl.pool import DevicePool

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
    ),
]


def test_chain_hashes_cover_the_parent():
    a, b = chain_hashes(list(range(8)), 4), chain_hashes([9, 9, 9, 9] + list(range(4, 8)), 4)
    assert len(a) == 2 and a[1] != b[1]  # same tokens, different parent
    assert chain_hashes(list(range(10)), 4) == a  # a partial tail block has no hash
    assert chain_hashes(list(range(8)), 4) == a  # deterministic


@pytest.mark.obligation("RKC-RT-6")
@pytest.mark.parametrize("device", DEVICES)
def test_content_is_exact_and_device_independent(device):
    """RKC-RT-6: KV is an exact function of token ids and positions."""
    here = content([5, 6, 7], 12, 2, 8, torch.device(device))
    assert here.shape == (2, 3, 2, 8)
    assert torch.equal(here.cpu(), content([5, 6, 7], 12, 2, 8, torch.device("cpu")))
    assert not torch.equal(here, content([5, 6, 7], 13, 2, 8, torch.device(device)))


@pytest.mark.parametrize("device", DEVICES)
def test_pool_write_verify_register_and_lru(device):
    pool = DevicePool(4, 4, device=device)
    assert pool.kv.device.type == device and pool.kv.shape == (4, 2, 4, 2, 8)
    slot = pool.take_free()
    pool.write(slot, [1, 2, 3, 4], 0)
    assert pool.verify(slot, [1, 2, 3, 4], 0) and not pool.verify(slot, [1, 2, 3, 5], 0)
    assert pool.register(slot, "h") and not pool.register(pool.take_free(), "h")
    assert pool.digests([slot]) == [checksum(pool.kv[slot])]
    pool.settle(slot)
    assert pool.oldest_cached() == slot
    pool.refs[slot] += 1
    pool.settle(slot)
    assert pool.oldest_cached() is None
    pool.refs[slot] -= 1
    pool.settle(slot)
    assert pool.evict(slot) == "h" and pool.lookup("h") is None and slot in pool.free


def test_host_tier_copies_verify_and_share():
    host = HostTier(2, (2, 4, 2, 8), pin=False)
    block = content([1, 2, 3, 4], 0, 2, 8, torch.device("cpu"))
    assert host.store(["h"], block.unsqueeze(0), [0], "c1") == [checksum(block)]
    assert host.store(["h"], block.unsqueeze(0), [0], "c2") == [checksum(block)], "shared: its copy digested"
    assert host.room(["x"]) and not host.room(["x", "y"])
    target = torch.zeros(1, *block.shape)
    assert host.load(["h"], target, [0]) == [checksum(block)]
    assert torch.equal(target[0], block)
    assert not host.release("h", "c1") and host.release("h", "c2") and not host.index
