"""SGLang's own radix cache (sglang 0.5.23, CPU) with the contract on it: the paper's probe,
stock and with a hard claim held by SGLang's lock ref; the stock witness's trace fails the
checker; page names are SGLang's KV-event hashes; the CPU stand-in stays scoped."""

from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("sglang", reason="SGLang is not installed (./dev test installs the sglang extra)")

from kvclaims.conformance.checker import check_lines  # noqa: E402
from kvclaims.errors import InvalidInput  # noqa: E402
from kvclaims.sglang import standins  # noqa: E402
from kvclaims.sglang.claims import RadixClaims  # noqa: E402
from kvclaims.sglang.probe import PREFILL, PREFIX, run_probe, table  # noqa: E402


def check(rt: RadixClaims):
    return check_lines(json.dumps(r) for r in rt.trace.records)


@pytest.fixture(scope="module")
def probe():
    return {leg["leg"]: leg for leg in run_probe()["legs"]}


def test_stock_sglang_loses_the_resident_prefix(probe):
    """Whole-node LRU eviction plus a spare page per request: 70 + 1 pages with 20 free
    evicts 51, and whole nodes make it all 60, in one node or in six."""
    for name in ("one_node", "six_nodes"):
        leg = probe[name]
        assert leg["prefill"]["outcome"] == "admit"
        assert (leg["replay_cached_pages_before"], leg["resident_pages_lost"]) == (60, 60), leg


def test_a_hard_claim_refuses_the_prefill_and_keeps_the_prefix(probe):
    leg = probe["hard_claim"]
    assert leg["prefill"] == {"outcome": "refuse_blocked", "blocking_claims": ["resident"]}
    assert leg["replay_cached_pages_after"] == 60 and leg["resident_pages_lost"] == 0
    assert leg["claim_state"] == "materialized"


def test_probe_table_names_the_claim():
    text = table(run_probe())
    assert "refused (refuse_blocked: resident)" in text


def test_claims_hold_with_lock_refs_and_the_trace_checks():
    rt = RadixClaims(80, 16, R=4)
    assert rt.submit_claim("resident", PREFIX) == "accepted"
    rt.submit_request("warm", PREFIX + [1])
    rt.finish("warm")
    assert rt.book.claims["resident"].state == "materialized"
    assert rt.pool.cache.protected_size() == 60 * 16  # SGLang's own count of locked tokens
    counts, blocking = rt.classes()
    assert (counts.protected, counts.free) == (60, 20) and set(blocking) == {"resident"}
    assert rt.submit_request("big", PREFILL).blocking_claims == ("resident",)
    rt.submit_request("replay", PREFIX + [2])
    assert rt.running["replay"].hits == 60
    assert rt.pool.verify(PREFIX, rt.running["replay"].pages), "the reused KV is the prefix's"
    rt.finish("replay")
    hits = [r for r in rt.trace.records if r["kind"] == "claim" and r["event"] == "hit"]
    assert [h["request"] for h in hits] == ["replay"]
    report = check(rt)
    assert report.ok, report.violations
    rt.book.end(rt.book.claims["resident"], "release", reason="owner")
    assert rt.pool.cache.protected_size() == 0


def test_stock_witness_fails_the_checker():
    """Claims recorded, not held: the prefill evicts the claimed pages with no loss event."""
    rt = RadixClaims(80, 16, enforce=False)
    rt.submit_claim("resident", PREFIX)
    rt.submit_request("warm", PREFIX + [1])
    rt.finish("warm")
    assert rt.submit_request("big", PREFILL).outcome == "admit"
    assert "claimed_block_lost" in {v.kind for v in check(rt).violations}


def test_soft_claim_gives_way_with_its_event_first():
    rt = RadixClaims(80, 16)
    rt.submit_claim("soft", PREFIX, strength="soft")
    rt.submit_request("warm", PREFIX + [1])
    rt.finish("warm")
    assert rt.submit_request("big", PREFILL).outcome == "admit"
    assert rt.book.claims["soft"].state == "demoted"
    seqs = [(r["seq"], r["kind"]) for r in rt.trace.records if r["kind"] in ("claim", "block_evict")]
    demote = next(r["seq"] for r in rt.trace.records if r.get("event") == "demote")
    assert demote < min(s for s, k in seqs if k == "block_evict")
    report = check(rt)
    assert report.ok, report.violations


def test_pages_are_named_by_sglangs_kv_event_hashes():
    rt = RadixClaims(8, 16)
    tokens = list(range(3 * 16))
    rt.submit_request("r", tokens + [1])
    stored = [r for r in rt.trace.records if r["kind"] == "block_store"]
    assert stored[0]["blocks"] == rt.pool.page_hashes(tokens)


def test_the_stand_in_stays_scoped():
    import transformers.utils

    standins.load()
    assert "torchvision" not in sys.modules
    assert not transformers.utils.is_torchvision_available()


def test_another_sglang_version_is_named(monkeypatch):
    monkeypatch.setattr(standins.importlib.metadata, "version", lambda name: "0.6.0")
    with pytest.raises(InvalidInput, match=r"SGLang 0\.6\.0 is installed.*sglang==0\.5\.23"):
        standins.check_version()
