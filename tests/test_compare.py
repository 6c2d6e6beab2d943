"""The step comparisons (kvclaims.conformance.compare) on hand-made sequences: the reference
runtime passes them, and the mutants that hide from a narrower judge are caught, each naming
the obligation it breaks."""

import pytest

from kvclaims.conformance.adapter import profile_of
from kvclaims.conformance.compare import (
    Comparison,
    ContractViolation,
    check_claim_events,
    check_table_moves,
    violated_obligation,
)
from kvclaims.model.adoption import AdoptingPool
from kvclaims.model.pool import ClaimTerms
from kvclaims.refimpl.adapter import RefimplAdapter
from kvclaims.refimpl.mutants import SUBTLE
from kvclaims.trace import read_lines

B = 2


class Lockstep:
    """A runtime and its oracle driven together, compared after every operation."""

    def __init__(self, cls=RefimplAdapter, U=8):
        self.rt = cls(U=U, B=B)
        self.model = AdoptingPool(self.rt.U, self.rt.R, self.rt.host_blocks, profile=profile_of(self.rt))
        self.compared = Comparison(self.rt, self.model)
        self.pos = len(self.rt.trace_lines())

    def check(self):
        """The comparison, handed the trace's records since the last one (as the machine does)."""
        lines = self.rt.trace_lines(self.pos)
        self.pos += len(lines)
        self.compared.check([rec for _, rec in read_lines(lines)])

    def hashes(self, tokens):
        return tuple(self.rt.block_hashes(tokens))

    def request(self, rid, tokens):
        start = len(self.rt.trace_lines())
        self.rt.submit_request(rid, tokens)
        self.model.lru_evicted({rid: self._lru(start)})
        self.model.submit_request(rid, self.hashes(tokens), blocks=-(-len(tokens) // B))
        self.check()

    def _lru(self, start):
        """The LRU evictions since `start` (this one admission's), as the machine hands them over."""
        return [
            h
            for _, rec in read_lines(self.rt.trace_lines(start))
            if rec["kind"] == "block_evict" and rec["reason"] == "lru"
            for h in rec["blocks"]
        ]

    def claim(self, cid, tokens, **kwargs):
        self.rt.submit_claim(cid, tokens, **kwargs)
        self.model.submit_claim(ClaimTerms(cid, self.hashes(tokens), **kwargs))
        self.check()

    def finish(self, rid, admit=True):
        self.rt.finish(rid, admit=admit)
        self.model.finish(rid, admit=admit)
        self.check()

    def step(self):
        self.rt.step()
        self.model.step()
        self.check()


def tokens(tag, blocks):
    return [tag * 100 + i for i in range(blocks * B)]


def violation(run):
    with pytest.raises(ContractViolation) as caught:
        run()
    return violated_obligation(caught.value), str(caught.value)


def warm_then_tick(ls):
    ls.request("warm", tokens(1, 3))
    ls.finish("warm")
    ls.step()


def reuse(ls):
    ls.request("warm", tokens(1, 3))
    ls.finish("warm")
    ls.request("again", tokens(1, 3) + tokens(2, 1))


def demote_under_pressure(ls):
    ls.request("warm", tokens(1, 2))
    ls.finish("warm")
    ls.claim("soft", tokens(1, 2), strength="soft", policy="demote")
    ls.request("big", tokens(3, 8))


def no_admit_and_reset(ls):
    ls.request("r", tokens(1, 3))
    ls.finish("r", admit=False)
    ls.request("s", tokens(1, 2))
    ls.finish("s")
    ls.step()


@pytest.mark.parametrize("scenario", [warm_then_tick, reuse, demote_under_pressure, no_admit_and_reset])
def test_the_reference_runtime_answers_as_the_oracle(scenario):
    ls = Lockstep()
    scenario(ls)
    assert ls.model.resident == ls.rt.resident()
    if scenario is demote_under_pressure:
        assert ("soft", "demote") in ls.model.events and ls.rt.claim_state("soft") == "demoted"


@pytest.mark.obligation("RKC-TR-6")
def test_a_cached_block_dropped_with_no_record_is_caught():
    """vanishing_cache drops a cached block on a tick and writes nothing: the oracle, which
    predicts the table instead of adopting it, sees the block leave with no block_evict."""
    oid, message = violation(lambda: warm_then_tick(Lockstep(SUBTLE["vanishing_cache"])))
    assert oid == "RKC-TR-6" and "no block_evict record" in message


@pytest.mark.obligation("RKC-TR-8")
def test_under_reported_hits_are_caught():
    """under_reported_hits names one block fewer in request_admit than the request reused."""
    oid, message = violation(lambda: reuse(Lockstep(SUBTLE["under_reported_hits"])))
    assert oid == "RKC-TR-8" and "request_admit of again names 2 hit blocks" in message


def test_the_hit_query_is_compared():
    """An adapter whose hit_blocks disagrees with its own trace and the oracle is caught."""

    class Miscounts(RefimplAdapter):
        def hit_blocks(self, request_id):
            return super().hit_blocks(request_id) + 1

    oid, message = violation(lambda: reuse(Lockstep(Miscounts)))
    assert oid == "RKC-TR-8" and message.startswith("RKC-TR-8: hit_blocks('warm') is 1")


@pytest.mark.obligation("RKC-TR-6")
def test_a_predicted_block_the_runtime_lacks_is_not_adopted():
    """Only an LRU eviction its trace names is adopted: a block missing with no record is reported,
    not taken as the runtime's choice."""
    ls = Lockstep()
    ls.request("warm", tokens(1, 2))
    ls.finish("warm")
    h = ls.hashes(tokens(1, 2))[0]
    ls.rt.pool.evict(ls.rt.pool.index[h])  # behind the trace's back
    oid, message = violation(ls.check)
    assert (oid, message) == ("RKC-TR-6", f"RKC-TR-6: block {h} left the device table with no block_evict record")


def test_table_moves_need_records():
    evict = {"kind": "block_evict", "tier": "device", "blocks": ["a"], "reason": "lru"}
    store = {"kind": "block_store", "tier": "device", "blocks": ["b"]}
    check_table_moves({"a"}, {"b"}, [evict, store])
    assert violation(lambda: check_table_moves({"a"}, set(), [store]))[0] == "RKC-TR-6"
    assert violation(lambda: check_table_moves(set(), {"b"}, [evict]))[0] == "RKC-TR-9"
    host = {**store, "tier": "host"}
    assert violation(lambda: check_table_moves(set(), {"b"}, [host]))[0] == "RKC-TR-9"


def test_claim_events_per_claim_and_yield_order():
    loss = ("demote", "offload", "release")
    rec = [{"kind": "claim", "claim": c, "event": e} for c, e in [("a", "demote"), ("b", "demote")]]
    check_claim_events([("a", "demote"), ("b", "demote")], rec, loss)
    oid, message = violation(lambda: check_claim_events([("b", "demote"), ("a", "demote")], rec, loss))
    assert oid == "RKC-RT-1" and "yield" in message
    hit = [{"kind": "claim", "claim": "a", "event": "hit"}]
    assert violation(lambda: check_claim_events([], hit, loss))[0] == "RKC-TR-5"
    assert violation(lambda: check_claim_events([("a", "release")], [], loss))[0] == "RKC-RT-1"
