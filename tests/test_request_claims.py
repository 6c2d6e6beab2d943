"""A claim carried by a request applies at its admission, or never (RKC-RT-8), on the
reference runtime and in the oracle alike. The issue's input on vLLM: a refused request's
claim stayed `accepted`, kept its reserve and materialized from someone else's request."""

import pytest

from kvclaims.errors import InvalidField, UnknownId
from kvclaims.model.pool import ClaimTerms, PoolModel
from kvclaims.refimpl.adapter import RefimplAdapter

B = 4
RESIDENT = list(range(1, 1 + 6 * B))  # 6 of 8 blocks, claimed hard
BIG = list(range(100, 100 + 4 * B))  # 4 blocks: 6 + 4 > 8


def setup():
    rt = RefimplAdapter(U=8, B=B)
    rt.submit_request("warm", RESIDENT)
    rt.finish("warm")
    rt.submit_claim("resident", RESIDENT)
    return rt


@pytest.mark.obligation("RKC-RT-8")
def test_refused_request_makes_no_claim():
    """RKC-RT-8: refused at submission, the request's claim never exists, reserves nothing and
    does not materialize when another request computes the same prefix later."""
    rt = setup()
    d = rt.submit_request("big", BIG, claim={"id": "mine"})
    assert d.outcome == "refuse_blocked" and rt.claim_outcome("big") == "not_applied"
    with pytest.raises(UnknownId):
        rt.claim_state("mine")
    assert not any(r.get("claim") == "mine" for r in rt.trace.records)
    rt.release_claim("resident")
    rt.submit_request("later", BIG)
    with pytest.raises(UnknownId):
        rt.claim_state("mine")


@pytest.mark.obligation("RKC-RT-8")
def test_aborted_while_waiting_makes_no_claim():
    """RKC-RT-8: a request aborted before admission applies nothing."""
    rt = RefimplAdapter(U=8, B=B)
    rt.submit_request("hog", list(range(1, 1 + 6 * B)))
    assert rt.submit_request("queued", BIG, claim={"id": "mine"}).outcome == "wait"
    assert rt.claim_outcome("queued") == "pending"
    rt.abort("queued")
    assert rt.claim_outcome("queued") == "not_applied"
    with pytest.raises(UnknownId):
        rt.claim_state("mine")


@pytest.mark.obligation("RKC-RT-8")
def test_admitted_request_claims_its_prefix():
    """RKC-RT-8: at admission the claim is submitted and materializes on the computed prefix;
    the claim_submit follows the request_admit in the trace."""
    rt = RefimplAdapter(U=8, B=B)
    rt.submit_request("owner", BIG + [7], claim={"id": "mine", "strength": "soft"})
    assert rt.claim_outcome("owner") == "applied" and rt.claim_state("mine") == "materialized"
    kinds = [r["kind"] for r in rt.trace.records]
    assert kinds.index("request_admit") < kinds.index("claim_submit")


@pytest.mark.obligation("RKC-RT-4", "RKC-RT-8")
def test_bad_carried_claim_is_rejected_at_submission():
    """RKC-RT-4 RKC-RT-8: a carried claim is validated with the request; nothing changes."""
    rt = RefimplAdapter(U=8, B=B)
    before = rt.trace_lines()
    with pytest.raises(InvalidField):
        rt.submit_request("r", BIG, claim={"id": "x", "strength": "soft", "policy": "refuse"})
    with pytest.raises(InvalidField):
        rt.submit_request("r", BIG, claim={"id": "x", "colour": "red"})
    assert rt.trace_lines() == before and "r" not in rt.requests


@pytest.mark.obligation("RKC-RT-8")
def test_oracle_agrees():
    """RKC-RT-8 in the oracle: refused, no claim; admitted, the claim applies."""
    rt = setup()
    m = PoolModel(U=8)
    chain = lambda t: tuple(rt.block_hashes(t))  # noqa: E731
    m.submit_request("warm", chain(RESIDENT))
    m.finish("warm")
    m.submit_claim(ClaimTerms("resident", chain(RESIDENT)))
    d = m.submit_request("big", chain(BIG), claim=ClaimTerms("mine", chain(BIG)))
    assert d.outcome == "refuse_blocked" and "mine" not in m.claims
    assert m.requests["big"].claim_outcome == "not_applied"
    m.release_claim("resident")
    m.submit_request("owner", chain(BIG), claim=ClaimTerms("mine2", chain(BIG)))
    assert m.claims["mine2"].state == "materialized"
