"""`kvclaims check --bundle MODE` (`kvclaims.conformance.bundle`): one trace as evidence for a
protection mode's bundle, on the paper's offload-lifecycle traces (their gate's verdicts,
where the artifacts are), on small traces of our own, and on the reference runtime's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvclaims.cli import main
from kvclaims.conformance.adapter import reference_runtime
from kvclaims.conformance.bundle import EXERCISED
from kvclaims.spec import load
from kvclaims.lowering.suite import BAD
from kvclaims.model.names import POLICY, STATE

from test_kvresidency import DATA, PAPER, needs_paper

OFFLOAD = PAPER / "artifacts" / "offload_lifecycle"


def judged(capsys, *args: str) -> tuple[int, dict]:
    code = main(["check", "--json", *args])
    return code, json.loads(capsys.readouterr().out)["bundle"]


def gates() -> list[tuple[str, bool]]:
    if not OFFLOAD.is_dir():
        return []
    records = json.loads((OFFLOAD / "results.json").read_text())["records"]
    return [(r["label"], r["passes_reference_gate"]) for r in records if (PAPER / r["jsonl"]).is_file()]


@needs_paper
@pytest.mark.parametrize("label,passes", gates(), ids=[g[0] for g in gates()])
def test_the_offload_traces_are_evidence_exactly_where_the_authors_gate_passes(capsys, label, passes):
    code, verdict = judged(
        capsys, "--format", "kv-residency", "--bundle", "offloadable", str(OFFLOAD / f"{label}.jsonl")
    )
    assert (code == 0) == verdict["ok"] == passes, verdict


@needs_paper
def test_each_false_positive_fails_for_the_authors_reason(capsys):
    why = {
        "success_restore": "RKC-RT-2",  # no failure outcome
        "failure_refusal": "RKC-ID-4",  # no restore
        "false_positive_generic_substrate": "RKC-ID-1",  # generic counters: no claim identity
        "false_positive_restore_after_reuse": "RKC-ID-4",  # the restore comes after the reuse
    }
    for label, oid in why.items():
        _, verdict = judged(
            capsys, "--format", "kv-residency", "--bundle", "offloadable", str(OFFLOAD / f"{label}.jsonl")
        )
        assert oid in verdict["missing"], (label, verdict)


@pytest.mark.obligation("RKC-ID-4")
def test_a_reuse_before_its_restore_is_no_evidence(capsys):
    code, verdict = judged(
        capsys, "--format", "kv-residency", "--bundle", "offloadable", str(DATA / "reuse_before_restore.jsonl")
    )
    assert code == 1 and "RKC-ID-4" in verdict["missing"] and verdict["violated"]


@pytest.mark.obligation("RKC-ID-3")
def test_their_opaque_cache_label_names_the_cache_and_says_so(capsys):
    main(["check", "--format", "kv-residency", "--bundle", "offloadable", str(DATA / "offload_restore.jsonl")])
    out = capsys.readouterr().out
    assert "RKC-ID-3" in out.split("shown:")[1].split("\n")[0]
    code, verdict = judged(capsys, "--format", "kv-residency", "--bundle", "best_effort", str(DATA / "clean.jsonl"))
    assert verdict["missing"] == {"RKC-ID-3": "the trace names no cache identity"}


def test_a_recompute_counted_as_a_restore_violates_the_bundle(capsys):
    code, verdict = judged(capsys, "--bundle", "offloadable", str(BAD / "recompute_counted_as_restore.jsonl"))
    assert code == 1 and "RKC-ID-4" in verdict["violated"]


def test_the_reference_runtime_restoring_and_failing_closed_is_offloadable_evidence(tmp_path, capsys):
    """One trace with a verified restore and a corrupt copy failing its claim closed."""
    rt = reference_runtime(U=8, B=4, host_blocks=4)
    for cid, seed, fault in (("good", 1, False), ("bad", 2, True)):
        prefix = [seed * 1000 + i for i in range(8)]
        rt.submit_claim(cid, prefix, tiers=("device", "host"), policy=POLICY.offload)
        rt.submit_request(f"w{cid}", prefix)
        rt.finish(f"w{cid}")
        rt.offload_claim(cid)
        if fault:
            rt.inject_host_fault(rt.block_hashes(prefix)[0])
        rt.submit_request(f"r{cid}", prefix + [7])
        rt.finish(f"r{cid}")
    assert rt.claim_state("good") == STATE.materialized and rt.claim_state("bad") == STATE.failed
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(line + "\n" for line in rt.trace_lines()))
    code, verdict = judged(capsys, "--bundle", "offloadable", str(trace))
    assert code == 0 and verdict["ok"], verdict
    assert set(verdict["not_shown"]) == {"RKC-INV-3", "RKC-INV-4", "RKC-INV-5", "RKC-ACC-1"}


def test_bundle_reads_whole_traces(capsys):
    assert main(["check", "--bundle", "offloadable", "--stream", str(DATA / "clean.jsonl")]) == 2
    assert "--stream" in capsys.readouterr().err


def test_an_unknown_mode_is_refused():
    with pytest.raises(SystemExit) as exc:
        main(["check", "--bundle", "sturdy", str(Path(BAD / "missing_identity.jsonl"))])
    assert exc.value.code == 2


def test_what_a_mode_exercises_is_what_a_trace_can_show():
    for mode in load().lowering.modes.values():
        assert set(mode.exercised) <= set(EXERCISED), mode.name


def test_a_mode_needs_a_claim_it_covers(tmp_path, capsys):
    """A trace of soft claims only is no evidence for `expiring` (claims with a TTL)."""
    rt = reference_runtime(U=8, B=4)
    rt.submit_claim("s", list(range(8)), strength="soft")
    rt.submit_request("w", list(range(8)))
    rt.finish("w")
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(line + "\n" for line in rt.trace_lines()))
    _, verdict = judged(capsys, "--bundle", "expiring", str(trace))
    assert verdict["missing"]["RKC-ID-1"].startswith("no claim this mode covers")


def test_a_kv_residency_block_with_no_hash_is_unknown_not_a_crash(tmp_path, capsys):
    base = {"schema_version": 1, "run_id": "r", "request_id": "q"}
    lines = [
        {**base, "timestamp_ns": 1, "event": "allocation_victim_selected", "victim_reason": "cached_prefix_reuse"},
        {**base, "timestamp_ns": 2, "event": "resident_block_materialized", "logical_block_position": 0},
    ]
    trace = tmp_path / "k.jsonl"
    trace.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert main(["check", "--format", "kv-residency", str(trace)]) == 0
    assert "no block_hash" in capsys.readouterr().out
