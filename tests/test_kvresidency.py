"""The kv-residency importer: the follow-up paper's telemetry translated into our trace model
and replayed by our checker, unchanged (docs/kv-residency.md).

Small traces of our own (tests/data/kvresidency/) run everywhere; the author's artifacts
(shared/paper-artifacts, not in CI's clone) run where they are, and their verdicts are
asserted: the conformance litmus L1-L5 and the offload lifecycle set."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from kvclaims.cli import main
from kvclaims.conformance import kvresidency as kv

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "kvresidency"
PAPER = Path(os.environ.get("KVCLAIMS_PAPER_ARTIFACTS") or ROOT.parent / "shared" / "paper-artifacts")
needs_paper = pytest.mark.skipif(
    not (PAPER / "artifacts").is_dir(),
    reason=f"the paper's artifacts are not at {PAPER} (CI's clone has none; set KVCLAIMS_PAPER_ARTIFACTS)",
)


def checked(path, lines=None):
    imported = kv.import_lines(lines) if lines is not None else kv.import_file(path)
    return kv.check(imported), imported


def findings(report):
    return [(v.line, v.kind) for v in report.violations]


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def dumped(recs):
    """Their records as lines, timestamps renumbered in order."""
    return [json.dumps({**r, "timestamp_ns": 1000 + i}) + "\n" for i, r in enumerate(recs)]


# ---------------------------------------------------------------------- our own traces
@pytest.mark.obligation("RKC-TR-8")
def test_clean_trace_reconstructs_claims_and_requests():
    report, imported = checked(DATA / "clean.jsonl")
    assert report.ok, report.violations
    assert report.claims == {"claim:sys": "demoted"}
    assert {r: o["status"] for r, o in report.requests.items()} == {
        "owner": "running",
        "big": "refused",
        "next": "running",
    }
    assert report.requests["big"]["blocking_claims"] == ["claim:sys"] and report.ordinary_evictions == 1
    (refusal,) = imported.refusals
    assert (refusal.ours, refusal.shortfall, refusal.derived_shortfall) == ("refuse_blocked", 1, 1)
    assert imported.derived["claim materialization order"].lines == [5]  # their hook's order, line 5 then 6
    assert {"request completion", "prefix hits", "cache identity", "terms of claim 'claim:sys'"} <= set(
        imported.unknown
    )
    assert imported.identity.registered == {"claim:sys": 3} and imported.identity.claims_registered_first


@pytest.mark.obligation("RKC-TR-6")
def test_claimed_block_evicted_without_a_loss_event_is_found():
    """Their `resident_claim_harmed` says an allocation broke the claim: it excuses nothing,
    and the eviction after it is a loss of a materialized claim's block."""
    report, _ = checked(DATA / "violation.jsonl")
    assert findings(report) == [(6, "claimed_block_lost")]
    assert report.claims == {"claim:sys": "materialized"}
    assert main(["check", "--format", "kv-residency", str(DATA / "violation.jsonl")]) == 1


def test_an_unknown_event_kind_is_reported_not_dropped(capsys):
    report, imported = checked(DATA / "unknown_kind.jsonl")
    assert report.ok and report.ordinary_evictions == 1
    note = imported.unknown["event kind 'block_pool_resized'"]
    assert (note.lines, note.count) == ([3], 1) and imported.events["block_pool_resized"] == 1
    assert main(["check", "--format", "kv-residency", str(DATA / "unknown_kind.jsonl")]) == 0
    assert "unknown: event kind 'block_pool_resized': not in the mapping table" in capsys.readouterr().out


def test_malformed_lines_are_findings_with_their_line_numbers():
    report, imported = checked(DATA / "malformed.jsonl")
    assert findings(report) == [(2, "malformed_line"), (3, "malformed_line"), (4, "malformed_line")]
    assert "'victim_reason' must be a non-empty string, but it is missing" in report.violations[1].message
    assert "schema_version must be 1, got 2" in report.violations[2].message
    assert imported.events == {"allocation_victim_selected": 2}  # lines 1 and 5 checked as usual


def test_restore_from_the_offload_tier_before_its_reuse():
    report, imported = checked(DATA / "offload_restore.jsonl")
    ident = imported.identity
    assert report.ok and report.claims == {"claim:doc": "materialized"}
    assert all(ident.summary()[k] for k in ("claims_registered_first", "restores_from_offload_tier"))
    assert [(r.line, r.restored_before) for r in ident.reuses] == [(6, True)]
    assert ident.claim_fields["claim:doc"]["cache_identity"] == ["test-cache"]
    assert "host copies" in imported.unknown and not ident.cache_identity_complete


def test_reuse_before_its_restore_is_flagged():
    """A hit on a claim still offloaded is illegal in our lifecycle; the identity facts say why."""
    report, imported = checked(DATA / "reuse_before_restore.jsonl")
    assert findings(report) == [(5, "illegal_transition")]
    assert [(r.line, r.restored_before) for r in imported.identity.reuses] == [(5, False)]
    assert not imported.identity.reuse_follows_restore


def test_a_restore_not_from_the_offload_tier_is_no_restore():
    recs = records(DATA / "offload_restore.jsonl")
    recs[4] = {**recs[4], "restored_from_offload_tier": False, "restoration_source": "fallback_recompute"}
    report, imported = checked(None, dumped(recs))
    assert findings(report) == [(6, "illegal_transition")]  # the reuse finds the claim still offloaded
    assert "restore not from the offload tier" in imported.unknown
    assert not imported.identity.restores_from_offload_tier


def test_only_the_block_that_completed_a_claim_moves_before_it():
    """Their hook writes a claim's materialization before the record of the block that
    completed it; that one record is translated first. A claim materialized before an
    earlier block of its chain is stored is still a phantom block."""
    recs = records(DATA / "clean.jsonl")
    early = recs[:3] + [recs[4], recs[3], recs[5]] + recs[6:]  # materialized, block 0, block 1
    report, imported = checked(None, dumped(early))
    assert findings(report) == [(4, "phantom_block")] and "block h1" in report.violations[0].message
    other = {**recs[5], "claim_id": "claim:other", "block_hash": "hx"}  # the next block is another claim's
    report, _ = checked(None, dumped(recs[:5] + [other] + recs[5:]))
    assert findings(report) == [(5, "phantom_block")] and "block h1" in report.violations[0].message


def test_cli_formats(tmp_path, capsys):
    clean, bad = str(DATA / "clean.jsonl"), str(DATA / "violation.jsonl")
    assert main(["check", "--format", "kv-residency", clean]) == 0
    out = capsys.readouterr().out
    assert "0 violations" in out and "claim claim:sys: demoted" in out and "shortfall 1 (derived 1)" in out
    assert main(["check", "--format", "kv-residency", clean, bad, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["files"][clean]["ok"] and not doc["files"][bad]["ok"]
    assert doc["files"][clean]["kv_residency"]["identity"]["summary"]["claims_registered_first"] is True
    assert main(["check", clean]) == 1  # ours, the default: their records are not ours
    assert "malformed_line" in capsys.readouterr().out
    assert main(["check", "--format", "kv-residency", str(tmp_path / "missing.jsonl")]) == 2


def test_cli_stream_prints_outcomes_as_they_end(capsys):
    assert main(["check", "--format", "kv-residency", "--stream", str(DATA / "clean.jsonl")]) == 0
    out = capsys.readouterr().out.splitlines()
    refused = {"blocking_claims": ["claim:sys"], "reason": "refuse_blocked", "status": "refused"}
    assert out[0] == f"  request big: {json.dumps(refused)}"
    assert "3 requests" in next(line for line in out if "records" in line)


def test_the_table_is_the_documented_table():
    """docs/kv-residency.md's mapping table has one row per kind of `TABLE`, with its text and
    the fields it reads."""
    section = (ROOT / "docs" / "kv-residency.md").read_text().split("## The mapping")[1].split("\n## ")[0]
    rows = {m[0]: (m[1], m[2]) for m in re.findall(r"^\| `(\w+)` \| (.*) \| (.*) \|$", section, re.M)}
    assert rows == {k: (r.ours, ", ".join(f"`{f}`" for f in r.fields)) for k, r in kv.TABLE.items()}


their_event = st.sampled_from([*kv.TABLE, "something_else"])
fields = st.dictionaries(
    st.sampled_from(["request_id", "claim_id", "block_hash", "victim_reason", "blocking_claim_ids", "feasibility"]),
    st.one_of(st.none(), st.integers(-2, 3), st.text(max_size=3), st.lists(st.text(max_size=2), max_size=2)),
)
their_record = st.builds(
    lambda event, extra, ts: json.dumps({"schema_version": 1, "timestamp_ns": ts, "event": event, **extra}),
    their_event,
    fields,
    st.integers(-1, 5),
)


@pytest.mark.obligation("RKC-TR-7")
@given(st.lists(st.one_of(st.text(max_size=20), their_record), max_size=15))
def test_garbage_never_crashes(lines):
    imported = kv.import_lines(lines)
    report = kv.check(imported)
    numbered = [n for n, line in enumerate(lines, 1) if line.strip()]
    assert all(v.line in numbered for v in report.violations) if numbered else findings(report) == [(1, "empty_trace")]
    json.dumps(imported.to_json())


# ---------------------------------------------------------------------- the author's artifacts
def results(folder: str) -> dict:
    return json.loads((PAPER / "artifacts" / folder / "results.json").read_text())


def observed(report, imported) -> dict[str, str]:
    """Their `observed` fields, from what we reconstruct (their names, our numbers)."""
    recs = [r for _, r in imported.records if isinstance(r, dict)]
    resident = {h for r in recs if r["kind"] == "block_store" and r["request"] == "resident" for h in r["blocks"]}
    chains = {h for r in recs if r["kind"] == "claim_submit" for h in r["blocks"]}
    evicted = [h for r in recs if r["kind"] == "block_evict" for h in r["blocks"]]
    states = list(report.claims.values())
    lost = sum(v.kind == "claimed_block_lost" for v in report.violations) + states.count("harmed")
    active = report.requests.get("active", {})
    return {
        "accepted": str(len(report.claims)),
        "claim_harmed": str(lost),
        "cached_resident_victims": str(sum(h in resident for h in evicted)),
        "resident_victims": str(sum(h in resident for h in evicted)),
        "active_served": str(active.get("status") in ("running", "finished")),
        "future_reuse_admitted": str("active" not in imported.no_admit),
        "blocking_claim_ids": str(active.get("blocking_claims", [])),
        "feasibility": ";".join(r.feasibility for r in imported.refusals),
        "resident_claim_demoted": str(states.count("demoted")),
        "resident_claim_expired": str(states.count("expired")),
        "lost_after_release": str(sum(h in chains for h in evicted) if states in (["demoted"], ["expired"]) else 0),
    }


def litmus() -> list:
    if not (PAPER / "artifacts").is_dir():
        return []
    return [r for r in results("conformance")["results"] if r["litmus_id"] in ("L1", "L2", "L3", "L4", "L5")]


@needs_paper
@pytest.mark.parametrize("result", litmus(), ids=lambda r: r["litmus_id"])
def test_litmus_verdicts_are_the_authors(result):
    """Their `pass`: no violation found by us, their event counts, and the outcome we
    reconstruct gives each of their `observed` fields."""
    (trace,) = [PAPER / e for e in result["evidence"] if e.endswith(".jsonl")]
    report, imported = checked(trace)
    assert result["status"] == "pass" and report.ok, report.violations
    assert imported.events == result["fields"]["event_counts"]
    theirs = dict(re.findall(r"(\w+)=(.*?)(?:, (?=\w+=)|$)", result["observed"]))
    ours = observed(report, imported)
    assert {k: ours[k] for k in theirs} == theirs


@needs_paper
def test_l3_refusal_is_attributed_with_the_authors_shortfall():
    report, imported = checked(PAPER / "artifacts/conformance/L3_hard_claim_infeasibility.jsonl")
    theirs = next(r for r in litmus() if r["litmus_id"] == "L3")["fields"]["active_request_refused"]
    (refusal,) = imported.refusals
    assert report.requests["active"] == {
        "status": "refused",
        "reason": "refuse_blocked",
        "blocking_claims": ["claim:resident"],
    }
    assert refusal.shortfall == refusal.derived_shortfall == theirs["capacity_shortfall_blocks"] == 50


@needs_paper
def test_without_the_emission_order_rule_l3_has_one_phantom_block(monkeypatch):
    """What the one translation rule beyond the table changes: their claim's materialization
    is written one record before the block that completed it."""
    monkeypatch.setattr(kv, "_triggered_by", lambda ev, nxt: False)
    report, _ = checked(PAPER / "artifacts/conformance/L3_hard_claim_infeasibility.jsonl")
    assert findings(report) == [(121, "phantom_block")]


@needs_paper
def test_a_loss_event_deleted_from_l4_makes_its_evictions_losses():
    lines = (PAPER / "artifacts/conformance/L4_demote_before_loss.jsonl").read_text().splitlines(True)
    report, _ = checked(None, [line for line in lines if "resident_claim_demoted" not in line])
    assert [k for _, k in findings(report)] == ["claimed_block_lost"] * 50


# Our checker's findings on the offload lifecycle traces (docs/kv-residency.md says why).
OFFLOAD = {
    "positive_bundle": [],
    "success_restore": [],
    "failure_refusal": [],
    "false_positive_generic_substrate": [],
    "false_positive_restore_after_reuse": [(5, "illegal_transition")],
}


def offload() -> list:
    if not (PAPER / "artifacts").is_dir():
        return []
    return [r for r in results("offload_lifecycle")["records"] if (PAPER / r["jsonl"]).is_file()]


@needs_paper
def test_every_offload_trace_here_is_judged():
    assert sorted(r["label"] for r in offload()) == sorted(OFFLOAD)


@needs_paper
@pytest.mark.parametrize("record", offload(), ids=lambda r: r["label"])
def test_offload_traces_and_the_authors_gate(record):
    """Our checker's findings, and the identity facts a bundle needs: with them, exactly
    the traces the author's reference gate passes pass (a clean trace, every lifecycle event
    naming a claim registered first, a restore from the offload tier before its reuse, a
    failure naming its own claim)."""
    report, imported = checked(PAPER / record["jsonl"])
    gate = json.loads((PAPER / record["gate_summary"]).read_text())
    ident = imported.identity
    assert findings(report) == OFFLOAD[record["label"]]
    assert imported.events == record["event_counts"]
    assert ident.claims_registered_first == gate["claim"]["pre_registered_accepted_claim"]
    restored = bool(ident.reuses) and ident.reuse_follows_restore and ident.restores_from_offload_tier
    assert restored == gate["restoration"]["completed_before_reuse_satisfied_predicate"]
    failed = bool(ident.failures) and ident.failures_name_same_claim
    assert failed == gate["failure_injection"]["claim_scoped_outcome"]
    assert (report.ok and ident.claims_registered_first and restored and failed) == record["passes_reference_gate"]
