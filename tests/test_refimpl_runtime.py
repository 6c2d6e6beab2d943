"""The reference runtime: the probe, events before reuse, fail-closed restore, refusals,
operator actions, and errors that change nothing. Runs on cpu, and on cuda when present."""

import pytest
import torch

from kvclaims.errors import DuplicateId, GuardRejected, IllegalTransition, InvalidInput, UnknownId
from kvclaims.conformance.checker import check_lines
from kvclaims.conformance.litmus import tokens
from kvclaims.refimpl.runtime import Runtime

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
    ),
]


def evicted_after(rt, seq):
    return {h for r in rt.trace.records[seq:] if r["kind"] == "block_evict" for h in r["blocks"]}


def first(rt, **match):
    return next(r["seq"] for r in rt.trace.records if all(r.get(k) == v for k, v in match.items()))


@pytest.mark.obligation("RKC-PROBE-1")
@pytest.mark.parametrize("device", DEVICES)
def test_probe_refuses_with_attribution_and_reuses_intact(device):
    """RKC-PROBE-1 on real tensors: 80 blocks, a 60-block hard claim, a 70-block prefill."""
    rt = Runtime(80, 4, 4, device=device)
    assert rt.pool.kv.device.type == device
    P = tokens(60, 1)
    rt.submit_claim("c", P)
    rt.submit_request("warm", P)
    rt.finish("warm")
    d = rt.submit_request("big", tokens(70, 2))
    assert (d.outcome, d.blocking_claims) == ("refuse_blocked", ("c",))
    rt.submit_request("again", P)
    assert rt.requests["again"].hit_blocks == 60 and rt.verify_request("again")
    assert check_lines(rt.trace.lines()).ok


@pytest.mark.obligation("RKC-RT-1")
@pytest.mark.parametrize("policy", ["demote", "offload"])
def test_pressure_emits_the_claim_event_before_reuse(policy):
    """RKC-RT-1: a yielding claim's demote/offload precedes the eviction of its blocks."""
    rt = Runtime(8, 4, host_blocks=4)
    P = tokens(3, 1)
    rt.submit_claim("c", P, tiers=("device", "host"), policy=policy)
    rt.submit_request("w", P)
    rt.finish("w")
    assert rt.submit_request("z", tokens(7, 2)).outcome == "admit"
    event = first(rt, kind="claim", event=policy)
    assert set(rt.claims["c"].chain) & evicted_after(rt, 0) <= evicted_after(rt, event)
    assert check_lines(rt.trace.lines()).ok


def test_soft_claims_yield_before_hard_and_by_priority():
    rt = Runtime(12, 4)
    for cid, strength, prio, seed in (("h", "hard", 0, 1), ("s9", "soft", 9, 2), ("s1", "soft", 1, 3)):
        rt.submit_claim(
            cid, tokens(2, seed), strength=strength, priority=prio, policy=None if strength == "soft" else "demote"
        )
        rt.submit_request("w" + cid, tokens(2, seed))
        rt.finish("w" + cid)
    rt.submit_request("z", tokens(10, 4))
    order = [r["claim"] for r in rt.trace.records if r.get("event") == "demote"]
    assert order == ["s1", "s9"] and rt.claim_state("h") == "materialized"


@pytest.mark.obligation("RKC-RT-2")
@pytest.mark.parametrize("device", DEVICES)
def test_restore_mismatch_fails_closed_and_recomputes(device):
    """RKC-RT-2: restore checks the materialization checksums; corrupt KV is never served."""
    rt = Runtime(8, 4, host_blocks=4, device=device)
    P = tokens(2, 1)
    rt.submit_claim("c", P, tiers=("device", "host"), policy="offload")
    rt.submit_request("w", P)
    rt.finish("w")
    rt.offload_claim("c")
    rt.inject_host_fault(rt.claims["c"].chain[1])
    assert rt.restore_claim("c") == "failed"
    assert rt.pool.index == {} and rt.host.index == {}
    rt.submit_request("r", P)
    assert rt.requests["r"].hit_blocks == 0 and rt.verify_request("r")
    assert check_lines(rt.trace.lines()).ok


@pytest.mark.obligation("RKC-RT-2")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", ["host copy", "resident block"])
def test_a_partly_resident_restore_verifies_both_parts(device, bad):
    """A restore whose chain is partly still on the device checks the host copies (digested
    as the transfer reads them) and the resident blocks (digested on the device) against
    the same materialization checksums; a mismatch in either fails the claim closed, the
    copied blocks wiped and never registered."""
    rt = Runtime(8, 4, host_blocks=4, device=device)
    P = tokens(3, 1)
    rt.submit_claim("c", P, tiers=("device", "host"), policy="offload")
    rt.submit_request("w", P)
    rt.finish("w")
    chain = rt.claims["c"].chain
    rt.offload_claim("c")
    rt.submit_request("x", P[:4])  # block 0 is computed again: resident, the rest on the host
    rt.finish("x")
    assert set(rt.pool.index) == {chain[0]}
    if bad == "host copy":
        rt.inject_host_fault(chain[2])
    else:  # silent device corruption: nothing in the runtime knows
        rt.pool.kv[rt.pool.index[chain[0]]] += 1.0
    assert rt.restore_claim("c") == "failed"
    assert set(rt.pool.index) == {chain[0]} and rt.host.index == {}, "nothing copied was registered"
    others = [s for s in range(8) if s != rt.pool.index[chain[0]]]
    assert not any(rt.pool.kv[s].any() for s in others), "what was copied is wiped"
    assert check_lines(rt.trace.lines()).ok


def test_restore_claim_success_pins_resident_part():
    rt = Runtime(4, 4, host_blocks=4)
    P = tokens(2, 1)
    rt.submit_claim("c", P, tiers=("device", "host"), policy="offload")
    rt.submit_request("w", P)
    rt.finish("w")
    rt.offload_claim("c")
    rt.submit_request("x", tokens(3, 2))
    rt.finish("x")
    assert rt.restore_claim("c") == "materialized"
    assert all(
        rt.pool.verify(rt.pool.lookup(h), P[i * 4 : (i + 1) * 4], i * 4) for i, h in enumerate(rt.claims["c"].chain)
    )
    assert check_lines(rt.trace.lines()).ok


@pytest.mark.obligation("RKC-RT-3")
def test_claim_blocked_request_is_refused_never_left_waiting():
    """RKC-RT-3: refused at submission, or at the retry after it became claim-blocked."""
    rt = Runtime(8, 4)
    P = tokens(2, 1)
    rt.submit_claim("c", P)
    rt.submit_request("a", P + tokens(4, 2))
    assert rt.submit_request("w", tokens(6, 3)).outcome == "wait"
    assert rt.submit_request("x", tokens(7, 4)).outcome == "refuse_blocked"
    rt.submit_claim("c2", P + tokens(4, 2))
    rt.finish("a")
    rt.step()
    assert rt.requests["w"].status == "refused" and rt.waiting == []


@pytest.mark.obligation("RKC-RT-3")
def test_own_blocks_never_make_a_request_wait_on_itself():
    """RKC-RT-3: a request's prefix hits (and, when decoding, its own blocks) are not
    'active blocks that will finish'; counting them so would leave it waiting forever."""
    rt = Runtime(8, 4)
    rt.submit_claim("c", tokens(4, 1))
    rt.submit_request("w", tokens(4, 1))
    rt.finish("w")
    rt.submit_request("x", tokens(3, 2))
    rt.finish("x")
    d = rt.submit_request("r", tokens(3, 2) + tokens(2, 3))
    assert (d.outcome, d.blocking_claims) == ("refuse_blocked", ("c",))
    rt.submit_request("g", tokens(3, 2) + [1])
    assert rt.decode("g", tokens(1, 4)).outcome == "refuse_blocked"
    assert rt.waiting == [] and check_lines(rt.trace.lines()).ok


def test_waiting_request_admitted_when_active_finishes():
    rt = Runtime(8, 4)
    rt.submit_request("a", tokens(5, 1))
    assert rt.submit_request("w", tokens(4, 2)).outcome == "wait"
    rt.step()
    assert rt.requests["w"].status == "waiting"
    rt.finish("a")
    rt.step()
    assert rt.requests["w"].status == "running" and rt.verify_request("w")


def test_decode_grows_block_by_block_and_registers_full_blocks():
    rt = Runtime(8, 4)
    rt.submit_request("r", [1, 2, 3, 4, 5, 6])
    assert len(rt.requests["r"].slots) == 2 and len(rt.pool.index) == 1
    assert rt.decode("r", [7, 8, 9]).outcome == "admit"
    assert len(rt.requests["r"].slots) == 3 and len(rt.pool.index) == 2
    assert rt.verify_request("r")
    rt.finish("r")
    rt.submit_request("again", list(range(1, 10)))
    assert rt.requests["again"].hit_blocks == 2


@pytest.mark.obligation("RKC-RT-3")
def test_decode_refused_by_claims_ends_the_request():
    """RKC-RT-3 for decode growth."""
    rt = Runtime(6, 4)
    P = tokens(3, 1)
    rt.submit_claim("c", P)
    rt.submit_request("w", P)
    rt.finish("w")
    rt.submit_request("r", tokens(2, 2))
    assert rt.decode("r", tokens(2, 3)).blocking_claims == ("c",)
    assert rt.requests["r"].status == "refused"
    assert check_lines(rt.trace.lines()).ok


@pytest.mark.obligation("RKC-RT-7")
def test_write_no_admit_frees_computed_blocks_keeps_hits():
    """RKC-RT-7."""
    rt = Runtime(8, 4)
    P = tokens(2, 1)
    rt.submit_request("w", P)
    rt.finish("w")
    rt.submit_request("n", P + tokens(3, 2))
    rt.finish("n", admit=False)
    assert len(rt.pool.index) == 2 and len(rt.pool.free) == 6


@pytest.mark.obligation("RKC-RT-5")
@pytest.mark.parametrize("action", ["reset", "evict", "fault"])
def test_operator_actions_emit_loss_events_first(action):
    """RKC-RT-5: harm (or fail) for every affected claim before any block is evicted."""
    rt = Runtime(8, 4)
    P = tokens(2, 1)
    rt.submit_claim("c", P)
    rt.submit_claim("d", P, strength="soft")
    rt.submit_request("w", P)
    rt.finish("w")
    h = rt.claims["c"].chain[0]
    {
        "reset": rt.reset_prefix_cache,
        "evict": lambda: rt.evict_blocks([h, h]),
        "fault": lambda: rt.inject_device_fault(h),
    }[action]()
    want = "fail" if action == "fault" else "harm"
    assert rt.claim_state("c") == rt.claim_state("d") == {"fail": "failed", "harm": "harmed"}[want]
    last_event = max(r["seq"] for r in rt.trace.records if r.get("event") == want)
    assert last_event < first(rt, kind="block_evict")
    assert rt.pool.lookup(h) is None
    assert check_lines(rt.trace.lines()).ok


def snapshot(rt):
    p = rt.pool
    return (
        len(rt.trace.records),
        {c: x.state for c, x in rt.claims.items()},
        {r: (x.status, list(x.slots)) for r, x in rt.requests.items()},
        list(rt.waiting),
        list(p.refs),
        [set(h) for h in p.holders],
        dict(p.index),
        list(p.lru),
        list(p.free),
        p.kv.clone(),
        dict(rt.host.index),
        rt.time,
    )


def same(a, b):
    return all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a, b))


@pytest.mark.obligation("RKC-RT-4")
def test_rejected_operations_change_nothing():
    """RKC-RT-4: every typed error leaves runtime state and trace exactly as they were."""
    rt = Runtime(8, 4, 2, host_blocks=1)
    P = tokens(2, 1)
    rt.submit_claim("c", P)
    rt.submit_claim("big", tokens(3, 2), tiers=("device", "host"), policy="offload")
    for rid, toks in (("w", P), ("w2", tokens(3, 2))):
        rt.submit_request(rid, toks)
        rt.finish(rid)
    assert rt.claim_state("big") == "materialized"
    rt.submit_request("run", tokens(1, 3))
    bad = [
        (DuplicateId, lambda: rt.submit_claim("c", P)),
        (InvalidInput, lambda: rt.submit_claim("x", [1, 2, 3])),
        (InvalidInput, lambda: rt.submit_claim("x", P, strength="soft", policy="refuse")),
        (InvalidInput, lambda: rt.submit_claim("x", P, policy="offload")),
        (InvalidInput, lambda: rt.submit_claim("x", P, ttl=0)),
        (InvalidInput, lambda: rt.submit_claim("x", P, tiers=("host",))),
        (UnknownId, lambda: rt.release_claim("nope")),
        (IllegalTransition, lambda: rt.restore_claim("c")),
        (GuardRejected, lambda: rt.offload_claim("c")),
        (InvalidInput, lambda: rt.offload_claim("big")),  # host tier too small
        (DuplicateId, lambda: rt.submit_request("w", P)),
        (InvalidInput, lambda: rt.submit_request("x", [])),
        (InvalidInput, lambda: rt.submit_request("x", [1, -2])),
        (InvalidInput, lambda: rt.finish("w")),
        (InvalidInput, lambda: rt.decode("run", [])),
        (InvalidInput, lambda: rt.abort("w")),
        (UnknownId, lambda: rt.evict_blocks(["0" * 32])),
        (UnknownId, lambda: rt.evict_blocks([])),
        (UnknownId, lambda: rt.inject_device_fault("0" * 32)),
        (UnknownId, lambda: rt.inject_host_fault("0" * 32)),
        (InvalidInput, lambda: rt.step(0)),
    ]
    for error, call in bad:
        before = snapshot(rt)
        with pytest.raises(error):
            call()
        assert same(before, snapshot(rt)), call
    with pytest.raises(InvalidInput):
        Runtime(4, 4, R=4)


@pytest.mark.obligation("RKC-FEAS-7")
def test_feasibility_is_a_dry_run_of_submit():
    """`feasibility` decides as `submit_request` would, and changes nothing (RKC-FEAS-7)."""
    rt = Runtime(8, 4, 0)
    P = tokens(2, 1)
    rt.submit_request("w", P)
    rt.finish("w")
    rt.submit_claim("c", P)
    for prompt in (tokens(9, 2), P + tokens(6, 3), tokens(3, 4), P + tokens(7, 5)):
        before = snapshot(rt)
        d = rt.feasibility(prompt)
        assert same(before, snapshot(rt))
        assert rt.submit_request(f"r{len(rt.requests)}", prompt) == d
