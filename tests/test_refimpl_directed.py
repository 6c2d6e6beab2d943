"""Directed tests of the reference runtime: behaviours the stateful machine's derandomized
examples never reach, and the constructor's exact boundaries and defaults.

Each test is one small scenario with its expected outcome written out: decode growth that
needs a claim to yield, the yield order passing over a claim that frees nothing, restores at
exactly enough room, offloaded claims inside a longer hit, what an abort or a refused decode
leaves cached, a partial first block completed by decode, expiry and claims from JSON,
device faults that really corrupt, host-tier evictions and block stores in the trace, and
the messages of unknown-block errors.
"""

import json

import pytest
import torch

from kvclaims.conformance.checker import check_lines
from kvclaims.conformance.litmus import tokens
from kvclaims.errors import InvalidField, NoRoom, UnknownId
from kvclaims.refimpl.runtime import Runtime


def records(rt, **match) -> list[dict]:
    return [r for r in rt.trace.records if all(r.get(k) == v for k, v in match.items())]


def seq(rt, **match) -> int:
    return records(rt, **match)[0]["seq"]


def warm(rt, rid, prompt) -> None:
    """Compute `prompt`'s blocks and leave them cached."""
    rt.submit_request(rid, prompt)
    rt.finish(rid)


def clean(rt) -> bool:
    rt.check_valid()
    report = check_lines(rt.trace.lines())
    assert report.ok, report.violations
    return True


# ---------------------------------------------------------------------- yielding
@pytest.mark.obligation("RKC-RT-1")
def test_decode_growth_makes_a_soft_claim_yield():
    """Decode growth whose only room is a soft claim's blocks: the growth is admitted, and the
    claim is demoted before its block is evicted and reused."""
    rt = Runtime(4, 4)
    P = tokens(2, 1)
    rt.submit_claim("s", P, strength="soft")
    warm(rt, "w", P)
    rt.submit_request("r", tokens(2, 2))  # the other two blocks: nothing is free now
    assert rt.counts().free == 0 and rt.claim_state("s") == "materialized"
    assert rt.decode("r", [7]).outcome == "admit"
    assert rt.claim_state("s") == "demoted" and len(rt.requests["r"].slots) == 3
    assert seq(rt, kind="claim", event="demote") < seq(rt, kind="block_evict")
    assert rt.verify_request("r") and clean(rt)


def test_a_claim_that_frees_nothing_is_passed_over():
    """Soft claim A (priority 0) comes first in yield order, but a running request holds its
    only block, so demoting it frees nothing: B (priority 1) yields, A stays materialized."""
    rt = Runtime(6, 4)
    PA, PB = tokens(1, 1), tokens(1, 2)
    rt.submit_claim("A", PA, strength="soft", priority=0)
    rt.submit_claim("B", PB, strength="soft", priority=1)
    warm(rt, "wa", PA)
    warm(rt, "wb", PB)
    rt.submit_request("ra", PA)  # holds A's block
    assert rt.submit_request("z", tokens(5, 3)).outcome == "admit"  # 4 free + B's block
    assert (rt.claim_state("A"), rt.claim_state("B")) == ("materialized", "demoted")
    assert [r["claim"] for r in records(rt, kind="claim", event="demote")] == ["B"]
    assert clean(rt)


# ---------------------------------------------------------------------- restore
def test_restore_with_exactly_enough_room():
    """restore_claim succeeds when free plus evictable blocks exactly cover the missing ones:
    here a chain whose blocks stayed resident (a request held them through the offload) on a
    pool with no free or cached block (0 missing, 0 room)."""
    rt = Runtime(4, 4, host_blocks=4)
    P = tokens(2, 1)
    rt.submit_claim("c", P, tiers=("device", "host"), policy="offload")
    rt.submit_request("h", P)  # running: its blocks stay resident through the offload
    rt.offload_claim("c")
    rt.submit_request("f", tokens(2, 2))
    assert rt.counts().free == 0 and not rt.pool.lru
    assert rt.restore_claim("c") == "materialized"
    assert clean(rt)


def test_restore_with_exactly_enough_free_blocks():
    """The same boundary with blocks to bring back: 2 missing, 2 free, nothing cached."""
    rt = Runtime(4, 4, host_blocks=4)
    P = tokens(2, 1)
    rt.submit_claim("c", P, tiers=("device", "host"), policy="offload")
    warm(rt, "w", P)
    rt.offload_claim("c")
    rt.submit_request("f", tokens(2, 2))
    assert rt.counts().free == 2 and not rt.pool.lru
    assert rt.restore_claim("c") == "materialized"
    assert clean(rt)


@pytest.mark.parametrize("blocks", [1, 2], ids=["hit equals the chain", "hit longer than the chain"])
def test_an_offloaded_claim_inside_a_hit_stays_offloaded(blocks):
    """A 1-block claim offloaded while a request held its block (so the block stayed resident):
    a request whose hit prefix covers the whole chain restores nothing into new blocks, so
    the claim stays offloaded. Only a chain reaching past the hit is restored at admission."""
    rt = Runtime(8, 4, host_blocks=4)
    P = tokens(2, 1)
    rt.submit_claim("c", P[:4], tiers=("device", "host"), policy="offload")
    rt.submit_request("h", P)
    rt.offload_claim("c")
    assert rt.pool.lookup(rt.claims["c"].chain[0]) is not None
    rt.submit_request("r", P[: 4 * blocks])
    assert rt.requests["r"].hit_blocks == blocks
    assert rt.claim_state("c") == "offloaded" and not records(rt, kind="claim", event="restore")
    assert clean(rt)


# ---------------------------------------------------------------------- what endings leave cached
def test_an_aborted_request_leaves_its_blocks_cached():
    """Abort is not write no-admit: the blocks the request computed stay cached."""
    rt = Runtime(8, 4)
    P = tokens(2, 1)
    rt.submit_request("a", P)
    rt.abort("a")
    assert not records(rt, kind="block_evict")
    rt.submit_request("again", P)
    assert rt.requests["again"].hit_blocks == 2 and rt.verify_request("again")
    assert clean(rt)


def test_a_refused_decode_leaves_the_blocks_cached():
    """A decode growth refused as too large ends the request; the blocks it computed stay cached."""
    rt = Runtime(4, 4)
    P = tokens(2, 1)
    rt.submit_request("r", P)
    assert rt.decode("r", tokens(5, 2)).outcome == "refuse_too_large"
    assert rt.requests["r"].status == "refused" and not records(rt, kind="block_evict")
    rt.submit_request("again", P)
    assert rt.requests["again"].hit_blocks == 2 and rt.verify_request("again")
    assert clean(rt)


def test_an_aborted_waiting_request_is_never_admitted():
    """Abort a waiting request, then free the room it waited for and step: it stays aborted,
    leaves the queue, and is never admitted."""
    rt = Runtime(4, 4)
    rt.submit_request("a", tokens(4, 1))
    assert rt.submit_request("w", tokens(1, 2)).outcome == "wait"
    rt.abort("w")
    assert rt.waiting == []
    rt.finish("a")
    rt.step()
    assert rt.requests["w"].status == "aborted" and rt.waiting == []
    assert not records(rt, kind="request_admit", request="w")
    assert clean(rt)


# ---------------------------------------------------------------------- decode and block stores
def test_decode_completing_a_first_partial_block_stores_it():
    """B=4: a 3-token prompt decodes 1 token; its first block is now full, so it is hashed,
    stored (block_store) and a later request with those 4 tokens hits it."""
    rt = Runtime(8, 4)
    rt.submit_request("r", [1, 2, 3])
    assert rt.pool.index == {}
    assert rt.decode("r", [4]).outcome == "admit"
    [h] = rt.requests["r"].hashes
    assert [r["blocks"] for r in records(rt, kind="block_store", request="r")] == [[h]]
    rt.finish("r")
    rt.submit_request("again", [1, 2, 3, 4])
    assert rt.requests["again"].hit_blocks == 1 and rt.verify_request("again")
    assert clean(rt)


def test_block_store_names_only_newly_indexed_blocks():
    """A block recomputed past a prefix miss while its hash is still indexed (its parent was
    evicted as invalid) is a second, unindexed copy: block_store does not name it."""
    rt = Runtime(8, 4)
    P = tokens(2, 1)
    warm(rt, "w", P)
    h0, h1 = rt.requests["w"].hashes
    rt.evict_blocks([h0])
    rt.submit_request("r", P)
    assert rt.requests["r"].hit_blocks == 0
    assert [r["blocks"] for r in records(rt, kind="block_store", request="r")] == [[h0]]
    assert rt.pool.index[h1] != rt.requests["r"].slots[1]
    assert clean(rt)


# ---------------------------------------------------------------------- claims
@pytest.mark.obligation("RKC-RT-8")
def test_a_claim_from_json_applies():
    """A request's claim as a client sends it (parsed JSON, so its "id" key is built at run
    time) applies at admission like one written in Python."""
    rt = Runtime(8, 4)
    claim = json.loads('{"id": "q1", "strength": "soft"}')
    rt.submit_request("r", tokens(2, 1), claim=claim)
    assert rt.claim_outcome("r") == "applied"
    assert rt.claim_state("q1") == "materialized" and rt.claims["q1"].strength == "soft"
    assert clean(rt)


def test_default_priority_is_zero():
    """A claim submitted without a priority records priority 0 and yields after a claim of
    priority -1 and before one of priority 1 (ids chosen so that a tie would reorder them)."""
    rt = Runtime(3, 4)
    for cid, prio, seed in (("z", -1, 1), ("m", None, 2), ("a", 1, 3)):
        kwargs = {} if prio is None else {"priority": prio}
        rt.submit_claim(cid, tokens(1, seed), strength="soft", **kwargs)
        warm(rt, "w" + cid, tokens(1, seed))
    assert records(rt, kind="claim_submit", claim="m")[0]["priority"] == 0
    assert rt.submit_request("big", tokens(3, 4)).outcome == "admit"
    assert [r["claim"] for r in records(rt, kind="claim", event="demote")] == ["z", "m", "a"]
    assert clean(rt)


# ---------------------------------------------------------------------- faults and operator actions
def test_a_device_fault_really_corrupts_the_block():
    """inject_device_fault changes the block's KV: a running request that holds the block
    through the fault no longer verifies."""
    rt = Runtime(8, 4)
    rt.submit_request("r", tokens(2, 1))
    assert rt.verify_request("r")
    rt.inject_device_fault(rt.requests["r"].hashes[1])
    assert not rt.verify_request("r")
    assert clean(rt)


def test_releasing_an_offloaded_claim_evicts_its_host_copies():
    """The host copies of a released offloaded claim leave the host tier, and the trace says
    so: block_evict, tier host, naming its blocks, after the release."""
    rt = Runtime(8, 4, host_blocks=4)
    P = tokens(2, 1)
    rt.submit_claim("c", P, tiers=("device", "host"), policy="offload")
    warm(rt, "w", P)
    rt.offload_claim("c")
    assert set(rt.host.index) == set(rt.claims["c"].chain)
    rt.release_claim("c")
    [ev] = records(rt, kind="block_evict", tier="host")
    assert (ev["blocks"], ev["reason"]) == (rt.claims["c"].chain, "release")
    assert ev["seq"] > seq(rt, kind="claim", event="release")
    assert rt.host.index == {} and len(rt.host.free) == 4
    assert clean(rt)


def test_evict_blocks_names_the_unknown_hashes():
    """UnknownId from evict_blocks names the hashes that are not resident, and only those."""
    rt = Runtime(8, 4)
    warm(rt, "w", tokens(1, 1))
    [known] = rt.requests["w"].hashes
    unknown = "f" * 32
    with pytest.raises(UnknownId) as err:
        rt.evict_blocks([known, unknown])
    assert unknown in str(err.value) and known not in str(err.value)
    with pytest.raises(UnknownId, match="no blocks given"):
        rt.evict_blocks([])
    assert rt.pool.lookup(known) is not None


# ---------------------------------------------------------------------- the constructor
@pytest.mark.parametrize(
    "kwargs",
    [{"U": 1}, {"B": 1}, {"R": 7}, {"heads": 1}, {"head_dim": 1}, {"heads": 1, "head_dim": 1}, {"vocab": 1}],
    ids=["U=1", "B=1", "R=U-1", "heads=1", "head_dim=1", "heads=head_dim=1", "vocab=1"],
)
def test_runtime_shape_boundaries_are_accepted(kwargs):
    """The smallest shapes the constructor allows build a runtime that serves a verified request."""
    args = {"U": 8, "B": 4, **kwargs}
    rt = Runtime(**args)
    assert (rt.U, rt.B, rt.R) == (args["U"], args["B"], args.get("R", 0))
    rt.submit_request("r", [0] * args["B"])
    assert rt.requests["r"].status == "running" and rt.verify_request("r")
    assert clean(rt)


def test_vocab_of_one_allows_only_token_0():
    rt = Runtime(8, 4, vocab=1)
    rt.submit_request("ok", [0, 0])
    with pytest.raises(InvalidField) as err:
        rt.submit_request("bad", [0, 1])
    assert err.value.field == "tokens[1]"


@pytest.mark.parametrize("kwargs, field", [({"head_dim": 0}, "head_dim"), ({"heads": 1, "head_dim": 0}, "head_dim")])
def test_an_empty_kv_shape_is_refused(kwargs, field):
    """head_dim 0 would make empty blocks (every verify passes, every checksum is equal)."""
    with pytest.raises(InvalidField) as err:
        Runtime(8, 4, **kwargs)
    assert (err.value.where, err.value.field) == ("runtime", field)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where CUDA cannot be used")
def test_cuda_without_cuda_is_an_invalid_device():
    """On a torch without CUDA, device="cuda" fails inside torch (an AssertionError on CPU-only
    builds); the runtime reports it as a bad `device`, not a crash."""
    with pytest.raises(InvalidField) as err:
        Runtime(8, 4, device="cuda")
    assert (err.value.where, err.value.field) == ("runtime", "device")


def test_default_reserve_is_zero():
    """Runtime(8, 4) has reserve 0: a hard claim on all 8 blocks is accepted."""
    rt = Runtime(8, 4)
    assert records(rt, kind="runtime")[0]["R"] == 0
    assert rt.submit_claim("all", tokens(8, 1)) == "accepted"


def test_default_has_no_host_tier():
    """Runtime(8, 4) has no host tier: offloading a 1-block claim finds no room."""
    rt = Runtime(8, 4)
    assert records(rt, kind="runtime")[0]["host_blocks"] == 0 and rt.host.capacity == 0
    P = tokens(1, 1)
    rt.submit_claim("c", P, tiers=("device", "host"), policy="offload")
    warm(rt, "w", P)
    with pytest.raises(NoRoom):
        rt.offload_claim("c")
    assert rt.claim_state("c") == "materialized"


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        "meta",
        pytest.param(
            "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
        ),
    ],
)
def test_the_host_tier_is_pinned_only_for_cuda(device):
    """Pinned host memory is asked for only when the KV pool is on CUDA, and only for a host
    tier that holds blocks."""
    rt = Runtime(8, 4, host_blocks=2, device=device)
    assert rt.host.kv.is_pinned() == (device == "cuda")
    assert not Runtime(8, 4, host_blocks=0, device=device).host.kv.is_pinned()


def test_offloads_one_block_at_a_time_keep_separate_host_slots():
    """Two 1-block claims offloaded in turn take two host slots: the second offload must not
    overwrite the first one's copy (a free-list slice that keeps a taken slot would)."""
    rt = Runtime(8, 4, host_blocks=4)
    for cid, seed in (("a", 1), ("b", 2)):
        P = tokens(1, seed)
        rt.submit_claim(cid, P, tiers=("device", "host"), policy="offload")
        rt.submit_request(f"w{cid}", P)
        rt.finish(f"w{cid}")
        rt.offload_claim(cid)
    assert len(rt.host.free) == 2
    assert rt.restore_claim("a") == "materialized" and rt.restore_claim("b") == "materialized"
