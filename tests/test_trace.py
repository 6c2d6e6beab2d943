"""The JSONL trace format (spec/TRACE.md)."""

import io
import json
from pathlib import Path

import pytest

from kvclaims.conformance.checker import FIELDS
from kvclaims.conformance.litmus import SCENARIOS, run_scenario
from kvclaims.trace import SCHEMA_VERSION, TraceWriter, read_lines

TRACE_MD = Path(__file__).resolve().parents[1] / "spec" / "TRACE.md"


@pytest.mark.obligation("RKC-TR-1", "RKC-TR-2")
def test_records_carry_the_envelope_and_a_gapless_sequence():
    """RKC-TR-1, RKC-TR-2: every line a JSON object with schema_version, seq (from 0, +1), time, kind."""
    lines = run_scenario("trace_outcome_reconstruction").trace
    recs = [json.loads(line) for line in lines]
    assert [r["seq"] for r in recs] == list(range(len(recs)))
    assert all(r["schema_version"] == SCHEMA_VERSION and isinstance(r["kind"], str) for r in recs)
    times = [r["time"] for r in recs]
    assert times == sorted(times) and times[-1] > 0


@pytest.mark.obligation("RKC-TR-3")
def test_every_kind_emitted_is_documented_with_its_fields():
    """RKC-TR-3: the kinds the refimpl writes are the kinds TRACE.md and the checker know."""
    text = TRACE_MD.read_text()
    kinds = {json.loads(line)["kind"] for n in SCENARIOS for line in run_scenario(n).trace}
    assert kinds <= set(FIELDS)
    for kind, fields in FIELDS.items():
        assert f"`{kind}`" in text, kind
        assert all(f"`{f}`" in text for f in fields), kind


@pytest.mark.obligation("RKC-TR-3", "RKC-TR-6")
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


def test_writer_flushes_each_record_and_can_keep_none(tmp_path):
    """A sink sees every record as soon as it is emitted (a killed process loses at most the
    one being written); `keep=False` leaves the sink the only copy, for constant memory."""
    path = tmp_path / "t.jsonl"
    with open(path, "w", encoding="utf-8", buffering=1 << 20) as sink:
        w = TraceWriter(sink, keep=False)
        for i in range(3):
            w.emit("runtime" if i == 0 else "operator", action="x")
            assert [json.loads(line)["seq"] for line in path.read_text().splitlines()] == list(range(i + 1))
    assert w.records == [] and w.lines() == [] and w.seq == 3


def test_a_writer_with_no_sink_that_keeps_nothing_is_off():
    """With neither a sink nor kept records the trace is off: records are only counted."""
    w = TraceWriter(keep=False)
    assert not w.recording and TraceWriter().recording and TraceWriter(io.StringIO(), keep=False).recording
    w.emit("runtime", runtime="x")
    assert w.records == [] and w.seq == 1


def test_only_a_newline_ended_stream_has_a_truncated_tail():
    """A cut last line is told from a malformed one only where lines carry their newlines
    (files, pipes); bare lines, as `TraceWriter.lines()` gives them, are never 'cut'."""

    def bad(lines):
        return [(n, r.kind) for n, r in read_lines(lines) if not isinstance(r, dict)]

    assert bad(['{"a": 1}\n', '{"a": ']) == [(2, "truncated_tail")]
    assert bad([b"{\n", b"\n", b"{"]) == [(1, "malformed_line"), (3, "truncated_tail")]
    assert bad(['{"a": 1}', '{"a": ']) == [(2, "malformed_line")]
    assert bad(['{"a": ', '{"a": 1}\n']) == [(1, "malformed_line")]
