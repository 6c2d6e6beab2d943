"""Claims over SGLang's host tier, HiCache (`kvclaims.sglang.host`, `kvclaims.sglang.hicache`):
offload through SGLang's own backup, restore through its own load-back, each copy checked
against the checksums taken when the claim materialized, fail-closed on a corrupt one."""

from __future__ import annotations

import pytest

pytest.importorskip("sglang", reason="SGLang is not installed (./dev test installs the sglang extra)")

from kvclaims.conformance.checker import check_lines  # noqa: E402
from kvclaims.conformance.litmus import tokens  # noqa: E402
from kvclaims.conformance.stateful import machine_for  # noqa: E402
from kvclaims.model.names import POLICY, STATE  # noqa: E402
from kvclaims.sglang.adapter import HOST, SglangAdapter, StockSglangAdapter  # noqa: E402
from kvclaims.sglang.hicache import hicache_args  # noqa: E402

B = 4
PARKED = {"tiers": ("device", "host"), "policy": POLICY.offload}


def offloaded(U: int = 8, host: int = 4, blocks: int = 2) -> tuple[SglangAdapter, list[int]]:
    rt = SglangAdapter(U=U, B=B, host_blocks=host)
    P = tokens(blocks, 1, B)
    rt.submit_claim("c", P, **PARKED)
    rt.submit_request("warm", P)
    rt.finish("warm")
    rt.offload_claim("c")
    return rt, P


def records(rt: SglangAdapter, kind: str, **match) -> list[dict]:
    return [r for r in rt.rt.trace.records if r["kind"] == kind and all(r.get(k) == v for k, v in match.items())]


def test_offload_is_sglangs_backup_and_frees_the_device_pages():
    rt, P = offloaded()
    pool = rt.rt.pool
    assert rt.claim_state("c") == STATE.offloaded and rt.counts().free == 8
    assert pool.match(P)[0] == 0, "no device page of the prefix is left"
    assert pool.host is not None
    assert set(rt.block_hashes(P)) <= pool.host.pages.keys(), "SGLang's host pool holds both copies"
    assert records(rt, "block_evict", tier="device", reason="offload")
    rt.check_valid()


def test_restore_loads_the_verified_copies_back_through_sglang():
    rt, P = offloaded()
    assert rt.restore_claim("c") == STATE.materialized
    assert rt.verify_prefix(P), "the KV loaded back is the prefix's"
    assert records(rt, "block_restore", claim="c")[0]["blocks"] == rt.block_hashes(P)
    assert records(rt, "block_evict", tier="host", reason="restore")
    assert check_lines(rt.trace_lines()).ok
    rt.check_valid()


@pytest.mark.parametrize("page", [0, 1])
def test_a_corrupt_host_copy_fails_the_claim_closed_and_loads_nothing(page):
    rt, P = offloaded()
    rt.inject_host_fault(rt.block_hashes(P)[page])
    assert rt.restore_claim("c") == STATE.failed
    assert rt.counts().free == 8, "nothing was loaded"
    assert records(rt, "claim", claim="c", event="fail")[0]["reason"] == "checksum_mismatch"
    assert rt.submit_request("again", P + [7]).outcome == "admit" and rt.hit_blocks("again") == 0
    assert rt.verify_prefix(P), "the request computed the prefix again"
    assert check_lines(rt.trace_lines()).ok


def test_a_copy_sglang_kept_past_its_claim_is_written_again():
    """SGLang keeps a host copy when its claim lets go; a corrupt one must not fail the next
    claim on that prefix: the contract's host tier no longer holds it."""
    rt, P = offloaded()
    rt.inject_host_fault(rt.block_hashes(P)[1])
    rt.restore_claim("c")
    rt.submit_claim("d", P, **PARKED)
    rt.submit_request("warm2", P)
    rt.finish("warm2")
    rt.offload_claim("d")
    assert rt.claim_state("d") == STATE.offloaded
    assert rt.restore_claim("d") == STATE.materialized and rt.verify_prefix(P)


def test_unclaimed_pages_get_no_host_copy():
    """SGLang writes through nothing on its own: the host tier holds claims' copies only."""
    rt = SglangAdapter(U=8, B=B, host_blocks=4)
    rt.submit_request("r", tokens(3, 2, B))
    rt.finish("r")
    host = rt.rt.pool.cache.cache_controller.mem_pool_host
    assert not rt.rt.pool.host.pages and host.available_size() == host.size


def test_a_request_restores_the_claim_its_prompt_starts_with():
    rt, P = offloaded()
    assert rt.submit_request("r", P + tokens(1, 2, B)).outcome == "admit"
    assert rt.claim_state("c") == STATE.materialized and rt.hit_blocks("r") == 0
    assert rt.verify_prefix(P + tokens(1, 2, B))


def test_host_room_is_the_claims_not_sglangs():
    """`host_blocks` bounds the claims' copies (NoRoom past it); SGLang's host pool is sized
    past the device pool besides, for the copies it keeps of pages still on the device."""
    assert hicache_args(8, 4)["hicache_ratio"] == 1.5
    rt, _ = offloaded(host=2)
    rt.submit_claim("big", tokens(1, 3, B), **PARKED)
    rt.submit_request("w", tokens(1, 3, B))
    rt.finish("w")
    with pytest.raises(Exception, match="host tier has 0 free blocks"):
        rt.offload_claim("big")


def test_stock_sglang_has_no_claims_to_offload():
    assert not HOST & StockSglangAdapter.capabilities and HOST <= SglangAdapter.capabilities


SglangMachine = machine_for(SglangAdapter)


def test_regression_a_whole_prompt_claim_restores_with_the_page_its_request_computes():
    """fuzz --runtime sglang --seed 1: a one-page pool, a prompt that is exactly an offloaded
    claim's chain. Loading every page left none for the last page SGLang computes again,
    so the request waited; the last page is the request's now, and the claim restored with it."""
    state = SglangMachine()
    state.start(U=1, B=1, reserve=0, host=1)
    hard = {"strength": "hard"}
    state.host_roundtrip(blocks=1, family=1, fault=None, **hard)
    state.host_roundtrip(blocks=1, family=1, fault=None, **hard)
    state.teardown()


def test_regression_a_claim_offloaded_to_make_room_is_restored_not_hit():
    """fuzz --runtime sglang --seed 1: a prompt that is exactly a claim's chain offloads it
    under pressure, then restores it; the claim's page the request computes again is no
    hit (the oracle judges reuse after the room is made)."""
    state = SglangMachine()
    state.start(U=6, B=1, reserve=0, host=2)
    hard = {"strength": "hard", "policy": "refuse", "tiers": ("device",), "priority": 0, "ttl": None}
    state.submit_claim(blocks=1, family=1, kwargs=hard)
    parked = state.host_roundtrip(blocks=1, family=0, fault=None, strength="hard")
    state.offload_roundtrip(claim=parked, fault=None)
    state.rivals(family=0, ranks=(0, 0), strength="hard")
    state.offload_roundtrip(claim=parked, fault=None)
    state.offload_roundtrip(claim=parked, fault=None)
    state.teardown()


def test_regression_nothing_is_restored_for_a_request_that_must_wait():
    """fuzz --runtime sglang --seed 1: with no claim holding a page SGLang's allocation decides
    alone; a running request holding every page leaves no room, so the prompt that starts
    with an offloaded claim waits, and the claim stays offloaded (restored only on admission)."""
    state = SglangMachine()
    state.start(U=6, B=1, reserve=0, host=1)
    for blocks, family in ((1, 0), (1, 1), (2, 0), (1, 0), (1, 0)):
        state.host_roundtrip(blocks=blocks, family=family, fault=None, strength="hard")
    pressing = state.press()
    state.decode(n=3, request=pressing)
    state.junk_for_request(admit=None, request=pressing, tokens=[])
    state.host_roundtrip(blocks=1, family=0, fault=None, strength="hard")
    state.teardown()


def test_sglang_prints_nothing_of_its_own_when_an_allocation_waits(capfd):
    """SGLang prints its whole tree before "out of memory" (its Rust core, to fd 1): muted, or
    `kvclaims fuzz --runtime sglang --json` would not parse."""
    rt = SglangAdapter(U=2, B=B)
    rt.submit_request("a", tokens(2, 1, B))
    capfd.readouterr()
    assert rt.submit_request("b", tokens(2, 2, B)).outcome == "wait"
    assert capfd.readouterr().out == ""
