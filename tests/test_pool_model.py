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
SGLANG = RuntimeProfile(recomputes_last_block=True, evicts_whole_nodes=True, shares_recomputed=True, keeps_parents=True)


@pytest.mark.parametrize("profile, hits, copies", [(RuntimeProfile(), 60, {}), (VLLM, 59, {"replay": {SYS[-1]}})])
def test_a_recomputed_last_block_is_no_hit_but_a_second_copy(profile, hits, copies):
    """A runtime that recomputes a fully cached prompt's last block hits one block fewer and,
    keeping duplicate copies, indexes that block a second time; plainly, every block hits."""
    m = AdoptingPool(80, 10, profile=profile)
    m.submit_request("warm", SYS)
    m.finish("warm")
    assert m.submit_request("replay", SYS).outcome == "admit"
    assert m.requests["replay"].hits == hits and m.copies == copies


@pytest.mark.parametrize("profile", [RuntimeProfile(), VLLM])
def test_replaying_exactly_a_claimed_prompt_is_the_claims_hit(profile):
    """A recomputed last block is no request hit, but the claim on exactly that prompt is
    reused all the same (vLLM's server did not count it: the issue's input); a prompt that
    extends a claimed prefix whose last block is gone is no claim hit."""
    m = AdoptingPool(80, 10, profile=profile)
    m.submit_request("warm", SYS)
    m.finish("warm")
    m.submit_claim(ClaimTerms("sys", SYS))
    m.submit_request("replay", SYS)
    assert ("sys", "hit") in m.events


def test_an_exact_replay_whose_last_block_made_room_is_no_claim_hit():
    """Under `recomputes_last_block` the claim on exactly the prompt is reused only if its
    last block is still cached once room is made for the replay."""
    m = AdoptingPool(3, profile=VLLM)
    m.submit_claim(ClaimTerms("c", ("a", "b"), strength="soft", policy="demote"))
    m.submit_request("warm", ("a", "b"))
    m.finish("warm")
    m.submit_request("other", ("x",))
    m.lru_evicted({"replay": ["b"]})  # the runtime's trace: room for the replay took b
    m.submit_request("replay", ("a", "b"))
    assert ("c", "hit") not in m.events


def test_no_admit_keeps_a_block_a_cached_later_block_needs_in_a_radix_tree():
    """Plainly write no-admit drops what the request computed; in a radix tree (SGLang) a
    block stays while a cached block after it on a prefix does."""
    for profile, kept in ((RuntimeProfile(), set()), (SGLANG, {"b"})):
        m = AdoptingPool(8, profile=profile)
        m.submit_request("first", ("a", "b"))
        m.submit_request("longer", ("a", "b", "c"))
        m.finish("longer")
        m.finish("first", admit=False)
        assert m.resident & {"b"} == kept and "c" in m.resident, profile


def test_a_shared_recomputed_copy_is_given_back():
    """A runtime that shares a recomputed block's indexed copy (SGLang's tree insert) gives
    the new copy back at once: the request holds the indexed one; plainly it keeps its own."""
    for profile, free in ((RuntimeProfile(recomputes_last_block=True), 0), (SGLANG, 1)):
        m = AdoptingPool(2, profile=profile)
        m.submit_claim(ClaimTerms("c", ("a",)))
        m.submit_request("first", ("a",))
        m.submit_request("replay", ("a",))
        assert (m.counts().free, m.counts().protected) == (free, 1), profile


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


class Lockstep:
    """The reference runtime and the oracle driven by the same calls; after each, the same
    decision, statuses, claim states, block table and class counts. The oracle adopts the
    runtime's LRU choices from its trace, as the stateful machine feeds them."""

    def __init__(self, U, B, R=0):
        from kvclaims.refimpl.adapter import RefimplAdapter

        self.rt = RefimplAdapter(U=U, B=B, R=R)
        self.m = AdoptingPool(U, R, profile=self.rt.profile)
        self.pos = 0

    def _lru_evicted(self):
        groups, pending = {}, []
        for rec in self.rt.trace.records[self.pos :]:
            if rec["kind"] == "block_evict" and rec["reason"] == "lru":
                pending += rec["blocks"]
            elif rec["kind"] in ("request_admit", "request_grow") and pending:
                groups[rec["request"]], pending = pending, []
        self.pos = len(self.rt.trace.records)
        self.m.lru_evicted(groups)

    def request(self, rid, tokens):
        got = self.rt.submit_request(rid, tokens)
        self._lru_evicted()
        B = self.rt.B
        want = self.m.submit_request(rid, tuple(self.rt.block_hashes(tokens)), -(-len(tokens) // B))
        assert got == want
        self.same()
        return got

    def finish(self, rid):
        self.rt.finish(rid)
        self.m.finish(rid)
        self.same()

    def claim(self, cid, tokens, **terms):
        got = self.rt.submit_claim(cid, tokens, **terms)
        assert self.m.submit_claim(ClaimTerms(cid, tuple(self.rt.block_hashes(tokens)), **terms)) == got
        self.same()
        return got

    def step(self):
        self.rt.step()
        self._lru_evicted()
        self.m.step()
        self.same()

    def same(self):
        rt, m = self.rt, self.m
        assert {r: rt.request_status(r) for r in m.requests} == {r: q.status for r, q in m.requests.items()}
        assert {c: rt.claim_state(c) for c in m.claims} == {c: k.state for c, k in m.claims.items()}
        assert rt.resident() == m.resident
        assert rt.counts() == m.counts()


def warm(pool, *prompts):
    for i, tokens in enumerate(prompts):
        assert pool.request(f"warm{i}", tokens).outcome == "admit"
        pool.finish(f"warm{i}")


def test_a_prompt_shorter_than_a_block_beside_an_unmaterialized_claim():
    """The reported case: U=1, B=2, a 1-block hard claim (accepted: its block is not resident,
    so nothing is protected), then a 1-token prompt. It needs A = 1 block and the one block is
    free, so the contract admits; the oracle counted the partial block as taken before making
    room for it, and found no room."""
    pool = Lockstep(U=1, B=2)
    assert pool.claim("c", [1, 2]) == "accepted"
    assert pool.request("r", [5]).outcome == "admit"
    assert pool.m.counts() == PoolCounts(U=1, free=0, cached=0, yielding=0, active=1, protected=0)


@pytest.mark.parametrize("U", [1, 2, 5])
def test_a_one_token_prompt_in_a_free_pool(U):
    pool = Lockstep(U=U, B=2)
    assert pool.request("r", [5]).outcome == "admit"
    assert pool.m.counts().active == 1 and pool.m.counts().free == U - 1


def test_a_partial_tail_after_a_prefix_hit():
    """One block hits, the partial tail takes the last free block."""
    pool = Lockstep(U=2, B=2)
    warm(pool, [1, 2])
    assert pool.request("r", [1, 2, 3]).outcome == "admit"
    assert pool.m.requests["r"].hits == 1 and pool.m.counts().active == 2


@pytest.mark.parametrize(
    "U, prompt",
    [(1, [7]), (2, [7, 8, 9]), (3, [1, 2, 9])],
    ids=["one-token-pool-of-one", "block-and-a-half-pool-of-two", "hit-then-partial-pool-of-three"],
)
def test_a_partial_block_when_the_pool_is_exactly_full(U, prompt):
    """Every block is cached (or hit), and the prompt needs exactly the rest of the pool, its
    last block partial: the LRU evicts for it, nothing is left free."""
    pool = Lockstep(U=U, B=2)
    warm(pool, list(range(1, 2 * U + 1)))
    assert pool.m.counts().cached == U
    assert pool.request("r", prompt).outcome == "admit"
    assert pool.m.counts().free == 0


def test_a_partial_block_with_no_room_waits_then_is_admitted():
    """A partial block that does not fit waits, and is admitted once a block is free."""
    pool = Lockstep(U=1, B=2)
    assert pool.request("r1", [5]).outcome == "admit"
    assert pool.request("r2", [6]).outcome == "wait"
    pool.finish("r1")
    pool.step()
    assert pool.m.requests["r2"].status == "running"


def test_a_partial_block_that_needs_a_claim_to_yield():
    """The partial block is one of the blocks the free ones and a soft claim's yield cover."""
    pool = Lockstep(U=3, B=2)
    warm(pool, [1, 2])
    assert pool.claim("soft", [1, 2], strength="soft", policy="demote") == "materialized"
    assert pool.request("r", [9] * 5).outcome == "admit"
    assert pool.m.events[-1] == ("soft", "demote")


def test_a_partial_block_yields_exactly_one_claim_of_two():
    """Two 1-block soft claims and one free block; a prompt of a block and a half needs one
    yield, not two (counting its partial block twice demoted both)."""
    pool = Lockstep(U=3, B=2)
    warm(pool, [1, 2], [3, 4])
    pool.claim("a", [1, 2], strength="soft", policy="demote", priority=0)
    pool.claim("b", [3, 4], strength="soft", policy="demote", priority=1)
    assert pool.request("r", [9, 9, 9]).outcome == "admit"
    assert [c.state for _, c in sorted(pool.m.claims.items())] == ["demoted", "materialized"]


def test_a_request_may_take_its_own_unhit_cached_block():
    """Admission takes its new blocks holding only its hits: a cached block of its chain past a
    gap (not a hit) is the LRU's to evict, as in the runtime, which computes it again."""
    m = PoolModel(2)
    m.submit_request("warm", ("a", "b"))
    m.finish("warm")
    m.evict_blocks({"a"})
    assert m.submit_request("r", ("a", "b")).outcome == "admit"
    assert m.resident == {"a", "b"} and not m.orphans
    assert m.counts() == PoolCounts(U=2, free=0, cached=0, yielding=0, active=2, protected=0)
