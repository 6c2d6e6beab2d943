"""The trace checker: each violation class, line numbers, garbage input, the CLI."""

import json

import pytest

from hypothesis import given, strategies as st

from kvclaims.cli import main
from kvclaims.errors import IllegalTransition
from kvclaims.model.lifecycle import Lifecycle
from kvclaims.conformance.checker import Checker, check_lines

H1, H2 = "a" * 32, "b" * 32


def rec(seq, kind, time=0, **fields):
    return json.dumps({"schema_version": 1, "seq": seq, "time": time, "kind": kind, **fields})


def trace(*events):
    """Records from (kind, fields) pairs, numbered from 0."""
    return [rec(i, kind, **fields) for i, (kind, fields) in enumerate(events)]


MATERIALIZED = [
    ("claim_submit", {"claim": "c", "blocks": [H1, H2]}),
    ("claim", {"claim": "c", "event": "accept"}),
    ("block_store", {"blocks": [H1, H2], "tier": "device"}),
    ("claim", {"claim": "c", "event": "materialize"}),
]


def kinds(report):
    return [v.kind for v in report.violations]


def test_clean_trace_reconstructs_states():
    r = check_lines(
        trace(
            *MATERIALIZED,
            ("claim", {"claim": "c", "event": "demote"}),
            ("block_evict", {"blocks": [H1], "tier": "device", "reason": "lru"}),
        )
    )
    assert r.ok and r.claims == {"c": "demoted"} and r.ordinary_evictions == 1


@pytest.mark.obligation("RKC-INV-1")
def test_claimed_block_lost_without_event():
    """RKC-INV-1 on a trace: an eviction of a materialized claim's block with no loss event first."""
    r = check_lines(trace(*MATERIALIZED, ("block_evict", {"blocks": [H2], "tier": "device", "reason": "lru"})))
    assert kinds(r) == ["claimed_block_lost"] and r.violations[0].seq == 4 and r.violations[0].line == 5


def test_host_copy_of_offloaded_claim_lost():
    r = check_lines(
        trace(
            *MATERIALIZED,
            ("block_offload", {"blocks": [H1, H2], "tier": "host", "claim": "c"}),
            ("claim", {"claim": "c", "event": "offload"}),
            ("block_evict", {"blocks": [H1], "tier": "device", "reason": "offload"}),
            ("block_evict", {"blocks": [H1], "tier": "host", "reason": "lru"}),
        )
    )
    assert kinds(r) == ["claimed_block_lost"] and r.claims == {"c": "offloaded"}


def test_chain_that_repeats_a_block():
    """A block named twice in one chain is held once and let go once."""
    r = check_lines(
        trace(
            ("claim_submit", {"claim": "c", "blocks": [H1, H1]}),
            ("claim", {"claim": "c", "event": "accept"}),
            ("block_store", {"blocks": [H1], "tier": "device"}),
            ("claim", {"claim": "c", "event": "materialize"}),
            ("block_evict", {"blocks": [H1], "tier": "device", "reason": "lru"}),
            ("claim", {"claim": "c", "event": "demote"}),
            ("block_evict", {"blocks": [H1], "tier": "device", "reason": "lru"}),
        )
    )
    assert kinds(r) == ["claimed_block_lost"] and r.claims == {"c": "demoted"}


@pytest.mark.obligation("RKC-TR-5")
def test_illegal_transition_and_event_after_terminal():
    """RKC-TR-5: replay through the lifecycle machine."""
    r = check_lines(
        trace(
            ("claim_submit", {"claim": "c", "blocks": [H1]}),
            ("claim", {"claim": "c", "event": "materialize"}),
            ("claim", {"claim": "c", "event": "accept"}),
            ("claim", {"claim": "c", "event": "release"}),
            ("claim", {"claim": "c", "event": "hit"}),
            ("claim", {"claim": "zz", "event": "accept"}),
            ("claim", {"claim": "c", "event": "nonsense"}),
        )
    )
    assert kinds(r) == ["illegal_transition", "event_after_terminal", "unknown_claim", "malformed_line"]
    assert r.claims == {"c": "released"}


def test_state_mismatch_and_duplicates():
    r = check_lines(
        trace(
            ("claim_submit", {"claim": "c", "blocks": [H1]}),
            ("claim", {"claim": "c", "event": "accept", "state": "refused"}),
            ("claim_submit", {"claim": "c", "blocks": [H1]}),
            ("request_submit", {"request": "r"}),
            ("request_submit", {"request": "r"}),
            ("request_finish", {"request": "r", "admit": True}),
            ("request_admit", {"request": "q"}),
        )
    )
    assert kinds(r) == [
        "state_mismatch",
        "duplicate_claim",
        "duplicate_request",
        "illegal_request_event",
        "unknown_request",
    ]


@pytest.mark.obligation("RKC-TR-4")
def test_refusal_attribution():
    """RKC-TR-4: claim-blocked refusals name protected claims; capacity refusals name none."""
    reqs = [("request_submit", {"request": r}) for r in "abcdef"]
    refuse = [
        ("request_refuse", {"request": "a", "reason": "refuse_blocked", "blocking_claims": ["c"]}),
        ("request_refuse", {"request": "b", "reason": "refuse_blocked", "blocking_claims": []}),
        ("request_refuse", {"request": "c", "reason": "refuse_blocked", "blocking_claims": ["nobody"]}),
        ("request_refuse", {"request": "d", "reason": "refuse_too_large", "blocking_claims": ["c"]}),
        ("request_refuse", {"request": "e", "reason": "admit", "blocking_claims": []}),
        ("request_refuse", {"request": "f", "reason": "refuse_too_large", "blocking_claims": []}),
    ]
    r = check_lines(trace(*MATERIALIZED, *reqs, *refuse))
    assert kinds(r) == ["refusal_without_attribution"] * 4
    assert [v.seq for v in r.violations] == [11, 12, 13, 14]
    assert r.requests["a"] == {"status": "refused", "reason": "refuse_blocked", "blocking_claims": ["c"]}
    r = check_lines(
        trace(("claim_submit", {"claim": "c", "blocks": [H1]}), ("claim", {"claim": "c", "event": "refuse"}))
    )
    assert kinds(r) == ["refusal_without_attribution"]


@pytest.mark.obligation("RKC-TR-2")
def test_sequence_gap_order_and_time():
    """RKC-TR-2."""
    lines = [rec(0, "runtime"), rec(2, "runtime", time=5), rec(2, "runtime", time=4)]
    r = check_lines(lines)
    assert kinds(r) == ["sequence_gap", "sequence_order", "time_order"]
    assert kinds(check_lines([rec(7, "runtime")])) == ["sequence_gap"]
    assert check_lines([rec(1, "runtime"), rec(2, "runtime")]).ok


@pytest.mark.obligation("RKC-TR-7")
def test_malformed_lines_are_reported_with_line_numbers():
    """RKC-TR-7."""
    lines = [
        "not json",
        "",
        "[]",
        rec(0, "runtime"),
        '{"schema_version": 2, "seq": 1, "time": 0, "kind": "runtime"}',
        rec(1, "mystery"),
        rec(2, "block_evict", blocks=[1], tier="device", reason="x"),
        rec(3, "block_evict", blocks=[H1], tier="moon", reason="x"),
        rec(4, "claim", claim=5, event="x"),
    ]
    r = check_lines(lines)
    assert kinds(r) == ["malformed_line"] * 7
    assert [v.line for v in r.violations] == [1, 3, 5, 6, 7, 8, 9]
    assert [v.seq for v in r.violations] == [None, None, 1, 1, 2, 3, 4]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
field_names = st.sampled_from(
    [
        "schema_version",
        "seq",
        "time",
        "kind",
        "claim",
        "event",
        "request",
        "blocks",
        "tier",
        "reason",
        "blocking_claims",
        "admit",
        "state",
    ]
)
records = st.dictionaries(
    field_names,
    json_values
    | st.sampled_from([1, "claim", "claim_submit", "block_evict", "request_refuse", "accept", "device", [H1]]),
    max_size=8,
)


@pytest.mark.obligation("RKC-TR-7")
@given(st.lists(st.one_of(st.text(max_size=40), records.map(json.dumps)), max_size=20))
def test_garbage_never_crashes(lines):
    """RKC-TR-7: Hypothesis-generated garbage lines are findings, never exceptions."""
    r = check_lines(lines)
    numbered = [n for n, line in enumerate(lines, 1) if line.strip()]
    assert all(v.line in numbered for v in r.violations) if numbered else kinds(r) == ["empty_trace"]
    json.dumps(r.to_json())


def test_cli_check_exit_codes_and_json(tmp_path, capsys):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text("\n".join(trace(*MATERIALIZED)) + "\n")
    bad.write_text("\n".join(trace(*MATERIALIZED)[:2] + ["garbage"]) + "\n")
    assert main(["check", str(good)]) == 0
    assert "0 violations" in capsys.readouterr().out
    assert main(["check", str(bad), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["violations"][0]["line"] == 3
    assert main(["check", str(tmp_path / "missing.jsonl")]) == 2


def test_cli_checks_several_traces_each_on_its_own(tmp_path, capsys):
    """One trace per engine (vLLM's data-parallel ranks): each checked on its own, one verdict."""
    good, bad = tmp_path / "rank0.jsonl", tmp_path / "rank1.jsonl"
    good.write_text("\n".join(trace(*MATERIALIZED)) + "\n")
    bad.write_text("\n".join(trace(*MATERIALIZED)[:2] + ["garbage"]) + "\n")
    other = tmp_path / "rank2.jsonl"
    other.write_text(good.read_text())
    assert main(["check", str(good), str(other)]) == 0
    assert capsys.readouterr().out.count("0 violations") == 2
    assert main(["check", str(good), str(bad), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["files"][str(good)]["ok"] is True
    assert out["files"][str(bad)]["violations"][0]["line"] == 3
    assert main(["check", str(good), "-"]) == 2


def test_compiled_table_is_the_lifecycle_machine():
    """The checker's (state, event) -> state table replays exactly as the `transitions` machine
    built from the same spec, for every pair (guards are the trace's, so unchecked)."""
    checker, lifecycle = Checker(), Lifecycle()
    lc = lifecycle.spec.lifecycle
    for state in lc.live:
        for event in lc.events:
            fsm = lifecycle.claim("c")
            fsm.state = state
            try:
                want = fsm.fire(event, unchecked_guards=True)
            except IllegalTransition:
                want = None
            assert checker.after.get((state, event)) == want, (state, event)


@pytest.mark.obligation("RKC-TR-8")
def test_streaming_hands_out_every_outcome_and_keeps_counts():
    """RKC-TR-8 in constant memory: with `on_end` each claim's final state and each request's
    outcome is handed out once, the report keeps counts, and ended ids are forgotten."""
    lines = trace(
        *MATERIALIZED,
        ("request_submit", {"request": "r"}),
        ("request_admit", {"request": "r"}),
        ("request_finish", {"request": "r", "admit": False}),
        ("claim_submit", {"claim": "d", "blocks": [H2]}),
        ("claim", {"claim": "d", "event": "refuse", "reason": "reserve"}),
        ("request_submit", {"request": "w"}),
        ("request_wait", {"request": "w"}),
    )
    ended = []
    streamed = check_lines(lines, on_end=lambda *x: ended.append(x))
    full = check_lines(lines)
    assert streamed.ok and full.ok and streamed.tally == full.tally
    assert sorted((what, i) for what, i, _ in ended) == sorted(
        [("claim", c) for c in full.claims] + [("request", r) for r in full.requests]
    )
    assert {i: o for _, i, o in ended} == {**full.claims, **full.requests}
    assert streamed.claims == {} and streamed.requests == {}
    assert streamed.count("claim") == 2 and streamed.count("request") == 2
    again = lines + [rec(len(lines), "request_admit", request="r")]
    assert kinds(check_lines(again)) == ["illegal_request_event"]
    assert kinds(check_lines(again, on_end=lambda *x: None)) == ["unknown_request"]


def test_cli_stream_prints_outcomes_as_they_end(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(trace(*MATERIALIZED, ("claim", {"claim": "c", "event": "release"}))) + "\n")
    assert main(["check", str(path), "--stream"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "  claim c: released",
        "5 records, 1 claims, 0 requests, 0 ordinary evictions, 0 violations",
    ]
    assert main(["check", str(path), "--stream", "--json"]) == 0
    first, last = map(json.loads, capsys.readouterr().out.splitlines())
    assert first == {"claim": "c", "outcome": "released"} and last["ok"] and last["tally"] == {"claim released": 1}


@pytest.mark.obligation("RKC-TR-8")
def test_request_moves_come_from_the_spec():
    """RKC-TR-8: the checker replays requests from the spec's [requests] table, written once:
    a contract in which finishing needs a waiting request makes a normal trace illegal."""
    import copy
    import tomllib

    from kvclaims.spec import CONTRACT_PATH, from_dict

    raw = tomllib.loads(CONTRACT_PATH.read_text())
    lines = [
        json.dumps(r)
        for r in (
            {"schema_version": 1, "seq": 0, "time": 0, "kind": "runtime"},
            {"schema_version": 1, "seq": 1, "time": 0, "kind": "request_submit", "request": "r"},
            {"schema_version": 1, "seq": 2, "time": 0, "kind": "request_admit", "request": "r", "hit_blocks": []},
            {"schema_version": 1, "seq": 3, "time": 0, "kind": "request_finish", "request": "r", "admit": True},
        )
    ]
    assert check_lines(lines).requests["r"]["status"] == "finished"
    mutated = copy.deepcopy(raw)
    rows = mutated["requests"]["moves"]["rows"]
    rows[[r[0] for r in rows].index("request_finish")][1] = ["waiting"]
    kinds = [v.kind for v in check_lines(lines, spec=from_dict(mutated)).violations]
    assert kinds == ["illegal_request_event"]
