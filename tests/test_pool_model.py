"""The abstract pool (the oracle) on the paper's scenarios."""
import pytest

from kvclaims.errors import DuplicateId, InvalidInput, UnknownId
from kvclaims.model.pool import ClaimTerms, PoolModel


def chain(tag, n):
    return tuple(f"{tag}{i}" for i in range(n))


SYS = chain("s", 60)


def warmed(U=80, R=10):
    m = PoolModel(U, R)
    assert m.submit_request("warm", SYS).outcome == "admit"
    m.finish_request("warm")
    return m


def test_probe_hard_claim_refuses_and_keeps_resident():
    """RKC-PROBE-1 and RKC-INV-1 on the oracle: refused, attributed, the replay hits 60 blocks."""
    m = warmed()
    assert m.submit_claim(ClaimTerms("sys", SYS)) == "materialized"
    d = m.submit_request("big", chain("b", 70))
    assert (d.outcome, d.blocking_claims) == ("refuse_blocked", ("sys",))
    assert m.submit_request("replay", SYS).outcome == "admit"
    assert all(h in m.resident for h in SYS) and ("sys", "hit") in m.events


def test_probe_without_claim_evicts_silently():
    """Write no-admit does not protect the resident: the 70-block prefill evicts 50 of 60."""
    m = warmed()
    assert m.submit_request("big", chain("b", 70)).outcome == "admit"
    m.finish_request("big", admit=False)
    assert sum(h in m.resident for h in SYS) == 10 and m.events == []


def test_soft_claim_is_demoted_before_its_blocks_are_reused():
    """RKC-INV-2: a yielding claim gets its event before eviction."""
    m = warmed()
    m.submit_claim(ClaimTerms("soft", SYS, hard=False))
    assert m.counts().yielding == 60
    assert m.submit_request("big", chain("b", 70)).outcome == "admit"
    assert m.events[-1] == ("soft", "demote")


def test_reserve_refuses_a_hard_claim():
    """RKC-ACC-1: 60 + 25 distinct hard blocks exceed U - R = 70."""
    m = warmed()
    m.submit_claim(ClaimTerms("sys", SYS))
    assert m.submit_claim(ClaimTerms("more", chain("x", 25))) == "refused"
    assert m.submit_claim(ClaimTerms("shared", SYS[:30] + chain("y", 10))) == "accepted"


def test_rejections_change_nothing():
    m = warmed()
    m.submit_claim(ClaimTerms("sys", SYS))
    before = (dict(m.resident), dict(m.requests), m.counts(), list(m.events))
    with pytest.raises(DuplicateId):
        m.submit_claim(ClaimTerms("sys", SYS))
    with pytest.raises(UnknownId):
        m.finish_request("nope")
    with pytest.raises(InvalidInput):
        ClaimTerms("bad", SYS, policy="keep")
    assert (dict(m.resident), dict(m.requests), m.counts(), list(m.events)) == before
