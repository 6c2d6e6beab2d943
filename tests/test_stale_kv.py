"""KV computed before an invalidation is never indexed or served after it (RKC-INV-6).

The issue's input: a request running across a prefix-cache reset grows by decode and
ends; its post-reset block rests on pre-reset KV. Right: nothing it computes is
indexed, so a later prompt reuses only blocks computed after the reset. The same
holds however the request ends and whichever invalidation it ran across.
"""

import pytest

from kvclaims.model.pool import PoolModel
from kvclaims.refimpl.adapter import RefimplAdapter
from kvclaims.conformance.checker import check_lines
from kvclaims.refimpl.mutants import StaleStore

LIVE, FRESH, AGAIN = list(range(1, 7)), list(range(1, 9)) + [9], list(range(1, 9)) + [10]


def run_issue_input(rt, end):
    rt.submit_request("live", LIVE)
    rt.reset_prefix_cache()
    rt.decode("live", [7, 8])
    end(rt)
    rt.submit_request("fresh", FRESH)
    rt.finish("fresh")
    rt.submit_request("again", AGAIN)
    return rt


ENDS = {
    "finish": lambda rt: rt.finish("live"),
    "no_admit": lambda rt: rt.finish("live", admit=False),
    "abort": lambda rt: rt.abort("live"),
}


@pytest.mark.obligation("RKC-INV-6")
@pytest.mark.parametrize("end", sorted(ENDS))
def test_issue_input_reuses_only_post_reset_blocks(end):
    """RKC-INV-6: `again` reuses the two blocks `fresh` computed after the reset, and their KV
    is its tokens' under the new weights; the trace checks clean."""
    rt = run_issue_input(RefimplAdapter(U=4, B=4), ENDS[end])
    assert rt.hit_blocks("again") == 2
    assert rt.verify_request("again")
    stores = [r["request"] for r in rt.trace.records if r["kind"] == "block_store"]
    assert stores == ["live", "fresh"]  # live's only store came before the reset
    assert check_lines(rt.trace_lines()).ok


@pytest.mark.obligation("RKC-INV-6")
def test_nothing_a_stale_request_computes_is_indexed():
    """RKC-INV-6: after the reset the running request's blocks leave the index and its decode
    stores nothing; when it ends the pool holds no block at all."""
    rt = RefimplAdapter(U=4, B=4)
    rt.submit_request("live", LIVE)
    rt.reset_prefix_cache()
    rt.decode("live", [7, 8, 9, 10, 11])
    assert rt.resident() == set()
    assert rt.verify_request("live")  # intact under the weights it ran with ...
    slot = rt.requests["live"].slots[0]
    assert not rt.pool.verify(slot, LIVE[:4], 0, rt.weights)  # ... and stale under the new ones
    rt.finish("live")
    assert rt.resident() == set() and rt.counts().free == 4


@pytest.mark.obligation("RKC-INV-6")
@pytest.mark.parametrize("action", ["evict_blocks", "inject_device_fault"])
def test_other_invalidations_start_an_epoch(action):
    """RKC-INV-6: an invalid-load eviction or a device fault also starts a new epoch: a request
    running across it stores nothing more (it may have computed over the invalid block)."""
    rt = RefimplAdapter(U=8, B=4)
    rt.submit_request("live", list(range(1, 11)))
    first = rt.block_hashes(LIVE)[0]
    getattr(rt, action)([first] if action == "evict_blocks" else first)
    before = rt.resident()
    rt.decode("live", [11, 12])
    assert rt.resident() == before
    rt.submit_request("late", list(range(1, 13)))  # admitted after: stores again
    assert rt.resident() > before


@pytest.mark.obligation("RKC-RT-6", "RKC-INV-6")
def test_stale_kv_fails_verification_like_corrupt_kv():
    """RKC-RT-6 RKC-INV-6: KV content depends on the weights version, so a block computed
    before a reset does not verify after it."""
    rt = RefimplAdapter(U=4, B=4)
    rt.submit_request("a", LIVE)
    slot = rt.requests["a"].slots[0]
    assert rt.pool.verify(slot, LIVE[:4], 0, rt.weights)
    rt.reset_prefix_cache()
    assert not rt.pool.verify(slot, LIVE[:4], 0, rt.weights)


@pytest.mark.obligation("RKC-INV-6")
def test_seeded_mutant_serves_stale_kv():
    """RKC-INV-6: the mutant that keeps indexing a stale request's blocks serves pre-reset KV:
    `again` hits the block `live` stored after the reset, its KV fails verification and the
    checker flags the stale store."""
    rt = run_issue_input(StaleStore(U=4, B=4), ENDS["finish"])
    assert not rt.verify_request("again")
    assert "stale_store" in {v.kind for v in check_lines(rt.trace_lines()).violations}


@pytest.mark.obligation("RKC-INV-6")
def test_oracle_indexes_nothing_for_a_stale_request():
    """RKC-INV-6 in the oracle: a growth by a request admitted before the reset adds nothing
    to the resident set, one admitted after does."""
    rt = RefimplAdapter(U=4, B=4)
    m = PoolModel(U=4)
    chain = lambda toks: tuple(rt.block_hashes(toks))  # noqa: E731
    m.submit_request("live", chain(LIVE), blocks=2)
    m.reset_prefix_cache()
    assert not m.fresh("live")
    m.decode("live", chain(LIVE + [7, 8]), 2)
    assert m.resident == set()
    m.finish("live")
    m.submit_request("fresh", chain(FRESH), blocks=3)
    assert m.fresh("fresh") and m.resident == set(chain(FRESH))
