"""Injected faults end in a reported lifecycle event, never a silent loss: the claim's event
(with its reason) is in the trace before any of its blocks goes, and the trace passes the
checker. A fault the runtime can refuse instead (an owner's offload the host cannot take)
is a typed error that changes nothing.

Covered elsewhere, not repeated here: an owner's restore of a corrupt host copy fails closed
(test_refimpl_runtime.py::test_restore_mismatch_fails_closed_and_recomputes); a cache reset,
invalid-block eviction or device fault harms or fails every claim before any block is
evicted (test_refimpl_runtime.py::test_operator_actions_emit_loss_events_first; litmus
`prefix_cache_reset_with_claims`, with an offloaded claim and a running request; litmus
`device_fault_fail_closed`). A process killed mid-trace: see the trace reader's tests.
"""

import pytest

from kvclaims.errors import NoRoom
from kvclaims.conformance.checker import check_lines
from kvclaims.refimpl.host import HostTier
from kvclaims.conformance.litmus import tokens
from kvclaims.refimpl.runtime import Runtime
from test_atomic import state

P = tokens(2, 1)


def materialized(host_blocks: int = 4, **terms) -> Runtime:
    """U=8, B=4: claim 'c' on the 2-block prefix P, computed and materialized."""
    rt = Runtime(8, 4, host_blocks=host_blocks)
    rt.submit_claim("c", P, **terms)
    rt.submit_request("w", P)
    rt.finish("w")
    assert rt.claim_state("c") == "materialized"
    return rt


OFFLOAD = {"strength": "soft", "tiers": ("device", "host"), "policy": "offload"}


def host_store_fails(monkeypatch) -> None:
    def store(self, *args, **kwargs):
        raise RuntimeError("host allocation failed")

    monkeypatch.setattr(HostTier, "store", store)


def restore_corrupt_copy_by_request(monkeypatch) -> Runtime:
    """A request for the offloaded prefix restores it; one host copy is corrupt."""
    rt = materialized(**OFFLOAD)
    rt.offload_claim("c")
    rt.inject_host_fault(rt.claims["c"].chain[1])
    rt.submit_request("r", P + tokens(1, 2))
    assert rt.requests["r"].hit_blocks == 0 and rt.verify_request("r")  # recomputed, not served
    return rt


def host_copy_fails_under_pressure(monkeypatch) -> Runtime:
    """Pressure would offload the claim, but the host copy fails: demoted instead."""
    rt = materialized(**OFFLOAD)
    host_store_fails(monkeypatch)
    assert rt.submit_request("z", tokens(8, 2)).outcome == "admit"
    return rt


def host_full_under_pressure(monkeypatch) -> Runtime:
    """Pressure on an offload claim the host tier (1 block) cannot hold: demoted instead."""
    rt = materialized(host_blocks=1, **OFFLOAD)
    assert rt.submit_request("z", tokens(8, 2)).outcome == "admit"
    return rt


def device_fault_under_a_running_request(monkeypatch) -> Runtime:
    """A claimed block a running request also holds is corrupted: the claim fails closed;
    the block leaves the prefix index (never served again), the request keeps its slot."""
    rt = materialized()
    rt.submit_request("live", P + tokens(1, 2))
    h = rt.claims["c"].chain[0]
    slot = rt.pool.lookup(h)
    rt.inject_device_fault(h)
    assert rt.pool.lookup(h) is None and slot in rt.requests["live"].slots
    return rt


FAULTS = {  # fault -> the claim event it must end in: (event, reason, final state)
    "restore of a corrupt host copy by a request": (
        restore_corrupt_copy_by_request,
        ("fail", "checksum_mismatch", "failed"),
    ),
    "host copy fails under pressure": (host_copy_fails_under_pressure, ("demote", "offload_error", "demoted")),
    "host tier full under pressure": (host_full_under_pressure, ("demote", "pressure", "demoted")),
    "device fault under a running request": (device_fault_under_a_running_request, ("fail", "device_fault", "failed")),
}


@pytest.mark.parametrize("fault,expected", list(FAULTS.values()), ids=list(FAULTS))
def test_fault_ends_in_a_reported_event(fault, expected, monkeypatch):
    rt = fault(monkeypatch)
    event, reason, final = expected
    claim = [r for r in rt.trace.records if r["kind"] == "claim" and r["claim"] == "c"]
    assert (claim[-1]["event"], claim[-1].get("reason")) == (event, reason)
    assert rt.claim_state("c") == final
    # No block left the tier that held the claim before its event (the event comes first).
    before, after = claim[-2], claim[-1]
    tier = "host" if before["state"] == "offloaded" else "device"
    assert not [
        r
        for r in rt.trace.records[before["seq"] : after["seq"]]
        if r["kind"] == "block_evict" and r["tier"] == tier and set(rt.claims["c"].chain) & set(r["blocks"])
    ]
    assert check_lines(rt.trace.lines()).ok


@pytest.mark.parametrize("cause", ["host tier full", "host copy fails"])
def test_owner_offload_the_host_cannot_take_changes_nothing(cause, monkeypatch):
    """The owner's offload is refused with NoRoom; the claim stays materialized, its blocks
    resident; once the host can take it, the same offload succeeds."""
    rt = materialized(host_blocks=1 if cause == "host tier full" else 4, **OFFLOAD)
    with monkeypatch.context() as patch:
        if cause == "host copy fails":
            host_store_fails(patch)
        before = state(rt)
        with pytest.raises(NoRoom, match="claim 'c'"):
            rt.offload_claim("c")
        assert state(rt) == before
    if cause == "host copy fails":
        rt.offload_claim("c")
        assert rt.claim_state("c") == "offloaded"
    assert check_lines(rt.trace.lines()).ok


@pytest.mark.parametrize("how", ["request hits the claim", "request materialized the claim"])
def test_abort_mid_request_keeps_claimed_blocks(how):
    """A request holding claimed blocks is aborted: the claim keeps every block, intact, and
    emits no loss event."""
    rt = Runtime(8, 4)
    if how == "request hits the claim":
        rt.submit_claim("c", P)
        rt.submit_request("w", P)
        rt.finish("w")
        rt.submit_request("r", P + tokens(1, 2))
        assert rt.requests["r"].hit_blocks == 2
    else:
        rt.submit_request("r", P + tokens(1, 2))
        rt.submit_claim("c", P)
    assert rt.claim_state("c") == "materialized" and rt.requests["r"].status == "running"
    rt.abort("r")
    assert rt.claim_state("c") == "materialized"
    assert all(
        rt.pool.verify(rt.pool.lookup(h), P[i * 4 : (i + 1) * 4], i * 4) for i, h in enumerate(rt.claims["c"].chain)
    )
    assert [r["event"] for r in rt.trace.records if r["kind"] == "claim"] == ["accept", "materialize"] + (
        ["hit"] if how == "request hits the claim" else []
    )
    assert check_lines(rt.trace.lines()).ok
