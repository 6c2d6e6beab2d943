"""The JSONL trace format (spec/TRACE.md)."""
import io
import json
from pathlib import Path

from kvclaims.refimpl.checker import FIELDS
from kvclaims.refimpl.litmus import SCENARIOS, run_scenario
from kvclaims.refimpl.trace import SCHEMA_VERSION, TraceWriter, read_lines

TRACE_MD = Path(__file__).resolve().parents[1] / "spec" / "TRACE.md"


def test_records_carry_the_envelope_and_a_gapless_sequence():
    """RKC-TR-1, RKC-TR-2: every line a JSON object with schema_version, seq (from 0, +1), time, kind."""
    lines = run_scenario("trace_outcome_reconstruction").trace
    recs = [json.loads(line) for line in lines]
    assert [r["seq"] for r in recs] == list(range(len(recs)))
    assert all(r["schema_version"] == SCHEMA_VERSION and isinstance(r["kind"], str) for r in recs)
    times = [r["time"] for r in recs]
    assert times == sorted(times) and times[-1] > 0


def test_every_kind_emitted_is_documented_with_its_fields():
    """RKC-TR-3: the kinds the refimpl writes are the kinds TRACE.md and the checker know."""
    text = TRACE_MD.read_text()
    kinds = {json.loads(line)["kind"] for n in SCENARIOS for line in run_scenario(n).trace}
    assert kinds <= set(FIELDS)
    for kind, fields in FIELDS.items():
        assert f"`{kind}`" in text, kind
        assert all(f"`{f}`" in text for f in fields), kind


def test_block_moves_name_hashes_and_tier():
    """RKC-TR-3, RKC-TR-6: block records list block hashes and a tier."""
    lines = run_scenario("offload_restore").trace
    moves = [json.loads(line) for line in lines if json.loads(line)["kind"].startswith("block_")]
    assert {m["kind"] for m in moves} >= {"block_store", "block_evict", "block_offload", "block_restore"}
    assert all(m["blocks"] and m["tier"] in ("device", "host") for m in moves)


def test_writer_streams_to_a_sink_and_reader_reports_bad_lines():
    sink = io.StringIO()
    w = TraceWriter(sink)
    w.emit("runtime", runtime="x")
    w.time = 3
    w.emit("operator", action="reset_prefix_cache")
    assert sink.getvalue().splitlines() == w.lines()
    got = list(read_lines(w.lines() + ["", "{bad", "[1]"]))
    assert [n for n, _ in got] == [1, 2, 4, 5]
    assert got[1][1]["time"] == 3 and isinstance(got[2][1], str) and "not a JSON object" in got[3][1]
