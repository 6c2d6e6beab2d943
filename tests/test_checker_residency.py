"""The checker sees residency (RKC-TR-9) and stale stores (RKC-INV-6), and required fields
are never empty (RKC-TR-3): traces built with the refimpl's own TraceWriter."""

import dataclasses
import json

import pytest

from kvclaims.conformance.checker import FIELDS, OPTIONAL, RECENT_EVICTIONS, Checker, check_lines
from kvclaims.refimpl.runtime import Runtime
from kvclaims.trace import TraceWriter
from kvclaims.spec import load

H1, H2, H3 = "a" * 32, "b" * 32, "c" * 32
SPEC = load()


def writer() -> TraceWriter:
    t = TraceWriter()
    t.emit("runtime", runtime="test")
    return t


def check(t: TraceWriter, **kw):
    return check_lines(t.lines(), **kw)


def kinds(report):
    return [v.kind for v in report.violations]


def stored(*blocks: str) -> TraceWriter:
    """A trace whose request `w` computed `blocks` and finished: they are cached on the device."""
    t = writer()
    t.emit("request_submit", request="w", blocks=list(blocks))
    t.emit("request_admit", request="w", hit_blocks=[], new_blocks=len(blocks))
    t.emit("block_store", request="w", blocks=list(blocks), tier="device")
    t.emit("request_finish", request="w", admit=True)
    return t


def hit(t: TraceWriter, rid: str, *blocks: str) -> None:
    t.emit("request_submit", request=rid, blocks=list(blocks))
    t.emit("request_admit", request=rid, hit_blocks=list(blocks), new_blocks=0)


def materialized(t: TraceWriter, cid: str = "c", chain=(H1, H2)) -> None:
    t.emit("claim_submit", claim=cid, blocks=list(chain))
    t.emit("claim", claim=cid, event="accept", state="accepted")
    t.emit("claim", claim=cid, event="materialize", state="materialized", blocks=list(chain))


def only_phantom(report, line: int, *words: str) -> None:
    """Exactly one finding, a phantom_block at `line`, whose message has each of `words`."""
    assert kinds(report) == ["phantom_block"], report.violations
    v = report.violations[0]
    assert v.line == line and v.seq == line - 1
    assert all(w in v.message for w in words), v.message


# ---------------------------------------------------------------------- RKC-TR-9: reuse
@pytest.mark.obligation("RKC-TR-9")
def test_hit_on_block_evicted_by_lru_and_never_restored():
    """RKC-TR-9: a request_admit reusing a block the trace evicted (lru) is a phantom hit."""
    t = stored(H1, H2)
    t.emit("block_evict", blocks=[H1], tier="device", reason="lru")  # line 6
    hit(t, "r", H1, H2)  # admit at line 8
    only_phantom(check(t), 8, H1, "request 'r' reuses", "not resident on device", "evicted at line 6 (lru)")


@pytest.mark.obligation("RKC-TR-9")
def test_hit_on_block_evicted_at_reset():
    """RKC-TR-9: blocks a prefix-cache reset evicted are not there to hit after it."""
    t = stored(H1)
    t.emit("operator", action="reset_prefix_cache")
    t.emit("block_evict", blocks=[H1], tier="device", reason="reset_prefix_cache")  # line 7
    hit(t, "r", H1)
    only_phantom(check(t), 9, H1, "evicted at line 7 (reset_prefix_cache)")


@pytest.mark.obligation("RKC-TR-9")
def test_hit_on_never_stored_block():
    """RKC-TR-9: a hit on a block no record ever stored."""
    t = stored(H1)
    hit(t, "r", H1, H2)
    only_phantom(check(t), 7, H2, "never stored")


@pytest.mark.obligation("RKC-TR-9")
def test_each_missing_block_is_one_finding():
    """RKC-TR-9: one finding per absent block, in the record's order; resident ones are fine."""
    t = stored(H2)
    hit(t, "r", H1, H2, H3)
    r = check(t)
    assert kinds(r) == ["phantom_block"] * 2 and [v.line for v in r.violations] == [7, 7]
    assert [H1 in r.violations[0].message, H3 in r.violations[1].message] == [True, True]


@pytest.mark.obligation("RKC-TR-9")
def test_block_stored_again_after_eviction_then_hit_is_accepted():
    """RKC-TR-9: residency is the trace's latest word: evicted, stored again, then reused."""
    t = stored(H1)
    t.emit("block_evict", blocks=[H1], tier="device", reason="lru")
    t.emit("request_submit", request="again", blocks=[H1])
    t.emit("request_admit", request="again", hit_blocks=[], new_blocks=1)
    t.emit("block_store", request="again", blocks=[H1], tier="device")
    hit(t, "r", H1)
    assert check(t).ok


@pytest.mark.obligation("RKC-TR-9")
def test_a_block_stored_twice_is_fine():
    """RKC-TR-9: a runtime may index a hash twice (vLLM keeps duplicate copies); one eviction
    (written when no copy is left) removes it."""
    t = stored(H1)
    t.emit("block_store", blocks=[H1], tier="device")
    hit(t, "r", H1)
    t.emit("block_evict", blocks=[H1], tier="device", reason="lru")
    hit(t, "q", H1)
    only_phantom(check(t), 11, H1, "evicted at line 9 (lru)")


@pytest.mark.obligation("RKC-TR-9")
def test_empty_or_absent_hit_blocks_need_nothing():
    """RKC-TR-9: hit_blocks is optional; a request that reuses nothing needs nothing resident."""
    t = writer()
    t.emit("request_submit", request="r")
    t.emit("request_admit", request="r")
    t.emit("request_submit", request="q")
    t.emit("request_admit", request="q", hit_blocks=[], new_blocks=1)
    assert check(t).ok


# ---------------------------------------------------------------------- RKC-TR-9: claims
@pytest.mark.obligation("RKC-TR-9")
def test_claim_materializing_over_an_evicted_block():
    """RKC-TR-9: a claim materializes only over its whole chain resident on the device."""
    t = stored(H1, H2)
    t.emit("block_evict", blocks=[H2], tier="device", reason="lru")  # line 6
    materialized(t)  # materialize at line 9
    only_phantom(check(t), 9, H2, "claim 'c'", "materialize", "evicted at line 6 (lru)")


@pytest.mark.obligation("RKC-TR-9")
def test_claim_materializing_over_a_never_stored_block():
    """RKC-TR-9: the chain is the claim_submit's `blocks`, never what the claim record says;
    a claim record that names another chain is itself a finding (`chain_changed`)."""
    t = stored(H1)
    t.emit("claim_submit", claim="c", blocks=[H1, H2])
    t.emit("claim", claim="c", event="accept")
    t.emit("claim", claim="c", event="materialize")
    only_phantom(check(t), 8, H2, "never stored")
    t.emit("claim_submit", claim="d", blocks=[H1, H2])
    t.emit("claim", claim="d", event="accept")
    t.emit("claim", claim="d", event="materialize", blocks=[H1])
    assert kinds(check(t))[1:] == ["chain_changed", "phantom_block"]


def offloaded(evict_host: bool = False) -> TraceWriter:
    """The refimpl's offload: copy to the host, the claim event, then the device copies go."""
    t = stored(H1, H2)
    materialized(t)
    t.emit("block_offload", claim="c", blocks=[H1, H2], tier="host")
    t.emit("claim", claim="c", event="offload", state="offloaded")
    t.emit("block_evict", blocks=[H1, H2], tier="device", reason="offload")
    return t


@pytest.mark.obligation("RKC-TR-9")
def test_offload_and_restore_roundtrip_is_accepted():
    """RKC-TR-9: the refimpl's restore: block_restore from the host copy, the claim event, the
    host copy dropped (block_evict tier=host); then a hit on the restored blocks."""
    t = offloaded()
    t.emit("request_submit", request="r", blocks=[H1, H2])
    t.emit("request_admit", request="r", hit_blocks=[], new_blocks=2)
    t.emit("block_restore", claim="c", blocks=[H1, H2], tier="device")
    t.emit("claim", claim="c", event="restore", state="materialized")
    t.emit("block_evict", blocks=[H1, H2], tier="host", reason="restore")
    hit(t, "q", H1, H2)
    assert check(t).ok


@pytest.mark.obligation("RKC-TR-9")
def test_restore_from_a_host_block_never_offloaded():
    """RKC-TR-9: block_restore copies from the host tier: the block must have been offloaded there."""
    t = stored(H1, H2)
    materialized(t)
    t.emit("claim", claim="c", event="offload", state="offloaded")
    r = check(t)
    assert kinds(r) == ["phantom_block"] * 2 and "'offload' needs" in r.violations[0].message
    t.emit("block_restore", claim="c", blocks=[H1], tier="device")
    r = check(t)
    # (H1 never left the device either: a copy into a tier that holds it is no restore, RKC-ID-4)
    assert kinds(r)[2:] == ["phantom_block", "restore_of_resident"] and r.violations[2].line == 10
    assert "block_restore for claim 'c' copies" in r.violations[2].message
    assert "not resident on host" in r.violations[2].message


@pytest.mark.obligation("RKC-TR-9")
def test_restore_from_a_host_block_evicted_from_host():
    """RKC-TR-9: a host copy evicted from the host tier cannot be restored."""
    t = offloaded()
    t.emit("block_evict", blocks=[H2], tier="host", reason="lru")  # line 12: a claimed_block_lost too
    t.emit("block_restore", claim="c", blocks=[H1, H2], tier="device")
    r = check(t)
    assert kinds(r) == ["claimed_block_lost", "phantom_block"]
    assert r.violations[1].line == 13 and "evicted at line 12 (lru)" in r.violations[1].message


@pytest.mark.obligation("RKC-TR-9")
def test_offload_from_a_block_not_on_the_device():
    """RKC-TR-9: block_offload copies from the device: the block must be resident there."""
    t = stored(H1)
    t.emit("block_evict", blocks=[H1], tier="device", reason="lru")
    t.emit("claim_submit", claim="c", blocks=[H1])
    t.emit("block_offload", claim="c", blocks=[H1], tier="host")
    only_phantom(check(t), 8, "block_offload for claim 'c'", "not resident on device", "evicted at line 6")


@pytest.mark.obligation("RKC-TR-7", "RKC-TR-9")
def test_memory_grows_with_resident_blocks_not_trace_length():
    """RKC-TR-7 with RKC-TR-9: stored-then-evicted blocks leave the residency sets, and the
    evictions remembered for messages are bounded."""
    checker = Checker(on_end=lambda *_: None)
    t = TraceWriter()
    n = 0

    def feed(kind, **fields):
        nonlocal n
        n += 1
        t.emit(kind, **fields)
        checker.feed(n, t.records.pop())  # (the writer keeps nothing either)

    feed("runtime")
    for i in range(5 * RECENT_EVICTIONS):
        blocks = [f"{i:032x}", f"{i:031x}f"]
        feed("block_store", blocks=blocks, tier="device")
        feed("block_evict", blocks=blocks, tier="device", reason="lru")
    feed("request_submit", request="r")
    feed("request_admit", request="r", hit_blocks=[f"{0:032x}", f"{5 * RECENT_EVICTIONS - 1:032x}"])
    report = checker.finish()
    assert checker.resident == {"device": set(), "host": set()}
    assert sum(len(blocks) for _, _, blocks in checker.evicted["device"]) <= RECENT_EVICTIONS
    assert kinds(report) == ["phantom_block"] * 2
    assert "never stored there, or evicted before the last" in report.violations[0].message
    assert f"evicted at line {n - 2} (lru)" in report.violations[1].message


# ---------------------------------------------------------------------- RKC-INV-6: stale stores
def admitted_then(action: str) -> TraceWriter:
    t = writer()
    t.emit("request_submit", request="old")
    t.emit("request_admit", request="old", hit_blocks=[], new_blocks=1)
    t.emit("operator", action=action)
    return t


@pytest.mark.obligation("RKC-INV-6")
@pytest.mark.parametrize("action", SPEC.invalidations)
def test_store_by_request_admitted_before_an_invalidation(action):
    """RKC-INV-6: a request admitted before an invalidation (each action of the spec's
    [invalidation]) stores no block: such a block_store is a stale_store."""
    t = admitted_then(action)
    t.emit("block_store", request="old", blocks=[H1], tier="device")  # line 5
    r = check(t)
    assert kinds(r) == ["stale_store"] and r.violations[0].line == 5
    assert "'old'" in r.violations[0].message and f"line 4 ({action})" in r.violations[0].message


@pytest.mark.obligation("RKC-INV-6")
def test_store_by_request_admitted_after_a_reset_is_accepted():
    """RKC-INV-6: a request admitted after the latest invalidation stores freely."""
    t = admitted_then("reset_prefix_cache")
    t.emit("request_submit", request="new")
    t.emit("request_admit", request="new", hit_blocks=[], new_blocks=1)
    t.emit("block_store", request="new", blocks=[H1], tier="device")
    hit(t, "r", H1)
    assert check(t).ok


@pytest.mark.obligation("RKC-INV-6")
def test_a_store_naming_no_request_is_not_judged():
    """RKC-INV-6: `request` is optional in block_store (null reads as absent): with none,
    the epoch of what was stored is unknown, so it is not judged."""
    t = admitted_then("reset_prefix_cache")
    t.emit("block_store", blocks=[H1], tier="device")
    t.emit("block_store", request=None, blocks=[H2], tier="device")
    assert check(t).ok


@pytest.mark.obligation("RKC-INV-6")
def test_other_operator_actions_start_no_epoch():
    """RKC-INV-6: only the spec's [invalidation] actions start an epoch."""
    action = "inject_host_fault"
    assert action not in SPEC.invalidations
    t = admitted_then(action)
    t.emit("block_store", request="old", blocks=[H1], tier="device")
    assert check(t).ok


@pytest.mark.obligation("RKC-INV-6")
def test_invalidation_actions_come_from_the_spec():
    """RKC-INV-6: the checker reads the invalidation actions from the spec, none hard-coded."""
    spec = dataclasses.replace(SPEC, invalidations=("rotate_weights",))
    for action, stale in (("reset_prefix_cache", False), ("rotate_weights", True)):
        t = admitted_then(action)
        t.emit("block_store", request="old", blocks=[H1], tier="device")
        assert kinds(check(t, spec=spec)) == (["stale_store"] if stale else [])


@pytest.mark.obligation("RKC-INV-6", "RKC-TR-7")
def test_stale_store_when_streamed():
    """RKC-INV-6 in streaming mode (RKC-TR-7): a live request's epoch is kept until it ends."""
    t = admitted_then("evict_blocks")
    t.emit("block_store", request="old", blocks=[H1], tier="device")
    t.emit("request_finish", request="old", admit=True)
    assert kinds(check(t, on_end=lambda *_: None)) == ["stale_store"]


@pytest.mark.obligation("RKC-INV-6")
def test_refimpl_decoding_across_a_reset_writes_a_clean_trace():
    """RKC-INV-6 on the reference runtime: a request admitted before a reset decodes across it;
    its trace, replayed by the checker, has no stale store and no phantom block."""
    rt = Runtime(U=8, B=4, R=0, host_blocks=0)
    rt.submit_request("r", list(range(8)))
    rt.reset_prefix_cache()
    rt.decode("r", list(range(8, 16)))
    rt.finish("r")
    rt.submit_request("q", list(range(16)))
    r = check_lines(rt.trace.lines())
    assert r.ok, r.violations


# ---------------------------------------------------------------------- RKC-TR-3: required fields
ILL_TYPED = {str: ["", 7, ["r"]], int: ["7", ["r"]], list: ["", 7]}


def valid(kind: str) -> dict:
    """A record of `kind` with each required field well typed and non-empty."""
    sample = {str: "x", list: [], bool: True}
    named = {"tier": "device", "event": next(iter(SPEC.lifecycle.events))}
    return {name: named.get(name, sample[typ]) for name, typ in FIELDS[kind].items()}


REQUIRED_STRINGS = [(kind, name) for kind, fields in FIELDS.items() for name, typ in fields.items() if typ is str]
REQUIRED = [(kind, name) for kind, fields in FIELDS.items() for name in fields]


def with_record(kind: str, **fields) -> list[str]:
    t = writer()
    t.emit(kind, **fields)
    return t.lines()


@pytest.mark.obligation("RKC-TR-3")
@pytest.mark.parametrize("kind", FIELDS)
def test_each_kind_with_its_required_fields_is_well_formed(kind):
    """RKC-TR-3: the baseline the cases below spoil one field of."""
    assert "malformed_line" not in kinds(check_lines(with_record(kind, **valid(kind))))


@pytest.mark.obligation("RKC-TR-3")
@pytest.mark.parametrize("kind,name", REQUIRED_STRINGS, ids=[f"{k}.{n}" for k, n in REQUIRED_STRINGS])
def test_required_string_field_is_never_empty(kind, name):
    """RKC-TR-3: every required string field is non-empty (block_evict reason "", claim event "",
    request_submit request "", operator action "", ...): a malformed_line naming the field."""
    r = check_lines(with_record(kind, **{**valid(kind), name: ""}))
    assert kinds(r) == ["malformed_line"] and (r.violations[0].line, r.violations[0].seq) == (2, 1)
    assert f"{kind}: field {name!r} must be a non-empty string" in r.violations[0].message
    assert r.records == 1


@pytest.mark.obligation("RKC-TR-3")
@pytest.mark.parametrize("kind,name", REQUIRED, ids=[f"{k}.{n}" for k, n in REQUIRED])
@pytest.mark.parametrize("bad", ["missing", None, 7, {"a": 1}])
def test_required_field_missing_or_mistyped(kind, name, bad):
    """RKC-TR-3: a required field missing or of the wrong type is a malformed_line naming it."""
    fields = valid(kind)
    if bad == "missing":
        del fields[name]
    else:
        fields[name] = bad
    r = check_lines(with_record(kind, **fields))
    assert kinds(r) == ["malformed_line"] and r.violations[0].line == 2
    assert f"field {name!r}" in r.violations[0].message
    assert ("missing" in r.violations[0].message) == (bad == "missing")


@pytest.mark.obligation("RKC-TR-3")
def test_the_bug_report_inputs():
    """RKC-TR-3: the reported cases, verbatim: an empty reason was accepted, a missing one rejected."""
    for kind, fields, name in (
        ("block_evict", {"blocks": [H1], "tier": "device", "reason": ""}, "reason"),
        ("claim", {"claim": "c", "event": ""}, "event"),
        ("request_submit", {"request": ""}, "request"),
        ("operator", {"action": ""}, "action"),
    ):
        r = check_lines(with_record(kind, **fields))
        assert kinds(r) == ["malformed_line"] and name in r.violations[0].message, (kind, r.violations)
    missing = check_lines(with_record("block_evict", blocks=[H1], tier="device"))
    assert kinds(missing) == ["malformed_line"] and "'reason'" in missing.violations[0].message


@pytest.mark.obligation("RKC-TR-3")
@pytest.mark.parametrize("name", ["blocks", "blocking_claims", "hit_blocks"])
def test_string_lists_hold_no_empty_string(name):
    """RKC-TR-3: a block hash or claim id in a list is a non-empty string too."""
    r = check_lines(with_record("request_admit", request="r", **{name: [H1, ""]}))
    assert kinds(r) == ["malformed_line"] and f"field {name!r}" in r.violations[0].message


@pytest.mark.obligation("RKC-TR-3")
@pytest.mark.parametrize(
    "kind,name,bad",
    [(k, n, bad) for k, fields in OPTIONAL.items() for n, typ in fields.items() for bad in ILL_TYPED[typ]],
)
def test_optional_fields_the_checker_reads_are_well_typed(kind, name, bad):
    """RKC-TR-3: an optional field the checker reads (block_store's request, the runtime's
    cache identity) is, when given, of its type (a string non-empty); null reads as absent."""
    r = check_lines(with_record(kind, **{**valid(kind), name: bad}))
    assert kinds(r)[:1] == ["malformed_line"] and f"field {name!r}" in r.violations[0].message


@pytest.mark.obligation("RKC-TR-7")
def test_findings_are_json():
    """RKC-TR-7: the new findings serialize like the others."""
    t = stored(H1)
    t.emit("block_evict", blocks=[H1], tier="device", reason="lru")
    hit(t, "r", H1)
    json.dumps(check(t).to_json())


@pytest.mark.obligation("RKC-INV-6")
def test_the_stale_store_mutant_is_caught_by_the_trace_alone():
    """RKC-INV-6: the seeded mutant that keeps indexing across a reset writes a stale_store."""
    from kvclaims.refimpl.mutants import MUTANTS

    rt = MUTANTS["stale_store"](U=8, B=4)
    rt.submit_request("r", list(range(8)))
    rt.reset_prefix_cache()
    rt.decode("r", list(range(8, 16)))
    assert kinds(check_lines(rt.trace_lines())) == ["stale_store"]


@pytest.mark.obligation("RKC-INV-6")
def test_a_store_before_its_request_is_admitted_is_not_judged():
    """RKC-INV-6: vLLM indexes a request's first blocks while scheduling it, before its
    request_admit record; such a store is in the current epoch."""
    t = writer()
    t.emit("operator", action="reset_prefix_cache")
    t.emit("request_submit", request="r")
    t.emit("block_store", request="r", blocks=[H1], tier="device")
    t.emit("request_admit", request="r", hit_blocks=[], new_blocks=1)
    assert check(t).ok
