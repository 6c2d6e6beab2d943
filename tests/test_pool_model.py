"""The abstract pool (the oracle) on the paper's scenarios, and what it adopts from a runtime
under its profile."""

import pytest

from kvclaims.errors import DuplicateId, InvalidInput, UnknownId
from kvclaims.model.adoption import AdoptingPool
from kvclaims.model.feasibility import PoolCounts
from kvclaims.model.pool import ClaimTerms, PoolModel
from kvclaims.model.profile import RuntimeProfile


def chain(tag, n):
    return tuple(f"{tag}{i}" for i in range(n))


SYS = chain("s", 60)


def warmed(U=80, R=10, host_blocks=0):
    m = PoolModel(U, R, host_blocks)
    assert m.submit_request("warm", SYS).outcome == "admit"
    m.finish("warm")
    return m


@pytest.mark.obligation("RKC-PROBE-1", "RKC-INV-1")
def test_probe_hard_claim_refuses_and_keeps_resident():
    """RKC-PROBE-1 and RKC-INV-1 on the oracle: refused, attributed, the replay hits 60 blocks."""
    m = warmed()
    assert m.submit_claim(ClaimTerms("sys", SYS)) == "materialized"
    d = m.submit_request("big", chain("b", 70))
    assert (d.outcome, d.blocking_claims) == ("refuse_blocked", ("sys",))
    assert m.submit_request("replay", SYS).outcome == "admit"
    assert m.requests["replay"].hits == 60 and ("sys", "hit") in m.events
    assert m.missing_claimed(m.resident) == {}


@pytest.mark.obligation("RKC-INV-2")
def test_soft_claim_is_demoted_before_its_blocks_are_reused():
    """RKC-INV-2: a yielding claim gets its event before its blocks are needed."""
    m = warmed()
    m.submit_claim(ClaimTerms("soft", SYS, strength="soft", policy="demote"))
    assert m.counts().yielding == 60
    assert m.submit_request("big", chain("b", 70)).outcome == "admit"
    assert m.events[-1] == ("soft", "demote")


def test_offload_policy_offloads_then_restores():
    m = warmed(host_blocks=60)
    m.submit_claim(ClaimTerms("off", SYS, policy="offload", tiers=("device", "host")))
    m.submit_request("big", chain("b", 70))
    assert m.claims["off"].state == "offloaded" and len(m.host) == 60
    m.finish("big")
    assert m.submit_request("again", SYS).outcome == "admit"
    assert m.claims["off"].state == "materialized" and m.host == set()


@pytest.mark.obligation("RKC-ACC-1")
def test_reserve_refuses_a_hard_claim():
    """RKC-ACC-1: 60 + 25 distinct hard blocks exceed U - R = 70."""
    m = warmed()
    m.submit_claim(ClaimTerms("sys", SYS))
    assert m.submit_claim(ClaimTerms("more", chain("x", 25))) == "refused"
    assert m.submit_claim(ClaimTerms("shared", SYS[:30] + chain("y", 10))) == "accepted"


def test_reset_harms_and_orphans():
    m = warmed()
    m.submit_claim(ClaimTerms("sys", SYS))
    m.submit_request("r", SYS + chain("t", 5))
    m.reset_prefix_cache()
    assert m.claims["sys"].state == "harmed" and m.resident == set()
    assert m.counts().active == 65 and m.counts().free == 15


def test_rejections_change_nothing():
    m = warmed()
    m.submit_claim(ClaimTerms("sys", SYS))
    before = (set(m.resident), dict(m.requests), m.counts(), list(m.events))
    with pytest.raises(DuplicateId):
        m.submit_claim(ClaimTerms("sys", SYS))
    with pytest.raises(UnknownId):
        m.finish("nope")
    with pytest.raises(InvalidInput):
        ClaimTerms("bad", SYS, policy="keep")
    assert (set(m.resident), dict(m.requests), m.counts(), list(m.events)) == before


# vLLM's recomputed last blocks and second copies, but free blocks taken first; and vLLM's own.
FREE_FIRST = RuntimeProfile(recomputes_last_block=True, keeps_duplicate_copies=True)
VLLM = RuntimeProfile(recomputes_last_block=True, keeps_duplicate_copies=True, takes_cached_while_free=True)


@pytest.mark.parametrize("profile, hits, copies", [(RuntimeProfile(), 60, {}), (VLLM, 59, {"replay": {SYS[-1]}})])
def test_a_recomputed_last_block_is_no_hit_but_a_second_copy(profile, hits, copies):
    """A runtime that recomputes a fully cached prompt's last block hits one block fewer and,
    keeping duplicate copies, indexes that block a second time; plainly, every block hits."""
    m = AdoptingPool(80, 10, profile=profile)
    m.submit_request("warm", SYS)
    m.finish("warm")
    assert m.submit_request("replay", SYS).outcome == "admit"
    assert m.requests["replay"].hits == hits and m.copies == copies


@pytest.mark.parametrize("profile, adopted", [(VLLM, True), (FREE_FIRST, False)])
def test_a_silently_reused_original_is_adopted_from_the_counts(profile, adopted):
    """A runtime that may take cached blocks while free ones remain can reuse an original whose
    hash a running request's copy keeps indexed: no eviction is due, so only its counts show it
    (a cached block fewer, a free one more), and the oracle adopts it; a runtime that takes free
    blocks first cannot have, and the counts stay apart (fuzz --runtime vllm --seed 11)."""
    m = AdoptingPool(8, profile=profile)
    m.submit_request("warm", ("a",))
    m.finish("warm")
    m.submit_request("copy", ("a",))  # recomputes `a`: the original is cached, unheld
    assert m.counts() == PoolCounts(U=8, free=6, cached=1, yielding=0, active=1, protected=0)
    runtime = PoolCounts(U=8, free=7, cached=0, yielding=0, active=1, protected=0)
    m.sync({"a"}, runtime)
    assert (m.counts() == runtime) is adopted
    assert (not any(m.copies.values())) is adopted


def test_no_admit_of_a_copied_original_keeps_the_hash_in_the_copy():
    """Write no-admit drops the original the finishing request computed; a running request's
    second copy keeps the hash indexed, now the only copy."""
    m = AdoptingPool(8, profile=VLLM)
    m.submit_request("first", ("a", "b"))
    m.evict_blocks({"a"})
    m.submit_request("copy", ("a", "b"))
    assert m.copies == {"copy": {"b"}}
    m.finish("first", admit=False)
    assert m.copies == {"copy": set()} and "b" in m.requests["copy"].held


@pytest.mark.obligation("RKC-RT-7")
def test_write_no_admit_drops_what_the_request_computed_unless_held():
    """The oracle predicts write no-admit itself: computed blocks leave, a block another running
    request holds stays."""
    m = PoolModel(8)
    m.submit_request("first", ("a", "b"))
    m.submit_request("reader", ("a",))
    m.finish("first", admit=False)
    assert m.resident == {"a"}


def test_owner_offload_and_restore_move_the_chain():
    """The oracle predicts the table across an owner's offload and restore."""
    m = PoolModel(8, host_blocks=4)
    m.submit_request("warm", ("a", "b"))
    m.finish("warm")
    m.submit_claim(ClaimTerms("c", ("a", "b"), policy="offload", tiers=("device", "host")))
    m.offload("c")
    assert m.resident == set() and m.host == {"a", "b"}
    m.restore("c")
    assert m.resident == {"a", "b"} and m.claims["c"].state == "materialized"


@pytest.mark.obligation("RKC-TR-6")
def test_sync_adopts_only_lru_evictions_of_cached_blocks_the_trace_names():
    """A cached block gone from the runtime is the LRU's choice only when its trace names the
    eviction; a block a request holds is never adopted gone, nor an unpredicted one adopted."""
    m = AdoptingPool(8)
    m.submit_request("warm", ("a", "b"))
    m.finish("warm")
    m.submit_request("run", ("c",))
    counts = m.counts()
    diff = m.sync({"b", "c", "x"}, counts)
    assert (diff.unpredicted, diff.vanished) == ({"x"}, {"a"}) and m.resident == {"a", "b", "c"}
    assert not m.sync({"b", "c"}, counts, lru={"a"}) and m.resident == {"b", "c"}
    diff = m.sync({"b"}, counts, lru={"c"})
    assert diff.vanished == {"c"} and "c" in m.resident


@pytest.mark.obligation("RKC-RT-7")
def test_write_no_admit_keeps_what_a_restore_brought_back():
    """Blocks an offloaded claim's restore filled were not computed by the request: no-admit keeps
    them (found by the stateful machine once the table was predicted, not adopted)."""
    m = PoolModel(8, host_blocks=1)
    m.submit_request("warm", ("a",))
    m.finish("warm")
    m.submit_claim(ClaimTerms("c", ("a",), tiers=("device", "host")))
    m.offload("c")
    m.submit_request("r", ("a",))
    m.demote("c")
    m.finish("r", admit=False)
    assert m.resident == {"a"}
